"""What the provider reads from chat-completion chunks and bodies, decoded from plain data.

The SDK still sends every request and decodes the SSE stream (comments, ``event:`` lines,
``{"error": ...}`` events, ``[DONE]``): the provider asks for plain data with
``client.post(..., cast_to=object, stream=True, stream_cls=openai.AsyncStream[object])`` and gets
one ``dict`` per event (a non-streaming body likewise with ``cast_to=object``). Building the
SDK's pydantic model for a chunk costs ~166 us here; reading the few fields we use from the dict
costs a few us. Why dicts and not msgspec: the SDK's SSE decoder has already run ``json.loads``
by the time we see a chunk, and reading a dict measured faster than converting it to a Struct
(``benchmarks/transport.py`` prints both).

The rules, the same as reading the SDK's typed objects (``tests/test_wire_decode.py`` proves it on
a corpus and on generated data): a missing key reads as ``None``; a value of the wrong type raises
:class:`MalformedResponse` (a ``ValueError``), which :func:`malformed_error` turns into the typed
error the provider raises: :class:`~actors.errors.LLMServerError`, or
:class:`~actors.errors.LLMStreamingError` once text has been relayed. A chunk's ``choices`` must be
a list; a body's may be absent (no answer). Unknown keys are ignored. Reasoning text is
``reasoning`` (OpenRouter) or else ``reasoning_content`` (DeepSeek, vLLM); OpenRouter's
``usage.cost`` is read when it is a number.

The per-chunk results are named tuples: immutable, and about three times cheaper to build than
frozen dataclasses (measured here: 0.9 against 2.5 us), and a chunk builds two or three.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import LLMClientError, LLMServerError, LLMStreamingError
from .messages import ToolCall

__all__ = [
    "Choice",
    "Chunk",
    "Completion",
    "MalformedResponse",
    "StreamAssembly",
    "TokenLogprob",
    "ToolCallDelta",
    "WireUsage",
    "decode_chunk",
    "decode_completion",
    "malformed_error",
]


class MalformedResponse(ValueError):
    """A chunk or body whose shape is not a chat completion's (the message names the field)."""


class ToolCallDelta(NamedTuple):
    """A piece of a streamed tool call: ``arguments`` arrive split over several chunks."""

    # The wire's name, kept although it hides ``tuple.index`` (nobody searches these tuples).
    index: int  # type: ignore[assignment]
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


class TokenLogprob(NamedTuple):
    """One token of ``logprobs.content`` and its log probability."""

    token: str
    logprob: float


class WireUsage(NamedTuple):
    """``usage`` as reported; ``cost`` and ``cost_details`` are OpenRouter's."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: float | None = None
    cost_details: Mapping[str, Any] | None = None


class Choice(NamedTuple):
    """One choice of a chunk (its ``delta``) or of a body (its ``message``)."""

    index: int | None = None  # type: ignore[assignment]
    content: str | None = None
    reasoning: str | None = None
    reasoning_details: tuple[Any, ...] = ()
    refusal: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


class Chunk(NamedTuple):
    """One streamed chunk: what the provider reads from it."""

    model: str | None = None
    choices: tuple[Choice, ...] = ()
    usage: WireUsage | None = None

    @property
    def text(self) -> str:
        """The answer text this chunk adds (the contents of its choices, joined)."""
        choices = self.choices
        if len(choices) == 1:
            return choices[0].content or ""
        return "".join(c.content or "" for c in choices)

    @property
    def has_output(self) -> bool:
        """Whether the chunk carries answer text or a tool-call piece (time to first token)."""
        return any(c.content or c.tool_calls for c in self.choices)


@dataclass(frozen=True, slots=True)
class Completion:
    """A non-streaming body: its first choice's message, usage and model.

    ``tool_calls`` keeps only ``type == "function"`` calls; empty ``arguments`` read as ``"{}"``.
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


def malformed_error(provider: str, model: str, error: Exception,
                    partial_text: str = "") -> LLMClientError:
    """The typed error for a response of the wrong shape: :class:`LLMStreamingError` (not
    retryable) when ``partial_text`` already reached the caller, :class:`LLMServerError` else."""
    detail = f"{provider} sent a malformed response ({type(error).__name__})"
    if partial_text:
        return LLMStreamingError(detail, provider=provider, model=model,
                                 partial_text=partial_text, retryable=False)
    return LLMServerError(detail, provider=provider, model=model)


# -- field readers: a missing key is None, a wrong type raises ----------------------------------


def _str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MalformedResponse(f"{where}.{key} is not a string")


