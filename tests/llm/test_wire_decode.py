"""Differential test of actors._wire_decode against the SDK's typed objects.

Every stream of the corpus (and every generated one) runs as SSE bytes through two real
``openai.AsyncStream`` instances: one yielding ``ChatCompletionChunk`` models (the SDK's own
construction), read by :func:`_reference_chunk` and :class:`_ReferenceAssembly` (the provider's
reading of typed objects before plain data, fields from ``model_extra`` included); one yielding
plain dicts, read by ``decode_chunk`` and ``StreamAssembly``. Both must extract the same values
chunk by chunk and in the end, or fail with the same error class (and partial text).
Non-streaming bodies likewise through the client's ``_process_response_data`` into
``ChatCompletion``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    chat_completion,
)
from openai.types.chat import chat_completion_chunk as chunk_types

from actors.llm._error_mapping import map_sdk_errors
from actors.llm._errors import (
    LLMBadRequestError,
    LLMClientError,
    LLMRateLimitError,
    LLMServerError,
    LLMStreamingError,
)
from actors.llm._messages import ToolCall
from actors.llm._wire_decode import (
    Choice,
    Chunk,
    Completion,
    CompletionTokensDetails,
    Delta,
    FunctionDelta,
    Logprobs,
    MalformedResponse,
    PromptTokensDetails,
    StreamAssembly,
    TokenLogprob,
    ToolCallDelta,
    WireUsage,
    decode_chunk,
    decode_completion,
    malformed_error,
)

PROVIDER, MODEL = "sim", "gpt-4o-mini"
_MALFORMED = (AttributeError, TypeError, ValueError, KeyError, IndexError)


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1",
                                  max_retries=0) as sdk:
        yield sdk


# -- the reference: the SDK's typed objects, read the way the provider read them ---------------


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError("not a string")


def _int(value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError("not an integer")


def _list(value: Any) -> list[Any] | None:
    if value is None or isinstance(value, list):
        return value
    raise TypeError("not a list")


def _dict(value: Any) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise TypeError("not an object")


def _is_model(value: Any) -> bool:
    return isinstance(value, openai.BaseModel)


def _ref_logprobs(logprobs: Any) -> Logprobs | None:
    if logprobs is None:
        return None
    if not _is_model(logprobs):
        raise TypeError("logprobs is not an object")
    items = _list(logprobs.content)
    if items is None:
        return Logprobs()
    result = []
    for item in items:
        if not _is_model(item):
            raise TypeError("logprob is not an object")
        token, logprob = _str(item.token), item.logprob
        if token is None or not isinstance(logprob, float):
            raise TypeError("no token or logprob")
        result.append(TokenLogprob(token=token, logprob=logprob))
    return Logprobs(content=result)


def _ref_usage(usage: Any) -> WireUsage | None:
    if usage is None:
        return None
    if not _is_model(usage):
        raise TypeError("usage is not an object")
    extra = usage.model_extra or {}
    prompt, completion = usage.prompt_tokens_details, usage.completion_tokens_details
    for details in (prompt, completion):
        if details is not None and not _is_model(details):
            raise TypeError("details are not an object")
    return WireUsage(
        prompt_tokens=_int(usage.prompt_tokens),
        completion_tokens=_int(usage.completion_tokens),
        total_tokens=_int(usage.total_tokens),
        prompt_tokens_details=PromptTokensDetails(cached_tokens=_int(prompt.cached_tokens))
        if prompt is not None else None,
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=_int(completion.reasoning_tokens))
        if completion is not None else None,
        cost=extra.get("cost"),
        cost_details=_dict(extra.get("cost_details")),
        is_byok=extra.get("is_byok"),
    )


def _ref_tool_deltas(pieces: Any) -> list[ToolCallDelta] | None:
    if _list(pieces) is None:
        return None
    result = []
    for piece in pieces:
        if not isinstance(piece, chunk_types.ChoiceDeltaToolCall):
            raise TypeError("tool call is not an object")
        index = _int(piece.index)
        if index is None:
            raise TypeError("no index")
        function = piece.function
        if function is not None and not isinstance(function,
                                                   chunk_types.ChoiceDeltaToolCallFunction):
            raise TypeError("function is not an object")
        result.append(ToolCallDelta(
            index=index, id=_str(piece.id),
            function=FunctionDelta(name=_str(function.name), arguments=_str(function.arguments))
            if function is not None else None))
    return result


def _reference_chunk(chunk: Any) -> Chunk:
    if not isinstance(chunk, ChatCompletionChunk):
        raise TypeError("chunk is not an object")
    choices = chunk.choices
    if not isinstance(choices, list):
        raise TypeError("choices is not a list")
    read = []
    for choice in choices:
        if not isinstance(choice, chunk_types.Choice):
            raise TypeError("choice is not an object")
        delta = choice.delta
        if not isinstance(delta, chunk_types.ChoiceDelta):
            raise TypeError("delta is not an object")
        extra = delta.model_extra or {}
        read.append(Choice(
            delta=Delta(
                content=_str(delta.content),
                reasoning=_str(extra.get("reasoning")),
                reasoning_content=_str(extra.get("reasoning_content")),
                refusal=_str(delta.refusal),
                reasoning_details=_list(extra.get("reasoning_details")),
                tool_calls=_ref_tool_deltas(delta.tool_calls)),
            index=_int(choice.index),
            finish_reason=_str(choice.finish_reason),
            logprobs=_ref_logprobs(choice.logprobs),
        ))
    return Chunk(model=_str(chunk.model), choices=read, usage=_ref_usage(chunk.usage))


@dataclass
class _Builder:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _ReferenceAssembly:
    """The provider's stream loop over typed chunks (before plain data), reasoning added."""

    model: str | None = None
    finish_reason: str | None = None
    usage: WireUsage | None = None
    parts: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    details: list[Any] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tools: dict[int, _Builder] = field(default_factory=dict)

    def add(self, typed: ChatCompletionChunk, read: Chunk) -> None:
        if typed.usage is not None:
            self.usage = read.usage
        if typed.model:
            self.model = typed.model
        for choice, mine in zip(typed.choices, read.choices, strict=True):
            delta = choice.delta
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            if delta.tool_calls:
                for piece in delta.tool_calls:
                    builder = self.tools.setdefault(piece.index, _Builder())
                    if piece.id:
                        builder.id = piece.id
                    if piece.function is not None:
                        if piece.function.name:
                            builder.name += piece.function.name
                        if piece.function.arguments:
                            builder.arguments.append(piece.function.arguments)
            if delta.content:
                self.parts.append(delta.content)
            # Reasoning is not a typed field: the SDK keeps it in model_extra.
            extra = delta.model_extra or {}
            reasoning = extra.get("reasoning")
            if reasoning is None:
                reasoning = extra.get("reasoning_content")
            if reasoning:
                self.reasoning.append(reasoning)
            if delta.refusal:
                self.refusal.append(delta.refusal)
            self.details.extend(extra.get("reasoning_details") or ())
            if choice.logprobs is not None:
                self.logprobs.extend(mine.logprobs.content or () if mine.logprobs else ())

    def result(self) -> dict[str, Any]:
        return {
            "text": "".join(self.parts), "reasoning": "".join(self.reasoning),
            "refusal": "".join(self.refusal), "details": tuple(self.details),
            "logprobs": tuple(self.logprobs), "model": self.model,
            "finish_reason": self.finish_reason, "usage": self.usage,
            "tool_calls": [ToolCall(id=b.id, name=b.name, arguments="".join(b.arguments) or "{}")
                           for _, b in sorted(self.tools.items())],
        }


