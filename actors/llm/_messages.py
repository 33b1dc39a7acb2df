"""The messages and results that travel between the domain actors.

Chat messages and tools stay in OpenAI's JSON shape (``{"role": ..., "content": ...}``,
``{"type": "function", "function": {...}}``): that is what the SDK takes and what every
OpenAI-compatible endpoint speaks, so nothing is translated twice.

Who talks to whom::

    caller ──ChatRequest──► RouterActor ──ProviderCall──► ProviderActor
                              │  ──Reserve / Settle / Release──► LedgerActor
    everyone ──(metrics events, actors._metrics_store)──► MetricsActor

A non-streaming ask answers an :class:`LLMResponse`. A streaming ask (``ask_stream``) yields
:class:`TextDelta` and :class:`ReasoningDelta` items as they arrive (reasoning before and between
text, as the model sends it) and ends with one :class:`StreamEnd` carrying the assembled
:class:`LLMResponse` (text, tool calls, usage, cost).
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runtime import Ask, AskStream

__all__ = [
    "Attempt",
    "ChatRequest",
    "DeltaSink",
    "GetSpend",
    "LLMResponse",
    "ProviderCall",
    "ProviderStreamItem",
    "ReasoningDelta",
    "Release",
    "Reservation",
    "Reserve",
    "Settle",
    "SpendSnapshot",
    "StreamBill",
    "StreamEnd",
    "TextDelta",
    "TokenLogprob",
    "ToolCall",
    "Usage",
    "new_request_id",
]

Message = dict[str, Any]
"""One chat message in OpenAI's shape."""


_ids = itertools.count()
_id_prefix = uuid.uuid4().hex[:16]


def _new_prefix() -> None:
    global _id_prefix, _ids
    _id_prefix, _ids = uuid.uuid4().hex[:16], itertools.count()


os.register_at_fork(after_in_child=_new_prefix)


def new_request_id() -> str:
    """A fresh, unique request id: 32 hex digits, this process's random 64-bit prefix and a
    counter (unique across processes and restarts; ``uuid4`` costs a system call per id)."""
    return f"{_id_prefix}{next(_ids):016x}"


class Usage(BaseModel):
    """Tokens used by one call and what they cost (USD; ``None`` when the price is unknown)."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    total_cost: float | None = None
    reasoning_tokens: int = 0
    """Part of ``completion_tokens`` (billed as output; never added to it a second time)."""


class ToolCall(BaseModel):
    """A tool call the model asked for; ``arguments`` is the model's JSON text, unparsed."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: str = "{}"

    def to_message(self) -> Message:
        """This call in the ``tool_calls`` list of an assistant message."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


class TokenLogprob(BaseModel):
    """One answer token and its log probability (``enable_logprobs``)."""

    model_config = ConfigDict(frozen=True)

    token: str
    logprob: float


class Attempt(BaseModel):
    """One try of a request on one provider and model, successful or not."""

    model_config = ConfigDict(frozen=True)

    provider: str
    model: str
    error_type: str | None = None
    error: str | None = None
    duration_ms: float = 0.0
    hedge: bool = False


class LLMResponse(BaseModel):
    """A complete answer: the assistant message and how it was produced."""

    model_config = ConfigDict(frozen=True)

    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    provider: str = ""
    response_time_ms: float = 0.0
    time_to_first_token_ms: float | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    request_id: str = ""
    cost_warning: bool = False
    """This answer cost more than its provider's ``cost_warning_threshold`` (USD per request)."""
    reasoning: str = ""
    """The model's reasoning text, when it sent it (never part of :attr:`message`'s content)."""
    reasoning_details: list[Any] = Field(default_factory=list)
    """OpenRouter's ``reasoning_details``, sent back with the assistant message (some models need
    them to continue after tool results)."""
    logprobs: list[TokenLogprob] | None = None
    """The answer's tokens with log probabilities when they were asked for (``enable_logprobs``)."""
    time_to_first_reasoning_ms: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _specification_form(cls, data: Any) -> Any:
        # The specification builds a response from the assistant message (``message=``) and
        # gives an unknown usage or time as None; without this, pydantic would drop the message
        # silently and refuse the Nones.
        if not isinstance(data, dict) or not (
            "message" in data or data.get("usage", 0) is None
            or data.get("response_time_ms", 0) is None
        ):
            return data
        data = {key: value for key, value in data.items()
                if value is not None or key not in ("usage", "response_time_ms")}
        if "message" in data:
            data.update(_message_fields(data.pop("message"), data))
        return data

    @property
    def message(self) -> Message:
        """The assistant message in OpenAI's shape, ready to append to the history."""
        message: Message = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [call.to_message() for call in self.tool_calls]
        if self.reasoning_details:
            message["reasoning_details"] = list(self.reasoning_details)
        return message


