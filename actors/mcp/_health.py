"""The health of each MCP server: durable state of its actor, readable without an ask."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from runtime import ActorSystem

from ._tool_types import ToolSpec

if TYPE_CHECKING:
    from ._session import McpSession

__all__ = ["HEALTH_NAMES", "HEALTH_NAME_CHARS", "McpServerHealth", "McpState", "McpStatus",
           "health_names", "mcp_status"]

McpState = Literal["starting", "ready", "failed", "restarting"]

HEALTH_NAMES = 128
"""How many tool names one list of ``/health`` shows (the counts beside it say how many)."""
HEALTH_NAME_CHARS = 128
"""How many characters of a tool name ``/health`` shows (a server's own names may be longer)."""


def health_names(names: Iterable[str]) -> list[str]:
    """The first :data:`HEALTH_NAMES` of ``names``, each cut to :data:`HEALTH_NAME_CHARS`.

    ``/health`` needs no token on loopback and is polled often: a server may list 16,384 tools
    with names of any length, which made every poll megabytes.
    """
    return [name if len(name) <= HEALTH_NAME_CHARS else name[: HEALTH_NAME_CHARS - 1] + "…"
            for name in itertools.islice(names, HEALTH_NAMES)]


@dataclass(frozen=True)
class McpStatus:
    """A snapshot of one MCP server for health checks."""

    name: str
    state: McpState
    error: str | None
    tools: int
    restarts: int
    pid: int | None
    transport: str = "stdio"
    tool_names: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``/health`` (``tools`` there lists tool names, bounded by
        :func:`health_names`; ``tool_count`` counts them all)."""
        return {
            "state": self.state,
            "error": self.error,
            "tools": health_names(self.tool_names),
            "tool_count": self.tools,
            "restarts": self.restarts,
            "pid": self.pid,
            "transport": self.transport,
        }

class McpServerHealth:
    """What survives restarts of one server's actor: its state for ``/health``.

    Written only by the actor (its session task, or its loop once that task has ended); read it,
    never write it, from elsewhere.
    """

    def __init__(self, name: str, transport: str = "stdio") -> None:
        self.name = name
        self.transport = transport
        self.state: McpState = "starting"
        self.error: str | None = None
        self.tools: tuple[ToolSpec, ...] = ()
        self.restarts = 0
        self.pid: int | None = None
        self.was_ready = False

    def snapshot(self) -> McpStatus:
        return McpStatus(
            name=self.name,
            state=self.state,
            error=self.error,
            tools=len(self.tools),
            restarts=self.restarts,
            pid=self.pid,
            transport=self.transport,
            tool_names=tuple(spec.name for spec in self.tools),
        )

    def _starting(self) -> None:
        self.state = "restarting" if self.was_ready else "starting"

    def _ready(self, session: McpSession) -> None:
        self.state = "ready"
        self.error = None
        self.tools = tuple(session.tools)
        self.pid = session.pid
        self.was_ready = True

    def _down(self, state: McpState, reason: str) -> None:
        self.state = state
        self.error = reason
        self.tools = ()
        self.pid = None

    def __repr__(self) -> str:
        return (
            f"<McpServerHealth {self.name!r} [{self.state} | {len(self.tools)} tools | "
            f"restarts {self.restarts}]>"
        )


def mcp_status(system: ActorSystem) -> dict[str, dict[str, Any]]:
    """The health of every MCP server actor in ``system``, by server name (no ask involved)."""
    statuses: dict[str, dict[str, Any]] = {}
    try:
        actors = system.children("mcp")
    except KeyError:  # no MCP servers configured
        return statuses
    for actor in actors:
        health = system.durable(actor)
        if isinstance(health, McpServerHealth):
            statuses[health.name] = health.snapshot().as_dict()
    return statuses