def _result(assembly: StreamAssembly) -> dict[str, Any]:
    return {
        "text": assembly.text, "reasoning": assembly.reasoning, "refusal": assembly.refusal,
        "details": assembly.reasoning_details, "logprobs": assembly.logprobs,
        "model": assembly.model, "finish_reason": assembly.finish_reason,
        "usage": assembly.usage, "tool_calls": assembly.tool_calls(),
    }


def _reference_completion(body: Any) -> Completion:
    if not isinstance(body, ChatCompletion):
        raise TypeError("body is not an object")
    choice = body.choices[0] if body.choices else None
    usage = _ref_usage(body.usage)
    if choice is None:
        return Completion(model=_str(body.model), usage=usage)
    if not isinstance(body.choices, list) or not isinstance(choice, chat_completion.Choice):
        raise TypeError("choices is not a list of objects")
    message = choice.message
    logprobs = _ref_logprobs(choice.logprobs)
    tokens = tuple(logprobs.content or ()) if logprobs is not None else ()
    if message is None:
        return Completion(model=_str(body.model), finish_reason=_str(choice.finish_reason),
                          usage=usage, logprobs=tokens)
    if not isinstance(message, ChatCompletionMessage):
        raise TypeError("message is not an object")
    extra = message.model_extra or {}
    reasoning = _str(extra.get("reasoning"))
    if reasoning is None:
        reasoning = _str(extra.get("reasoning_content"))
    calls = []
    for tc in _list(message.tool_calls) or ():
        if _str(tc.type) != "function":
            continue
        calls.append(ToolCall(id=tc.id, name=tc.function.name,
                              arguments=_str(tc.function.arguments) or "{}"))
    details = _list(extra.get("reasoning_details"))
    return Completion(
        model=_str(body.model), content=_str(message.content) or "",
        reasoning=reasoning, reasoning_details=tuple(details) if details else (),
        refusal=_str(message.refusal), tool_calls=tuple(calls),
        finish_reason=_str(choice.finish_reason), usage=usage, logprobs=tokens)


