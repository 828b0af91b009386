"""Agents that run while the user keeps working: start, list, follow, stop, apply, discard.

Each agent is a session of kind ``agent`` in the workspace's :class:`SessionStore`; its meta holds
the task, the worktree and branch it works on, the runner's pid and the status::

    queued -> running -> done | failed | stopped -> applied | discarded

Everything lives in the store and in git, not in this object, so a new :class:`AgentManager` (a
restarted service, another terminal) sees the same agents, events and statuses. A runner that died
without a word (killed, machine rebooted) is noticed by its pid and marked ``failed``.

Background agents are detached processes (``python -m corolla.assistant.agent.runner``) in a process
group of their own, logging to ``.corolla/agents/<id>.log``; foreground ones run in a thread of this
process (the CLI prints their steps; Ctrl-C stops them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from corolla.assistant.agent import worktrees
from corolla.assistant.agent.runner import (
    ACTIVE,
    FINAL_STATUSES,
    REVIEWED,
    STATUSES,
    RunOptions,
    finish,
    run_agent,
)
from corolla.assistant.errors import AgentNotFoundError, AgentStateError, AssistantError, SessionNotFoundError
from corolla.assistant.sessions import Event, Session, SessionStore, title_from
from corolla.shutdown import keep_on_exit

KIND = "agent"
STOP_WAIT_S = 15.0  # how long stop() waits for the runner to record "stopped" before killing it
LOGS_DIR = Path(".corolla") / "agents"


class AgentManager:
    """The agents of one workspace (see the module's docstring)."""

    def __init__(self, root: Path, store: SessionStore | None = None, *, python: str = sys.executable,
                 env: dict[str, str] | None = None, clock=time.monotonic):
        self.root = Path(root).resolve()
        self.store = store or SessionStore(self.root)
        self.python = python
        self.env = env  # extra environment for runners (e.g. COROLLA_API_KEY)
        self.clock = clock
        self._procs: dict[str, subprocess.Popen] = {}
        self._threads: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._lock = threading.Lock()

    # --- starting -----------------------------------------------------------------------------
    def start(self, task: str, *, background: bool = True, options: RunOptions | None = None, llm=None) -> str:
        """Create the agent's session and worktree and start it; returns its id at once (a
        foreground agent runs in a thread of this process: :meth:`wait` for it)."""
        task = task.strip()
        if not task:
            raise AgentStateError("an agent needs a task: say what it should do")
        options = options or RunOptions()
        worktrees.head_commit(worktrees.toplevel(self.root))  # refuse a repo without commits before anything
        session = self.store.create(title_from(task), kind=KIND, meta={
            "task": task, "status": "queued", "background": background, "options": options.to_json()})
        try:
            tree = worktrees.create(self.root, session.id)
        except AssistantError as e:
            self.store.update_meta(session.id, {"status": "failed", "error": str(e)})
            raise
        self.store.update_meta(session.id, tree.to_json())
        if background:
            try:
                self._spawn(session.id, options)
            except OSError as e:
                self.store.update_meta(session.id, {"status": "failed", "error": f"cannot start the runner: {e}"})
                raise AgentStateError(f"cannot start the agent's process: {e}") from e
        else:
            stop = threading.Event()
            # a daemon: an agent waiting minutes on the model must not keep an exiting process alive
            # (close() records it as stopped first)
            thread = threading.Thread(target=run_agent, args=(self.root, session.id, options),
                                      kwargs={"stop": stop, "llm": llm, "store": self.store},
                                      name=f"agent-{session.id}", daemon=True)
            with self._lock:
                self._threads[session.id] = (thread, stop)
            self.store.update_meta(session.id, {"pid": os.getpid()})
            thread.start()
        return session.id

    def _spawn(self, agent_id: str, options: RunOptions) -> None:
        logs = self.root / LOGS_DIR
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{agent_id}.log"
        cmd = [self.python, "-m", "corolla.assistant.agent.runner", "--workspace", str(self.root),
               "--session", agent_id, *options.argv()]
        env = {**os.environ, **(self.env or {})}
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    cwd=self.root, env=env, start_new_session=True)
        keep_on_exit(proc.pid)  # detached on purpose: it outlives a service or CLI that stops
        with self._lock:
            self._procs[agent_id] = proc
        self.store.update_meta(agent_id, {"pid": proc.pid, "pgid": proc.pid, "log": str(log_path)})

    def wait(self, agent_id: str, timeout_s: float | None = None) -> Session:
        """Wait for an agent this manager started to finish; its session."""
        thread, proc = self._started(agent_id)
        if thread is not None:
            thread.join(timeout_s)
        elif proc is not None:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        return self.get(agent_id)

    # --- reading ------------------------------------------------------------------------------
    def get(self, agent_id: str) -> Session:
        """The agent's session, its status brought up to date (a dead runner becomes ``failed``)."""
        try:
            session = self.store.get(agent_id)
        except SessionNotFoundError:
            raise AgentNotFoundError(f"no agent {agent_id!r} in this workspace (list them with "
                                     "`corolla agent list`)") from None
        if session.kind != KIND:
            raise AgentNotFoundError(f"{agent_id!r} is a {session.kind} session, not an agent")
        if session.meta.get("status") in ACTIVE and not self._alive(agent_id, session.meta):
            finish(self.store, agent_id, {"status": "failed", "error": "the agent's process ended without a "
                                          f"report (see {session.meta.get('log', 'its log')})"})
            session = self.store.get(agent_id)
        return session

    def list(self) -> list[Session]:
        return [self.get(s.id) for s in self.store.list(KIND)]

    def show(self, agent_id: str) -> dict:
        """The agent's record with its diff (the branch's, or the worktree's so far while it runs)."""
        session = self.get(agent_id)
        return {**agent_json(session), "diff": self.diff(session)}

    def diff(self, session: Session) -> str:
        meta = session.meta
        try:
            if meta.get("status") in ACTIVE and Path(meta.get("worktree", "")).is_dir():
                return worktrees.worktree_diff(Path(meta["worktree"]), meta["base"])
            if meta.get("branch") and worktrees.branch_exists(self.root, meta["branch"]):
                return worktrees.branch_diff(self.root, meta["base"], meta["branch"])
        except AssistantError:
            return ""
        return meta.get("diff", "")

    def events(self, agent_id: str, after_seq: int = 0) -> list[Event]:
        self.get(agent_id)
        return self.store.events(agent_id, after_seq)

    def follow(self, agent_id: str, after_seq: int = 0, *, poll_s: float = 0.2,
               timeout_s: float | None = None, until: Callable[[], bool] | None = None) -> Iterator[Event]:
        """The agent's events as they are stored, until it has finished (and its last events were
        given), ``timeout_s`` passed or ``until()`` is true."""
        deadline = None if timeout_s is None else self.clock() + timeout_s
        while True:
            finished = self.get(agent_id).meta.get("status") not in ACTIVE  # read before the events: none is lost
            for event in self.store.events(agent_id, after_seq):
                after_seq = event.seq
                yield event
            if finished or (deadline is not None and self.clock() >= deadline) or (until is not None and until()):
                return
            time.sleep(poll_s)

    # --- acting -------------------------------------------------------------------------------
    def stop(self, agent_id: str, wait_s: float = STOP_WAIT_S) -> Session:
        """Stop a running agent: its stop event (in-process) or SIGTERM to its runner's process
        group; waits for the runner to record ``stopped``, and kills the group if it does not."""
        session = self.get(agent_id)
        status = session.meta.get("status")
        if status not in ACTIVE:
            raise AgentStateError(f"agent {agent_id} already finished (status {status}); nothing to stop")
        with self._lock:
            thread = self._threads.get(agent_id)
        meta = session.meta
        if thread is not None:
            thread[1].set()
            thread[0].join(wait_s)
        elif meta.get("pgid"):
            self._signal_group(meta["pgid"], signal.SIGTERM)
            if not self._wait_gone(agent_id, meta, wait_s):
                self._signal_group(meta["pgid"], signal.SIGKILL)
                self._wait_gone(agent_id, meta, 5.0)
        elif meta.get("pid") and meta["pid"] != os.getpid():  # a foreground agent of another terminal
            try:
                os.kill(meta["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._wait_final(agent_id, wait_s)
        if self.store.get(agent_id).meta.get("status") in ACTIVE:
            finish(self.store, agent_id, {"status": "stopped", "outcome": "stopped",
                                          "error": "stopped before it recorded a report"})
        return self.get(agent_id)

    def close(self, timeout_s: float = STOP_WAIT_S) -> list[str]:
        """Stop the agents running in this process, which is exiting; returns their ids. Each gets its
        stop event and until ``timeout_s`` to record its end; one still busy then (waiting on the
        model, or on a command: the caller kills its process's children) is recorded as ``stopped``
        and left behind, a daemon thread. Background agents (detached processes) keep running."""
        with self._lock:
            running = {agent_id: entry for agent_id, entry in self._threads.items() if entry[0].is_alive()}
        for _, stop in running.values():
            stop.set()
        deadline = self.clock() + timeout_s
        for thread, _ in running.values():
            thread.join(max(0.0, deadline - self.clock()))
        for agent_id in running:
            if self.store.get(agent_id).meta.get("status") in ACTIVE:
                self.store.add_event(agent_id, "report", {"status": "stopped", "summary": "stopped before it finished"})
                finish(self.store, agent_id, {"status": "stopped", "outcome": "stopped",
                                              "error": "stopped while it was working (its process was exiting)"})
        return list(running)

    def request_stop(self, agent_id: str) -> bool:
        """Set the stop event of an agent running in this process, without waiting (safe in a
        signal handler); False when it does not run here."""
        with self._lock:
            thread = self._threads.get(agent_id)
        if thread is None:
            return False
        thread[1].set()
        return True

    def apply(self, agent_id: str) -> dict:
        """Apply the agent's changes to the user's working tree (all or nothing), then remove its
        worktree and branch; the diff stays in the meta."""
        session = self.get(agent_id)
        meta = session.meta
        status = meta.get("status")
        if status in ACTIVE:
            raise AgentStateError(f"agent {agent_id} is still {status}; wait for it or stop it, then apply")
        if status in REVIEWED:
            raise AgentStateError(f"agent {agent_id} was already {status}")
        diff = worktrees.branch_diff(self.root, meta["base"], meta["branch"])
        if not diff.strip():
            raise AgentStateError(f"agent {agent_id} changed nothing; nothing to apply (discard it)")
        files = worktrees.apply_to(self.root, diff)
        self.store.update_meta(agent_id, {"status": "applied", "diff": diff, "applied_files": files,
                                          "applied": time.time()})
        self.store.add_event(agent_id, "status", {"status": "applied", "files": files})
        self._remove_tree(meta)
        return {"id": agent_id, "status": "applied", "files": files}

    def discard(self, agent_id: str) -> dict:
        """Throw the agent's work away: stop it if it runs, remove its worktree and branch."""
        session = self.get(agent_id)
        status = session.meta.get("status")
        if status in REVIEWED:
            raise AgentStateError(f"agent {agent_id} was already {status}")
        if status in ACTIVE:
            session = self.stop(agent_id)
        self._remove_tree(session.meta)
        self.store.update_meta(agent_id, {"status": "discarded", "discarded": time.time()})
        self.store.add_event(agent_id, "status", {"status": "discarded"})
        return {"id": agent_id, "status": "discarded"}

    # --- helpers ------------------------------------------------------------------------------
    def _remove_tree(self, meta: dict) -> None:
        if meta.get("worktree") and meta.get("branch"):
            worktrees.remove(self.root, Path(meta["worktree"]), meta["branch"])

    def _started(self, agent_id: str) -> tuple[threading.Thread | None, subprocess.Popen | None]:
        """The thread or the process running the agent, when this manager started it."""
        with self._lock:
            entry = self._threads.get(agent_id)
            return (entry[0] if entry else None), self._procs.get(agent_id)

    def _alive(self, agent_id: str, meta: dict) -> bool:
        thread, proc = self._started(agent_id)
        if thread is not None:
            return thread.is_alive()
        if proc is not None:
            return proc.poll() is None
        pid = meta.get("pid")
        if not pid:
            return True  # between creating the session and spawning: assume it is coming
        if pid == os.getpid():
            return True  # an in-process agent of another manager in this process; it sets its own status
        return pid_alive(pid, agent_id if meta.get("pgid") else None)

    def _wait_gone(self, agent_id: str, meta: dict, wait_s: float) -> bool:
        deadline = self.clock() + wait_s
        while self.clock() < deadline:
            if not self._alive(agent_id, meta):
                return True
            time.sleep(0.05)
        return not self._alive(agent_id, meta)

    def _wait_final(self, agent_id: str, wait_s: float) -> None:
        deadline = self.clock() + wait_s
        while self.clock() < deadline and self.store.get(agent_id).meta.get("status") in ACTIVE:
            time.sleep(0.05)

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie), and, given a ``marker``, has it in its command line (a
    reused pid is another program)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return marker is None
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True
    try:
        if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if marker is not None:
            return marker in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return True


def agent_json(session: Session) -> dict:
    """What the CLI and the service show of an agent."""
    meta = session.meta
    keys = ("task", "status", "branch", "worktree", "base", "commit", "outcome", "report", "report_text", "error",
            "pid", "log", "options", "applied_files", "started", "finished")
    return {"id": session.id, "title": session.title, "created": session.created, "updated": session.updated,
            **{k: meta.get(k) for k in keys}}


__all__ = ["ACTIVE", "AgentManager", "FINAL_STATUSES", "KIND", "RunOptions", "STATUSES", "agent_json", "pid_alive"]
