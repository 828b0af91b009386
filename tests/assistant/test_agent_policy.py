"""The agent's command policy: what runs, what is asked for, what is refused, and how a run is bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corolla.assistant.agent.policy import DEFAULT_ALLOW, CommandPolicy, Decision, normalise, split_command
from corolla.assistant.agent.shell import run_shell, sandbox_prefix, truncate_middle


def yes(command: str) -> bool:
    return True


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaps is dead for our purposes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pids: list[int], deadline_s: float = 10.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _kill(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, 9)
            except OSError:
                pass


# --- decisions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["ls -la", "git status --short", "git diff HEAD~1", "cat a.txt | grep x",
                                     "ls 2>&1 | head -3", "grep -rn foo . > /dev/null", "python -m pytest -q",
                                     f"{sys.executable} -m pytest -q tests", "ls && git log --oneline -3"])
def test_allowed_commands_run_without_asking(command):
    assert CommandPolicy().decide(command) == Decision("run", "allowed")


@pytest.mark.parametrize("command, why", [
    ("ls && rm -rf x", "rm -rf x"), ("rm calc.py", "rm calc.py"), ("ls > out.txt", "out.txt"),
    ("cat a | sh", "`sh`"), ("echo $(rm x)", "command substitution"), ("echo `id`", "command substitution"),
    ("find . -delete", "-delete"), ("sort -o out a", "-o"), ("(ls)", "subshells"), ("FOO=1 pytest", "FOO=1"),
    ("git statusx", "git statusx"), ("python -m pytest --basetemp=/", "--basetemp"),
])
def test_what_is_not_allowed_is_asked_for_or_refused(command, why):
    asked = CommandPolicy(approve=yes).decide(command)
    assert asked.action == "ask" and why in asked.reason
    refused = CommandPolicy().decide(command)  # non-interactive
    assert refused.action == "refuse" and why in refused.reason and "--auto-approve" in refused.reason


@pytest.mark.parametrize("command, host", [
    ("curl https://example.com", "example.com"), ("wget http://example.org/x.tar.gz", "example.org"),
    ("git clone https://github.com/a/b", "github.com"), ("git clone git@github.com:a/b.git", "github.com"),
    ("ssh host", "host"), ("ssh -p 22 user@build.example.com ls", "build.example.com"),
    ("scp f.txt host:/tmp", "host"), ("curl -x proxy.example.com http://127.0.0.1", "proxy.example.com"),
    ("python -c \"import urllib.request as u; u.urlopen('http://8.8.8.8')\"", "8.8.8.8"),
    ("ls && curl example.com", "example.com"),
])
def test_network_hosts_are_refused_even_when_approved(command, host):
    policy = CommandPolicy(approve=yes, auto_approve=("curl", "wget", "git", "ssh", "scp", "python", "ls"))
    decision = policy.decide(command)
    assert decision.action == "refuse"
    assert host in decision.reason and "127.0.0.1" in decision.reason


@pytest.mark.parametrize("command", ["pip install requests", "python -m pip install -e .", "npm install",
                                     "npm ci", "cargo install ripgrep", "go get example.com/x", "git push",
                                     "git fetch origin", "git pull", "uv pip install x"])
def test_downloads_and_remotes_are_refused(command):
    auto = ("pip", "python", "npm", "cargo", "go", "git", "uv")
    decision = CommandPolicy(approve=yes, auto_approve=auto).decide(command)
    assert decision.action == "refuse", decision


@pytest.mark.parametrize("command", ["curl http://127.0.0.1:8000", "curl http://localhost:3000/api",
                                     "git fetch http://127.0.0.1:9418/repo", "pip install --no-index ./dist/x.whl",
                                     "git clone ../other", "rsync -a ./x localhost:/y"])
def test_local_targets_are_not_refused(command):
    assert CommandPolicy(approve=yes).decide(command).action == "ask"
    assert CommandPolicy(auto_approve=(command.split()[0],)).decide(command).action == "run"


def test_auto_approve_matches_whole_words_of_the_normalised_command():
    policy = CommandPolicy(auto_approve=("make test", "touch"))
    assert policy.decide("make   test  -j2").action == "run"
    assert policy.decide("touch a && ls").action == "run"
    assert policy.decide("make testing").action == "refuse"
    assert policy.decide("touchy").action == "refuse"
    assert policy.decide("touch a && rm b").action == "refuse"
    assert policy.decide("touch a > b").action == "run"  # approved by name, redirection included


def test_unparsable_and_empty_commands_are_refused():
    assert "quoting" in CommandPolicy(approve=yes).decide('cat "unterminated').reason
    assert CommandPolicy(approve=yes).decide("   ").action == "refuse"


def test_split_and_normalise():
    parsed = split_command("ls -l 2>&1 | grep x > out.txt; echo 'a && b'")
    assert [p.tokens for p in parsed.parts] == [("ls", "-l"), ("grep", "x"), ("echo", "a && b")]
    assert parsed.parts[1].writes == ("out.txt",)
    assert normalise(f"{sys.executable}   -m  pytest") == "python -m pytest"
    assert "python -m pytest" in DEFAULT_ALLOW


# --- running ---------------------------------------------------------------------------------------
def test_allowed_command_runs_in_the_workspace(tmp_path):
    (tmp_path / "hello.txt").write_text("hi\n")
    res = CommandPolicy().run("ls", tmp_path)
    assert not res.refused and res.exit_code == 0 and "hello.txt" in res.output


def test_asked_and_approved_runs(tmp_path):
    asked = []
    res = CommandPolicy(approve=lambda c: asked.append(c) or True).run("touch made.txt", tmp_path)
    assert asked == ["touch made.txt"] and res.exit_code == 0 and (tmp_path / "made.txt").exists()


@pytest.mark.parametrize("answer", [lambda c: False, lambda c: (_ for _ in ()).throw(EOFError())])
def test_asked_and_declined_is_refused(tmp_path, answer):
    res = CommandPolicy(approve=answer).run("touch made.txt", tmp_path)
    assert res.refused and res.exit_code is None and "declined" in res.reason
    assert not (tmp_path / "made.txt").exists()


def test_non_interactive_refuses_and_auto_approve_runs(tmp_path):
    res = CommandPolicy().run("touch made.txt", tmp_path)
    assert res.refused and not (tmp_path / "made.txt").exists()
    res = CommandPolicy(auto_approve=("touch",)).run("touch made.txt", tmp_path)
    assert not res.refused and (tmp_path / "made.txt").exists()


def test_exit_code_and_merged_output(tmp_path):
    res = CommandPolicy(approve=yes).run("echo out; echo err >&2; exit 3", tmp_path)
    assert res.exit_code == 3 and "out" in res.output and "err" in res.output and not res.timed_out


def test_environment_is_non_interactive(tmp_path):
    res = CommandPolicy().run("echo $CI $PAGER $GIT_PAGER", tmp_path)
    assert res.output.split() == ["1", "cat", "cat"]


def test_timeout_kills_the_process_group(tmp_path):
    policy = CommandPolicy(approve=yes, timeout_s=1.0)
    pids: list[int] = []
    try:
        start = time.monotonic()
        res = policy.run("sleep 120 & echo $! > child.pid; echo $$ > shell.pid; wait", tmp_path)
        elapsed = time.monotonic() - start
        pids = [int((tmp_path / n).read_text()) for n in ("child.pid", "shell.pid")]
        assert res.timed_out and res.exit_code is not None and res.exit_code < 0
        assert "did not finish in time" in res.output
        assert elapsed < 60  # well before the sleep would have ended
        assert _wait_gone(pids)
    finally:
        _kill(pids)


def test_leftover_background_processes_are_killed(tmp_path):
    pids: list[int] = []
    try:
        res = CommandPolicy(approve=yes, timeout_s=60).run("sleep 120 & echo $! > child.pid; echo started", tmp_path)
        pids = [int((tmp_path / "child.pid").read_text())]
        assert res.exit_code == 0 and not res.timed_out and "started" in res.output
        assert _wait_gone(pids)
    finally:
        _kill(pids)


def test_output_is_truncated_keeping_head_and_tail(tmp_path):
    res = CommandPolicy(approve=yes, max_output_chars=500).run("seq 1 200000", tmp_path)
    assert res.exit_code == 0 and len(res.output) < 1000
    assert res.output.startswith("1\n2\n3\n") and res.output.rstrip().endswith("199999\n200000")
    assert "cut" in res.output


def test_truncate_middle():
    text = "a" * 1000 + "b" * 1000
    cut = truncate_middle(text, 400)
    assert cut.startswith("a" * 100) and cut.endswith("b" * 100) and "1600 characters cut" in cut
    assert truncate_middle("short", 400) == "short"


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_commands_run_in_their_own_network_namespace_when_possible(tmp_path):
    ours = os.readlink("/proc/self/ns/net")
    res = CommandPolicy(approve=yes).run("readlink /proc/self/ns/net", tmp_path)
    assert res.exit_code == 0
    if not _unshare_works():
        pytest.skip("unshare -rn is not allowed here")
    assert sandbox_prefix() is not None and res.sandboxed
    assert res.output.strip() != ours
    # its own loopback is up: a server and a client inside the same command talk over 127.0.0.1
    probe = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
             "c = socket.create_connection(s.getsockname(), timeout=5); print('loopback ok')")
    res = run_shell(f"{sys.executable} -c \"{probe}\"", tmp_path, timeout_s=30, max_output_chars=2000)
    assert "loopback ok" in res.output, res.output
    # network=True opts out of the namespace
    res = CommandPolicy(approve=yes, network=True).run("readlink /proc/self/ns/net", tmp_path)
    assert res.output.strip() == ours and not res.sandboxed
