"""The tools of every MCP server, as one catalog the model sees.

:class:`ToolCatalog` names tools by the clash rule of :func:`exposed_tool_names` (a name offered
by several servers becomes ``<server>__<tool>`` on each) and calls them. A turn calls the tools
through the copy its :meth:`~ToolCatalog.refresh` returned: another conversation's refresh may
give a name that turn was offered to another tool (a server restarted meanwhile).

A tool problem never aborts a turn: an unknown tool, invalid arguments, a timeout or a server
that is down all come back as an error :class:`ToolResult` whose text tells the model what
happened, so it can correct itself or answer without the tool.

What the catalog bounds, because the model (or a server) controls it:

- **Tools offered**: at most ``max_tools`` (OpenAI refuses a request with more than 128), in the
  configured server order, each description cut to ``max_description_chars``; a tool whose input
  schema has more than ``max_schema_chars`` characters of JSON is left out (it goes with every
  request, and cannot be cut and stay valid), and so is one whose schema would take the offered
  schemas past ``max_offered_schema_chars`` together (128 tools of 16 KB each would put 2 MB of
  schema in every request; a later, smaller one may still fit). What was left out is logged once
  and shown by :attr:`ToolCatalog.limits` (``/health``).
- **Arguments**: at most ``max_argument_bytes`` of JSON, validated in a worker thread; a schema's
  ``pattern`` is matched with a time limit (``validation_seconds``) and without the GIL, so a
  backtracking regex with a model-made argument fails that call instead of freezing every socket.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.to_thread

from runtime import ActorError, ActorSystem

from ._arguments import validate_arguments
from ._errors import McpServerError, McpToolError
from ._health import HEALTH_NAMES, McpServerHealth, health_names
from ._messages import CallTool
from ._supervision import mcp_actor_name
from ._tool_names import exposed_tool_names
from ._tool_types import ToolResult, ToolSpec

__all__ = ["ToolCatalog", "ToolLimits"]

logger = logging.getLogger(__name__)

#: OpenAI refuses a request that offers more tools than this.
MAX_TOOLS: Final = 128
#: The offered tools' input schemas together, in characters of JSON (~64-90k tokens at most).
MAX_OFFERED_SCHEMA_CHARS: Final = 262_144

# Beyond the tool's own timeout, how long the ask may take (queueing, the actor's round trip):
# the server's McpToolTimeout, which names the tool, should win over the ask's deadline.
_ASK_GRACE: Final = 5.0


class ToolCatalog:
    """All tools of the MCP servers ``servers`` (names from the configuration, in order).

    :meth:`refresh` reads which servers are ready (from their actors' durable state, so it never
    waits on a server that is starting or restarting); :meth:`openai_tools` and :meth:`call` use
    the names of the last refresh, and :meth:`refresh` returns a copy that keeps them. Not
    thread-safe; use it from the event loop.
    """

    def __init__(
        self,
        system: ActorSystem,
        servers: Iterable[str],
        *,
        max_tools: int = MAX_TOOLS,
        max_description_chars: int = 1024,
        max_schema_chars: int = 16384,
        max_offered_schema_chars: int = MAX_OFFERED_SCHEMA_CHARS,
        max_argument_bytes: int = 65536,
        validation_seconds: float = 1.0,
    ) -> None:
        self._system = system
        self._servers = list(servers)
        self._exposed: dict[str, ToolSpec] = {}
        self._max_tools = max_tools
        self._max_description_chars = max_description_chars
        self._max_schema_chars = max_schema_chars
        self._max_offered_schema_chars = max_offered_schema_chars
        self._max_argument_bytes = max_argument_bytes
        self._validation_seconds = validation_seconds
        self._limits = ToolLimits(offered=0, omitted=(), descriptions_cut=())
        # what the last refresh read, and openai_tools() of it
        self._ready: tuple[tuple[str, tuple[ToolSpec, ...]], ...] | None = None
        self._tools: list[dict[str, Any]] = []

    async def refresh(self) -> ToolCatalog:
        """Take the tools of every server that is ready now; the others' tools disappear.

        Returns a copy of the catalog as of now: later refreshes of this one never change its
        names. A turn offers the model the copy's :meth:`openai_tools` and calls tools with the
        copy's :meth:`call`, so a name it was offered runs the tool it named then (or fails as
        that tool would), never the tool a later refresh gave the name to.
        """
        ready = tuple((server, health.tools) for server in self._servers
                      if (health := self._health(server)) is not None and health.state == "ready")
        if ready == self._ready:
            return self._snapshot()  # the same servers with the same tools: every turn's case
        self._ready = ready
        exposed = exposed_tool_names({server: list(tools) for server, tools in ready})
        kept: list[str] = []
        refused: list[str] = []
        over_total: list[str] = []
        omitted_list: list[str] = []
        total = 0
        for name, spec in exposed.items():
            size = _schema_chars(spec)
            if size > self._max_schema_chars:
                refused.append(name)
            elif len(kept) >= self._max_tools:
                omitted_list.append(name)
            elif total + size > self._max_offered_schema_chars:
                over_total.append(name)
            else:
                kept.append(name)
                total += size
        omitted = tuple(omitted_list)
        cut: list[str] = []
        self._exposed = {}
        for name in kept:
            spec = exposed[name]
            if len(spec.description) > self._max_description_chars:
                cut.append(name)
                spec = dataclasses.replace(
                    spec, description=spec.description[: self._max_description_chars - 1] + "…"
                )
            self._exposed[name] = spec
        self._tools = [spec.to_openai_tool(name) for name, spec in self._exposed.items()]
        limits = ToolLimits(offered=len(kept), omitted=omitted, descriptions_cut=tuple(cut),
                            schemas_refused=tuple(refused), schemas_over_total=tuple(over_total))
        if dataclasses.replace(limits, offered=0) != dataclasses.replace(
            self._limits, offered=0
        ) and (omitted or cut or refused or over_total):
            logger.warning(
                "MCP tools: offering %d of %d (at most %d per request); left out: %s;"
                " descriptions cut to %d characters: %s%s%s",
                len(kept), len(exposed), self._max_tools, _named(omitted),
                self._max_description_chars, _named(cut),
                f"; input schemas over {self._max_schema_chars} characters, left out:"
                f" {_named(refused)}" if refused else "",
                f"; past {self._max_offered_schema_chars} characters of schemas in all, left"
                f" out: {_named(over_total)}" if over_total else "",
            )
        self._limits = limits
        return self._snapshot()

    def _snapshot(self) -> ToolCatalog:
        # A shallow copy is enough: a refresh replaces _exposed and _tools, never changes them.
        return copy.copy(self)

    @property
    def limits(self) -> ToolLimits:
        """What the last :meth:`refresh` offered and what it left out."""
        return self._limits

    @property
    def exposed(self) -> dict[str, ToolSpec]:
        """The tools by the name the model sees (a copy)."""
        return dict(self._exposed)

    def lookup(self, exposed_name: str) -> ToolSpec | None:
        """The tool the model calls ``exposed_name``, if there is one."""
        return self._exposed.get(exposed_name)

    def openai_tools(self) -> list[dict[str, Any]]:
        """The ``tools`` list of a chat request, under the exposed names (built once per change
        of the servers' tools; the list is new, its tool dicts are shared: do not mutate them)."""
        return list(self._tools)

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
        if len(arguments_json) > self._max_argument_bytes // 4 and (
            len(arguments_json.encode()) > self._max_argument_bytes
        ):
            return spec, _error(
                f"Invalid arguments for tool {spec.name!r}: larger than"
                f" {self._max_argument_bytes} bytes. Send shorter arguments."
            )
        deadline = time.monotonic() + self._validation_seconds
        try:
            # A worker thread: parsing and validating may take a while, and ``pattern`` is
            # matched without the GIL under ``deadline`` (an abandoned thread ends by then).
            arguments = await anyio.to_thread.run_sync(
                functools.partial(validate_arguments, spec, arguments_json, deadline=deadline),
                abandon_on_cancel=True,
            )
        except McpToolError as exc:
            return spec, _error(str(exc))
        except RecursionError:
            return spec, _error(
                f"Invalid arguments for tool {spec.name!r}: nested too deeply."
            )
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


