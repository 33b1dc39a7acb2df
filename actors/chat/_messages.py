"""What a session is asked (:class:`RunTurn`, :class:`ClearHistory`) and what a turn streams
back (:data:`TurnEvent`); the session's behaviour is in ``_session``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from actors.llm import DeltaSink, LLMResponse, Usage
from runtime import Ask, AskStream

__all__ = [
    "ChatSettings",
    "ClearHistory",
    "HistoryWriteError",
    "RunTurn",
    "SessionMessage",
    "ToolCallFinished",
    "ToolCallStarted",
    "TurnComplete",
    "TurnEvent",
    "TurnReasoning",
    "TurnText",
    "conversation_label",
]


@dataclass(frozen=True)
class RunTurn(AskStream["TurnEvent"]):
    """Run one turn with the user's ``text``; ask it with ``ask_stream`` (see the module doc)."""

    text: str
    request_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    """This turn's model (one of the configured ones; the router still falls back from it)."""
    reasoning_effort: str | None = None
    """``minimal`` ... ``high`` for reasoning models (``None``: the configured default)."""
    deltas: DeltaSink | None = field(default=None, compare=False, repr=False)
    """The caller's own channel for the model's text and reasoning deltas: given, they go there
    straight from the provider (``ChatRequest.deltas``) instead of as :class:`TurnText` /
    :class:`TurnReasoning` items of this stream (the other events still come as items)."""


@dataclass(frozen=True)
class ClearHistory(Ask[None]):
    """Forget the conversation (after the turns queued before it); answers ``None``."""


@dataclass(frozen=True)
class TurnText:
    """A piece of the assistant's answer, as it streams."""

    text: str


@dataclass(frozen=True)
class TurnReasoning:
    """A piece of the model's reasoning, as it streams (never stored as the answer)."""

    text: str


class HistoryWriteError(Exception):
    """The conversation could not be saved; the turn ends with this instead of completing.

    ``error_type`` is its name on the wire.
    """

    error_type: ClassVar[str] = "history_unavailable"


@dataclass(frozen=True)
class ToolCallStarted:
    """The model asked for a tool and it is running.

    ``server`` is ``""`` for a tool nobody offers; ``arguments`` is the parsed JSON object, or the
    model's text when it is not one.
    """

    call_id: str
    server: str
    tool: str
    arguments: Any


@dataclass(frozen=True)
class ToolCallFinished:
    """A tool call ended; ``is_error``: the model got an error as the tool's result."""

    call_id: str
    server: str
    tool: str
    is_error: bool
    result_preview: str
    duration_ms: float


@dataclass(frozen=True)
class TurnComplete:
    """The last event of a turn: usage summed over every model call of the turn.

    ``cost`` is the turn's cost in USD (``None`` when a call's cost is unknown);
    ``finish_reason`` is the last answer's (``"stop"``, ``"length"``, ...) or
    ``"max_tool_hops"`` when the tool loop hit its limit.
    """

    usage: Usage
    cost: float | None
    provider: str
    model: str
    hops: int
    finish_reason: str
    cost_warning: bool = False
    """A model call of the turn cost more than its provider's ``cost_warning_threshold``."""

    @classmethod
    def of(cls, answers: Sequence[LLMResponse], hops: int, finish_reason: str) -> TurnComplete:
        """The end of a turn whose model calls answered ``answers`` (the last one ends it)."""
        usages = [answer.usage for answer in answers]
        costs = [usage.total_cost for usage in usages]
        cost = None if any(c is None or math.isnan(c) for c in costs) else sum(
            c for c in costs if c is not None
        )
        total = Usage(
            prompt_tokens=sum(u.prompt_tokens for u in usages),
            completion_tokens=sum(u.completion_tokens for u in usages),
            total_tokens=sum(u.total_tokens for u in usages),
            cached_tokens=sum(u.cached_tokens for u in usages),
            reasoning_tokens=sum(u.reasoning_tokens for u in usages),
            total_cost=cost,
        )
        last = answers[-1]
        return cls(
            usage=total,
            cost=cost,
            provider=last.provider,
            model=last.model,
            hops=hops,
            finish_reason=finish_reason,
            cost_warning=any(answer.cost_warning for answer in answers),
        )


TurnEvent = TurnText | TurnReasoning | ToolCallStarted | ToolCallFinished | TurnComplete
"""What ``ask_stream(RunTurn(...))`` yields: deltas and tool events, then one TurnComplete."""

SessionMessage = RunTurn | ClearHistory
"""What a session handles (each declares its answer)."""


class ChatSettings(Protocol):
    """What a session reads from the ``chat:`` configuration (``server.config.ChatConfig``)."""

    @property
    def system_prompt(self) -> str: ...
    @property
    def max_tool_hops(self) -> int: ...
    @property
    def tool_timeout(self) -> float: ...
    @property
    def context_budget_tokens(self) -> int | None: ...
    @property
    def max_history_messages(self) -> int: ...
    @property
    def max_history_bytes(self) -> int: ...
    @property
    def max_queued_turns(self) -> int: ...
    @property
    def max_tool_result_chars(self) -> int: ...
    @property
    def max_cost_per_turn(self) -> float | None: ...


def conversation_label(conversation_id: str) -> str:
    """How a log line names a conversation: the first 8 characters of its id. The whole id is
    the capability to use the conversation (README), so it is never logged."""
    return f"{conversation_id[:8]}..."
