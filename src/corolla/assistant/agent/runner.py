"""One agent run in its worktree, from start to a committed branch and a final status.

:func:`run_agent` is the whole run: it is what a foreground ``corolla agent start`` calls in-process
and what a background agent's detached process runs::

    python -m corolla.assistant.agent.runner --workspace ROOT --session ID \\
        [--endpoint URL] [--model NAME] [--max-steps N] [--max-wall-s S] [--auto-approve PREFIX]...

The run is non-interactive: a command the policy would ask about is refused unless one of the
``--auto-approve`` prefixes allows it. Steps are stored as session events by the Agent itself; this
module sets the session's status (``running``, then ``done`` / ``failed`` / ``stopped``), commits the
worktree on the agent's branch (so ``git diff base...branch`` is the reviewable result) and stores
the report in the session's meta. The MCP servers the workspace configures (its ``.corolla/mcp.json``,
which a worktree does not have, and ``.vscode/mcp.json``) work on the worktree and stop with the run;
their tools, like commands, run only when ``--auto-approve`` names them (or the server is trusted).

SIGTERM (``corolla agent stop``) sets the Agent's stop event. The agent runs in a worker thread so the
main thread can act on it at once: after a short grace it kills the commands the agent started (they
run in process groups of their own, out of reach of a signal to this group), commits what was done,
records ``stopped`` and exits, even when the worker is still waiting on the model; in any case within
:data:`corolla.shutdown.DEADLINE_S` of the signal.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from corolla.assistant.agent.modes import DEFAULT_MODE, MODES, Mode
from corolla.assistant.errors import AssistantError
from corolla.assistant.sessions import SessionStore
from corolla.shutdown import on_stop_signals

log = logging.getLogger(__name__)

STOP_GRACE_S = 2.0  # after SIGTERM, how long the agent may take to notice before its commands are killed
KILL_GRACE_S = 3.0  # after killing them, how long to wait for the worker before leaving it behind
STATUSES = ("queued", "running", "done", "failed", "stopped", "applied", "discarded")  # of an agent's session
ACTIVE = ("queued", "running")
REVIEWED = ("applied", "discarded")  # its work was taken into the working tree, or thrown away
FINAL_STATUSES = tuple(s for s in STATUSES if s not in ACTIVE)


@dataclasses.dataclass
class RunOptions:
    """How an agent runs; kept in the session's meta (``options``) so a restart sees what was asked."""

    endpoint: str | None = None
    model: str | None = None
    max_steps: int = 20
    max_wall_s: float = 900.0
    max_tokens: int = 1024
    auto_approve: tuple[str, ...] = ()
    mode: Mode = DEFAULT_MODE  # AgentConfig.mode

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "auto_approve": list(self.auto_approve)}

    @classmethod
    def from_json(cls, data: dict) -> RunOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in (data or {}).items() if k in known}
        values["auto_approve"] = tuple(values.get("auto_approve", ()))
        return cls(**values)

    def argv(self) -> list[str]:
        """The runner's flags for these options."""
        args = ["--max-steps", str(self.max_steps), "--max-wall-s", str(self.max_wall_s),
                "--max-tokens", str(self.max_tokens)]
        if self.endpoint:
            args += ["--endpoint", self.endpoint]
        if self.model:
            args += ["--model", self.model]
        for prefix in self.auto_approve:
            args += ["--auto-approve", prefix]
        return args + ["--mode", self.mode]


def status_of(report_status: str) -> str:
    """The session status for an :class:`AgentReport` status (caps are a finished run, not a failure)."""
    return {"stopped": "stopped", "error": "failed"}.get(report_status, "done")


def build_agent(root: Path, session_id: str, workdir: Path, options: RunOptions, store: SessionStore,
                stop: threading.Event, llm=None, mcp=None):
    """The Agent for this run (``llm`` injected by tests; else one for ``options``' endpoint; ``mcp``: the
    MCP servers, which the caller closes)."""
    from corolla.assistant.agent.loop import Agent, AgentConfig
    from corolla.assistant.agent.policy import CommandPolicy
    from corolla.assistant.llm import LLM, LLMConfig

    if llm is None:
        config = LLMConfig(max_tokens=options.max_tokens)
        if options.endpoint:
            config.endpoint = options.endpoint
        if options.model:
            config.model = options.model
        llm = LLM(config)
    policy = CommandPolicy(auto_approve=tuple(options.auto_approve), approve=None)
    config = AgentConfig(max_steps=options.max_steps, max_wall_s=options.max_wall_s, mode=options.mode)
    return Agent(llm, workdir, policy=policy, store=store, session_id=session_id, config=config, stop=stop,
                 mcp=mcp)


