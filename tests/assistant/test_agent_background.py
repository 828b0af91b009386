"""Background agents over the scripted model: real runner processes in git worktrees, the user's tree
untouched until apply, stop, conflicts, restarts, and the ``corolla agent`` CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from corolla.assistant.agent import worktrees
from corolla.assistant.agent.background import AgentManager, pid_alive
from corolla.assistant.agent.runner import RunOptions, _children
from corolla.assistant.errors import AgentNotFoundError, AgentStateError, ApplyConflictError, GitError
from corolla.assistant.sessions import SessionStore
from tests.assistant.conftest import CALC, git

ADD_DOC = 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b'
WAIT_S = 60.0


def call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def after_tool(marker: str):
    """Matches a prompt of the agent whose task carries ``marker`` once a tool result came back."""
    return lambda prompt: marker in prompt and ("<tool_response>" in prompt or "Result of " in prompt)


def of_task(marker: str):
    return lambda prompt: marker in prompt


def wait_for(predicate, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def kill_all(manager: AgentManager) -> None:
    """Kill every runner this manager started, with whatever they started (even on failure)."""
    for proc in list(manager._procs.values()):
        if proc.poll() is None:
            for child in _children(proc.pid):
                try:
                    os.killpg(os.getpgid(child), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(10)
    for thread, stop in list(manager._threads.values()):
        stop.set()
        thread.join(10)


@pytest.fixture()
def manager(workspace, llm_model):
    m = AgentManager(workspace)
    try:
        yield m
    finally:
        kill_all(m)


def options(scripted, **kw) -> RunOptions:
    _, base = scripted
    return RunOptions(endpoint=base, model="scripted", **{"max_steps": 6, **kw})


def status(m: AgentManager, agent_id: str) -> str:
    return m.get(agent_id).meta["status"]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it ended meanwhile
        return b""


def user_tree(root: Path) -> tuple[str, str]:
    return git(root, "status", "--porcelain"), (root / "calc.py").read_text()


def test_two_background_agents_apply_one_discard_the_other(scripted, llm_model, manager, workspace):
    both_asking = threading.Barrier(2, timeout=WAIT_S)

    def together(reply: str):
        def answer(prompt: str) -> str:  # both agents must be waiting on the model at once
            both_asking.wait()
            return reply
        return answer

    llm_model.add(after_tool("TASK-A"), "Added the docstring.")
    llm_model.add(after_tool("TASK-B"), "Wrote the notes.")
    llm_model.add(of_task("TASK-A"), together(call("edit", path="calc.py", search="def add(a, b):\n    return a + b",
                                                   replace=ADD_DOC)))
    llm_model.add(of_task("TASK-B"), together(call("write_file", path="NOTES.md", content="# Notes\n")))
    before = user_tree(workspace)
    a = manager.start("TASK-A: document the add function", options=options(scripted))  # tools mode
    b = manager.start("TASK-B: write NOTES.md", options=options(scripted))
    wait_for(lambda: all(status(manager, x) not in ("queued", "running") for x in (a, b)), "both agents to finish")
    for agent_id in (a, b):
        assert status(manager, agent_id) == "done", manager.show(agent_id)
    assert user_tree(workspace) == before  # nothing reached the user's tree while they worked
    show_a, show_b = manager.show(a), manager.show(b)
    assert '+    """Return the sum of a and b."""' in show_a["diff"] and "NOTES.md" not in show_a["diff"]
    assert "+# Notes" in show_b["diff"] and "calc.py" not in show_b["diff"]
    assert show_a["report"]["status"] == "done" and show_a["commit"]
    assert show_a["branch"] == f"corolla/agent-{a}" and Path(show_a["worktree"]).is_dir()
    assert "Traceback" not in Path(show_a["log"]).read_text()

    assert manager.apply(a) == {"id": a, "status": "applied", "files": ["calc.py"]}
    assert (workspace / "calc.py").read_text() == CALC.replace("def add(a, b):\n    return a + b", ADD_DOC)
    assert manager.discard(b) == {"id": b, "status": "discarded"}
    assert not (workspace / "NOTES.md").exists()
    for agent_id in (a, b):
        assert not Path(manager.show(agent_id)["worktree"]).exists()
        assert git(workspace, "branch", "--list", f"corolla/agent-{agent_id}") == ""
    assert "calc.py" in manager.show(a)["diff"]  # the applied diff is kept

    with pytest.raises(AgentStateError, match="already applied"):
        manager.apply(a)
    with pytest.raises(AgentStateError, match="already finished"):
        manager.stop(b)

    again = AgentManager(workspace, SessionStore(workspace))  # a restart: everything comes from the store
    assert {s.id: s.meta["status"] for s in again.list()} == {a: "applied", b: "discarded"}
    types = [e.type for e in again.events(a)]
    assert types[:2] == ["status", "task"] and {"assistant", "report"} <= set(types) and types[-1] == "status"
    assert [e.seq for e in again.events(a, after_seq=2)][0] == 3


def test_stop_a_running_agent_kills_its_command(scripted, llm_model, manager, workspace):
    llm_model.add(of_task("TASK-SLOW"), call("run_command", command="sleep 30"))
    agent_id = manager.start("TASK-SLOW: wait a while", options=options(scripted, auto_approve=("sleep",)))
    runner = manager.get(agent_id).meta["pid"]

    def sleeping() -> list[int]:
        # the command itself (argv[0] sleep): a child forked but not yet exec'd still shows the
        # runner's own command line, which holds `--auto-approve sleep`
        called = {"name": "run_command", "arguments": {"command": "sleep 30"}} in \
            [e.data for e in manager.events(agent_id)]
        return [p for p in _children(runner) if cmdline(p).split(b"\0")[0].endswith(b"sleep")] if called else []

    sleepers = wait_for(sleeping, "the agent's `sleep 30` to run")
    assert status(manager, agent_id) == "running"
    stopped = manager.stop(agent_id)
    assert stopped.meta["status"] == "stopped" and stopped.meta["outcome"] == "stopped"
    events = manager.events(agent_id)
    assert {"name": "run_command", "arguments": {"command": "sleep 30"}} in [e.data for e in events]
    assert [e.data["status"] for e in events if e.type == "report"] == ["stopped"]
    assert manager._procs[agent_id].poll() is not None  # the runner is gone...
    wait_for(lambda: not any(pid_alive(p) for p in sleepers), "the command to be killed", 10)  # ...and its command
    assert AgentManager(workspace).get(agent_id).meta["status"] == "stopped"  # seen after a restart too
    with pytest.raises(AgentStateError, match="already finished"):
        manager.stop(agent_id)
    with pytest.raises(AgentStateError, match="changed nothing"):
        manager.apply(agent_id)
    assert manager.discard(agent_id)["status"] == "discarded"


def test_apply_refused_on_conflict_leaves_the_tree_alone(scripted, llm_model, manager, workspace):
    llm_model.add(after_tool("TASK-C"), "Documented add.")
    llm_model.add(of_task("TASK-C"), call("edit", path="calc.py", search="def add(a, b):\n    return a + b",
                                          replace=ADD_DOC))
    agent_id = manager.start("TASK-C: document add", background=False, options=options(scripted))
    assert manager.wait(agent_id, WAIT_S).meta["status"] == "done"  # a foreground agent: a thread of this process
    mine = CALC.replace("return a + b", "return a + b  # mine")
    (workspace / "calc.py").write_text(mine)
    (workspace / "untracked.txt").write_text("keep me\n")
    before = user_tree(workspace)
    with pytest.raises(ApplyConflictError, match="conflict with your working tree.*nothing was changed"):
        manager.apply(agent_id)
    assert user_tree(workspace) == before and (workspace / "calc.py").read_text() == mine
    assert status(manager, agent_id) == "done"  # still there to apply once the user has committed or stashed
    (workspace / "calc.py").write_text(CALC)
    assert manager.apply(agent_id)["files"] == ["calc.py"]
    assert "Return the sum" in (workspace / "calc.py").read_text()


def test_refusals_and_a_dead_runner(tmp_path, workspace, manager):
    empty = tmp_path / "empty"
    empty.mkdir()
    subprocess.run(["git", "init", "-q", str(empty)], check=True)
    with pytest.raises(GitError, match="no commits yet"):
        AgentManager(empty).start("anything")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError, match="not inside a git repository"):
        AgentManager(plain).start("anything")
    with pytest.raises(AgentStateError, match="needs a task"):
        manager.start("   ")
    with pytest.raises(AgentNotFoundError):
        manager.get("nope")
    chat = manager.store.create("a chat")
    with pytest.raises(AgentNotFoundError, match="not an agent"):
        manager.get(chat.id)
    # A runner that died without a word (kill -9, reboot) is noticed and its agent marked failed.
    tree = worktrees.create(workspace, "dead1")
    gone = subprocess.Popen(["true"])
    gone.wait()
    session = manager.store.create("ghost", kind="agent", meta={"task": "ghost", "status": "running",
                                                                "pid": gone.pid, "pgid": gone.pid, **tree.to_json()})
    assert status(manager, session.id) == "failed"
    assert "ended without a report" in manager.get(session.id).meta["error"]
    manager.discard(session.id)
    assert not tree.path.exists()


def test_cli_start_foreground_list_show_logs(scripted, llm_model, workspace, capsys, monkeypatch):
    import argparse

    from corolla.cli import agent as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    _, base = scripted
    flags = ["--workspace", str(workspace), "--endpoint", base, "--model", "scripted"]

    def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(["agent", *argv[:1], *flags, *argv[1:]])
        code = args.func(args)
        return code, capsys.readouterr().out

    llm_model.add(after_tool("TASK-CLI"), "Documented add.")
    llm_model.add(of_task("TASK-CLI"), call("edit", path="calc.py", search="def add(a, b):\n    return a + b",
                                            replace=ADD_DOC))
    code, out = run("start", "TASK-CLI: document add", "--max-steps", "4")
    assert code == 0
    assert "-> edit(" in out and "<- edit ok" in out and "Agent done after 2 steps." in out
    assert (workspace / "calc.py").read_text() == CALC  # the user's tree: untouched
    agent_id = SessionStore(workspace).list("agent")[0].id
    code, out = run("list")
    assert agent_id in out and "done" in out
    code, out = run("show", agent_id)
    assert f"# agent {agent_id}: done" in out and '+    """Return the sum of a and b."""' in out
    code, out = run("logs", agent_id, "--json")
    assert [json.loads(line)["type"] for line in out.splitlines()][-1] == "status"
    code, out = run("apply", agent_id)
    assert code == 0 and "calc.py" in out and "Return the sum" in (workspace / "calc.py").read_text()
    with pytest.raises(AgentStateError):
        run("discard", agent_id)
