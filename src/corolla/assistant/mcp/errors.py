"""What can go wrong with MCP servers, each a type a caller (or the model, in agent mode) can act on."""

from __future__ import annotations

from corolla.assistant.errors import AssistantError


class MCPError(AssistantError):
    """Base of the errors about MCP servers and their tools."""


class MCPConfigError(MCPError):
    """An entry of ``.corolla/mcp.json`` or ``.vscode/mcp.json`` is not a server corolla can start (the message
    names the file, the server and the key)."""


class MCPStartError(MCPError):
    """A configured server could not be started or did not answer: its command was not found, it exited,
    it did not finish the handshake in time, or its URL refused the connection."""


class MCPCallError(MCPError):
    """A tool call failed outside the tool itself (a protocol error, an answer that is not a result). A tool
    that reports its own failure is not an error of this kind: its text goes back to the model."""


class MCPTimeoutError(MCPCallError):
    """A tool call did not finish in time (the server is asked to cancel it and stays in use)."""


class MCPServerGoneError(MCPCallError):
    """The server is not running: it exited or dropped the connection (maybe in the middle of this call)."""


__all__ = ["MCPCallError", "MCPConfigError", "MCPError", "MCPServerGoneError", "MCPStartError", "MCPTimeoutError"]
