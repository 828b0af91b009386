"""``corolla agent``: a coding agent that works on its own git branch while you keep working.

  corolla agent start "task" [--background] [--max-steps N] [--auto-approve PREFIX]...
  corolla agent list | show ID | logs ID [--follow] | stop ID | apply ID | discard ID

A foreground agent prints its steps as it goes (Ctrl-C stops it); a background one is a detached
process you follow with ``logs --follow``. Either way it edits a worktree at
``.corolla/worktrees/<id>`` on the branch ``corolla/agent-<id>``: your files change only on ``apply``.
"""

from __future__ import annotations

import json
import sys

from corolla.assistant.agent.modes import DEFAULT_MODE, MODES, MODES_HELP
from corolla.cli.assistant import add_endpoint, print_diff, workspace_of
from corolla.shutdown import STOP, kill_descendants, on_stop_signals

OUTPUT_LINES = 8  # lines of a tool's output shown per step


def register(sub) -> None:
    a = sub.add_parser("agent", help="run a coding agent on its own branch; review, apply or discard its work")
    asub = a.add_subparsers(dest="agent_command", metavar="ACTION", required=True)

    s = asub.add_parser("start", help="start an agent on a task")
    s.add_argument("task", help="what the agent should do")
    s.add_argument("--background", "-b", action="store_true",
                   help="run it as a detached process and return at once (follow with `corolla agent logs ID -f`)")
    s.add_argument("--max-steps", type=int, default=20, help="most tool calls before it must stop (default 20)")
    s.add_argument("--max-wall-s", type=float, default=900.0, help="longest run in seconds (default 900)")
    s.add_argument("--auto-approve", action="append", default=[], metavar="PREFIX",
                   help="also run commands starting with PREFIX without asking (repeatable); others outside "
                        "the read-only/test list are refused")
    s.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=MODES_HELP)
    add_endpoint(s)
    s.set_defaults(func=run_start)

    lst = asub.add_parser("list", help="the workspace's agents, newest first")
    add_endpoint(lst)
    lst.set_defaults(func=run_list)

    for name, text in (("show", "an agent's task, status, report and diff"),
                       ("logs", "an agent's steps"),
                       ("stop", "stop a running agent (its work so far stays on its branch)"),
                       ("apply", "apply an agent's changes to your working tree (refused on a conflict)"),
                       ("discard", "throw an agent's work away: remove its worktree and branch")):
        p = asub.add_parser(name, help=text)
        p.add_argument("id")
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="keep printing until the agent finishes")
            p.add_argument("--json", action="store_true", help="one JSON event per line")
        add_endpoint(p)
        p.set_defaults(func=globals()[f"run_{name}"])


def manager_of(args):
    from corolla.assistant.agent.background import AgentManager

    return AgentManager(workspace_of(args))


def options_of(args):
    from corolla.assistant.agent.runner import RunOptions

    return RunOptions(endpoint=args.endpoint, model=args.model, max_steps=args.max_steps,
                      max_wall_s=args.max_wall_s, max_tokens=args.max_tokens,
                      auto_approve=tuple(args.auto_approve), mode=args.mode)


# --- commands ---------------------------------------------------------------------------------------
def run_start(args) -> int:
    manager = manager_of(args)
    if args.api_key:
        manager.env = {"COROLLA_API_KEY": args.api_key}
    agent_id = manager.start(args.task, background=args.background, options=options_of(args))
    meta = manager.get(agent_id).meta
    if args.background:
        print(f"agent {agent_id} started on branch {meta['branch']} (log: {meta.get('log')})")
        print(f"follow it: corolla agent logs {agent_id} --follow; then show / apply / discard {agent_id}")
        return 0
    print(f"agent {agent_id} on branch {meta['branch']} (Ctrl-C stops it)", file=sys.stderr)
    # SIGTERM / Ctrl-C: the agent gets its stop event and a few seconds to finish its step and record
    # its end; then its command is killed and it is recorded as stopped (within the stop deadline)
    restore = on_stop_signals(lambda: manager.request_stop(agent_id))
    seq = 0
    try:
        for event in manager.follow(agent_id, until=lambda: STOP.requested):
            print_event(event.to_json())
            seq = event.seq
    finally:
        if not STOP.requested:
            restore()
    if not STOP.requested:
        return finished(agent_id, manager.wait(agent_id).meta)
    print("\nstopping the agent...", file=sys.stderr, flush=True)
    manager.close(min(AGENT_STOP_S, STOP.remaining(margin_s=2.0)))
    kill_descendants()  # the command it was running, if it did not stop in time
    for event in manager.events(agent_id, seq):
        print_event(event.to_json())
    return finished(agent_id, manager.get(agent_id).meta)