# -- running both paths ------------------------------------------------------------------------


@dataclass
class _Run:
    chunks: list[Chunk]
    result: dict[str, Any] | None = None
    error: tuple[type[LLMClientError], str, bool] | None = None


def _response(body: bytes) -> httpx2.Response:
    async def content() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 97):  # split across reads, as a network would
            yield body[start:start + 97]
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    return httpx2.Response(200, content=content(), request=request,
                           headers={"content-type": "text/event-stream"})


def _failed(run: _Run, error: LLMClientError) -> _Run:
    partial = error.partial_text if isinstance(error, LLMStreamingError) else ""
    run.error = (type(error), partial, error.retryable)
    return run


async def _typed(client: openai.AsyncOpenAI, body: bytes) -> _Run:
    stream = openai.AsyncStream(cast_to=ChatCompletionChunk, response=_response(body),
                                client=client)
    run, assembly = _Run([]), _ReferenceAssembly()
    try:
        with map_sdk_errors(PROVIDER, MODEL, partial_text=lambda: "".join(assembly.parts)):
            async for typed in stream:
                try:
                    read = _reference_chunk(typed)
                    assembly.add(typed, read)
                except _MALFORMED as exc:
                    raise malformed_error(PROVIDER, MODEL, exc, "".join(assembly.parts)) from exc
                run.chunks.append(read)
    except LLMClientError as exc:
        return _failed(run, exc)
    run.result = assembly.result()
    return run


async def _plain(client: openai.AsyncOpenAI, body: bytes) -> _Run:
    stream = openai.AsyncStream(cast_to=object, response=_response(body), client=client)
    run, assembly = _Run([]), StreamAssembly()
    try:
        with map_sdk_errors(PROVIDER, MODEL, partial_text=lambda: assembly.text):
            async for data in stream:
                try:
                    chunk = decode_chunk(data)
                except MalformedResponse as exc:
                    raise malformed_error(PROVIDER, MODEL, exc, assembly.text) from exc
                assembly.add(chunk)
                run.chunks.append(chunk)
    except LLMClientError as exc:
        return _failed(run, exc)
    run.result = _result(assembly)
    return run


def _sse(events: Sequence[Any], *, done: bool = True) -> bytes:
    lines = []
    for event in events:
        if isinstance(event, bytes):
            lines.append(event)  # raw lines: comments, garbage
        else:
            lines.append(b"data: " + json.dumps(event).encode() + b"\n\n")
    if done:
        lines.append(b"data: [DONE]\n\n")
    return b"".join(lines)


async def _differential(client: openai.AsyncOpenAI, body: bytes) -> _Run:
    typed, plain = await _typed(client, body), await _plain(client, body)
    assert plain.chunks == typed.chunks
    assert plain.error == typed.error
    assert plain.result == typed.result
    return plain


def _body_outcome(client: openai.AsyncOpenAI, data: Any,
                  decode: Any) -> Completion | type[LLMClientError]:
    try:
        return decode(data)  # type: ignore[no-any-return]
    except _MALFORMED as exc:
        return type(malformed_error(PROVIDER, MODEL, exc))


