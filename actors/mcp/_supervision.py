"""The ``mcp`` supervisor and its children: one permanent actor per enabled server.

Its restart intensity is derived from its backoff (:func:`max_restarts_per_child`) so that
servers crashing as fast as the backoff allows never make it escalate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from runtime import Backoff, ChildSpec, Restart, Strategy, SupervisorSpec

from ._actor import McpServerActor
from ._config import McpServerConfig
from ._errors import McpSessionLost
from ._health import McpServerHealth

__all__ = [
    "INTENSITY_WINDOW",
    "SUPERVISOR_BACKOFF",
    "max_restarts_per_child",
    "mcp_actor_name",
    "mcp_child_spec",
    "mcp_supervisor_spec",
]

#: Backoff of the ``mcp`` supervisor between restarts after a lost session.
SUPERVISOR_BACKOFF: Final = Backoff(
    initial=0.5, maximum=30.0, multiplier=2.0, jitter=0.2, reset_after=60.0
)
#: The window of the ``mcp`` supervisor's restart intensity (seconds).
INTENSITY_WINDOW: Final = 60.0


def mcp_actor_name(server: str) -> str:
    """The actor name of MCP server ``server``: ``"mcp:<server>"``."""
    return f"mcp:{server}"


def mcp_child_spec(name: str, config: McpServerConfig) -> ChildSpec:
    """The child spec of one server's actor: permanent, crashes only on :class:`McpSessionLost`."""
    return ChildSpec(
        name=mcp_actor_name(name),
        factory=lambda: McpServerActor(name, config),
        restart=Restart.PERMANENT,
        crash_on=(McpSessionLost,),
        # The SDK's shutdown of a stdio server: close stdin, wait 2 s, SIGTERM, wait, SIGKILL.
        shutdown_timeout=10.0,
        durable=lambda: McpServerHealth(name, config.transport),
    )


def max_restarts_per_child(backoff: Backoff, window: float) -> int:
    """The most restarts one child can need within ``window`` seconds under ``backoff``.

    The fastest sequence: every instance crashes at once and every delay gets the smallest
    jitter. A backoff reset needs ``reset_after`` seconds of uptime, which (when it is at least
    ``window``) puts the crashes before and after it in different windows.
    """
    if backoff.reset_after < window:
        raise ValueError("reset_after must be at least the intensity window")
    restarts, elapsed = 1, 0.0
    while True:
        base = min(backoff.maximum, backoff.initial * backoff.multiplier ** (restarts - 1))
        elapsed += base * (1.0 - backoff.jitter)
        if elapsed >= window:
            return restarts
        restarts += 1


def mcp_supervisor_spec(servers: Mapping[str, McpServerConfig]) -> SupervisorSpec:
    """The ``mcp`` supervisor: one :class:`McpServerActor` per enabled server, in order.

    ``one_for_one``; its intensity allows every server to crash as fast as its backoff permits
    at the same time (see :func:`max_restarts_per_child`), so it never escalates on their
    account.
    """
    children = [
        mcp_child_spec(name, config) for name, config in servers.items() if config.enabled
    ]
    per_child = max_restarts_per_child(SUPERVISOR_BACKOFF, INTENSITY_WINDOW)
    return SupervisorSpec(
        name="mcp",
        children=children,
        strategy=Strategy.ONE_FOR_ONE,
        max_restarts=per_child * max(1, len(children)),
        max_seconds=INTENSITY_WINDOW,
        backoff=SUPERVISOR_BACKOFF,
    )
