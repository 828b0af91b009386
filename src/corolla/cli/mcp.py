"""``corolla mcp list``: the MCP servers a workspace configures, started once to show their tools.

  corolla mcp list [--root DIR] [--json] [--start-timeout S]

Reads ``.corolla/mcp.json`` and ``.vscode/mcp.json`` of the workspace, starts every server (all at
once), prints each with its transport, its command or URL and its tools (name as the agent calls it,
arguments, the first line of the description), or why it could not be used: a bad entry, a command
not found, a server that exited (with the end of its stderr), no answer in time, a refused
connection. Then it stops them. Exit status: 0 when every enabled server started (or none is
configured), 3 when one could not be used: the listing worked, the configuration needs a look.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

INCOMPLETE = 3  # some server could not be used (as `corolla swarm list` says when a block has no server)


def register(sub) -> None:
    m = sub.add_parser("mcp", help="the MCP servers the assistant's agent can use (.corolla/mcp.json, "
                                   ".vscode/mcp.json)")
    msub = m.add_subparsers(dest="mcp_command", metavar="ACTION", required=True)
    lst = msub.add_parser("list", help="start each configured MCP server and show its tools, or why it cannot start",
                          description="Reads .corolla/mcp.json and .vscode/mcp.json of the workspace, starts every "
                                      "server at once, prints each with its transport, command or URL and tools, "
                                      "or why it could not be used, then stops them. Exit status 0 when every "
                                      "enabled server started (or none is configured), 3 when one could not.")
    lst.add_argument("--root", "--workspace", dest="root", default=None, metavar="DIR",
                     help="the workspace (default: the git work tree around the current folder, else it)")
    lst.add_argument("--json", action="store_true", help="print the servers and their tools as JSON")
    lst.add_argument("--start-timeout", type=float, default=30.0, metavar="S",
                     help="seconds a server may take to start and list its tools (default 30)")
    lst.set_defaults(func=run_list)


def _root(args) -> Path:
    from corolla.cli.assistant import workspace_of

    return workspace_of(argparse.Namespace(workspace=args.root))


def run_list(args) -> int:
    from corolla.assistant.mcp.config import CONFIG_FILES
    from corolla.assistant.mcp.hub import MCPHub, MCPOptions

    root = _root(args)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # what the log would say is printed below
        logging.getLogger("corolla.assistant.mcp").setLevel(logging.ERROR)
    with MCPHub.from_workspace(root, options=MCPOptions(start_timeout_s=args.start_timeout)) as hub:
        statuses = hub.start() if hub.configured else []
        files = list(hub.config.files)
    failed = any(s.failed for s in statuses)
    if args.json:
        print(json.dumps({"root": str(root), "files": files, "servers": [s.to_json() for s in statuses]}, indent=2))
        return INCOMPLETE if failed else 0
    from rich.console import Console

    console = Console(highlight=False)
    if not statuses:
        looked = " or ".join(CONFIG_FILES)
        console.print(f"no MCP servers configured in {root} (looked for {looked}); for example, in "
                      f'{CONFIG_FILES[0]}: {{"servers": {{"notes": {{"command": "python", "args": ["server.py"]}}}}}}')
        return 0
    console.print(render(root, files, statuses))
    return INCOMPLETE if failed else 0


def render(root: Path, files: list[str], statuses):
    """The servers as a rich tree: one branch per server, one leaf per tool (or the reason it failed)."""
    from rich.markup import escape
    from rich.tree import Tree

    usable = sum(s.state == "ready" for s in statuses)
    tree = Tree(f"[bold]MCP servers[/bold] of {escape(str(root))} ({escape(', '.join(files))}): "
                f"{usable} of {len(statuses)} ready")
    for s in statuses:
        colour = {"ready": "green", "disabled": "dim"}.get(s.state, "red")
        state = "FAILED" if s.state in ("failed", "invalid") else s.state
        count = f", {len(s.tools)} tool{'s' if len(s.tools) != 1 else ''}" if s.state == "ready" else ""
        target = f"  {escape(s.target)}" if s.target else ""
        branch = tree.add(f"[bold]{escape(s.name)}[/bold]  {escape(s.transport)}{target}  "
                          f"[{colour}]{state}{count}[/{colour}]  [dim]({escape(s.source)})[/dim]")
        if s.error:
            branch.add(f"[red]{escape(s.error_type or 'error')}:[/red] {escape(s.error)}")
        for note in s.notes:
            branch.add(f"[yellow]note:[/yellow] {escape(note)}")
        for t in s.tools:
            props = t.input_schema.get("properties") if isinstance(t.input_schema.get("properties"), dict) else {}
            required = set(t.input_schema.get("required") or ())
            params = ", ".join(p if p in required else f"{p}?" for p in props)
            first = (t.description.strip().splitlines() or [""])[0]
            if len(first) > 100:
                first = first[:100] + "…"
            trusted = "  [dim](trusted)[/dim]" if t.trusted else ""
            branch.add(f"{escape(t.qualified)}({escape(params)}){': ' + escape(first) if first else ''}{trusted}")
    return tree


__all__ = ["register", "render"]
