"""The tools of the workspace's MCP servers in plain chat (no slash command) of the assistant (core.Assistant).

The servers (``.corolla/mcp.json``, ``.vscode/mcp.json``; :mod:`corolla.assistant.mcp`) start on the first chat
turn that finds them configured and stay up for the next turns until :meth:`ChatTools.close`. A call runs under
the assistant's :class:`~corolla.assistant.agent.policy.CommandPolicy` like an agent's (a trusted or
auto-approved server's tool runs; the rest is asked for through the policy's ``approve``, refused without one),
its output is cut like a command's and goes back to the model, for at most ``rounds`` rounds; then the answer
is asked for with tools declined. An endpoint that refuses tools is said once and chat goes on without them.
"""

from __future__ import annotations

import difflib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from corolla.assistant.errors import AssistantError, EndpointError

if TYPE_CHECKING:
    from corolla.assistant.agent.policy import CommandPolicy
    from corolla.assistant.agent.tools import Tool, ToolContext, ToolResult
    from corolla.assistant.llm import LLM
    from corolla.assistant.mcp.hub import MCPHub
    from corolla.assistant.sessions import SessionStore

logger = logging.getLogger(__name__)


class ChatTools:
    """Chat's MCP servers and the tool loop of a chat turn; events and session records as
    :meth:`~corolla.assistant.core.Assistant.respond` documents them."""

    def __init__(self, llm: LLM, root: Path, store: SessionStore, hub: MCPHub | None = None):
        """``hub``: the caller's MCP servers (it closes them); None: the workspace's, started by the first
        :meth:`tools` that finds them configured and stopped by :meth:`close`."""
        self.llm = llm
        self.root = root
        self.store = store
        self.hub: MCPHub | None = hub
        self._own_hub = hub is None
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str, str]] = set()  # (server, state, error) already said
        self._native: bool | None = None  # None until the endpoint took (True) or refused (False) tools

    def close(self) -> None:
        """Stop the MCP servers started here (idempotent; a later :meth:`tools` starts them again)."""
        with self._lock:
            hub = self.hub if self._own_hub else None
            if self._own_hub:
                self.hub = None
            self._warned = set()
        if hub is not None:
            hub.close()

    def tools(self) -> tuple[dict[str, Tool], list[str]]:
        """The tools of the workspace's MCP servers (starting them on first use), and warnings not said yet
        about servers that cannot be used. No tools when nothing is configured (the configuration is read
        again each turn until there is one) or the endpoint refused tools."""
        if self._native is False:
            return {}, []
        from corolla.assistant.mcp.hub import MCPHub
        from corolla.assistant.mcp.tools import agent_tools

        try:
            with self._lock:
                hub = self.hub
                if hub is None:
                    hub = MCPHub.from_workspace(self.root)
                    if not hub.configured:
                        return {}, []
                    self.hub = hub
            if not hub.configured:
                return {}, []
            tools = agent_tools(hub)  # starts the servers not started yet, each within its deadline
            statuses = hub.statuses()
        except (AssistantError, OSError, ValueError) as e:
            logger.warning("chat goes on without MCP tools: %s", e)
            return {}, [f"the MCP servers cannot be used ({e}); chat goes on without their tools"]
        warnings = []
        with self._lock:
            for s in statuses:
                if not s.failed or (s.name, s.state, s.error) in self._warned:
                    continue
                self._warned.add((s.name, s.state, s.error))
                what = {"failed": "could not start", "stopped": "stopped", "invalid": "has a bad entry"}[s.state]
                warnings.append(f"MCP server {s.name!r} {what}: {s.error}; chat goes on without its tools")
        return tools, warnings

    def turn(self, messages: list[dict], tools: dict[str, Tool], pieces: list[str], session_id: str, *,
             policy: CommandPolicy | None, rounds: int) -> Iterator[dict]:
        """Ask with the tools offered, run the calls, send the results back; the reply without a call is the
        answer. After ``rounds`` replies with calls the answer is asked for with tools declined. What is said
        goes to ``pieces``; ``policy`` None: that of trusted servers only, nobody to ask."""
        from corolla.assistant.agent.policy import CommandPolicy
        from corolla.assistant.agent.tools import ToolContext, openai_tools

        ctx = ToolContext(root=self.root, policy=policy or CommandPolicy(), extra=tools)
        offered = openai_tools(list(tools), tools)
        for round_ in range(rounds):
            try:
                reply = self.llm.complete(messages, tools=offered)
            except EndpointError as e:
                if round_ > 0 or self._native:
                    raise  # it took tools before: this is another problem (down, overloaded)
                warning = f"the model endpoint refused tools ({e}); chat goes on without the MCP servers' tools"
                self.store.add_event(session_id, "warning", {"message": warning})
                yield {"type": "warning", "message": warning}
                yield from self._stream(messages, pieces)
                self._native = False
                return
            self._native = True
            if reply.content.strip():
                yield from _said(pieces, reply.content)
            if not reply.tool_calls:
                return
            yield from self._run_calls(ctx, messages, reply, tools, session_id)
        if pieces:
            yield from _said(pieces, "")
        yield from self._stream(messages, pieces, tools=offered, tool_choice="none")

    def _stream(self, messages: list[dict], pieces: list[str], **overrides) -> Iterator[dict]:
        for piece in self.llm.stream(messages, **overrides):
            pieces.append(piece)
            yield {"type": "delta", "text": piece}

    def _run_calls(self, ctx: ToolContext, messages: list[dict], reply, tools: dict[str, Tool],
                   session_id: str) -> Iterator[dict]:
        from corolla.assistant.agent.shell import truncate_middle
        from corolla.assistant.agent.toolcalls import parse_arguments

        parsed = [(c, *parse_arguments(c.arguments)) for c in reply.tool_calls]
        messages.append({"role": "assistant", "content": reply.content, "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(args or {})}}
            for c, args, _ in parsed]})
        for c, args, problem in parsed:
            shown = _call_text(c.name, args if args is not None else c.arguments)
            yield {"type": "tool_call", "id": c.id, "name": c.name, "arguments": args, "call": shown}
            result = _chat_tool(ctx, tools, c.name, args, problem)
            output = truncate_middle(result.output, ctx.policy.max_output_chars)
            refused = bool(result.data.get("refused"))
            self.store.add_message(session_id, "tool", f"{shown}\n{output}",
                                   meta={"name": c.name, "arguments": args, "ok": result.ok, "refused": refused})
            yield {"type": "tool_result", "id": c.id, "name": c.name, "ok": result.ok, "output": output,
                   "refused": refused}
            messages.append({"role": "tool", "tool_call_id": c.id, "content": output})


