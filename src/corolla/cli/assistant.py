"""The coding assistant in the terminal: ``corolla ask | explain | edit | fix | doc | tests | harden |
review | commit-msg | sessions``, ``corolla chat`` without a model, and ``corolla assistant serve``.

Every command talks to a model through an OpenAI-compatible endpoint (default: the local swarm's API
that ``make run`` serves) and keeps its conversation in ``.corolla/`` of the workspace.
``corolla fix FILE:A-B --check CMD`` keeps the fix only when CMD, which reproduces the bug, passes with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from corolla.assistant.agent.modes import MODES, MODES_HELP, WORKFLOW_MODE
from corolla.assistant.commands import DEFAULT_REVIEW_STYLE, REVIEW_TASKS
from corolla.assistant.edits.types import FORMATS
from corolla.assistant.errors import AssistantError, EditError

FILE_SPEC = re.compile(r"^(?P<path>.+?)(?::(?P<a>\d+)(?:[-:](?P<b>\d+))?)?$")


def add_endpoint(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("assistant")
    g.add_argument("--endpoint", default=None,
                   help="OpenAI-compatible endpoint (default $COROLLA_ENDPOINT or http://127.0.0.1:8000/v1, "
                        "the local swarm's API that `make run` serves)")
    g.add_argument("--model", default=None, help="model name at the endpoint (default: its first model)")
    g.add_argument("--api-key", default=None, help="key for the endpoint (default $COROLLA_API_KEY)")
    g.add_argument("--workspace", default=None,
                   help="the project's root (default: the git work tree around the current folder, else it)")
    g.add_argument("--context-tokens", type=int, default=2000, help="token budget of the gathered context")
    g.add_argument("--max-tokens", type=int, default=1024, help="longest reply, in tokens")
    g.add_argument("--session", default=None, help="continue this session (see `corolla sessions list`)")


def add_edit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default=None, choices=FORMATS,
                   help="how the model writes edits (default: the format that scored best, see README)")
    p.add_argument("--yes", "-y", action="store_true", help="apply the proposed edit without asking")


def add_structure_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-structure", action="store_true",
                   help="let the edit remove, rename or re-nest functions, classes and methods other code uses "
                        "(refused otherwise, unless the request asks for it by name, e.g. 'rename f to g')")


def add_policy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("commands the agent may run")
    g.add_argument("--auto-approve", action="append", default=[], metavar="PREFIX",
                   help="run commands starting with PREFIX without asking (repeatable); other commands outside "
                        "the allow-list are asked for in a terminal and refused otherwise")
    g.add_argument("--max-steps", type=int, default=20, help="most model replies per agent run (default 20)")
    g.add_argument("--command-timeout", type=float, default=120.0, help="seconds a command may run (default 120)")
    g.add_argument("--mode", choices=MODES, default=WORKFLOW_MODE,
                   help=f"how the agent works (default {WORKFLOW_MODE}, the one measured better): "
                        + MODES_HELP.replace("auto (default)", "auto"))


def add_tool_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--auto-approve", action="append", default=[], metavar="PREFIX",
                   help="MCP tools chat may call without asking: mcp__SERVER__TOOL, mcp__SERVER (all its tools) "
                        "or mcp (all); repeatable. Tools of servers marked trusted in .corolla/mcp.json always "
                        "run; others are asked for in a terminal and refused otherwise")


def tool_policy(args, ask: bool = False):
    """Which MCP tools chat may call: the ``--auto-approve`` ones, and (``ask`` in a terminal) those a person allows."""
    from corolla.assistant.agent.policy import CommandPolicy

    def approve(call: str) -> bool:
        return input(f"call {call}? [y/N] ").strip().lower() in ("y", "yes")

    return CommandPolicy(auto_approve=tuple(getattr(args, "auto_approve", ()) or ()),
                         approve=approve if ask and sys.stdin.isatty() else None)


def command_policy(args):
    """The command policy from flags: ask a person when there is a terminal, refuse otherwise."""
    from corolla.assistant.agent.policy import CommandPolicy

    def ask(command: str) -> bool:
        return input(f"run `{command}`? [y/N] ").strip().lower() in ("y", "yes")

    return CommandPolicy(auto_approve=tuple(args.auto_approve), approve=ask if sys.stdin.isatty() else None,
                         timeout_s=args.command_timeout)


def register(sub) -> None:
    a = sub.add_parser("ask", help="ask the coding assistant a question about the workspace")
    a.add_argument("question")
    a.add_argument("--file", default=None, help="the file the question is about (FILE or FILE:A-B)")
    a.add_argument("--lines", default=None, help="lines A:B of --file")
    add_tool_flags(a)
    add_endpoint(a)
    a.set_defaults(func=run_ask)

    e = sub.add_parser("explain", help="explain a file or lines of it (FILE[:A-B])")
    e.add_argument("file", help="FILE or FILE:A-B")
    e.add_argument("question", nargs="?", default="", help="what to focus on")
    add_endpoint(e)
    e.set_defaults(func=run_command, command="explain")

    ed = sub.add_parser("edit", help="change a file (FILE[:A-B]) as asked; shows the diff and asks before applying")
    ed.add_argument("file", help="FILE or FILE:A-B")
    ed.add_argument("-m", "--message", required=True, help="what to change")
    add_edit_flags(ed)
    add_structure_flag(ed)
    add_endpoint(ed)
    ed.set_defaults(func=run_edit)

    for name, text in (("fix", "fix a bug in FILE[:A-B], given the error (--error)"),
                       ("doc", "add docstrings and comments to FILE[:A-B]"),
                       ("tests", "write tests for FILE[:A-B] in the project's test framework"),
                       ("harden", "add error handling to FILE[:A-B] in the project's style")):
        c = sub.add_parser(name, help=text)
        c.add_argument("file", help="FILE or FILE:A-B")
        c.add_argument("request", nargs="?", default="", help="anything to add to the request")
        if name == "fix":
            c.add_argument("--error", action="append", default=[], help="the error or diagnostic text (repeatable)")
            c.add_argument("--check", default=None, metavar="CMD",
                           help="a command that reproduces the bug (it must fail now): it runs before and after the "
                                "edit, which is kept only if CMD then passes; a failure goes back to the model once")
            c.add_argument("--check-timeout", type=float, default=120.0, metavar="S",
                           help="seconds CMD may run (default 120)")
        if name == "tests":
            c.add_argument("--until-green", action="store_true",
                           help="run the tests, feed failures back and fix tests or code until they pass")
            c.add_argument("--rounds", type=int, default=3, help="rounds for --until-green (default 3)")
            add_policy_flags(c)
        add_edit_flags(c)
        add_structure_flag(c)
        add_endpoint(c)
        c.set_defaults(func=run_command, command=name)

    rf = sub.add_parser("refactor", help="refactor as asked, with the project's tests run before and after",
                        description="Runs the tests, lets the agent make the change, runs the tests again; if they "
                                    "were green and turned red it tries to fix them, otherwise reverts every change.")
    rf.add_argument("request", help="what to change")
    rf.add_argument("--fix-rounds", type=int, default=1, help="attempts to fix tests it broke (default 1)")
    add_policy_flags(rf)
    add_endpoint(rf)
    rf.set_defaults(func=run_refactor)

    r = sub.add_parser("review", help="review staged, unstaged or branch changes")
    r.add_argument("scope", nargs="?", default="auto", choices=["auto", "staged", "unstaged", "all", "branch"],
                   help="what to review (default: staged if anything is staged, else unstaged)")
    r.add_argument("--base", default=None, help="base branch for `review branch` (default main/master)")
    r.add_argument("--style", default=None, choices=sorted(REVIEW_TASKS),
                   help=f"how the model is asked (default {DEFAULT_REVIEW_STYLE}: BUG or OK for each changed line; "
                        "list: FILE:LINE findings or 'No bugs found.'; reasoned: a sentence on the change first)")
    add_endpoint(r)
    r.set_defaults(func=run_command, command="review", file=None)

    cm = sub.add_parser("commit-msg", help="write a commit message for the staged changes (printed alone)")
    add_endpoint(cm)
    cm.set_defaults(func=run_command, command="commit", file=None)

    s = sub.add_parser("sessions", help="list, show or delete the assistant's sessions")
    s.add_argument("action", nargs="?", default="list", choices=["list", "show", "delete"])
    s.add_argument("id", nargs="?", default=None)
    add_endpoint(s)
    s.set_defaults(func=run_sessions)

    srv = sub.add_parser("assistant", help="the assistant's service for editors")
    ssub = srv.add_subparsers(dest="assistant_command", metavar="ACTION", required=True)
    serve = ssub.add_parser("serve", help="serve the assistant over HTTP for editors (JSON + SSE)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--token", default=os.environ.get("COROLLA_ASSISTANT_TOKEN"),
                       help="require `Authorization: Bearer TOKEN` (default $COROLLA_ASSISTANT_TOKEN)")
    serve.add_argument("--allow-origin", action="append", default=[], help="a browser origin allowed to call it")
    add_tool_flags(serve)
    add_endpoint(serve)
    add_edit_flags(serve)
    serve.set_defaults(func=run_serve)


# --- building the assistant from flags ------------------------------------------------------------
def workspace_of(args) -> Path:
    if args.workspace:
        return Path(args.workspace).expanduser().resolve()
    from corolla.assistant import git

    cwd = Path.cwd()
    try:
        return Path(git.git(cwd, "rev-parse", "--show-toplevel").strip()).resolve()
    except AssistantError:
        return cwd.resolve()


def make_assistant(args, ask_tools: bool = False):
    """The assistant the flags describe; ``ask_tools``: a person at a terminal approves MCP tool calls in chat.
    Close it (its MCP servers) when done."""
    from corolla.assistant.core import Assistant, AssistantConfig
    from corolla.assistant.llm import LLM, LLMConfig
    from corolla.models.resolve import local_tokenizer

    config = LLMConfig(max_tokens=args.max_tokens)
    for name in ("endpoint", "model", "api_key"):
        if getattr(args, name, None):
            setattr(config, name, getattr(args, name))
    assistant_config = AssistantConfig(context_tokens=args.context_tokens)
    if getattr(args, "format", None):
        assistant_config.edit_format = args.format
    if getattr(args, "style", None):
        assistant_config.review_style = args.style
    return Assistant(LLM(config), workspace_of(args), config=assistant_config, find_tokenizer=local_tokenizer,
                     tool_policy=tool_policy(args, ask=ask_tools))


def parse_file(spec: str, root: Path, lines: str | None = None) -> tuple[str, tuple[int, int] | None]:
    """``FILE``, ``FILE:A-B`` or ``FILE:A`` -> (workspace-relative path, line range)."""
    match = FILE_SPEC.match(spec)
    path, a, b = match["path"], match["a"], match["b"]
    if not Path(path).exists() and Path(spec).exists():  # a file whose name has a colon
        path, a, b = spec, None, None
    if lines:
        a, _, b = lines.replace("-", ":").partition(":")
    file = Path(path).expanduser()
    file = (file if file.is_absolute() else Path.cwd() / file).resolve()
    if not file.is_relative_to(root):
        raise AssistantError(f"{path} is not inside the workspace {root} (pass --workspace)")
    if not file.is_file():
        raise AssistantError(f"no file {path}")
    selection = None
    if a:
        first, last = int(a), int(b or a)
        if first < 1 or last < first:
            raise AssistantError(f"bad line range {first}-{last}: lines count from 1 and A <= B")
        selection = (first, last)
    return file.relative_to(root).as_posix(), selection


def editor_state(assistant, args, spec: str | None, lines: str | None = None, diagnostics=()):
    if not spec:
        return assistant.state(diagnostics=tuple(diagnostics))
    path, selection = parse_file(spec, assistant.root, lines)
    return assistant.state(current_file=path, selection=selection, open_files=(path,), diagnostics=tuple(diagnostics))


# --- running commands -----------------------------------------------------------------------------
def stream_turn(assistant, text: str, state, session_id: str | None, out=None, allow_structure: bool = False) -> dict:
    """Print a turn's reply as it streams; returns the last edit / commit / error events seen."""
    out = out or sys.stdout
    seen: dict = {}
    calls: dict[str, str] = {}  # tool call id -> the call as shown
    for event in assistant.respond(text, state, session_id, allow_structure=allow_structure):
        kind = event["type"]
        if kind == "delta":
            out.write(event["text"])
            out.flush()
        elif kind == "context" and event["parts"]:
            labels = ", ".join(p["label"] for p in event["parts"])
            print(f"[context: {labels}; {event['used_tokens']}/{event['budget_tokens']} tokens]", file=sys.stderr)
        elif kind == "warning":
            print(f"[warning: {event['message']}]", file=sys.stderr)
        elif kind == "tool_result":
            print(tool_line(calls.get(event["id"], event["name"]), event), file=sys.stderr)
        elif kind == "tool_call":
            calls[event["id"]] = event["call"]
        elif kind in ("edit", "edit_error", "commit_message", "done", "session"):
            seen[kind] = event
    out.write("\n")
    return seen