def run_agent(root: Path, session_id: str, options: RunOptions | None = None, *, stop: threading.Event | None = None,
              llm=None, store: SessionStore | None = None) -> dict:
    """Run the agent of session ``session_id`` in its worktree; returns the final meta changes
    (status, outcome, report, commit). Never raises for the agent's own failures: they end as
    status ``failed`` with the error in the meta and an ``error`` event."""
    store = store or SessionStore(root)
    session = store.get(session_id)
    meta = session.meta
    options = options or RunOptions.from_json(meta.get("options", {}))
    stop = stop or threading.Event()
    workdir = Path(meta["workdir"])
    store.update_meta(session_id, {"status": "running", "started": time.time()})
    store.add_event(session_id, "status", {"status": "running"})
    final: dict
    from corolla.assistant.mcp.hub import MCPHub

    hub = MCPHub.from_workspace(root, workspace=workdir)  # starts nothing until the agent's run does
    try:
        agent = build_agent(root, session_id, workdir, options, store, stop, llm=llm, mcp=hub)
        report = agent.run(meta["task"])
        final = {"status": status_of(report.status), "outcome": report.status, "report": report.to_json(),
                 "report_text": report.to_text()}
        if report.error:
            final["error"] = report.error
    except AssistantError as e:
        final = {"status": "stopped" if stop.is_set() else "failed", "error": str(e), "error_type": e.code}
        store.add_event(session_id, "error", {"type": e.code, "message": str(e)})
    except Exception as e:  # noqa: BLE001 - a bug must still end the session, not leave it "running"
        log.exception("agent %s failed", session_id)
        final = {"status": "failed", "error": f"{type(e).__name__}: {e}", "error_type": type(e).__name__}
        store.add_event(session_id, "error", {"type": type(e).__name__, "message": str(e)})
    finally:
        hub.close()  # no MCP server outlives the run
    return finish(store, session_id, final)


def finish(store: SessionStore, session_id: str, final: dict) -> dict:
    """Commit the worktree's changes on the agent's branch and record the final status (once: a run
    already finished, e.g. by the SIGTERM path, is left as it is)."""
    from corolla.assistant.agent import worktrees

    meta = store.get(session_id).meta
    if meta.get("status") in FINAL_STATUSES:
        return {"status": meta["status"]}
    try:
        title = meta.get("task", "").strip().splitlines()[0][:60] if meta.get("task", "").strip() else session_id
        commit = worktrees.commit_all(Path(meta["worktree"]), f"corolla agent {session_id}: {title}")
        final["commit"] = commit
    except (AssistantError, KeyError) as e:
        final.setdefault("error", f"could not commit the agent's changes: {e}")
    final["finished"] = time.time()
    # the event first: a follower that reads the status and then the events (routes._follow) and sees
    # the run finished must find its last event stored already
    store.add_event(session_id, "status", {"status": final["status"], "error": final.get("error")})
    store.update_meta(session_id, final)
    return final


# --- the detached process --------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc; psutil where there is no /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            import psutil
        except ImportError:
            return []
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    parents: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_descendants(pid: int | None = None) -> None:
    """SIGKILL the process groups of this process's descendants (the agent's running commands)."""
    own = os.getpgrp()
    for child in _children(pid or os.getpid()):
        try:
            group = os.getpgid(child)
            if group != own:
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corolla.assistant.agent.runner",
                                     description="Run one background agent (started by `corolla agent start`).")
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--session", required=True)
    parser.add_argument("--endpoint", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--max-wall-s", type=float, default=900.0)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--auto-approve", action="append", default=[])
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "openai"):  # one line per model request would drown the agent's own
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log.info("agent %s in %s (pid %d)", args.session, args.workspace, os.getpid())
    options = RunOptions(args.endpoint, args.model, args.max_steps, args.max_wall_s, args.max_tokens,
                         tuple(args.auto_approve), args.mode)
    root = args.workspace.resolve()
    store = SessionStore(root)
    stop = threading.Event()
    on_stop_signals(stop.set)  # and whatever happens below, the process is gone within the stop deadline
    worker = threading.Thread(target=run_agent, args=(root, args.session, options),
                              kwargs={"stop": stop, "store": store}, name="agent", daemon=True)
    worker.start()
    while worker.is_alive() and not stop.wait(0.5):
        pass
    if not worker.is_alive():
        return 0
    log.info("stop requested: letting the agent finish its step")
    worker.join(STOP_GRACE_S)
    if worker.is_alive():
        kill_descendants()
        worker.join(KILL_GRACE_S)
    if worker.is_alive():  # still waiting on the model: end the run here; the daemon thread dies with us
        log.info("the agent did not stop in time; recording it as stopped")
        store.add_event(args.session, "report", {"status": "stopped", "summary": "stopped before it finished"})
        finish(store, args.session, {"status": "stopped", "outcome": "stopped",
                                     "error": "stopped while waiting on the model"})
        sys.stdout.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
