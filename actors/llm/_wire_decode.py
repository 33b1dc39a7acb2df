"""What the provider reads from chat-completion chunks and bodies, decoded from plain data.

The SDK still sends every request and decodes the SSE stream (comments, ``event:`` lines,
``{"error": ...}`` events, ``[DONE]``): the provider asks for plain data with
``client.post(..., cast_to=object, stream=True, stream_cls=openai.AsyncStream[object])`` and gets
one ``dict`` per event (a non-streaming body likewise with ``cast_to=object``). A chunk is then
converted with ``msgspec.convert`` into the frozen Structs below, which declare only the fields
we read. Measured here per ~300-byte text chunk (``benchmarks/transport.py``): the SDK's pydantic
model ~166-270 us; reading the dict field by field in Python ~6 us; ``msgspec.convert`` ~0.7 us.
Non-streaming bodies (one per call) are read field by field, their ``usage`` and ``logprobs``
into the same Structs.

The rules, the same as reading the SDK's typed objects (the differential test proves it on
a corpus and on generated data): a missing key reads as ``None``; a value of the wrong type raises
:class:`MalformedResponse` (a ``ValueError``), which :func:`malformed_error` turns into the typed
error the provider raises: :class:`~actors.llm.LLMServerError`, or
:class:`~actors.llm.LLMStreamingError` once text has been relayed. A chunk's ``choices`` must be
a list and its ``delta`` an object; a body's ``choices`` may be absent (no answer) and its
message too (an empty one). Unknown keys are ignored; an integer is never a boolean or a float.
Reasoning text is ``reasoning`` (OpenRouter) or else ``reasoning_content`` (DeepSeek, vLLM);
OpenRouter's ``usage.cost`` counts when it is a number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import msgspec
from pydantic import TypeAdapter, ValidationError

from ._errors import LLMClientError, LLMServerError, LLMStreamingError
from ._messages import ToolCall
from ._stream_assembly import (
    MAX_TOOL_CALLS,
    MalformedResponse,
    NoEvent,
    StreamAssembly,
    TooManyToolCalls,
)

_T = TypeVar("_T")
# Strict (no "1" for 1, no true for 1), as json.loads gave it: dicts, lists, str, int, float.
_convert = msgspec.convert

__all__ = [
    "Choice",
    "Chunk",
    "Completion",
    "MalformedResponse",
    "StreamAssembly",
    "TokenLogprob",
    "TooManyValues",
    "ToolCallDelta",
    "WireUsage",
    "decode_chunk",
    "decode_completion",
    "malformed_error",
    "value_bound",
]

#: JSON values (counted as ``,``, ``{`` and ``[``, strings' own included) any event or body may
#: hold, plus :func:`value_bound`'s share per output token: past it, the upstream's JSON is
#: refused unparsed. Parsing builds an object per value, ~0.04-0.1 us each while holding the
#: event loop: one 32 MiB event of ``[{},{},...]`` held it for seconds, 20 MB of ``[1,1,...]``
#: (no bracket to count) 1-2 s.
BASE_VALUES = 65_536
#: Commas and brackets one output token may bring in text: 8 in one token at most (measured over
#: the whole vocabularies: ``",,,,,,,,"`` is one token of cl100k_base, ``",,,,"`` of
#: o200k_base; ``{`` and ``[`` 3 at most), twice (a reasoning text may come as ``reasoning`` and
#: again in ``reasoning_details``).
VALUES_PER_TOKEN = 16
#: Values of one log probability (the token's own, or a top alternative): 7 of its structure, 8
#: in its token's text, and its ``bytes``, a number per byte (127 commas: tokens run to 128).
VALUES_PER_LOGPROB = 142


def value_bound(body: Mapping[str, Any]) -> int:
    """How many JSON values (commas and brackets) one event or body of the answer to ``body``
    may hold: more than its whole output limit could bring (its text, all commas and brackets;
    its log probabilities, for the token and each top alternative), so that no real answer
    reaches it. Counted with three ``count`` calls, before any JSON is parsed."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    per_token = VALUES_PER_TOKEN
    if body.get("logprobs") is True:
        top = body.get("top_logprobs")
        per_token += VALUES_PER_LOGPROB * (1 + (top if isinstance(top, int) else 0))
    choices = body.get("n")
    return BASE_VALUES + int(limit) * per_token * (choices if isinstance(choices, int)
                                                  and choices > 1 else 1)