AGENT_STOP_S = 4.0  # on SIGTERM / Ctrl-C, how long a foreground agent may take to record its end


def finished(agent_id: str, meta: dict) -> int:
    status = meta.get("status")
    if meta.get("report_text"):
        print(meta["report_text"])
    if meta.get("error"):
        print(f"error: {meta['error']}", file=sys.stderr)
    print(f"[agent {agent_id}: {status}; review with `corolla agent show {agent_id}`, then apply or discard]",
          file=sys.stderr)
    return 0 if status in ("done", "stopped") else 1


def run_list(args) -> int:
    manager = manager_of(args)
    agents = manager.list()
    if not agents:
        print("no agents in this workspace (start one with `corolla agent start \"task\"`)")
    for s in agents:
        print(f"{s.id}  {s.meta.get('status', '?'):<9} {s.meta.get('branch', '')}  {s.title}")
    return 0


def run_show(args) -> int:
    info = manager_of(args).show(args.id)
    print(f"# agent {info['id']}: {info['status']}")
    print(f"task: {info['task']}")
    print(f"branch: {info['branch']} (from {str(info['base'])[:12]})")
    if info.get("report_text"):
        print(f"\n{info['report_text']}")
    if info.get("error"):
        print(f"\nerror: {info['error']}")
    if info["diff"].strip():
        print()
        print_diff(info["diff"])
    else:
        print("\n(no changes)")
    return 0


def run_logs(args) -> int:
    manager = manager_of(args)
    events = manager.follow(args.id) if args.follow else manager.events(args.id)
    try:
        for event in events:
            print(json.dumps(event.to_json()) if args.json else format_event(event.to_json()), flush=True)
    except KeyboardInterrupt:
        return 130
    return 0


def run_stop(args) -> int:
    session = manager_of(args).stop(args.id)
    print(f"agent {args.id}: {session.meta.get('status')} (its work so far is on {session.meta.get('branch')})")
    return 0


def run_apply(args) -> int:
    result = manager_of(args).apply(args.id)
    print(f"applied agent {args.id} to {', '.join(result['files'])}")
    return 0


def run_discard(args) -> int:
    manager_of(args).discard(args.id)
    print(f"discarded agent {args.id}: its worktree and branch are gone")
    return 0


# --- printing steps -----------------------------------------------------------------------------------
def print_event(event: dict) -> None:
    text = format_event(event)
    if text:
        print(text, flush=True)


def format_event(event: dict) -> str:
    """One stored event as a few readable lines."""
    kind, data = event["type"], event.get("data") or {}
    seq = f"[{event['seq']:>3}]"
    if kind == "task":
        return f"{seq} task: {data.get('task', '')}"
    if kind == "assistant":
        text = data.get("text", "") if isinstance(data, dict) else str(data)
        return f"{seq} model: {text.strip()}" if text.strip() else ""
    if kind == "tool_call":
        args = json.dumps(data.get("arguments", {}), ensure_ascii=False)
        return f"{seq} -> {data.get('name')}({args[:200] + ('…' if len(args) > 200 else '')})"
    if kind == "tool_result":
        lines = str(data.get("output", "")).splitlines()
        shown = "\n".join("      " + line for line in lines[:OUTPUT_LINES])
        more = f"\n      [... {len(lines) - OUTPUT_LINES} more lines]" if len(lines) > OUTPUT_LINES else ""
        head = f"{seq} <- {data.get('name')} {'ok' if data.get('ok') else 'FAILED'}"
        return head + (f"\n{shown}{more}" if lines else "")
    if kind == "edit":
        return f"{seq} edited {', '.join(data.get('files', []))}\n{data.get('diff', '').rstrip()}"
    if kind == "report":
        return f"{seq} report: {data.get('status', '')} {str(data.get('summary', '')).strip()}"
    if kind == "status":
        return f"{seq} status: {data.get('status')}" + (f" ({data['error']})" if data.get("error") else "")
    if kind == "error":
        return f"{seq} error: {data.get('message', data)}"
    return f"{seq} {kind}: {json.dumps(data, ensure_ascii=False)[:300]}"


__all__ = ["format_event", "register"]
