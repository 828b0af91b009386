"""``corolla chat`` without a model: the coding assistant in the terminal, with sessions kept in
``.corolla/`` (resume them later), slash commands and edits you accept, reject or undo."""

from __future__ import annotations

import sys

from corolla.assistant.commands import COMMANDS
from corolla.assistant.errors import AssistantError
from corolla.cli.assistant import make_assistant, parse_file, print_diff, stream_turn

HELP = """\
Ask anything about the workspace, or use a command on the current file:
""" + "".join(f"  /{c.name:<9} {c.summary}\n" for c in COMMANDS.values()) + """\
  /file F[:A-B]  set the current file (and selected lines)      /files  show it
  /accept  /reject  the proposed edit        /undo  revert the last accepted edit
  /new  start a new session    /sessions  list them    /resume ID    /delete ID
  /help   /quit
Reference files in a question with #file:path or #file:path:10-20, the selected lines with #selection."""


def run_assistant_chat(args) -> int:
    with make_assistant(args, ask_tools=True) as assistant:  # closing it stops the MCP servers chat started
        return _chat(assistant, args)


def _chat(assistant, args) -> int:
    interactive = sys.stdin.isatty()
    session_id = args.session
    if session_id:
        assistant.store.get(session_id)
    current: tuple[str, tuple[int, int] | None] | None = None
    pending: str | None = None  # the proposed edit waiting for /accept or /reject
    if interactive:
        print(f"corolla assistant on {assistant.root} via {assistant.llm.config.endpoint}. /help for commands.")
    while True:
        try:
            line = input("› " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        word, _, rest = text.partition(" ")
        try:
            if word in ("/quit", "/exit"):
                break
            if word == "/help":
                print(HELP)
            elif word == "/new":
                session_id = assistant.store.create().id
                print(f"[new session {session_id}]")
            elif word == "/sessions":
                for s in assistant.store.list():
                    print(f"{s.id}  {s.kind:<6} {s.title}")
            elif word == "/resume":
                session_id = assistant.store.get(rest.strip()).id
                for m in assistant.store.messages(session_id)[-6:]:
                    print(f"[{m.role}] {m.content[:400]}")
            elif word == "/delete":
                assistant.store.get(rest.strip())
                assistant.store.delete(rest.strip())
                session_id = None if session_id == rest.strip() else session_id
                print(f"[deleted {rest.strip()}]")
            elif word == "/file":
                current = parse_file(rest.strip(), assistant.root)
                lines = f" lines {current[1][0]}-{current[1][1]}]" if current[1] else "]"
                print(f"[current file {current[0]}" + lines)
            elif word == "/files":
                print(f"[current file: {current[0] if current else 'none'}]")
            elif word in ("/accept", "/reject"):
                if pending is None:
                    print("[no edit is waiting]")
                elif word == "/accept":
                    proposal = assistant.accept(pending)
                    print(f"[applied to {', '.join(c.path for c in proposal.changes)}]")
                    pending = None
                else:
                    assistant.reject(pending)
                    print("[rejected: nothing changed]")
                    pending = None
            elif word == "/undo":
                edit_id, proposal = assistant.undo(session_id)
                print(f"[undid edit {edit_id}: {', '.join(c.path for c in proposal.changes)}]")
            else:
                state = assistant.state(current_file=current[0], selection=current[1], open_files=(current[0],)) \
                    if current else assistant.state()
                seen = stream_turn(assistant, text, state, session_id)
                session_id = seen["done"]["session_id"]
                if "edit" in seen:
                    print_diff(seen["edit"]["diff"])
                    pending = seen["edit"]["edit_id"]
                    print("[/accept to apply, /reject to drop]")
                elif "edit_error" in seen:
                    print(f"[no edit: {seen['edit_error']['error']['message']}]")
                elif "commit_message" in seen:
                    print(f"[commit message]\n{seen['commit_message']['text']}")
        except AssistantError as e:
            print(f"[error: {e}]")
    if session_id:
        print(f"[session {session_id}: resume with --session {session_id}]", file=sys.stderr)
    return 0