def _message_fields(message: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The fields of an :class:`LLMResponse` that an assistant ``message`` (OpenAI's shape) sets.

    Raises ``ValueError`` for anything else, or when ``given`` sets one of them too.
    """
    if not isinstance(message, dict):
        raise ValueError(f"message must be a dict, not {type(message).__name__}")
    if message.get("role", "assistant") != "assistant":
        raise ValueError(f"message role must be 'assistant', not {message.get('role')!r}")
    fields: dict[str, Any] = {"content": message.get("content") or ""}
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ValueError("message tool_calls must be a list")
    fields["tool_calls"] = [
        {"id": call.get("id"), **(call.get("function") or {})} if isinstance(call, dict) else call
        for call in calls
    ]
    if message.get("reasoning_details"):
        fields["reasoning_details"] = message["reasoning_details"]
    both = sorted(name for name in fields if name in given)
    if both:
        raise ValueError(f"message and {', '.join(both)} given together")
    return fields


@dataclass(frozen=True)
class ChatRequest(Ask["LLMResponse"], AskStream["ProviderStreamItem"]):
    """A request to the router: these messages, these tools, optionally a model and parameters.

    ``model`` ``None`` means each provider's configured model (and its fallbacks). ``params``
    override generation parameters (``temperature``, ``max_tokens``, ...). ``timeout`` is the
    whole request's budget in seconds across every attempt (``None``: the configured default).
    """

    messages: tuple[Message, ...]
    tools: tuple[Message, ...] = ()
    model: str | None = None
    provider: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    request_id: str = field(default_factory=new_request_id)
    turn_id: str | None = None
    """The conversation turn this request is part of: its attempts share ``turn_cost_limit``."""
    turn_cost_limit: float | None = None
    """USD the whole turn may cost (``chat.max_cost_per_turn``), enforced by the ledger."""
    reasoning_effort: str | None = None
    """``minimal``/``low``/``medium``/``high`` for reasoning models (for OpenRouter also a number:
    a budget of reasoning tokens). ``None``: the model's ``model_params``, else the provider's."""
    response_format: dict[str, Any] | None = None
    """OpenAI's ``response_format`` (``{"type": "json_object"}`` or ``json_schema``): the answer
    is then checked to be JSON (:class:`~actors.llm.LLMInvalidJSONError` when it is not)."""
    deltas: DeltaSink | None = field(default=None, compare=False, repr=False)
    """For ``ask_stream``: the caller's own channel for the text and reasoning deltas. Given, each
    delta is awaited on it straight from the provider's reading task (a slow sink slows the
    upstream read) and the stream carries only the :class:`StreamEnd`; ``None``: deltas are
    stream items. Cancellation still flows through the stream (leaving it cancels the call)."""

    @classmethod
    def of(cls, messages: list[Message], tools: list[Message] | None = None,
           **kwargs: Any) -> ChatRequest:
        """Build from lists (copied as ``json.loads(json.dumps(messages))`` would, so later
        changes by the caller do not leak in)."""
        try:
            copied = json_copy(messages)
        except RecursionError:  # a cycle, or deep nesting: the JSON module's error
            copied = json.loads(json.dumps(messages))
        return cls(messages=tuple(copied), tools=tuple(tools or ()), **kwargs)


_SHARED = frozenset({str, int, float, bool, type(None)})


def json_copy(value: Any) -> Any:
    """``json.loads(json.dumps(value))`` without the text in between: lists, tuples and
    string-keyed dicts rebuilt, values of exactly ``str``/``int``/``float``/``bool``/``None``
    shared (immutable, and what the round trip gives back equal); anything else (other key
    types, subclasses, unknown objects) through the round trip itself, its conversions and
    errors. 4x faster on a chat history here (366 -> 88 us for 22 messages)."""
    kind = type(value)
    if kind in _SHARED:
        return value
    if kind is dict:
        if all(type(key) is str for key in value):
            return {key: json_copy(item) for key, item in value.items()}
    elif kind is list or kind is tuple:
        return [json_copy(item) for item in value]
    return json.loads(json.dumps(value))


def _no_report() -> Usage | None:
    return None


@dataclass(slots=True)
class StreamBill:
    """What a stream's provider learns, as it reads, about what the upstream will bill: the
    router charges a stream that ends without its answer by it (written by the provider's
    reading task, read by the router when the attempt ends; one event loop, no lock)."""

    report: Callable[[], Usage | None] = _no_report
    """The upstream's usage report so far, priced; ``None`` while none came."""
    whole: bool = False
    """Closing the stream does not stop the upstream: it bills the whole answer."""


@dataclass(frozen=True)
class ProviderCall(Ask["LLMResponse"], AskStream["ProviderStreamItem"]):
    """What the router asks of one provider actor: one attempt with one model.

    ``ask`` it (``stream=False``) for an :class:`LLMResponse`; ``ask_stream`` it (``stream=True``)
    for :class:`TextDelta` / :class:`ReasoningDelta` items and one :class:`StreamEnd`; or, with
    ``stream=True`` and ``deltas``, ``ask`` it: the deltas go to the sink as they stream, the
    answer is the :class:`LLMResponse`.

    ``prompt_tokens`` is the router's estimate (already checked against the context window), the
    amount the provider's token limiter acquires.
    """

    request: ChatRequest
    model: str
    prompt_tokens: int
    stream: bool = False
    fallback_models: tuple[str, ...] = ()
    deltas: DeltaSink | None = field(default=None, compare=False, repr=False)
    """Where the stream's deltas go instead of the stream (see :attr:`ChatRequest.deltas`)."""
    on_output: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    """Told each piece of a stream's output that is not a delta (a tool call's name and
    arguments) as it is read: the router charges a failed or cancelled attempt for it."""
    bill: StreamBill | None = field(default=None, compare=False, repr=False)
    """Where a stream's provider notes the upstream's usage report and whether closing the
    stream stops its billing: the router charges a failed or cancelled stream by it."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text, as it streams."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning, as it streams (before and between text)."""

    text: str


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a stream: the assembled answer."""

    response: LLMResponse


ProviderStreamItem = TextDelta | ReasoningDelta | StreamEnd

DeltaSink = Callable[[TextDelta | ReasoningDelta], Awaitable[None]]
"""A caller's channel for a stream's deltas (:attr:`ChatRequest.deltas`): awaited per delta."""
"""What ``ask_stream(ProviderCall(stream=True))`` yields."""


@dataclass(frozen=True)
class Reserve(Ask["Reservation"]):
    """Ask the ledger to set aside the worst-case cost of one attempt.

    Answers a :class:`Reservation`, or raises ``LLMCostLimitError``.
    """

    request_id: str
    provider: str
    model: str
    prompt_tokens: int
    max_tokens: int
    turn_id: str | None = None
    """The conversation turn this attempt belongs to (with ``turn_cost_limit``: its budget)."""
    turn_cost_limit: float | None = None
    """``chat.max_cost_per_turn`` in USD: the turn's settled + reserved may not pass it."""


@dataclass(frozen=True)
class Reservation:
    """Money set aside for one attempt until it is settled or released."""

    id: int
    request_id: str
    provider: str
    model: str
    amount: float


@dataclass(frozen=True)
class Settle(Ask["float | None"]):
    """The attempt ended with this usage: charge the actual cost, release the rest.

    ``cost`` is the provider-reported cost when there is one (OpenRouter's ``usage.cost``);
    otherwise the ledger prices the usage with the model's price table.
    """

    reservation_id: int
    usage: Usage
    cost: float | None = None


@dataclass(frozen=True)
class Release(Ask[None]):
    """The attempt failed before costing anything: release the whole reservation."""

    reservation_id: int


@dataclass(frozen=True)
class GetSpend(Ask["SpendSnapshot"]):
    """Ask the ledger for a :class:`SpendSnapshot`."""


@dataclass(frozen=True)
class SpendSnapshot:
    """Today's money: settled, currently reserved, and the limits."""

    day: str
    settled: float
    reserved: float
    open_reservations: int
    daily_limit: float | None
    per_request_limit: float | None