def _typed_body(client: openai.AsyncOpenAI, data: Any) -> Completion | type[LLMClientError]:
    def decode(raw: Any) -> Completion:
        typed = client._process_response_data(data=raw, cast_to=ChatCompletion,
                                               response=_response(b""))
        return _reference_completion(typed)
    return _body_outcome(client, data, decode)


def _plain_body(client: openai.AsyncOpenAI, data: Any) -> Completion | type[LLMClientError]:
    return _body_outcome(client, data, decode_completion)


# -- the corpus ---------------------------------------------------------------------------------


def _chunk(delta: dict[str, Any] | None = None, *, finish: str | None = None,
           model: str = "gpt-4o-mini-2024-07-18", **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish,
                         "logprobs": None}], **extra}


def _usage_chunk(usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini-2024-07-18", "choices": [], "usage": usage}


OPENAI_USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0}}
OPENROUTER_USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                    "cost": 0.00042, "is_byok": False,
                    "cost_details": {"upstream_inference_cost": 0.0004},
                    "prompt_tokens_details": {"cached_tokens": 0}}
OPENAI_WIRE_USAGE = WireUsage(prompt_tokens=12, completion_tokens=3, total_tokens=15,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=8),
                     completion_tokens_details=CompletionTokensDetails(reasoning_tokens=2))
KEEPALIVE = b": OPENROUTER PROCESSING\n\n"