def _int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise MalformedResponse(f"{where}.{key} is not an integer")


def _obj(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    if value is None or type(value) is dict or isinstance(value, Mapping):
        return value
    raise MalformedResponse(f"{where}.{key} is not an object")


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any] | None:
    value = obj.get(key)
    if value is None or isinstance(value, list):
        return value
    raise MalformedResponse(f"{where}.{key} is not a list")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    # ``type() is dict`` first: what json.loads gives, and far cheaper than an ABC check.
    if type(value) is dict or isinstance(value, Mapping):
        return value
    raise MalformedResponse(f"{where} is not an object")


def _reasoning(obj: Mapping[str, Any], where: str) -> str | None:
    reasoning = _str(obj, "reasoning", where)
    return reasoning if reasoning is not None else _str(obj, "reasoning_content", where)


def _logprobs(choice: Mapping[str, Any], where: str) -> tuple[TokenLogprob, ...]:
    logprobs = _obj(choice, "logprobs", where)
    if logprobs is None:
        return ()
    items = _list(logprobs, "content", f"{where}.logprobs")
    if not items:
        return ()
    tokens = []
    for item in items:
        entry = _mapping(item, f"{where}.logprobs.content[]")
        token = _str(entry, "token", "logprobs.content[]")
        logprob = entry.get("logprob")
        if token is None or not isinstance(logprob, int | float) or isinstance(logprob, bool):
            raise MalformedResponse(f"{where}.logprobs.content[] lacks token or logprob")
        tokens.append(TokenLogprob(token, float(logprob)))
    return tuple(tokens)


def _usage(obj: Mapping[str, Any]) -> WireUsage | None:
    usage = _obj(obj, "usage", "chunk")
    if usage is None:
        return None
    prompt_details = _obj(usage, "prompt_tokens_details", "usage")
    completion_details = _obj(usage, "completion_tokens_details", "usage")
    cost = usage.get("cost")
    return WireUsage(
        prompt_tokens=_int(usage, "prompt_tokens", "usage"),
        completion_tokens=_int(usage, "completion_tokens", "usage"),
        total_tokens=_int(usage, "total_tokens", "usage"),
        cached_tokens=(_int(prompt_details, "cached_tokens", "usage.prompt_tokens_details")
                       if prompt_details is not None else None),
        reasoning_tokens=(
            _int(completion_details, "reasoning_tokens", "usage.completion_tokens_details")
            if completion_details is not None else None),
        # Like the price table's absence: a cost that is not a number is no reported cost.
        cost=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
        cost_details=_obj(usage, "cost_details", "usage"),
    )


def _tool_deltas(delta: Mapping[str, Any]) -> tuple[ToolCallDelta, ...]:
    pieces = _list(delta, "tool_calls", "delta")
    if not pieces:
        return ()
    deltas = []
    for raw in pieces:
        piece = _mapping(raw, "delta.tool_calls[]")
        index = _int(piece, "index", "delta.tool_calls[]")
        if index is None:
            raise MalformedResponse("delta.tool_calls[].index is missing")
        function = _obj(piece, "function", "delta.tool_calls[]")
        deltas.append(ToolCallDelta(
            index=index,
            id=_str(piece, "id", "delta.tool_calls[]"),
            name=_str(function, "name", "function") if function is not None else None,
            arguments=_str(function, "arguments", "function") if function is not None else None,
        ))
    return tuple(deltas)


def _choice_delta(raw: Any) -> Choice:
    choice = _mapping(raw, "choices[]")
    delta = _mapping(choice.get("delta"), "choices[].delta")
    if len(delta) == 1 and "content" in delta and choice.get("logprobs") is None:
        # The hot path: a text delta and nothing else.
        return Choice(index=_int(choice, "index", "choices[]"),
                      content=_str(delta, "content", "delta"),
                      finish_reason=_str(choice, "finish_reason", "choices[]"))
    details = _list(delta, "reasoning_details", "delta")
    return Choice(
        index=_int(choice, "index", "choices[]"),
        content=_str(delta, "content", "delta"),
        reasoning=_reasoning(delta, "delta"),
        reasoning_details=tuple(details) if details else (),
        refusal=_str(delta, "refusal", "delta"),
        tool_calls=_tool_deltas(delta),
        finish_reason=_str(choice, "finish_reason", "choices[]"),
        logprobs=_logprobs(choice, "choices[]"),
    )


