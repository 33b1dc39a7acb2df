"""Upstream garbage (malformed SSE, truncated JSON, wrong types, huge chunks): a typed error, and
the provider serves the next good request (invariant 7).

The garbage comes from :class:`tests.chaos.upstream.GarbageUpstream`, a raw HTTP server, so that
no HTTP library tidies it up on the way. Each hypothesis example sends a list of garbage replies,
each followed by a good one, to a supervised :class:`ProviderActor` (the router is left out so
that its own failure modes do not hide the provider's).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from actors.llm import (
    ChatRequest,
    LLMBadRequestError,
    LLMClientError,
    LLMInvalidJSONError,
    ProviderCall,
    ProviderConfig,
    StreamEnd,
    TextDelta,
    provider_child_spec,
)
from runtime import ActorRef, ActorSystem, SupervisorSpec

from .upstream import GOOD_STREAM, GarbageUpstream, Reply, good_completion, sse

HELLO = [{"role": "user", "content": "hello"}]

json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=10,
)
FIELDS = [("choices",), ("choices", 0), ("choices", 0, "message"),
          ("choices", 0, "message", "content"), ("choices", 0, "message", "tool_calls"),
          ("choices", 0, "finish_reason"), ("usage",), ("usage", "prompt_tokens"), ("model",)]
CHUNK_FIELDS = [("choices",), ("choices", 0), ("choices", 0, "delta"),
                ("choices", 0, "delta", "content"), ("choices", 0, "delta", "tool_calls"),
                ("usage",), ("model",)]


def replace_at(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``document`` with the value at ``path`` replaced (wrong types go in here)."""
    document = json.loads(json.dumps(document))
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return document


def chunk(text: str) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


@st.composite
def bad_completion(draw: st.DrawFn) -> Reply:
    good = json.dumps(good_completion()).encode()
    kind = draw(st.sampled_from(["truncated", "wrong_type", "not_json", "json_value", "huge",
                                 "status"]))
    if kind == "truncated":
        body = good[: draw(st.integers(0, len(good) - 1))]
    elif kind == "wrong_type":
        body = json.dumps(replace_at(good_completion(), draw(st.sampled_from(FIELDS)),
                                     draw(json_values))).encode()
    elif kind == "not_json":
        body = draw(st.binary(max_size=200))
    elif kind == "json_value":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "huge":
        body = json.dumps(good_completion("x" * draw(st.integers(1, 4)) * 1_000_000)).encode()
    else:
        return Reply(status=draw(st.sampled_from([200, 201, 299, 400, 418, 500, 599])),
                     body=draw(st.binary(max_size=100)))
    return Reply(body=body)


@st.composite
def bad_stream(draw: st.DrawFn) -> Reply:
    kind = draw(st.sampled_from(["malformed_line", "wrong_type", "no_done", "raw", "huge",
                                 "error_event", "truncated"]))
    if kind == "malformed_line":
        body = sse([chunk("a"), draw(st.text(max_size=40)), chunk("b")])
    elif kind == "wrong_type":
        bad = replace_at(chunk("a"), draw(st.sampled_from(CHUNK_FIELDS)), draw(json_values))
        body = sse([bad] if draw(st.booleans()) else [chunk("a"), bad])
    elif kind == "no_done":
        body = sse([chunk("a")], done=False)
    elif kind == "raw":
        body = draw(st.binary(max_size=300))
    elif kind == "huge":
        body = sse([chunk("y" * 2_000_000)])
    elif kind == "error_event":
        body = sse([chunk("a"), {"error": draw(json_values)}])
    else:
        body = GOOD_STREAM[: draw(st.integers(0, len(GOOD_STREAM) - 1))]
    return Reply(content_type="text/event-stream", body=body, chunked_stream=True)


def provider_config(base_url: str, **overrides: Any) -> ProviderConfig:
    return ProviderConfig.model_validate({
        "kind": "openai-compatible", "base_url": base_url, "model": "gpt-4o-mini",
        "requires_api_key": False, "max_tokens": 16, "timeout": 10,
        "max_connection_failures": 10_000,
        "breaker": {"sliding_window_size": 10_000, "minimum_number_of_calls": 10_000},
        **overrides,
    })


@asynccontextmanager
async def provider(upstream: GarbageUpstream,
                   **overrides: Any) -> AsyncIterator[tuple[ActorSystem, ActorRef]]:
    spec = provider_child_spec("garbage", provider_config(upstream.base_url, **overrides))
    async with ActorSystem(SupervisorSpec("root", [spec])) as system:
        yield system, system.ref("garbage")


def call(stream: bool) -> ProviderCall:
    return ProviderCall(ChatRequest.of(HELLO, []), "gpt-4o-mini", 8, stream=stream)


async def complete(ref: ActorRef) -> str:
    answer = await ref.ask(call(False), timeout=8)
    content: str = answer.content
    return content


async def stream(ref: ActorRef) -> str:
    parts: list[str] = []
    async with ref.ask_stream(call(True), timeout=8) as events:
        async for item in events:
            if isinstance(item, TextDelta):
                parts.append(item.text)
            elif isinstance(item, StreamEnd):
                return "".join(parts)
    raise AssertionError("the stream ended without StreamEnd or an error")


async def expect_typed(send: Any, ref: ActorRef, reply: Reply) -> None:
    try:
        await send(ref)
    except LLMClientError:
        pass
    except Exception as exc:
        raise AssertionError(
            f"garbage {reply.body[:120]!r} (status {reply.status}) raised "
            f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}") from exc


