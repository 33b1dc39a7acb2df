"""Errors of the MCP domain: every failure of talking to an MCP server is one of these.

The tree::

    McpError                  anything that went wrong talking to an MCP server
    ├── McpServerError        the server is unavailable or died: restart it (retryable by restart)
    │   └── McpSessionLost    the session ended while in use; crashes the server's actor
    └── McpToolError          one tool call failed; the message is meant for the model
        └── McpToolTimeout    the call did not answer within its timeout

A tool that *runs* and reports failure (``isError``) is not an exception: ``call_tool`` returns a
``ToolResult`` with ``is_error=True`` so the model can read the message and correct itself. The
SDK's own errors (``mcp.MCPError``, transport and process errors) are translated into these in
:mod:`actors.mcp._session`, the one place that talks to the SDK.
"""

from __future__ import annotations

__all__ = ["McpError", "McpServerError", "McpSessionLost", "McpToolError", "McpToolTimeout"]


class McpError(Exception):
    """Base of every error of the MCP domain."""


class McpServerError(McpError):
    """The MCP server ``server`` is unavailable: it failed to start, died, or hung up.

    Retryable by restarting the server; ``reason`` says what happened, without secrets.
    """

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"MCP server {server!r} {reason}")
        self.server = server
        self.reason = reason


class McpSessionLost(McpServerError):
    """The server's session ended while in use (process died, connection lost).

    The only error that crashes an ``McpServerActor`` (its supervisor restarts it).
    """


class McpToolError(McpError):
    """A tool call failed, or its arguments were invalid; ``str(error)`` is meant for the model."""

    def __init__(self, message: str, *, server: str | None = None, tool: str | None = None) -> None:
        super().__init__(message)
        self.server = server
        self.tool = tool


class McpToolTimeout(McpToolError):
    """A tool call did not answer within ``timeout`` seconds (the server was asked to cancel it)."""

    def __init__(self, server: str, tool: str, timeout: float) -> None:
        super().__init__(
            f"Tool {tool!r} did not answer within {timeout:g} s and was cancelled.",
            server=server,
            tool=tool,
        )
        self.timeout = timeout