def tool_line(call: str, result: dict, width: int = 300) -> str:
    """One line for a tool call of chat: ``[tool mcp__notes__add {"a": 2} -> 42]`` (or why it failed)."""
    first = next((line for line in result["output"].splitlines() if line.strip()), "")
    if len(first) > width:
        first = first[:width] + "..."
    return f"[tool {call} -> {first}]" if result["ok"] else f"[tool {call}: {first}]"


def run_ask(args) -> int:
    with make_assistant(args, ask_tools=True) as assistant:
        state = editor_state(assistant, args, args.file, args.lines)
        seen = stream_turn(assistant, args.question, state, args.session)
    print(f"[session {seen['done']['session_id']}]", file=sys.stderr)
    return 0


def run_command(args) -> int:
    if getattr(args, "until_green", False):
        return run_until_green(args)
    if getattr(args, "check", None):
        return run_checked_fix(args)
    assistant = make_assistant(args)
    state = editor_state(assistant, args, args.file, None, getattr(args, "error", ()))
    text = f"/{args.command} " + (getattr(args, "request", "") or getattr(args, "question", "") or "")
    if args.command == "review":
        text = f"/review {args.scope}" + (f" {args.base}" if args.base else "")
    if args.command == "commit":
        seen = stream_turn(assistant, text, state, args.session, out=sys.stderr)
        print(seen["commit_message"]["text"])
        return 0
    edits = args.command in ("fix", "doc", "tests", "harden")
    seen = stream_turn(assistant, text, state, args.session, out=sys.stderr if edits else sys.stdout,
                       allow_structure=getattr(args, "allow_structure", False))
    if not edits:
        return 0
    if "edit_error" in seen:
        print(f"refused: {seen['edit_error']['error']['message']}", file=sys.stderr)
        return 2
    return review_edit(assistant, seen["edit"], args.yes)