@dataclass(frozen=True)
class ToolLimits:
    """What the catalog offers the model: ``offered`` tools; ``omitted`` (exposed names) beyond
    the limit; ``descriptions_cut``: tools whose description was shortened; ``schemas_refused``:
    tools left out because their input schema is too big; ``schemas_over_total``: tools left out
    because their schema did not fit in what the offered schemas may have together."""

    offered: int
    omitted: tuple[str, ...]
    descriptions_cut: tuple[str, ...]
    schemas_refused: tuple[str, ...] = ()
    schemas_over_total: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``/health``: each list bounded by :func:`health_names`, with
        the count of the lists that may be longer."""
        return {
            "offered": self.offered,
            "omitted": health_names(self.omitted),
            "omitted_count": len(self.omitted),
            "descriptions_cut": health_names(self.descriptions_cut),
            "schemas_refused": health_names(self.schemas_refused),
            "schemas_refused_count": len(self.schemas_refused),
            "schemas_over_total": health_names(self.schemas_over_total),
            "schemas_over_total_count": len(self.schemas_over_total),
        }


def _named(names: Sequence[str]) -> str:
    """``names`` for a log line: as many as ``/health`` shows, then how many in all (a server
    may list 16,384 tools)."""
    shown = ", ".join(health_names(names)) or "none"
    return shown if len(names) <= HEALTH_NAMES else f"{shown}, ... ({len(names)} in all)"


def _schema_chars(spec: ToolSpec) -> int:
    return len(json.dumps(spec.input_schema, ensure_ascii=False, separators=(",", ":")))


def _error(message: str) -> ToolResult:
    return ToolResult(text=message, structured=None, is_error=True)


def _unavailable(spec: ToolSpec, reason: str) -> ToolResult:
    return _error(
        f"Tool {spec.name!r} could not run: its MCP server {spec.server!r} is unavailable"
        f" ({reason}). Try again later or answer without it."
    )
