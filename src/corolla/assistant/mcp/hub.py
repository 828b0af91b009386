"""Sessions with the configured MCP servers, for code that is not async (the agent's loop, the CLI).

:class:`MCPHub` talks to the servers through the official SDK (``mcp``: its :class:`mcp.Client` over
the stdio or the streamable HTTP transport); the protocol is the SDK's, never written here. The SDK
is async, so a hub runs one event loop in a thread of its own (an anyio blocking portal) and every
server one task in it, which holds the server's session from the handshake to the close (an anyio
context must be left by the task that entered it). Synchronous callers wait on that loop with
deadlines.

- Lazy: nothing starts until :meth:`MCPHub.start` (or :meth:`MCPHub.tools`); a hub of a workspace
  without servers never starts a thread.
- Servers start at once, each within ``start_timeout_s``; one that cannot start (command not found,
  exited, no answer, connection refused) is a :class:`ServerStatus` with the reason and the end of
  its stderr, and the others are used.
- A tool call has a deadline (the server's ``timeout_s``, else ``call_timeout_s``); a server that dies
  during a call is a :class:`MCPServerGoneError`, and its later calls fail at once the same way.
- :meth:`MCPHub.close` ends every session: a stdio server's stdin is closed, then it is terminated
  and killed with its process group if it lingers (the SDK's shutdown), so no process outlives it.

A tool is offered to the model as ``mcp__<server>__<tool>`` (Claude Code's naming): OpenAI function
names allow ``[A-Za-z0-9_-]{1,64}``, so other characters become ``_`` and a long name ends in a hash.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corolla.assistant.mcp.config import MCPConfig, ServerSpec, load_config
from corolla.assistant.mcp.errors import (
    MCPCallError,
    MCPError,
    MCPServerGoneError,
    MCPStartError,
    MCPTimeoutError,
)

log = logging.getLogger(__name__)

PREFIX = "mcp"
MAX_NAME_CHARS = 64  # OpenAI's limit on a function name
CALL_GRACE_S = 5.0  # past a call's deadline, how long the caller waits for the loop to give up on it
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_CONNECTION_CLOSED, _REQUEST_TIMEOUT = -32000, -32001  # the SDK's JSON-RPC error codes (mcp.types)


@dataclass
class MCPOptions:
    """The hub's limits (a server's ``timeout_s`` in the configuration overrides ``call_timeout_s``)."""

    start_timeout_s: float = 30.0  # from spawning/connecting to the end of the tool listing
    call_timeout_s: float = 120.0  # the longest tool call
    close_timeout_s: float = 10.0  # for the servers to end their sessions before they are cancelled
    stderr_tail_chars: int = 1500  # of a stdio server's stderr, shown when it fails


@dataclass(frozen=True)
class ToolInfo:
    """A tool of a server: ``name`` is the server's, ``qualified`` what the model calls."""

    server: str
    name: str
    qualified: str
    description: str
    input_schema: dict
    trusted: bool = False  # its server is trusted: called without asking

    def to_json(self) -> dict:
        return {"server": self.server, "name": self.name, "qualified": self.qualified,
                "description": self.description, "input_schema": self.input_schema, "trusted": self.trusted}


@dataclass
class ServerStatus:
    """Where a configured server stands.

    ``state``: ``not started``, ``starting``, ``ready``, ``failed`` (could not start), ``stopped`` (it
    exited or dropped the connection after starting), ``closed`` (by :meth:`MCPHub.close`), ``invalid``
    (its configuration entry cannot be used) or ``disabled``.
    """

    name: str
    transport: str
    target: str
    source: str
    state: str = "not started"
    error: str = ""
    error_type: str = ""
    tools: list[ToolInfo] = field(default_factory=list)
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.state in ("failed", "stopped", "invalid")

    def to_json(self) -> dict:
        return {"name": self.name, "transport": self.transport, "target": self.target, "source": self.source,
                "state": self.state, "error": self.error, "error_type": self.error_type,
                "tools": [t.to_json() for t in self.tools], "notes": list(self.notes)}