def decode_chunk(data: Any) -> Chunk:
    """What the provider reads from one streamed chunk (a JSON object as plain data).

    Raises :class:`MalformedResponse` when its shape is wrong (see the module docstring).
    """
    chunk = _mapping(data, "chunk")
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise MalformedResponse("chunk.choices is not a list")
    return Chunk(
        model=_str(chunk, "model", "chunk"),
        choices=tuple(map(_choice_delta, choices)),
        usage=_usage(chunk) if chunk.get("usage") is not None else None,
    )


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
    :class:`MalformedResponse` when the shape is wrong.
    """
    body = _mapping(data, "body")
    model = _str(body, "model", "body")
    usage = _usage(body)
    choices = body.get("choices")
    if not choices:
        return Completion(model=model, usage=usage)
    if not isinstance(choices, list):
        raise MalformedResponse("body.choices is not a list")
    if choices[0] is None:
        return Completion(model=model, usage=usage)
    choice = _mapping(choices[0], "choices[0]")
    # No message reads as an empty one (the choice's finish_reason still counts).
    message = _obj(choice, "message", "choices[0]") or {}
    raw_calls = _list(message, "tool_calls", "message") or ()
    details = _list(message, "reasoning_details", "message")
    return Completion(
        model=model,
        content=_str(message, "content", "message") or "",
        reasoning=_reasoning(message, "message"),
        reasoning_details=tuple(details) if details else (),
        refusal=_str(message, "refusal", "message"),
        tool_calls=tuple(c for c in map(_tool_call, raw_calls) if c is not None),
        finish_reason=_str(choice, "finish_reason", "choices[0]"),
        usage=usage,
        logprobs=_logprobs(choice, "choices[0]"),
    )


@dataclass
class _ToolCallBuilder:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamAssembly:
    """Accumulates a stream's chunks into the answer, with the provider's rules.

    The last non-empty ``model``, ``finish_reason`` and ``usage`` win; text, reasoning and
    refusal concatenate; tool calls are assembled per ``index`` (the id replaced when given, name
    pieces joined, argument pieces joined) and listed by index. Not thread-safe (one stream).
    """

    model: str | None = None
    finish_reason: str | None = None
    usage: WireUsage | None = None
    _text: list[str] = field(default_factory=list)
    _reasoning: list[str] = field(default_factory=list)
    _refusal: list[str] = field(default_factory=list)
    _reasoning_details: list[Any] = field(default_factory=list)
    _logprobs: list[TokenLogprob] = field(default_factory=list)
    _tools: dict[int, _ToolCallBuilder] = field(default_factory=dict)

    def add(self, chunk: Chunk) -> str:
        """Take in one decoded chunk; returns the answer text it adds ("" if none)."""
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.model:
            self.model = chunk.model
        added = ""
        for choice in chunk.choices:
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            if choice.tool_calls:
                self._add_tool_deltas(choice.tool_calls)
            if choice.content:
                self._text.append(choice.content)
                added = choice.content if not added else added + choice.content
            if choice.reasoning:
                self._reasoning.append(choice.reasoning)
            if choice.refusal:
                self._refusal.append(choice.refusal)
            if choice.reasoning_details:
                self._reasoning_details.extend(choice.reasoning_details)
            if choice.logprobs:
                self._logprobs.extend(choice.logprobs)
        return added

    def _add_tool_deltas(self, pieces: tuple[ToolCallDelta, ...]) -> None:
        tools = self._tools
        for piece in pieces:
            builder = tools.setdefault(piece.index, _ToolCallBuilder())
            if piece.id:
                builder.id = piece.id
            if piece.name:
                builder.name += piece.name
            if piece.arguments:
                builder.arguments.append(piece.arguments)

    @property
    def text(self) -> str:
        """The answer text so far (also the partial text of a failed stream)."""
        return "".join(self._text)

    @property
    def reasoning(self) -> str:
        """The reasoning text so far."""
        return "".join(self._reasoning)

    @property
    def refusal(self) -> str:
        """The refusal text so far."""
        return "".join(self._refusal)

    @property
    def reasoning_details(self) -> tuple[Any, ...]:
        """OpenRouter's ``reasoning_details`` items, in order."""
        return tuple(self._reasoning_details)

    @property
    def logprobs(self) -> tuple[TokenLogprob, ...]:
        """The tokens' log probabilities, in order."""
        return tuple(self._logprobs)

    def tool_calls(self) -> list[ToolCall]:
        """The assembled tool calls, by index; empty arguments read as ``"{}"``."""
        return [ToolCall(id=b.id, name=b.name, arguments="".join(b.arguments) or "{}")
                for _, b in sorted(self._tools.items())]
