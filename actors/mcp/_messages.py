"""What an MCP server actor handles: each message declares its answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime import Ask

from ._health import McpStatus
from ._tool_types import ToolResult, ToolSpec

__all__ = ["CallTool", "GetMcpStatus", "ListTools", "McpMessage"]


@dataclass(frozen=True)
class ListTools(Ask[list[ToolSpec]]):
    """Ask for the server's tools: answers ``list[ToolSpec]`` (empty unless ready)."""


@dataclass(frozen=True)
class CallTool(Ask[ToolResult]):
    """Call ``tool`` with ``arguments``: answers a :class:`ToolResult` (``is_error`` included).

    ``timeout`` (seconds; ``None``: the server's ``call_timeout``) bounds the call. Raises
    ``McpToolTimeout``, ``McpToolError`` (rejected by the server), ``McpServerError`` (not ready,
    or the session ended during the call) or ``ActorCrashed`` (the session was lost).
    """

    tool: str
    arguments: dict[str, Any]
    timeout: float | None = None


@dataclass(frozen=True)
class GetMcpStatus(Ask[McpStatus]):
    """Ask for the server's :class:`McpStatus`."""


McpMessage = CallTool | ListTools | GetMcpStatus
"""What an MCP server actor handles (each declares its answer)."""
