"""The tools of every MCP server, as one catalog the model sees.

:class:`ToolCatalog` names tools by the clash rule of :func:`exposed_tool_names` (a name offered
by several servers becomes ``<server>__<tool>`` on each) and calls them. A tool problem never
aborts a turn: an unknown tool, invalid arguments, a timeout or a server that is down all come
back as an error :class:`ToolResult` whose text tells the model what happened, so it can correct
itself or answer without the tool.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from runtime import ActorError, ActorSystem

from ._actor import CallTool, McpServerHealth, mcp_actor_name
from ._client import (
    McpServerError,
    McpToolError,
    ToolResult,
    ToolSpec,
    exposed_tool_names,
    validate_arguments,
)

__all__ = ["ToolCatalog"]

# Beyond the tool's own timeout, how long the ask may take (queueing, the actor's round trip):
# the server's McpToolTimeout, which names the tool, should win over the ask's deadline.
_ASK_GRACE: Final = 5.0


class ToolCatalog:
    """All tools of the MCP servers ``servers`` (names from the configuration, in order).

    :meth:`refresh` reads which servers are ready (from their actors' durable state, so it never
    waits on a server that is starting or restarting); :meth:`openai_tools` and :meth:`call` use
    the names of the last refresh. Not thread-safe; use it from the event loop.
    """

    def __init__(self, system: ActorSystem, servers: Iterable[str]) -> None:
        self._system = system
        self._servers = list(servers)
        self._exposed: dict[str, ToolSpec] = {}

    async def refresh(self) -> None:
        """Take the tools of every server that is ready now; the others' tools disappear."""
        tools_by_server: dict[str, list[ToolSpec]] = {}
        for server in self._servers:
            health = self._health(server)
            if health is not None and health.state == "ready":
                tools_by_server[server] = list(health.tools)
        self._exposed = exposed_tool_names(tools_by_server)

    @property
    def exposed(self) -> dict[str, ToolSpec]:
        """The tools by the name the model sees (a copy)."""
        return dict(self._exposed)

    def lookup(self, exposed_name: str) -> ToolSpec | None:
        """The tool the model calls ``exposed_name``, if there is one."""
        return self._exposed.get(exposed_name)

    def openai_tools(self) -> list[dict[str, Any]]:
        """The ``tools`` list of a chat request, under the exposed names."""
        return [spec.to_openai_tool(name) for name, spec in self._exposed.items()]

    async def call(
        self, exposed_name: str, arguments_json: str, timeout: float | None
    ) -> tuple[ToolSpec | None, ToolResult]:
        """Call a tool by its exposed name with the model's JSON arguments.

        Never raises for a tool problem: an unknown tool (``spec`` ``None``), invalid arguments,
        a tool error or timeout, or a server that is down give an error result (``is_error``)
        written for the model. Cancellation propagates (and cancels the call).
        """
        spec = self._exposed.get(exposed_name)
        if spec is None:
            available = ", ".join(sorted(self._exposed)) or "none"
            return None, _error(
                f"Unknown tool {exposed_name!r}. Available tools: {available}."
            )
        try:
            arguments = validate_arguments(spec, arguments_json)
        except McpToolError as exc:
            return spec, _error(str(exc))
        ask_timeout = None if timeout is None else timeout + _ASK_GRACE
        try:
            ref = self._system.ref(mcp_actor_name(spec.server))
        except KeyError:
            return spec, _unavailable(spec, "it is not running")
        try:
            result = await ref.ask(CallTool(spec.name, arguments, timeout), timeout=ask_timeout)
        except McpToolError as exc:
            return spec, _error(str(exc))
        except McpServerError as exc:
            return spec, _unavailable(spec, exc.reason)
        except ActorError as exc:
            return spec, _unavailable(spec, str(exc))
        if not isinstance(result, ToolResult):
            raise TypeError(f"MCP server actor answered {type(result).__name__}, not ToolResult")
        return spec, result

    def _health(self, server: str) -> McpServerHealth | None:
        try:
            health = self._system.durable(mcp_actor_name(server))
        except KeyError:
            return None
        return health if isinstance(health, McpServerHealth) else None

    def __repr__(self) -> str:
        return f"<ToolCatalog [{len(self._servers)} servers | {len(self._exposed)} tools]>"


def _error(message: str) -> ToolResult:
    return ToolResult(text=message, structured=None, is_error=True)


def _unavailable(spec: ToolSpec, reason: str) -> ToolResult:
    return _error(
        f"Tool {spec.name!r} could not run: its MCP server {spec.server!r} is unavailable"
        f" ({reason}). Try again later or answer without it."
    )