def run_checked_fix(args) -> int:
    """``corolla fix FILE --check CMD``: the fix is kept only if CMD, failing before, passes with it."""
    from corolla.assistant.check import CheckConfig, checked_fix, describe, passed

    assistant = make_assistant(args)
    state = editor_state(assistant, args, args.file, None, args.error)
    config = CheckConfig(args.check, timeout_s=args.check_timeout)

    def report(when: str, result) -> None:
        verdict = "passes" if passed(result) else f"fails ({describe(result)})"
        print(f"[check {'before the edit' if when == 'before' else 'with the edit'}] `{args.check}` {verdict}",
              file=sys.stderr)

    try:
        fixed = checked_fix(assistant, args.request, state, config, args.session,
                            allow_structure=args.allow_structure, on_result=report)
    except EditError as e:  # refused, or CMD still failed after the model's second try: the file is as it was
        print(f"refused: {e}", file=sys.stderr)
        return 2
    if fixed.outcome is None:
        print(f"`{args.check}` already passes before any edit, so it cannot show whether a fix works; nothing was "
              "changed. Pass a command that fails because of the bug.", file=sys.stderr)
        return 1
    print(f"[check] the edit makes `{args.check}` pass", file=sys.stderr)
    return review_edit(assistant, fixed.outcome.to_json(), args.yes)