def _said(pieces: list[str], text: str) -> Iterator[dict]:
    """``text`` as a delta, apart from what was said before it (in an earlier round) by a blank line."""
    if pieces and not "".join(pieces).endswith("\n\n"):
        gap = "\n" if "".join(pieces).endswith("\n") else "\n\n"
        pieces.append(gap)
        yield {"type": "delta", "text": gap}
    if text:
        pieces.append(text)
        yield {"type": "delta", "text": text}


def _call_text(name: str, args) -> str:
    """A tool call as a person reads it: ``mcp__notes__add {"a": 1, "b": 2}``."""
    from corolla.assistant.mcp.tools import MAX_SHOWN_CALL_CHARS

    shown = json.dumps(args, ensure_ascii=False, default=str) if not isinstance(args, str) else args
    if len(shown) > MAX_SHOWN_CALL_CHARS:
        shown = shown[:MAX_SHOWN_CALL_CHARS] + f"... ({len(shown)} characters)"
    return f"{name} {shown}"


def _chat_tool(ctx: ToolContext, tools: dict[str, Tool], name: str, args: dict | None,
               problem: str | None) -> ToolResult:
    """One call of chat's tools (only those offered: never the agent's own): checked against the tool's
    schema, then :func:`corolla.assistant.mcp.tools.call_tool` under ``ctx.policy``; never raises."""
    from corolla.assistant.agent.tools import ToolResult, run_tool

    if problem is not None:
        return ToolResult(False, f"{name} was not called: {problem}")
    if name not in tools:
        close = difflib.get_close_matches(str(name), list(tools), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return ToolResult(False, f"unknown tool {name!r}.{hint} The tools are: {', '.join(tools)}.")
    try:
        return run_tool(ctx, name, args)
    except (AssistantError, OSError, ValueError) as e:
        return ToolResult(False, f"{name} failed: {e}")
