"""Configuration of one MCP server, in the de-facto ``mcpServers`` format.

The format Claude Desktop and most MCP hosts read: a stdio server has ``command``, ``args``,
``env`` (added to the ``mcp`` SDK's safe default environment, never to ours) and ``cwd``; a
streamable-HTTP server has ``url`` and ``headers``. ``enabled: false`` keeps an entry in the file
without starting it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["McpServerConfig"]


class McpServerConfig(BaseModel):
    """One entry of ``mcpServers``: exactly one of ``command`` (stdio) or ``url`` (HTTP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, repr=False)  # may hold secrets
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, repr=False)  # may hold secrets
    enabled: bool = True
    call_timeout: float = Field(default=30.0, gt=0, description="seconds allowed per tool call")
    startup_timeout: float = Field(default=20.0, gt=0, description="seconds allowed to initialize")
    max_concurrent_calls: int = Field(
        default=16, ge=1,
        description="tool calls this server runs at once; more wait in its queue",
    )
    max_message_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024,
        description="the longest message a server may send (a stdio line, an HTTP body or"
        " server-sent event); a longer one ends its session",
    )

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of 'command' (stdio) or 'url' (streamable HTTP)")
        return self

    @property
    def transport(self) -> str:
        """``"stdio"`` or ``"http"``."""
        return "stdio" if self.command is not None else "http"
