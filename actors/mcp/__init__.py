"""MCP servers and their tools: one supervised actor per server, one catalog the model sees."""

from ._config import McpServerConfig
from ._health import McpServerHealth, McpStatus, mcp_status
from ._supervision import mcp_supervisor_spec
from ._tool_types import ToolResult, ToolSpec
from ._tools import ToolCatalog, ToolLimits

__all__ = [
    "McpServerConfig",
    "McpServerHealth",
    "McpStatus",
    "ToolCatalog",
    "ToolLimits",
    "ToolResult",
    "ToolSpec",
    "mcp_status",
    "mcp_supervisor_spec",
]