class TooManyValues(MalformedResponse):
    """An event or body holding more JSON values than :func:`value_bound`."""

    def __init__(self, bound: int) -> None:
        super().__init__(f"more than {bound} JSON values in one event or body")


class FunctionDelta(msgspec.Struct, frozen=True, kw_only=True):
    """The ``function`` of a tool-call piece."""

    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, frozen=True, kw_only=True):
    """A piece of a streamed tool call: ``arguments`` arrive split over several chunks."""

    index: int
    id: str | None = None
    function: FunctionDelta | None = None


class TokenLogprob(msgspec.Struct, frozen=True, kw_only=True):
    """One token of ``logprobs.content`` and its log probability."""

    token: str
    logprob: float


class Logprobs(msgspec.Struct, frozen=True, kw_only=True):
    """A choice's ``logprobs``."""

    content: list[TokenLogprob] | None = None


_Count = int | float | bool | str | None
"""What a detail count may be sent as; :func:`_lax_count` leaves an ``int`` or ``None``."""
_LAX_COUNT: TypeAdapter[int | None] = TypeAdapter(int | None)


def _lax_count(value: _Count) -> int | None:
    """A detail count read the way the SDK's typed objects read it (its optional ints are
    pydantic's lax ``int``: ``True`` is 1, ``2.0`` and ``"2"`` are 2); anything else raises
    ``ValueError``, which ``msgspec.convert`` reports as a malformed field."""
    if value is None or type(value) is int:
        return value
    try:
        return _LAX_COUNT.validate_python(value)
    except ValidationError:
        raise ValueError(f"{value!r} is not a count") from None


class PromptTokensDetails(msgspec.Struct, kw_only=True):
    """``usage.prompt_tokens_details``."""

    cached_tokens: _Count = None

    def __post_init__(self) -> None:
        self.cached_tokens = _lax_count(self.cached_tokens)


class CompletionTokensDetails(msgspec.Struct, kw_only=True):
    """``usage.completion_tokens_details``."""

    reasoning_tokens: _Count = None

    def __post_init__(self) -> None:
        self.reasoning_tokens = _lax_count(self.reasoning_tokens)


