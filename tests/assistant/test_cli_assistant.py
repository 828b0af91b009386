"""The assistant's terminal commands as a user runs them (real processes) over a scripted model."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.assistant.conftest import CALC, git
from tests.assistant.test_assistant import MEAN_FIXED


def corolla(workspace, base, *args, stdin: str | None = None, timeout=120):
    env = {**os.environ, "COROLLA_ENDPOINT": base}
    return subprocess.run([sys.executable, "-m", "corolla", *args], cwd=workspace, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def test_edit_shows_the_diff_and_applies_with_yes(scripted, llm_model, workspace):
    _, base = scripted
    llm_model.add("empty list", MEAN_FIXED)
    done = corolla(workspace, base, "edit", "calc.py:5-6", "-m", "raise ValueError on an empty list", "--yes",
                   "--format", "whole")
    assert done.returncode == 0, done.stderr
    assert "+        raise ValueError" in done.stdout and "applied to calc.py" in done.stderr
    assert "raise ValueError" in (workspace / "calc.py").read_text()


def test_edit_without_yes_and_without_a_terminal_applies_nothing(scripted, llm_model, workspace):
    _, base = scripted
    llm_model.add("empty list", MEAN_FIXED)
    done = corolla(workspace, base, "edit", "calc.py:5-6", "-m", "raise ValueError on an empty list")
    assert done.returncode == 1 and "not applied" in done.stderr and "+        raise" in done.stdout
    assert (workspace / "calc.py").read_text() == CALC


def test_a_refused_edit_exits_2_and_leaves_the_file(scripted, llm_model, workspace):
    _, base = scripted
    llm_model.add(lambda prompt: True, "```python\ndef mean(values):\n    # ... existing code ...\n```")
    done = corolla(workspace, base, "edit", "calc.py:5-6", "-m", "speed it up", "--yes", "--format", "whole")
    assert done.returncode == 2 and done.stderr.startswith("refused:") and "placeholder" in done.stderr.lower()
    assert (workspace / "calc.py").read_text() == CALC


def test_ask_explain_commit_msg_and_sessions(scripted, llm_model, workspace):
    _, base = scripted
    llm_model.add("commit message", "Add triple()").add("Explain", "It sums.").add("why?", "Because.")
    assert corolla(workspace, base, "explain", "calc.py:1-2").stdout.strip() == "It sums."
    asked = corolla(workspace, base, "ask", "why?", "--file", "calc.py")
    assert asked.stdout.strip() == "Because." and "[session " in asked.stderr
    (workspace / "calc.py").write_text(CALC + "\n\ndef triple(x):\n    return 3 * x\n")
    git(workspace, "add", "calc.py")
    assert corolla(workspace, base, "commit-msg").stdout == "Add triple()\n"
    listed = corolla(workspace, base, "sessions", "list").stdout.splitlines()
    assert len(listed) == 3
    sid = listed[-1].split()[0]
    shown = corolla(workspace, base, "sessions", "show", sid).stdout
    assert "It sums." in shown
    assert corolla(workspace, base, "sessions", "delete", sid).returncode == 0
    assert len(corolla(workspace, base, "sessions", "list").stdout.splitlines()) == 2


def test_interactive_chat_with_commands_accept_and_undo(scripted, llm_model, workspace):
    _, base = scripted
    llm_model.add("Fix", MEAN_FIXED).add("hello", "Hi there.")
    script = "hello\n/file calc.py:5-6\n/fix mean([]) fails\n/accept\n/sessions\n/undo\n/quit\n"
    done = corolla(workspace, base, "chat", "--workspace", str(workspace), stdin=script)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Hi there." in out and "+        raise ValueError" in out and "[applied to calc.py]" in out
    assert "[undid edit" in out
    assert (workspace / "calc.py").read_text() == CALC


def test_endpoint_down_is_a_clear_error(workspace):
    done = corolla(workspace, "http://127.0.0.1:9/v1", "ask", "hi", "--model", "m")
    assert done.returncode == 1 and "cannot reach the model endpoint" in done.stderr


def test_assistant_serve_prints_its_url_and_serves(scripted, workspace):
    import json
    import signal
    import urllib.request

    _, base = scripted
    proc = subprocess.Popen([sys.executable, "-m", "corolla", "assistant", "serve", "--port", "0", "--workspace",
                             str(workspace), "--endpoint", base], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"assistant service for {workspace}: http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1].strip()
        with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
            health = json.load(response)
        assert health["model"] == "scripted" and health["workspace"] == str(workspace)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_review_asks_for_a_verdict_on_each_changed_line_or_in_the_style_named(scripted, llm_model, workspace):
    _, base = scripted
    llm_model.add("decide whether the change is a bug", "line 2: BUG: add subtracts")
    llm_model.add("find the bugs", "calc.py:2: add subtracts")
    (workspace / "calc.py").write_text(CALC.replace("a + b", "a - b"))
    done = corolla(workspace, base, "review", "unstaged")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "line 2: BUG: add subtracts"
    assert "line N: OK:" in llm_model.requests[-1].prompt and "-    return a + b" in llm_model.requests[-1].prompt
    listed = corolla(workspace, base, "review", "unstaged", "--style", "list")
    assert listed.returncode == 0 and listed.stdout.strip() == "calc.py:2: add subtracts", listed.stderr
    assert "No bugs found." in llm_model.requests[-1].prompt
    wrong = corolla(workspace, base, "review", "--style", "loud")
    assert wrong.returncode == 2 and "invalid choice: 'loud'" in wrong.stderr
