"""Tools of MCP (Model Context Protocol) servers for the agent, through the official SDK (``mcp``).

:mod:`.config` reads which servers a workspace configures (``.corolla/mcp.json``, ``.vscode/mcp.json``;
pure, typed errors per entry); :mod:`.hub` starts them lazily (stdio or streamable HTTP), lists and
calls their tools with deadlines and closes them (:class:`MCPHub`); :mod:`.tools` makes their tools
agent tools (``mcp__<server>__<tool>``), called under the agent's approval policy with capped output.
The SDK is imported only when a server starts.
"""

from __future__ import annotations

from corolla.assistant.lazy import lazy_getattr

_WHERE = {
    "CONFIG_FILES": "config", "MCPConfig": "config", "ServerSpec": "config", "load_config": "config",
    "MCPCallError": "errors", "MCPConfigError": "errors", "MCPError": "errors", "MCPServerGoneError": "errors",
    "MCPStartError": "errors", "MCPTimeoutError": "errors",
    "CallResult": "hub", "MCPHub": "hub", "MCPOptions": "hub", "ServerStatus": "hub", "ToolInfo": "hub",
    "agent_tools": "tools",
}

__getattr__ = lazy_getattr(__name__, _WHERE)

__all__ = [
    "CONFIG_FILES",
    "CallResult",
    "MCPCallError",
    "MCPConfig",
    "MCPConfigError",
    "MCPError",
    "MCPHub",
    "MCPOptions",
    "MCPServerGoneError",
    "MCPStartError",
    "MCPTimeoutError",
    "ServerSpec",
    "ServerStatus",
    "ToolInfo",
    "agent_tools",
    "load_config",
]