def run_until_green(args) -> int:
    from corolla.assistant.agent.loop import AgentConfig
    from corolla.assistant.agent.workflows import tests_until_green

    assistant = make_assistant(args)
    path, _ = parse_file(args.file, assistant.root)
    report = tests_until_green(assistant.llm, assistant.root, path, rounds=args.rounds, policy=command_policy(args),
                               store=assistant.store, config=AgentConfig(max_steps=args.max_steps, mode=args.mode),
                               on_event=print_step)
    print(report.to_text())
    return 0 if report.status == "green" else 1


def run_refactor(args) -> int:
    from corolla.assistant.agent.loop import AgentConfig
    from corolla.assistant.agent.workflows import refactor

    assistant = make_assistant(args)
    report = refactor(assistant.llm, assistant.root, args.request, policy=command_policy(args), store=assistant.store,
                      config=AgentConfig(max_steps=args.max_steps, mode=args.mode), fix_rounds=args.fix_rounds,
                      on_event=print_step)
    print(report.to_text())
    return 0 if report.status in ("green", "untested") else 1


def print_step(event_type: str, data) -> None:
    """One line on stderr per agent step, so a person sees what it is doing."""
    if event_type == "tool_call":
        print(f"→ {data.get('name')} {json.dumps(data.get('arguments'))[:160]}", file=sys.stderr)
    elif event_type == "tool_result":
        first = (str(data.get("output") or "").splitlines() or [""])[0]
        print(f"  {'ok' if data.get('ok') else 'failed'}: {first[:160]}", file=sys.stderr)
    elif event_type in ("tests", "reverted", "refused"):
        print(f"[{event_type}] {json.dumps(data)[:200]}", file=sys.stderr)


