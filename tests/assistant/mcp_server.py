"""A real MCP server for the tests, written with the official SDK (``mcp``'s ``MCPServer``, FastMCP in mcp 1.x).

    python tests/assistant/mcp_server.py                 # stdio
    python tests/assistant/mcp_server.py --http          # streamable HTTP on 127.0.0.1, a free port;
                                                         # prints "READY http://127.0.0.1:PORT/mcp"

Tools: ``add(a, b)``, ``read_note(name)``, ``slow(seconds)`` (sleeps), ``huge(chars)`` (a long text with
markers at both ends), ``fail(message)`` (reports a failure), ``workdir()`` (its
current folder), ``crash()`` (the process exits mid-call).
With ``$MCP_TEST_LOG`` set, the server appends ``start PID`` when it starts and ``call NAME ARGS`` for
each call to that file, so a test can tell what ran (and which process to look for afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

NOTES = {"todo": "buy milk", "ideas": "an MCP server for the tests"}

server = MCPServer("corolla-test", instructions="A small server for corolla's tests.", log_level="WARNING")


def _log(line: str) -> None:
    path = os.environ.get("MCP_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _called(tool: str, **args) -> None:
    _log(f"call {tool} {json.dumps(args, sort_keys=True)}")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    _called("add", a=a, b=b)
    return a + b


@server.tool()
def read_note(name: str) -> str:
    """Read one of the notes by name (todo, ideas)."""
    _called("read_note", name=name)
    if name not in NOTES:
        raise ToolError(f"no note named {name!r}; the notes are {', '.join(sorted(NOTES))}")
    return NOTES[name]


@server.tool()
def slow(seconds: float) -> str:
    """Sleep, then say so."""
    _called("slow", seconds=seconds)
    time.sleep(seconds)
    return f"slept {seconds} s"


@server.tool()
def huge(chars: int) -> str:
    """A long text: HEAD-MARKER, then filler, then TAIL-MARKER."""
    _called("huge", chars=chars)
    return "HEAD-MARKER " + "x" * chars + " TAIL-MARKER"


@server.tool()
def fail(message: str) -> str:
    """Always fails, with this message."""
    _called("fail", message=message)
    raise ToolError(message)


@server.tool()
def workdir() -> str:
    """The folder the server runs in."""
    _called("workdir")
    return os.getcwd()


@server.tool()
def crash() -> str:
    """The server process exits in the middle of this call."""
    _called("crash")
    os._exit(3)


def serve_http() -> None:
    """Streamable HTTP on 127.0.0.1 on a port the kernel picks (bound here first: no race for a free port)."""
    import anyio
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until uvicorn serves: READY is true when printed
    port = sock.getsockname()[1]
    app = server.streamable_http_app(host="127.0.0.1")
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))

    async def main() -> None:
        print(f"READY http://127.0.0.1:{port}/mcp", flush=True)
        await uv.serve(sockets=[sock])

    anyio.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="streamable HTTP on 127.0.0.1 (default: stdio)")
    args = parser.parse_args(argv)
    _log(f"start {os.getpid()}")
    if args.http:
        serve_http()
    else:
        server.run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