STREAMS: dict[str, bytes] = {
    "openai": _sse([
        _chunk({"role": "assistant", "content": "", "refusal": None}),
        _chunk({"content": "Hello"}), _chunk({"content": " world"}),
        _chunk({}, finish="stop"), _usage_chunk(OPENAI_USAGE)]),
    "openrouter_keepalive_cost": _sse([
        KEEPALIVE, KEEPALIVE,
        _chunk({"role": "assistant", "content": "Hi"}, model="openai/gpt-4o-mini",
               provider="OpenAI"),
        KEEPALIVE,
        _chunk({"role": "assistant", "content": "!"}, finish="stop", model="openai/gpt-4o-mini",
               native_finish_reason="stop"),
        _usage_chunk(OPENROUTER_USAGE)]),
    "openrouter_error_after_text": _sse([
        _chunk({"content": "partial"}),
        {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "provider": "OpenAI", "error": {"code": 502, "message": "Provider disconnected"},
         "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}]),
    "openrouter_error_before_text": _sse([
        KEEPALIVE, {"error": {"code": 429, "message": "Rate limited upstream"}}]),
    "openrouter_error_client_code": _sse([{"error": {"code": 400, "message": "bad"}}]),
    "reasoning_content": _sse([
        _chunk({"role": "assistant", "reasoning_content": "Let me think"}),
        _chunk({"reasoning_content": " more.", "content": None}),
        _chunk({"content": "42"}, finish="stop")]),
    "openrouter_reasoning": _sse([
        _chunk({"role": "assistant", "content": "", "reasoning": "Step 1",
                "reasoning_details": [{"type": "reasoning.text", "text": "Step 1",
                                       "format": "unknown", "index": 0}]}),
        _chunk({"content": "", "reasoning": " and 2", "reasoning_content": "ignored",
                "reasoning_details": [{"type": "reasoning.text", "text": " and 2"}]}),
        _chunk({"content": "Done"}, finish="stop"), _usage_chunk(OPENROUTER_USAGE)]),
    "tool_calls_split": _sse([
        _chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_a", "type": "function",
             "function": {"name": "get_time", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"tz\": "}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                "function": {"name": "add", "arguments": "{\"a\""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"UTC\"}"}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": ": 1}"}}]}),
        _chunk({"tool_calls": [{"index": 2, "id": "call_c", "type": "function",
                                "function": {"name": "noargs"}}]}),
        _chunk({}, finish="tool_calls"), _usage_chunk(OPENAI_USAGE)]),
    "usage_only": _sse([_usage_chunk(OPENAI_USAGE)]),
    "unknown_fields": _sse([
        _chunk({"content": "a", "audio": None, "future": {"x": [1]}}, obfuscation="zz",
               system_fingerprint="fp", service_tier="default"),
        {**_chunk({"content": "b"}), "choices": [
            {"index": 0, "delta": {"content": "b"}, "finish_reason": None, "new": 1}]}]),
    "logprobs": _sse([
        {**_chunk(), "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None,
                                  "logprobs": {"content": [
                                      {"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
                                       "top_logprobs": []}], "refusal": None}}]}]),
    "refusal": _sse([_chunk({"refusal": "I can't"}), _chunk({"refusal": " help."},
                                                            finish="stop")]),
    "two_choices": _sse([{**_chunk(), "choices": [
        {"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]}]),
    "no_done": _sse([_chunk({"content": "cut"})], done=False),
    "garbage_json": _sse([_chunk({"content": "x"}), b"data: {not json\n\n"]),
    "garbage_json_first": _sse([b"data: {not json\n\n"]),
    "choices_not_list": _sse([_chunk({"content": "x"}), {"choices": "abc", "model": "m"}]),
    "choices_missing": _sse([{"model": "m"}]),
    "delta_not_object": _sse([{**_chunk(), "choices": [{"index": 0, "delta": "text"}]}]),
    "content_not_string_after_text": _sse([_chunk({"content": "x"}), _chunk({"content": 5})]),
    "chunk_is_list": _sse([[1, 2]]),
    "chunk_is_null": _sse([_chunk({"content": "x"}), None]),
    "tool_index_missing": _sse([_chunk({"tool_calls": [{"id": "c", "function": {"name": "f"}}]})]),
    "usage_not_object": _sse([{**_usage_chunk({}), "usage": [1]}]),
    "usage_tokens_not_int": _sse([_usage_chunk({"prompt_tokens": "12"})]),
    "cost_not_number": _sse([_usage_chunk({"prompt_tokens": 1, "cost": "0.1"})]),
    # The SDK validates a whole usage in pydantic's lax mode first, so with all three counts
    # present a false, 2.0 or "3" is a count; with one missing, the values stay as sent.
    "usage_counts_lax": _sse([_usage_chunk(
        {"prompt_tokens": "3", "completion_tokens": 2.0, "total_tokens": False})]),
    "usage_counts_lax_one_missing": _sse([_usage_chunk(
        {"prompt_tokens": 1, "total_tokens": False})]),
    "model_not_string": _sse([_chunk({"content": "x"}, model=7)]),  # type: ignore[arg-type]
}

EXPECTED_ERRORS: dict[str, tuple[type[LLMClientError], str, bool]] = {
    "openrouter_error_after_text": (LLMStreamingError, "partial", False),
    # Before any output an error event is typed as its code's status (test_review5_*).
    "openrouter_error_before_text": (LLMRateLimitError, "", True),
    "openrouter_error_client_code": (LLMBadRequestError, "", False),
    "garbage_json": (LLMStreamingError, "x", False),
    "garbage_json_first": (LLMStreamingError, "", True),
    "choices_not_list": (LLMStreamingError, "x", False),
    "choices_missing": (LLMServerError, "", True),
    "delta_not_object": (LLMServerError, "", True),
    "content_not_string_after_text": (LLMStreamingError, "x", False),
    "chunk_is_list": (LLMServerError, "", True),
    "chunk_is_null": (LLMStreamingError, "x", False),
    "tool_index_missing": (LLMServerError, "", True),
    "usage_not_object": (LLMServerError, "", True),
    "usage_tokens_not_int": (LLMServerError, "", True),
    "usage_counts_lax_one_missing": (LLMServerError, "", True),
    "model_not_string": (LLMServerError, "", True),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
async def test_corpus_stream_reads_the_same_as_the_typed_chunks(
        client: openai.AsyncOpenAI, name: str) -> None:
    run = await _differential(client, STREAMS[name])
    assert run.error == EXPECTED_ERRORS.get(name)


async def test_openrouter_stream_extracts_reasoning_cost_and_text(
        client: openai.AsyncOpenAI) -> None:
    run = await _differential(client, STREAMS["openrouter_reasoning"])
    assert run.result is not None
    assert run.result["text"] == "Done"
    assert run.result["reasoning"] == "Step 1 and 2"
    assert run.result["details"] == (
        {"type": "reasoning.text", "text": "Step 1", "format": "unknown", "index": 0},
        {"type": "reasoning.text", "text": " and 2"})
    assert run.result["usage"] == WireUsage(
        prompt_tokens=12, completion_tokens=3, total_tokens=15,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=0),
        cost=0.00042, cost_details={"upstream_inference_cost": 0.0004}, is_byok=False)
    assert run.result["usage"].reported_cost == 0.00042
    assert run.result["finish_reason"] == "stop"


async def test_split_tool_call_arguments_are_joined_by_index(
        client: openai.AsyncOpenAI) -> None:
    run = await _differential(client, STREAMS["tool_calls_split"])
    assert run.result is not None
    assert run.result["tool_calls"] == [
        ToolCall(id="call_a", name="get_time", arguments='{"tz": "UTC"}'),
        ToolCall(id="call_b", name="add", arguments='{"a": 1}'),
        ToolCall(id="call_c", name="noargs", arguments="{}")]
    assert run.result["usage"] == OPENAI_WIRE_USAGE
    assert run.result["finish_reason"] == "tool_calls"


async def test_openai_stream_extracts_text_model_and_usage(client: openai.AsyncOpenAI) -> None:
    run = await _differential(client, STREAMS["openai"])
    assert run.result is not None
    assert (run.result["text"], run.result["model"]) == ("Hello world", "gpt-4o-mini-2024-07-18")
    assert run.chunks[1] == Chunk(model="gpt-4o-mini-2024-07-18",
                                  choices=[Choice(delta=Delta(content="Hello"), index=0)])
    assert run.chunks[1].text == "Hello" and run.chunks[1].has_output
    assert run.chunks[-1].usage == OPENAI_WIRE_USAGE


BODY = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "Hi", "refusal": None}}],
        "usage": OPENAI_USAGE}


def _with_message(**message: Any) -> dict[str, Any]:
    choice = {**BODY["choices"][0], "message": {"role": "assistant", **message}}  # type: ignore[index]
    return {**BODY, "choices": [choice]}


BODIES: dict[str, Any] = {
    "openai": BODY,
    "tool_calls": _with_message(content=None, tool_calls=[
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
        {"id": "c2", "type": "custom", "custom": {"name": "g", "input": "raw"}},
        {"id": "c3", "type": "function", "function": {"name": "h", "arguments": ""}}]),
    "reasoning": _with_message(content="4", reasoning="2+2", reasoning_details=[{"t": 1}]),
    "reasoning_content": _with_message(content="4", reasoning_content="2+2"),
    "refusal": _with_message(content=None, refusal="No."),
    "openrouter_cost": {**BODY, "usage": OPENROUTER_USAGE, "provider": "OpenAI"},
    "logprobs": {**BODY, "choices": [{**BODY["choices"][0], "logprobs": {  # type: ignore[index]
        "content": [{"token": "Hi", "logprob": -1, "top_logprobs": []}]}}]},
    "no_choices": {**BODY, "choices": []},
    "choices_missing": {"model": "m"},
    "choices_not_list": {**BODY, "choices": {"a": 1}},
    "message_missing": {**BODY, "choices": [{"index": 0, "finish_reason": "stop"}]},
    "tool_call_without_id": _with_message(tool_calls=[
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}]),
    "content_not_string": _with_message(content=["a"]),
    "body_is_string": "oops",
    # The SDK reads its optional counts as pydantic's lax ints (found by the generated bodies).
    "detail_counts_lax": {"choices": None, "usage": {
        "prompt_tokens_details": {"cached_tokens": False},
        "completion_tokens_details": {"reasoning_tokens": "3"}}},
    "usage_counts_lax": {"choices": None, "model": None, "usage": {
        "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": False}},
    "usage_counts_lax_null": {**BODY, "usage": {
        "prompt_tokens": None, "completion_tokens": 1, "total_tokens": True}},
    "usage_count_fraction": {**BODY, "usage": {
        "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2.5}},
    "detail_count_float": {**BODY, "usage": {"prompt_tokens_details": {"cached_tokens": 2.0}}},
    "detail_count_not_a_count": {**BODY, "usage": {
        "completion_tokens_details": {"reasoning_tokens": 2.5}}},
}


@pytest.mark.parametrize("name", sorted(BODIES))
async def test_corpus_body_reads_the_same_as_the_typed_completion(
        client: openai.AsyncOpenAI, name: str) -> None:
    assert _plain_body(client, BODIES[name]) == _typed_body(client, BODIES[name])


async def test_body_with_tool_calls_keeps_function_calls_only(client: openai.AsyncOpenAI) -> None:
    assert _plain_body(client, BODIES["tool_calls"]) == Completion(
        model="gpt-4o", content="", finish_reason="stop", usage=OPENAI_WIRE_USAGE,
        tool_calls=(ToolCall(id="c1", name="f", arguments='{"x": 1}'),
                    ToolCall(id="c3", name="h", arguments="{}")))
    assert _plain_body(client, BODIES["tool_call_without_id"]) is LLMServerError


async def test_usage_counts_are_lax_only_when_the_whole_usage_validates(
        client: openai.AsyncOpenAI) -> None:
    assert _plain_body(client, BODIES["usage_counts_lax"]) == Completion(
        usage=WireUsage(prompt_tokens=0, completion_tokens=0, total_tokens=0))
    for name in ("usage_counts_lax_null", "usage_count_fraction"):
        assert _plain_body(client, BODIES[name]) is LLMServerError
    run = await _differential(client, STREAMS["usage_counts_lax"])
    assert run.result is not None
    assert run.result["usage"] == WireUsage(prompt_tokens=3, completion_tokens=2, total_tokens=0)


# -- generated chunks and bodies ---------------------------------------------------------------

_junk = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2),
                  st.text(max_size=3), st.lists(st.integers(0, 2), max_size=2),
                  st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 2), max_size=1))