def run_edit(args) -> int:
    assistant = make_assistant(args)
    state = editor_state(assistant, args, args.file)
    try:
        outcome = assistant.propose_edit(args.message, state, args.session, args.format,
                                         allow_structure=args.allow_structure)
    except EditError as e:  # the model's reply could not be applied: nothing was changed
        print(f"refused: {e}", file=sys.stderr)
        return 2
    return review_edit(assistant, outcome.to_json(), args.yes)


def review_edit(assistant, edit: dict, yes: bool) -> int:
    """Show the diff, ask (unless --yes), apply atomically or reject."""
    print_diff(edit["diff"])
    for note in edit.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    if not yes:
        if not sys.stdin.isatty():
            assistant.reject(edit["edit_id"])
            print("not applied: pass --yes to apply without asking", file=sys.stderr)
            return 1
        answer = input("apply this edit? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            assistant.reject(edit["edit_id"])
            print("rejected: nothing changed", file=sys.stderr)
            return 1
    assistant.accept(edit["edit_id"])
    print(f"applied to {', '.join(edit['files'])} (undo: corolla chat, then /undo)", file=sys.stderr)
    return 0


def print_diff(diff: str) -> None:
    from rich.console import Console
    from rich.syntax import Syntax

    console = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    if console.is_terminal:
        console.print(Syntax(diff, "diff", theme="ansi_dark", background_color="default"))
    else:
        sys.stdout.write(diff if diff.endswith("\n") else diff + "\n")


def run_sessions(args) -> int:
    from corolla.assistant.sessions import SessionStore

    store = SessionStore(workspace_of(args))
    if args.action == "list":
        for s in store.list():
            print(f"{s.id}  {s.kind:<6} {len(store.messages(s.id)):>3} messages  {s.title}")
        return 0
    if not args.id:
        raise AssistantError(f"`corolla sessions {args.action}` needs a session id")
    if args.action == "delete":
        store.get(args.id)
        store.delete(args.id)
        print(f"deleted {args.id}")
        return 0
    session = store.get(args.id)
    print(f"# {session.title or session.id} ({session.kind})")
    for m in store.messages(args.id):
        print(f"\n[{m.role}]\n{m.content}")
    for e in store.edits(args.id):
        print(f"\n[edit {e.id}: {e.status}]\n{e.proposal.get('proposal', {}).get('diff', '')}")
    return 0


def run_serve(args) -> int:
    from corolla.api.server import serve_forever
    from corolla.assistant.service import create_service
    from corolla.shutdown import STOP, kill_descendants

    assistant = make_assistant(args)
    app = create_service(assistant, token=args.token, allow_origins=tuple(args.allow_origin))
    # SIGTERM / Ctrl-C: open streams end with an error event, other requests with a 503
    serve_forever(app, args.host, args.port, on_started=lambda base: print(
        f"assistant service for {assistant.root}: {base}", flush=True))
    app.state.agents.close(min(AGENT_CLOSE_S, STOP.remaining(margin_s=2.0)))  # agents run in this process stop
    assistant.close()  # the MCP servers chat started
    kill_descendants()  # the commands they were running; background agents' runners are spared
    return 0


AGENT_CLOSE_S = 3.0  # on a stop, how long agents running in the service may take to record their end
