"""The tools of MCP servers as agent tools: same schema checks, same approval policy, same output cap.

Each tool of a ready server becomes a :class:`corolla.assistant.agent.tools.Tool` named
``mcp__<server>__<tool>`` with the server's own JSON schema (checked whole, with jsonschema). A call
is an action the user approves like ``run_command``: :meth:`CommandPolicy.authorize_tool` runs it
when the server is trusted or auto-approved, else asks, else refuses (and the server never sees it).
Its text is cut like a command's output (the policy's ``max_output_chars``, head and tail kept); a
timeout, a server that died or a protocol error is a failed result that says so, never an exception.
"""

from __future__ import annotations

import json

from corolla.assistant.agent.shell import truncate_middle
from corolla.assistant.agent.tools import Tool, ToolContext, ToolResult
from corolla.assistant.mcp.errors import MCPError
from corolla.assistant.mcp.hub import MCPHub, ToolInfo

MAX_DESCRIPTION_CHARS = 1000  # a server's description of a tool, as the model reads it (small context windows)
MAX_SHOWN_CALL_CHARS = 300  # of a call, as a person approving it reads it


def agent_tools(hub: MCPHub) -> dict[str, Tool]:
    """The tools of ``hub``'s ready servers (starting them if they are not), by qualified name."""
    return {info.qualified: as_tool(hub, info) for info in hub.tools()}


def as_tool(hub: MCPHub, info: ToolInfo) -> Tool:
    description = info.description or f"the {info.name} tool"
    if len(description) > MAX_DESCRIPTION_CHARS:
        description = description[:MAX_DESCRIPTION_CHARS].rstrip() + " ..."
    schema = info.input_schema if info.input_schema.get("type") == "object" else {"type": "object", "properties": {}}

    def run(ctx: ToolContext, args: dict) -> ToolResult:
        return call_tool(ctx, hub, info, args)

    return Tool(info.qualified, f"[MCP server {info.server}] {description}", schema, run, jsonschema=True)


def call_text(info: ToolInfo, args: dict) -> str:
    """The call as a person reads it when asked to approve it: ``mcp__notes__add {"a": 1, "b": 2}``."""
    shown = json.dumps(args, ensure_ascii=False, default=str)
    if len(shown) > MAX_SHOWN_CALL_CHARS:
        shown = shown[:MAX_SHOWN_CALL_CHARS] + f"... ({len(shown)} characters)"
    return f"{info.qualified} {shown}"


def call_tool(ctx: ToolContext, hub: MCPHub, info: ToolInfo, args: dict) -> ToolResult:
    """Ask the policy, call, cap: what the model gets back for one call (never raises for the server's doing)."""
    shown = call_text(info, args)
    base = {"server": info.server, "tool": info.name, "command": shown}
    decision = ctx.policy.authorize_tool(info.qualified, shown, trusted=info.trusted)
    if decision.action != "run":
        return ToolResult(False, f"{info.qualified} refused: {decision.reason}", {**base, "refused": True})
    try:
        result = hub.call(info.qualified, args)
    except MCPError as e:
        return ToolResult(False, f"{info.qualified} failed: {e}", {**base, "error": type(e).__name__})
    text = result.text.strip() or "(no output)"
    limit = ctx.policy.max_output_chars
    output = truncate_middle(text, limit)
    data = {**base, "is_error": result.is_error, "chars": len(text), "truncated": len(text) > limit,
            "duration_s": result.duration_s}
    if result.is_error:
        return ToolResult(False, f"{info.qualified} reported an error:\n{output}", data)
    return ToolResult(True, output, data)


__all__ = ["agent_tools", "as_tool", "call_text", "call_tool"]