@dataclass(frozen=True)
class CallResult:
    """A tool's answer: its content as text (the model's view), and whether the tool reported a failure."""

    text: str
    is_error: bool
    duration_s: float


class _Server:
    """A configured server's session and its state (the task's side lives in the hub's loop)."""

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        self.status = ServerStatus(spec.name, spec.transport, spec.target(), spec.source, notes=spec.notes)
        self.client: Any = None  # an mcp.Client, while ready
        self.raw_tools: list[Any] = []
        self.closing: Any = None  # an anyio.Event, made in the loop
        self.task: concurrent.futures.Future | None = None
        self.settled = threading.Event()  # ready, or failed to be
        self.errlog: Any = None  # a stdio server's stderr (a temporary file)

    def stderr_tail(self, chars: int) -> str:
        if self.errlog is None:
            return ""
        try:
            self.errlog.flush()
            self.errlog.seek(0, os.SEEK_END)
            size = self.errlog.tell()
            self.errlog.seek(max(0, size - chars * 4))
            text = self.errlog.read()
        except (OSError, ValueError):
            return ""
        return text[-chars:].strip()


class MCPHub:
    """The MCP servers of a workspace: start them (lazily, all at once), list and call their tools, close them.

    Thread-safe; use as a context manager or call :meth:`close`.
    """

    def __init__(self, config: MCPConfig | None = None, options: MCPOptions | None = None):
        self.config = config or MCPConfig()
        self.options = options or MCPOptions()
        self._servers = {spec.name: _Server(spec) for spec in self.config.servers}
        self._tools: dict[str, ToolInfo] = {}
        self._lock = threading.Lock()
        self._portal: Any = None
        self._portal_cm: Any = None
        self._closed = False

    @classmethod
    def from_workspace(cls, root: Path, *, workspace: Path | None = None,
                       options: MCPOptions | None = None) -> MCPHub:
        """A hub of the servers ``root`` configures (see :func:`corolla.assistant.mcp.config.load_config`)."""
        return cls(load_config(root, workspace=workspace), options)

    def __enter__(self) -> MCPHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def configured(self) -> bool:
        """Whether the workspace configures any server (even one that cannot be used)."""
        return bool(self.config)

    # --- what there is --------------------------------------------------------------------------
    def statuses(self) -> list[ServerStatus]:
        """Every configured server (copies, as of now): the usable ones, then those with a bad entry, then the
        disabled ones."""
        out = [dataclasses.replace(s.status) for s in self._servers.values()]
        for p in self.config.problems:
            name = p.name or f"({p.source})"
            out.append(ServerStatus(name, "?", "", p.source, "invalid", str(p.error), type(p.error).__name__))
        for spec in self.config.disabled:
            out.append(ServerStatus(spec.name, spec.transport, spec.target(), spec.source, "disabled",
                                    notes=spec.notes))
        return out

    def tools(self) -> list[ToolInfo]:
        """The tools of the servers that are ready (starting them first if they are not started); none once closed."""
        self.start()
        return [] if self._closed else list(self._tools.values())

    def tool(self, qualified: str) -> ToolInfo | None:
        return self._tools.get(qualified)

    # --- starting ---------------------------------------------------------------------------------
    def start(self) -> list[ServerStatus]:
        """Start the servers not started yet, all at once, and wait until each is ready or has failed."""
        with self._lock:
            pending = [s for s in self._servers.values() if s.status.state == "not started"]
            waiting = [s for s in self._servers.values() if s.status.state == "starting"]  # by another thread
            if self._closed or not (pending or waiting):
                return self.statuses()
            portal = self._open_portal()
            for server in pending:
                problem = _precheck(server.spec)
                if problem:
                    self._failed(server, MCPStartError(problem))
                    continue
                server.status.state = "starting"
                server.closing = portal.call(_new_event)
                server.task = portal.start_task_soon(self._serve, server)
        deadline = time.monotonic() + self.options.start_timeout_s + self.options.close_timeout_s
        for server in pending + waiting:
            if not server.settled.wait(max(0.0, deadline - time.monotonic())):
                if server.task is not None:
                    server.task.cancel()
                self._failed(server, MCPStartError(f"did not start within {self.options.start_timeout_s:g} s"))
        self._name_tools()
        return self.statuses()

    def _open_portal(self):
        if self._portal is None:
            from anyio.from_thread import start_blocking_portal

            self._portal_cm = start_blocking_portal(name="corolla-mcp")
            self._portal = self._portal_cm.__enter__()
        return self._portal

    def _name_tools(self) -> None:
        tools: dict[str, ToolInfo] = {}
        for server in self._servers.values():
            infos = []
            if server.status.state == "ready":
                for raw in server.raw_tools:
                    qualified = qualified_name(server.spec.name, raw.name, tools)
                    schema = raw.input_schema if isinstance(raw.input_schema, dict) else {}
                    info = ToolInfo(server.spec.name, raw.name, qualified, (raw.description or "").strip(),
                                    schema or {"type": "object", "properties": {}}, server.spec.trusted)
                    tools[qualified] = info
                    infos.append(info)
            server.status.tools = infos
        self._tools = tools

    async def _serve(self, server: _Server) -> None:
        """The server's session, from the handshake until it is closed or lost (runs in the hub's loop)."""
        import anyio

        spec = server.spec
        try:
            with anyio.CancelScope() as scope:
                scope.deadline = anyio.current_time() + self.options.start_timeout_s
                async with contextlib.AsyncExitStack() as stack:
                    client = await stack.enter_async_context(await self._client(server, stack))
                    server.raw_tools = await _list_tools(client)
                    scope.deadline = math.inf
                    server.client = client
                    server.status.state = "ready"
                    server.settled.set()
                    log.info("MCP server %s: %d tools", spec.name, len(server.raw_tools))
                    await server.closing.wait()
            if not server.settled.is_set() and scope.cancelled_caught:
                self._failed(server, MCPStartError(self._with_stderr(
                    server, f"did not answer within {self.options.start_timeout_s:g} s (is it an MCP server?)")))
        except Exception as e:  # noqa: BLE001 - whatever the SDK or the server did, it becomes this server's status
            if server.settled.is_set():
                self._gone(server, self._with_stderr(server, f"the connection ended: {_describe(e, spec)}"))
            else:
                self._failed(server, MCPStartError(self._with_stderr(server, _describe(e, spec))))
        finally:
            server.client = None
            if server.status.state == "ready":
                server.status.state = "closed" if self._closed else "stopped"
            server.settled.set()
            if server.errlog is not None:
                with contextlib.suppress(OSError):
                    server.errlog.close()

    async def _client(self, server: _Server, stack: contextlib.AsyncExitStack):
        from mcp import Client

        spec = server.spec
        if spec.transport == "stdio":
            from mcp import StdioServerParameters
            from mcp.client.stdio import stdio_client

            server.errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
            params = StdioServerParameters(command=spec.command or "", args=list(spec.args), env=spec.env or None,
                                           cwd=spec.cwd)
            return Client(stdio_client(params, errlog=server.errlog))
        if not spec.headers:
            return Client(spec.url or "")
        import httpx2  # the SDK's HTTP client
        from mcp.client.streamable_http import streamable_http_client

        http = await stack.enter_async_context(httpx2.AsyncClient(headers=spec.headers,
                                                                   timeout=httpx2.Timeout(30.0, read=300.0)))
        return Client(streamable_http_client(spec.url or "", http_client=http))

    def _with_stderr(self, server: _Server, message: str) -> str:
        tail = server.stderr_tail(self.options.stderr_tail_chars)
        return f"{message}; its stderr ends with:\n{tail}" if tail else message

    def _failed(self, server: _Server, error: MCPError) -> None:
        server.status.state, server.status.error, server.status.error_type = "failed", str(error), type(error).__name__
        server.settled.set()
        log.warning("MCP server %s could not start: %s", server.spec.name, error)

    def _gone(self, server: _Server, why: str) -> None:
        if server.status.state in ("stopped", "closed"):
            return
        server.status.state, server.status.error = "stopped", why
        server.status.error_type = MCPServerGoneError.__name__
        if server.closing is not None:
            server.closing.set()  # in the loop: its task leaves the session (and reaps the process)
        log.warning("MCP server %s stopped: %s", server.spec.name, why)

    # --- calling ----------------------------------------------------------------------------------
    def call(self, qualified: str, arguments: dict | None = None, *, timeout_s: float | None = None) -> CallResult:
        """Call tool ``qualified`` (``mcp__server__tool``); a tool that reports a failure is a result with
        ``is_error``, anything else that goes wrong a :class:`MCPCallError` (timeout, server gone, ...)."""
        info = self._tools.get(qualified)
        if info is None:
            raise MCPCallError(f"no MCP tool named {qualified!r}")
        server = self._servers[info.server]
        if self._closed or server.status.state != "ready" or server.client is None:
            why = "the session is closed" if self._closed else (server.status.error or server.status.state)
            raise MCPServerGoneError(f"MCP server {info.server!r} is not running ({why})")
        timeout = timeout_s or server.spec.timeout_s or self.options.call_timeout_s
        future = self._portal.start_task_soon(self._call, server, info.name, dict(arguments or {}), timeout)
        try:
            return future.result(timeout + CALL_GRACE_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise MCPTimeoutError(f"{qualified} did not finish within {timeout:g} s") from None
        except concurrent.futures.CancelledError:
            raise MCPServerGoneError(f"the call of {qualified} was cancelled (the session is closing)") from None

    async def _call(self, server: _Server, tool: str, arguments: dict, timeout: float) -> CallResult:
        import anyio
        from mcp import MCPError as ProtocolError
        from pydantic import ValidationError

        qualified = next((q for q, t in self._tools.items() if t.server == server.spec.name and t.name == tool), tool)
        client = server.client
        if client is None:
            raise MCPServerGoneError(f"MCP server {server.spec.name!r} is not running ({server.status.error})")
        start = time.monotonic()
        try:
            with anyio.fail_after(timeout):
                result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout)
        except TimeoutError:
            raise MCPTimeoutError(f"{qualified} did not finish within {timeout:g} s") from None
        except ProtocolError as e:
            if e.code == _REQUEST_TIMEOUT:
                raise MCPTimeoutError(f"{qualified} did not finish within {timeout:g} s") from None
            if e.code == _CONNECTION_CLOSED:
                why = self._with_stderr(server, "the server exited or dropped the connection "
                                                f"(at the call of {qualified})")
                self._gone(server, why)
                raise MCPServerGoneError(f"MCP server {server.spec.name!r} stopped: {why}") from None
            raise MCPCallError(f"{qualified}: the server answered with error {e.code}: {e.message}") from None
        except ValidationError as e:
            raise MCPCallError(f"{qualified}: the server's answer is not a valid tool result ({e})") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError) as e:
            why = self._with_stderr(server, f"the connection broke during {qualified} ({type(e).__name__}: {e})")
            self._gone(server, why)
            raise MCPServerGoneError(f"MCP server {server.spec.name!r} stopped: {why}") from None
        except Exception as e:  # noqa: BLE001 - a transport's own error (HTTP): the model gets a typed one
            if _connection_error(e):
                why = f"cannot reach it during {qualified} ({_describe(e, server.spec)})"
                self._gone(server, why)
                raise MCPServerGoneError(f"MCP server {server.spec.name!r} stopped: {why}") from None
            raise MCPCallError(f"{qualified} failed: {_describe(e, server.spec)}") from None
        return CallResult(result_text(result), bool(result.is_error), round(time.monotonic() - start, 3))

    # --- closing ----------------------------------------------------------------------------------
    def close(self) -> None:
        """End every session and stop the hub's loop (idempotent); no server process outlives it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._tools = {}
            portal, cm = self._portal, self._portal_cm
            self._portal = self._portal_cm = None
        if portal is None:
            return
        tasks = []
        for server in self._servers.values():
            if server.task is None:
                continue
            tasks.append(server.task)
            if server.closing is not None:
                with contextlib.suppress(RuntimeError):
                    portal.call(server.closing.set)
        concurrent.futures.wait(tasks, timeout=self.options.close_timeout_s)
        with contextlib.suppress(RuntimeError):
            portal.call(portal.stop, True)  # cancel what is left: the SDK still shuts each server down
        cm.__exit__(None, None, None)  # joins the loop's thread
        for server in self._servers.values():
            if server.status.state in ("ready", "starting"):
                server.status.state = "closed"


# --- helpers -----------------------------------------------------------------------------------------
def _new_event():
    import anyio

    return anyio.Event()


async def _list_tools(client) -> list[Any]:
    tools, cursor = [], None
    for _ in range(100):  # pages: a server that pages forever cannot hang the start
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def qualified_name(server: str, tool: str, taken) -> str:
    """``mcp__<server>__<tool>`` as an OpenAI function name, unique among ``taken``."""
    name = f"{PREFIX}__{_UNSAFE.sub('_', server)}__{_UNSAFE.sub('_', tool)}"
    if len(name) > MAX_NAME_CHARS or name in taken:
        digest = hashlib.sha1(f"{server}\0{tool}".encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_CHARS - 9]}_{digest}"
    return name


def _precheck(spec: ServerSpec) -> str:
    """Why a stdio server cannot be started at all (its program or folder missing), or ""."""
    if spec.transport != "stdio":
        return ""
    if spec.cwd is not None and not Path(spec.cwd).is_dir():
        return f"its folder (cwd) {spec.cwd} does not exist"
    command = spec.command or ""
    if "/" in command:
        path = Path(command) if Path(command).is_absolute() else Path(spec.cwd or ".") / command
        if not path.exists():
            return f"command not found: {command} (no file {path})"
        if not os.access(path, os.X_OK):
            return f"command {command} is not executable"
        return ""
    search = spec.env.get("PATH") or os.environ.get("PATH", os.defpath)
    if shutil.which(command, path=search) is None:
        return f"command not found: {command!r} is not on PATH"
    return ""


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


def _describe(error: BaseException, spec: ServerSpec) -> str:
    """One line saying why, from the innermost errors of an exception group."""
    leaves = [e for e in _leaves(error) if not isinstance(e, concurrent.futures.CancelledError)] or [error]
    e = leaves[0]
    code = getattr(e, "code", None)
    if isinstance(e, ModuleNotFoundError) and (e.name or "").partition(".")[0] in ("mcp", "mcp_types", "httpx2"):
        return f"the MCP SDK is not installed ({e.name}): pip install 'mcp>=2.3,<3'"
    if code == _CONNECTION_CLOSED:
        return "the server exited (or closed its output) before it finished the handshake"
    if isinstance(e, OSError) and spec.transport == "stdio":
        return f"cannot run {spec.command!r}: {e.strerror or e}"
    if _connection_error(e):
        return f"cannot connect to {spec.url}: {e}"
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is not None:
        return f"{spec.url} answered HTTP {status}"
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _connection_error(error: BaseException) -> bool:
    """An HTTP transport's connection error (httpx2.ConnectError and kin), named so as not to import httpx2."""
    return any(c.__name__ in ("ConnectError", "ConnectTimeout", "RemoteProtocolError", "ReadError")
               for c in type(error).__mro__)


def result_text(result) -> str:
    """A tool result's content as text: text as it is, other content named (images are not sent to the model)."""
    parts: list[str] = []
    for block in result.content or ():
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            size = len(getattr(block, "data", "") or "") * 3 // 4
            parts.append(f"[{kind} content ({getattr(block, 'mime_type', '?')}, {size} bytes): not shown]")
        elif kind == "resource":
            res = block.resource
            text = getattr(res, "text", None)
            parts.append(f"[resource {res.uri}]\n{text}" if text is not None
                         else f"[binary resource {res.uri} ({getattr(res, 'mime_type', None) or '?'}): not shown]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {block.uri}" + (f" ({block.name})" if getattr(block, "name", "") else "")
                         + "]")
        else:
            parts.append(f"[{kind or type(block).__name__} content: not shown]")
    if not parts and getattr(result, "structured_content", None) is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


__all__ = ["CallResult", "MCPHub", "MCPOptions", "ServerStatus", "ToolInfo", "qualified_name", "result_text"]