# No shrinking: a failing list is reported as drawn (each element names its garbage), and the
# run stays bounded in time. Hypothesis warns that the megabyte bodies make a large repr: known.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(replies=st.lists(bad_completion(), min_size=15, max_size=15))
async def test_garbage_completions_are_typed_errors_and_the_next_call_succeeds(
        replies: list[Reply]) -> None:
    async with GarbageUpstream() as upstream, provider(upstream) as (system, ref):
        good = upstream.reply
        for reply in replies:
            upstream.reply = reply
            await expect_typed(complete, ref, reply)
            upstream.reply = good
            assert await complete(ref) == "fine"
        assert system.status()["garbage"].restart_count == 0


# No shrinking: a failing list is reported as drawn (each element names its garbage), and the
# run stays bounded in time.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(replies=st.lists(bad_stream(), min_size=15, max_size=15))
async def test_garbage_streams_are_typed_errors_and_the_next_stream_succeeds(
        replies: list[Reply]) -> None:
    async with GarbageUpstream() as upstream, provider(upstream) as (system, ref):
        good = upstream.stream_reply
        for reply in replies:
            upstream.stream_reply = reply
            await expect_typed(stream, ref, reply)
            upstream.stream_reply = good
            assert await stream(ref) == "fine"
        assert system.status()["garbage"].restart_count == 0


def stream_of(events: list[Any]) -> Reply:
    return Reply(content_type="text/event-stream", body=sse(events), chunked_stream=True)


GOOD = good_completion()
WRONG_COMPLETIONS = {
    "a JSON list": Reply(body=b"[1]"),
    "null": Reply(body=b"null"),
    "not UTF-8": Reply(body=b"\x80"),
    "model a list": Reply(body=json.dumps(replace_at(GOOD, ("model",), [True, 1])).encode()),
    "choices a string": Reply(body=json.dumps(replace_at(GOOD, ("choices",), "abc")).encode()),
    "message a number": Reply(body=json.dumps(
        replace_at(GOOD, ("choices", 0, "message"), 5)).encode()),
    "tool_calls of numbers": Reply(body=json.dumps(
        replace_at(GOOD, ("choices", 0, "message", "tool_calls"), [1])).encode()),
    "content a list": Reply(body=json.dumps(
        replace_at(GOOD, ("choices", 0, "message", "content"), ["x"])).encode()),
    "usage a string": Reply(body=json.dumps(replace_at(GOOD, ("usage",), "x")).encode()),
    "prompt_tokens a string": Reply(body=json.dumps(
        replace_at(GOOD, ("usage", "prompt_tokens"), "x")).encode()),
}
WRONG_STREAMS = {
    "delta a number": stream_of([replace_at(chunk("a"), ("choices", 0, "delta"), 5)]),
    "choices a string": stream_of([replace_at(chunk("a"), ("choices",), "zz")]),
    "usage a string": stream_of([replace_at(chunk("a"), ("usage",), "x")]),
    "model a number": stream_of([replace_at(chunk("a"), ("model",), 5)]),
}


@pytest.mark.parametrize("reply", WRONG_COMPLETIONS.values(), ids=WRONG_COMPLETIONS.keys())
async def test_wrong_types_in_a_completion_are_a_typed_error(reply: Reply) -> None:
    async with GarbageUpstream() as upstream, provider(upstream) as (_, ref):
        good, upstream.reply = upstream.reply, reply
        await expect_typed(complete, ref, reply)
        upstream.reply = good
        assert await complete(ref) == "fine"


@pytest.mark.parametrize("reply", WRONG_STREAMS.values(), ids=WRONG_STREAMS.keys())
async def test_wrong_types_in_a_stream_chunk_are_a_typed_error(reply: Reply) -> None:
    async with GarbageUpstream() as upstream, provider(upstream) as (_, ref):
        good, upstream.stream_reply = upstream.stream_reply, reply
        await expect_typed(stream, ref, reply)
        upstream.stream_reply = good
        assert await stream(ref) == "fine"


async def test_the_raw_upstream_serves_good_answers() -> None:
    async with GarbageUpstream() as upstream, provider(upstream) as (_, ref):
        assert await complete(ref) == "fine"
        assert await stream(ref) == "fine"
        assert upstream.requests == 2


# -- JSON mode and secrets, on an upstream that does what it likes -------------------------------


@pytest.mark.parametrize("stream_it", [False, True])
async def test_json_mode_answer_that_is_not_json_is_a_typed_error(stream_it: bool) -> None:
    async with GarbageUpstream() as upstream, provider(upstream, enable_json_mode=True) as (_, r):
        with pytest.raises(LLMInvalidJSONError, match=(
                r"^garbage answered with text that is not JSON \(4 characters, finish_reason "
                r"stop\) \(garbage:gpt-4o-mini\)$")):
            await (stream(r) if stream_it else complete(r))
        good = good_completion('{"answer": 42}')
        upstream.reply = Reply(body=json.dumps(good).encode())
        assert await complete(r) == '{"answer": 42}'


async def test_extra_header_values_echoed_by_the_upstream_are_redacted() -> None:
    secret = "proxy-credential-0123456789"
    echo = {"error": {"message": f"bad proxy credential {secret}", "type": "invalid_request_error",
                      "param": None, "code": None}}
    async with GarbageUpstream() as upstream, provider(
            upstream, extra_headers={"X-Proxy-Auth": secret}) as (_, ref):
        upstream.reply = Reply(status=400, body=json.dumps(echo).encode())
        with pytest.raises(LLMBadRequestError) as info:
            await complete(ref)
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert str(info.value) == (
        "garbage rejected the request: bad proxy credential [REDACTED] (garbage:gpt-4o-mini)")