class WireUsage(msgspec.Struct, frozen=True, kw_only=True):
    """``usage`` as reported; ``cost`` and ``cost_details`` are OpenRouter's.

    ``cost`` is kept as sent: :attr:`reported_cost` is it when it is a number (a cost that is not
    a number is no reported cost, as when the provider reports none), plus
    ``cost_details.upstream_inference_cost`` for a BYOK request (the provider bills that to the
    user's own key; ``cost`` is OpenRouter's fee): when ``is_byok`` says so, or, if it says
    nothing, when the upstream cost is the larger (without BYOK, ``cost`` holds the upstream's).
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None
    cost: Any = None
    cost_details: dict[str, Any] | None = None
    is_byok: Any = None

    @property
    def cached_tokens(self) -> int | None:
        details = self.prompt_tokens_details
        return cast(int | None, details.cached_tokens) if details is not None else None

    @property
    def reasoning_tokens(self) -> int | None:
        details = self.completion_tokens_details
        return cast(int | None, details.reasoning_tokens) if details is not None else None

    @property
    def reported_cost(self) -> float | None:
        cost = _number(self.cost)
        if cost is None:
            return None
        details = self.cost_details
        upstream = _number(details.get("upstream_inference_cost")) if details else None
        if upstream is not None and upstream > 0 and (
                self.is_byok is True or (self.is_byok is None and upstream > cost)):
            return cost + upstream
        return cost


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number (a bool is not one)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class Delta(msgspec.Struct, frozen=True, kw_only=True):
    """A choice's ``delta``. :attr:`reasoning_text` is ``reasoning`` (OpenRouter) or else
    ``reasoning_content`` (DeepSeek, vLLM): some servers send both, with the same text."""

    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    refusal: str | None = None
    reasoning_details: list[Any] | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @property
    def reasoning_text(self) -> str | None:
        return self.reasoning if self.reasoning is not None else self.reasoning_content


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    """One choice of a streamed chunk."""

    delta: Delta
    index: int | None = None
    finish_reason: str | None = None
    logprobs: Logprobs | None = None


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    """One streamed chunk: what the provider reads from it."""

    choices: list[Choice]
    model: str | None = None
    usage: WireUsage | None = None

    @property
    def text(self) -> str:
        """The answer text this chunk adds (the contents of its choices, joined)."""
        choices = self.choices
        if len(choices) == 1:
            return choices[0].delta.content or ""
        return "".join(c.delta.content or "" for c in choices)

    @property
    def has_output(self) -> bool:
        """Whether the chunk carries answer text or a tool-call piece (time to first token)."""
        return any(c.delta.content or c.delta.tool_calls for c in self.choices)


@dataclass(frozen=True, slots=True)
class Completion:
    """A non-streaming body: its first choice's message, usage and model.

    ``tool_calls`` keeps only ``type == "function"`` calls; empty ``arguments`` read as ``"{}"``.
    ``error`` is the body's ``error`` when it has no choice: an error answered with a 2xx status
    (OpenRouter does so when the model's own provider failed), not an empty answer.
    """

    model: str | None = None
    content: str = ""
    reasoning: str | None = None
    reasoning_details: tuple[Any, ...] = ()
    refusal: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    usage: WireUsage | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    error: Any = None


def malformed_error(provider: str, model: str, error: Exception,
                    partial_text: str = "") -> LLMClientError:
    """The typed error for a response of the wrong shape: :class:`LLMStreamingError` (not
    retryable) when ``partial_text`` already reached the caller, :class:`LLMServerError` else.

    The latter has ``status_code`` 200: the upstream answered (and billed) what we cannot read,
    so the attempt is charged (see :mod:`~actors.llm._attempt_spend`).
    """
    # Our own words for these; another error's text may hold the upstream's.
    what = (str(error) if isinstance(error, TooManyToolCalls | NoEvent | TooManyValues)
            else type(error).__name__)
    detail = f"{provider} sent a malformed response ({what})"
    if partial_text:
        return LLMStreamingError(detail, provider=provider, model=model,
                                 partial_text=partial_text, retryable=False)
    return LLMServerError(detail, provider=provider, model=model, status_code=200)


def decode_chunk(data: Any) -> Chunk:
    """What the provider reads from one streamed chunk (a JSON object as plain data).

    Raises :class:`MalformedResponse` when its shape is wrong (see the module docstring).
    """
    try:
        return _convert(data, Chunk)
    except msgspec.ValidationError as exc:
        usage = _lax_usage(data.get("usage")) if isinstance(data, Mapping) else None
        if usage is not None:
            with contextlib.suppress(msgspec.ValidationError):
                return _convert({**data, "usage": usage}, Chunk)
        raise MalformedResponse(f"chunk: {exc}") from None


_USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
_LAX_INT: TypeAdapter[int] = TypeAdapter(int)


def _lax_usage(usage: Any) -> Mapping[str, Any] | None:
    """``usage`` with its three counts read as the SDK reads them when one is not an ``int``,
    or ``None`` when there is nothing lax to read (the strict rule stands).

    The SDK first validates a whole ``usage`` as its ``CompletionUsage`` (pydantic's lax mode:
    ``false`` is 0, ``2.0`` and ``"2"`` are 2) and keeps the values as sent only when that fails,
    e.g. when a count is missing or null. Only a malformed response takes this path.
    """
    if not isinstance(usage, Mapping) or all(
            type(usage.get(key)) is int for key in _USAGE_COUNTS):
        return None
    try:
        return {**usage, **{key: _LAX_INT.validate_python(usage[key]) for key in _USAGE_COUNTS}}
    except (KeyError, ValidationError):
        return None


def _decode_usage(raw: Any) -> WireUsage | None:
    try:
        return _optional(raw, WireUsage, "usage")
    except MalformedResponse:
        lax = _lax_usage(raw)
        if lax is None:
            raise
        return _optional(lax, WireUsage, "usage")


# -- non-streaming bodies: read once per call, field by field ----------------------------------


def _str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MalformedResponse(f"{where}.{key} is not a string")


def _obj(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    if value is None or isinstance(value, Mapping):
        return value
    raise MalformedResponse(f"{where}.{key} is not an object")


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any] | None:
    value = obj.get(key)
    if value is None or isinstance(value, list):
        return value
    raise MalformedResponse(f"{where}.{key} is not a list")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    raise MalformedResponse(f"{where} is not an object")


def _optional(value: Any, kind: type[_T], where: str) -> _T | None:
    if value is None:
        return None
    try:
        return _convert(value, kind)
    except msgspec.ValidationError as exc:
        raise MalformedResponse(f"{where}: {exc}") from None


def _tool_call(raw: Any) -> ToolCall | None:
    call = _mapping(raw, "message.tool_calls[]")
    if _str(call, "type", "message.tool_calls[]") != "function":
        return None
    function = _mapping(call.get("function"), "message.tool_calls[].function")
    call_id = _str(call, "id", "message.tool_calls[]")
    name = _str(function, "name", "function")
    if call_id is None or name is None:
        raise MalformedResponse("message.tool_calls[] lacks its id or name")
    arguments = _str(function, "arguments", "function")
    return ToolCall(id=call_id, name=name, arguments=arguments or "{}")


def decode_completion(data: Any) -> Completion:
    """What the provider reads from a non-streaming body (a JSON object as plain data).

    Only the first choice is read; no choice (or a null one) is an empty answer. Raises
    :class:`MalformedResponse` when the shape is wrong (:class:`TooManyToolCalls` past
    :data:`MAX_TOOL_CALLS`).
    """
    body = _mapping(data, "body")
    model = _str(body, "model", "body")
    usage = _decode_usage(body.get("usage"))
    choices = body.get("choices")
    if not choices:
        return Completion(model=model, usage=usage, error=body.get("error") or None)
    if not isinstance(choices, list):
        raise MalformedResponse("body.choices is not a list")
    if choices[0] is None:
        return Completion(model=model, usage=usage)
    choice = _mapping(choices[0], "choices[0]")
    # No message reads as an empty one (the choice's finish_reason still counts).
    message = _obj(choice, "message", "choices[0]") or {}
    raw_calls = _list(message, "tool_calls", "message") or ()
    if len(raw_calls) > MAX_TOOL_CALLS:
        raise TooManyToolCalls()
    details = _list(message, "reasoning_details", "message")
    reasoning = _str(message, "reasoning", "message")
    logprobs = _optional(choice.get("logprobs"), Logprobs, "choices[0].logprobs")
    return Completion(
        model=model,
        content=_str(message, "content", "message") or "",
        reasoning=reasoning if reasoning is not None else _str(
            message, "reasoning_content", "message"),
        reasoning_details=tuple(details) if details else (),
        refusal=_str(message, "refusal", "message"),
        tool_calls=tuple(c for c in map(_tool_call, raw_calls) if c is not None),
        finish_reason=_str(choice, "finish_reason", "choices[0]"),
        usage=usage,
        logprobs=tuple(logprobs.content or ()) if logprobs is not None else (),
    )