def _maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, valid, _junk)


def _object(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    return _maybe(st.fixed_dictionaries(
        {k: _maybe(v) for k, v in required.items()},
        optional={k: _maybe(v) for k, v in optional.items()}))


_text = st.text(max_size=4)
_function = _object({}, {"name": _text, "arguments": _text})
_tool_delta = _object({"index": st.integers(0, 2)},
                      {"id": _text, "type": st.just("function"), "function": _function})
_logprobs = _object({}, {"content": st.lists(_object(
    {"token": _text, "logprob": st.floats(-5, 0)}, {}), max_size=2)})
_delta = _object({}, {"content": _text, "role": st.just("assistant"), "refusal": _text,
                      "reasoning": _text, "reasoning_content": _text,
                      "reasoning_details": st.lists(st.dictionaries(_text, _text, max_size=1),
                                                    max_size=2),
                      "tool_calls": st.lists(_tool_delta, max_size=2), "unknown": _text})
_choice = _object({"delta": _delta}, {"index": st.integers(0, 1), "finish_reason": _text,
                                      "logprobs": _logprobs})
_counts = st.integers(0, 50)
_usage = _object({}, {"prompt_tokens": _counts, "completion_tokens": _counts,
                      "total_tokens": _counts, "cost": st.floats(0, 1),
                      "cost_details": st.dictionaries(
                          st.sampled_from(["upstream_inference_cost", "x"]) | _text,
                          st.floats(0, 1), max_size=1),
                      "is_byok": st.booleans(),
                      "prompt_tokens_details": _object({}, {"cached_tokens": _counts}),
                      "completion_tokens_details": _object({}, {"reasoning_tokens": _counts})})
_chunk_data = _object({"choices": st.lists(_choice, max_size=2)},
                      {"model": _text, "usage": _usage, "id": _text, "x": _text})
_message = _object({}, {"content": _text, "refusal": _text, "reasoning": _text,
                        "reasoning_content": _text,
                        "tool_calls": st.lists(_object(
                            {"id": _text, "type": st.sampled_from(["function", "custom"]),
                             "function": _function}, {}), max_size=2)})
_body = _object({"choices": st.lists(_object({"message": _message},
                                             {"finish_reason": _text, "logprobs": _logprobs}),
                                     max_size=2)},
                {"model": _text, "usage": _usage})


# The client is stateless here (no request is sent): sharing it across examples is safe.
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(chunks=st.lists(_chunk_data, min_size=1, max_size=4))
async def test_generated_streams_read_the_same_as_the_typed_chunks(
        client: openai.AsyncOpenAI, chunks: list[Any]) -> None:
    await _differential(client, _sse(chunks))


@_SETTINGS
@given(body=_body)
async def test_generated_bodies_read_the_same_as_the_typed_completion(
        client: openai.AsyncOpenAI, body: Any) -> None:
    assert _plain_body(client, body) == _typed_body(client, body)
