"""An upstream's error is typed by what it says, wherever it says it: an error inside a 200 body,
inside the JSON body answered to a stream request, or in a stream's error event before any
output, is read as the HTTP status its code names (a 401 there is an auth error that restarts the
provider, a 402 a quota error, ``context_length_exceeded`` a token limit; no code at all stays a
retryable server error), and the router does with it what it does with the real status. A 3xx
(never followed: no SSRF) is a bad request naming where the provider's base_url redirects, and
charges nothing.

A scripted upstream of our own on 127.0.0.1 (``tests/llm/raw_upstream.py``); the real ledger.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import (
    ContentRefused,
    LLMAuthError,
    LLMBadRequestError,
    LLMClientError,
    LLMConfig,
    LLMModelNotFoundError,
    LLMQuotaExceededError,
    LLMRateLimitError,
    LLMRuntime,
    LLMServerError,
    LLMStreamingError,
    LLMTokenLimitError,
    build_catalog,
    count_message_tokens,
    open_runtime,
)
from actors.llm._http_pool import Transport
from actors.llm._provider import _AuthRejected
from actors.llm._tokens import count_text_tokens
from tests.llm.raw_upstream import Answer, scripted_upstream
from tests.llm.test_attempt_spend import HELLO, settled
from tests.llm.test_provider import TRANSPORTS, call, restarted, running
from tests.llm.test_review4_answer_shape import MODEL, completion, config, json_answer

pytestmark = pytest.mark.anyio

GOOD = completion({"content": "fine"})

# (the upstream's error object, the type, status_code, message and retryable we make of it; an
# auth error is the provider's LLMAuthError that crashes it, as a real 401's is)
CASES: list[tuple[Any, type[LLMClientError], int | None, str, bool]] = [
    ({"code": 401, "message": "User not found."}, _AuthRejected, 401,
     "sim rejected the API key: User not found.", False),
    ({"code": "invalid_api_key", "message": "Incorrect API key provided: sk-abcdefghijklmnop"},
     _AuthRejected, 401, "sim rejected the API key: Incorrect API key provided: [REDACTED]",
     False),
    ({"code": 402, "message": "Insufficient credits"}, LLMQuotaExceededError, 402,
     "sim has no credits left: Insufficient credits", False),
    ({"code": "insufficient_quota", "type": "insufficient_quota",
      "message": "You exceeded your current quota"}, LLMQuotaExceededError, 429,
     "sim quota exhausted: You exceeded your current quota", False),
    ({"code": "context_length_exceeded", "type": "invalid_request_error",
      "message": "maximum context length is 8192 tokens"}, LLMTokenLimitError, 400,
     "context window exceeded: maximum context length is 8192 tokens", False),
    ({"code": "400", "message": "Invalid request"}, LLMBadRequestError, 400,
     "sim rejected the request: Invalid request", False),
    ({"code": 404, "message": "No endpoints found"}, LLMModelNotFoundError, 404,
     "model 'gpt-4o-mini' not found at sim: No endpoints found", False),
    ({"code": 403, "message": "flagged", "metadata": {"reasons": ["hate"]}}, ContentRefused,
     403, "sim refused the content: flagged", False),
    ({"code": 429, "message": "slow down"}, LLMRateLimitError, 429,
     "rate limited by sim: slow down", True),
    ({"code": "rate_limit_exceeded", "message": "Rate limit reached"}, LLMRateLimitError, 429,
     "rate limited by sim: Rate limit reached", True),
    ({"code": 502, "message": "Provider returned error"}, LLMServerError, 502,
     "sim answered with an error: Provider returned error", True),
    ({"message": "Provider returned error"}, LLMServerError, None,
     "sim answered with an error: Provider returned error", True),
    ({"code": "something_new", "message": "odd"}, LLMServerError, None,
     "sim answered with an error: odd", True),
    # Three characters str.isdigit() takes for digits, int() does not read (it raised
    # ValueError: an untyped error out of the provider, or a malformed answer in a stream).
    ({"code": "\u00b2\u00b2\u00b2", "message": "odd"}, LLMServerError, None,
     "sim answered with an error: odd", True),
    ({"code": "\u0664\u0660\u0661", "message": "odd"}, LLMServerError, None,
     "sim answered with an error: odd", True),
]
IDS = ["401", "invalid_api_key", "402", "insufficient_quota", "context_length_exceeded",
       "400-string", "404", "403-moderation", "429", "rate_limit_exceeded", "502", "no-code",
       "unknown-code", "superscript-digits", "arabic-indic-digits"]


def status_answer(status: int, body: dict[str, Any]) -> Answer:
    """A real error status with this JSON body."""
    data = json.dumps(body).encode()

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 %d Error\r\nContent-Type: application/json\r\nConnection: close"
                     b"\r\nContent-Length: %d\r\n\r\n" % (status, len(data)) + data)
        await writer.drain()

    return answer


def sse_answer(*events: Any) -> Answer:
    """A 200 stream of these events (a string: a raw line, e.g. an SSE comment)."""
    data = b"".join(e.encode() if isinstance(e, str) else b"data: %s\n\n" % json.dumps(e).encode()
                    for e in events)

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Connection: close\r\n\r\n" + data + b"data: [DONE]\n\n")
        await writer.drain()

    return answer


def text_chunk(text: str) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


async def collect(ref: Any) -> list[Any]:
    items: list[Any] = []
    async with ref.ask_stream(call(stream=True), timeout=10) as stream:
        async for item in stream:
            items.append(item)
    return items


@pytest.mark.parametrize("way", ["answer", "stream-json", "stream-event"])
@pytest.mark.parametrize(("error", "kind", "status", "message", "retryable"), CASES, ids=IDS)
async def test_an_error_in_a_200_body_is_typed_by_its_code(
        way: str, error: Any, kind: type[LLMClientError], status: int | None, message: str,
        retryable: bool) -> None:
    # Before: every one of these was a retryable LLMServerError (a 429 code: a rate limit), so a
    # 401 or 402 fell back as if the provider were only failing.
    answer = (sse_answer(": OPENROUTER PROCESSING\n\n", {"error": error})
              if way == "stream-event" else json_answer({"error": error}))
    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url)) as (_, ref):
        with anyio.fail_after(10), pytest.raises(LLMClientError) as caught:
            if way == "answer":
                await ref.ask(call(), timeout=10)
            else:
                assert await collect(ref) == []
    assert type(caught.value) is kind
    assert (caught.value.message, caught.value.status_code, caught.value.retryable) == (
        message, status, retryable)
    assert "sk-abcdefghijklmnop" not in repr(caught.value)


@pytest.mark.parametrize(("error", "status"), [
    ({"code": 402, "message": "Insufficient credits"}, 402),
    ({"code": "401", "message": "Insufficient credits"}, 401),
    ({"code": "insufficient_quota", "message": "Insufficient credits"}, None),
], ids=["402", "401-string", "string-code"])
async def test_an_error_event_after_text_is_a_streaming_error_with_its_code(
        error: dict[str, Any], status: int | None) -> None:
    answer = sse_answer(text_chunk("Hel"), {"error": error})
    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url)) as (system, ref):
        with anyio.fail_after(10), pytest.raises(LLMClientError) as caught:
            await collect(ref)
        # An error after text does not restart the provider, even one that names a 401.
        assert system.status()["sim"].restart_count == 0
    assert type(caught.value) is LLMStreamingError
    assert (caught.value.message, caught.value.partial_text, caught.value.status_code,
            caught.value.retryable) == ("stream from sim failed: Insufficient credits", "Hel",
                                        status, False)


async def test_an_error_event_after_a_tool_call_piece_stays_a_streaming_error() -> None:
    # Output that did not reach the caller as text (a tool call's piece) still came: the stream
    # had started, so its error is a stream's failure, typed as before (charged its pieces).
    piece = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
                 {"index": 0, "id": "t1", "type": "function",
                  "function": {"name": "lookup", "arguments": "{}"}}]}}]}
    answer = sse_answer(piece, {"error": {"code": 402, "message": "Insufficient credits"}})
    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url)) as (_, ref):
        with anyio.fail_after(10), pytest.raises(LLMClientError) as caught:
            await collect(ref)
    assert type(caught.value) is LLMStreamingError
    assert (caught.value.message, caught.value.status_code) == (
        "stream from sim failed: Insufficient credits", 402)


async def test_a_401_in_a_200_body_restarts_the_provider_once_as_a_real_401_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = "sk-test-old-0123456789", "sk-test-new-9876543210"
    monkeypatch.setenv("REVIEW5_TEST_KEY", old)
    rejected = json.dumps({"error": {"code": 401, "message": "User not found."}}).encode()
    good = json.dumps(GOOD).encode()

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        data = rejected if n == 0 else good
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        await writer.drain()

    async with scripted_upstream(answer) as upstream:
        provider = config(upstream.base_url).model_copy(
            update={"requires_api_key": True, "api_key_env": "REVIEW5_TEST_KEY"})
        async with running(provider) as (system, ref):
            with pytest.raises(LLMClientError) as first:
                await ref.ask(call(), timeout=10)
            assert type(first.value) is _AuthRejected
            assert first.value.status_code == 401
            await restarted(system, 1)
            # The rejected key is not sent again: no crash loop, no request.
            for _ in range(3):
                with pytest.raises(LLMAuthError, match=r"rejected this API key"):
                    await ref.ask(call(), timeout=10)
            assert len(upstream.heads) == 1
            monkeypatch.setenv("REVIEW5_TEST_KEY", new)
            assert (await ref.ask(call(), timeout=10)).content == "fine"
            assert system.status()["sim"].restart_count == 1
    assert [f"Bearer {key}" in head for head, key in zip(upstream.heads, (old, new), strict=True)
            ] == [True, True]


@asynccontextmanager
async def two_providers(primary: str, backup: str, tmp_path: Path) -> AsyncIterator[LLMRuntime]:
    def provider(base_url: str) -> dict[str, Any]:
        return {"kind": "openai-compatible", "base_url": base_url, "model": MODEL,
                "requires_api_key": False, "max_tokens": 10,
                "breaker": {"minimum_number_of_calls": 100}}

    values = {"providers": {"primary": provider(primary), "backup": provider(backup)},
              "active": "primary", "fallback_order": ["primary", "backup"],
              "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0},
              "request_timeout": 20}
    async with open_runtime(LLMConfig.model_validate(values)) as rt:
        yield rt


async def routed(answer: Answer, tmp_path: Path) -> tuple[Any, ...]:
    """What the router made of the primary's ``answer`` (the backup answers well): the answer's
    provider and attempts' error types, or the error's type; the backup's requests; the spend
    (in backup answers: 5 prompt tokens, 1 completion token; the primary's prompt alone is
    :func:`prompt_in_answers` of them) and what stays reserved."""
    async with scripted_upstream(answer) as primary, scripted_upstream(
            json_answer(GOOD)) as backup, two_providers(
            primary.base_url, backup.base_url, tmp_path) as rt:
        try:
            response = await rt.chat(HELLO)
        except LLMClientError as exc:
            outcome: tuple[Any, ...] = (type(exc).__name__,)
        else:
            outcome = (response.provider, [a.error_type for a in response.attempts])
        snapshot = await settled(rt)
        answer_cost = build_catalog(rt.config).cost_of(MODEL, 5, 1)
        assert answer_cost is not None
        return (*outcome, len(backup.heads), round(snapshot.settled / answer_cost, 9),
                snapshot.reserved)


def prompt_in_answers() -> float:
    """The cost of HELLO's prompt alone, in backup answers (:func:`routed`'s unit)."""
    catalog = build_catalog(LLMConfig.model_validate({"providers": {"p": {
        "kind": "openai-compatible", "base_url": "http://127.0.0.1:9", "model": MODEL,
        "requires_api_key": False}}}))
    prompt = catalog.cost_of(MODEL, count_message_tokens(HELLO, MODEL), 0)
    answer = catalog.cost_of(MODEL, 5, 1)
    assert prompt is not None and answer is not None and prompt > 0
    return prompt / answer


@pytest.mark.parametrize(("status", "error", "expected"), [
    (402, {"code": 402, "message": "Insufficient credits"},
     ("backup", ["LLMQuotaExceededError", None], 1)),
    (400, {"code": "context_length_exceeded", "message": "maximum context length is 8192"},
     ("LLMTokenLimitError", 0)),
    (401, {"code": 401, "message": "User not found."},
     ("backup", ["_AuthRejected", None], 1)),
], ids=["402-falls-back", "token-limit-returns", "401-falls-back"])
async def test_the_router_does_with_an_error_in_a_200_body_what_it_does_with_its_status(
        status: int, error: dict[str, Any], expected: tuple[Any, ...], tmp_path: Path) -> None:
    # Before: in a 200 body each was a retryable server error, so a token limit fell back to the
    # next provider (which would refuse it too) and a 402 was reported as a server failure.
    real = await routed(status_answer(status, {"error": error}), tmp_path / "real")
    in_body = await routed(json_answer({"error": error}), tmp_path / "body")
    # The same outcome. An error status bills nothing: only the backup's answer is charged. An
    # error in a 200 body came after the upstream took the request: its prompt is charged too.
    assert real == (*expected, float(expected[-1]), 0.0)
    assert in_body[:-2] == real[:-2]
    assert in_body[-2] == pytest.approx(expected[-1] + prompt_in_answers(), rel=1e-6)
    assert in_body[-1] == 0.0


# -- redirects -------------------------------------------------------------------------------


def redirect_answer(status: int, location: str | None) -> Answer:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        where = b"" if location is None else b"Location: %s\r\n" % location.encode()
        writer.write(b"HTTP/1.1 %d Moved\r\n%sContent-Type: text/html\r\nConnection: close\r\n"
                     b"Content-Length: 9\r\n\r\n<a>x</a>\n" % (status, where))
        await writer.drain()

    return answer


@asynccontextmanager
async def one_provider(base_url: str, tmp_path: Path,
                       transport: Transport) -> AsyncIterator[LLMRuntime]:
    values = {"providers": {"sim": {
        "kind": "openai-compatible", "base_url": base_url, "model": MODEL,
        "requires_api_key": False, "max_tokens": 10, "transport": transport}},
        "active": "sim",
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0},
        "request_timeout": 20}
    async with open_runtime(LLMConfig.model_validate(values)) as rt:
        yield rt


@pytest.mark.parametrize("stream", [False, True], ids=["ask", "stream"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_redirect_is_a_bad_request_naming_its_target_and_charges_nothing(
        transport: Transport, stream: bool, tmp_path: Path) -> None:
    # Before: a bare LLMClientError "unexpected HTTP 301" (its text the SDK's), charged its
    # prompt as if an answer had been produced.
    secret = "sk-secret0123456789abcdef"
    async with scripted_upstream(json_answer(GOOD)) as target:
        location = f"{target.base_url}/chat/completions?key={secret}&x=1#frag"
        async with scripted_upstream(redirect_answer(301, location)) as upstream, one_provider(
                upstream.base_url, tmp_path, transport) as rt:
            with anyio.fail_after(10), pytest.raises(LLMClientError) as caught:
                if stream:
                    async with rt.stream(HELLO) as items:
                        async for _ in items:
                            pass
                else:
                    await rt.chat(HELLO)
            snapshot = await settled(rt)
        assert target.heads == []  # not followed
    error = caught.value
    assert type(error) is LLMBadRequestError
    assert str(error) == (f"sim's base_url redirects (HTTP 301) to {target.base_url}"
                          f"/chat/completions: set base_url to the target (sim:{MODEL})")
    assert (error.status_code, error.retryable, error.provider_specific) == (301, False, False)
    assert secret not in str(error) + repr(error) and "key=" not in str(error) + repr(error)
    assert (snapshot.settled, snapshot.reserved) == (0.0, 0.0)


@pytest.mark.parametrize(("status", "location", "message"), [
    (308, "/v2/chat/completions?x=1", "sim's base_url redirects (HTTP 308) to {base}"
     "/v2/chat/completions: set base_url to the target"),
    (302, "https://user:pw@example.com/" + "a" * 400,
     "sim's base_url redirects (HTTP 302) to " + ("https://example.com/" + "a" * 400)[:200]
     + ": set base_url to the target"),
    # A key in a path segment is redacted; control characters and non-ASCII are escaped.
    (302, "https://h.example/sk-secret0123456789abcdef/\x1b[31m\u202e",
     "sim's base_url redirects (HTTP 302) to https://h.example/[REDACTED]/%1B[31m%E2%80%AE:"
     " set base_url to the target"),
    (307, None, "sim's base_url answered HTTP 307 with no usable Location (not followed):"
     " check base_url"),
    (301, "http://[::1/x", "sim's base_url answered HTTP 301 with no usable Location (not"
     " followed): check base_url"),
], ids=["relative", "user-info-and-long", "key-in-path-and-controls", "no-location",
        "unreadable-location"])
async def test_a_redirects_target_is_resolved_and_cut(status: int, location: str | None,
                                                      message: str) -> None:
    async with scripted_upstream(redirect_answer(status, location)) as upstream, running(
            config(upstream.base_url)) as (_, ref):
        with pytest.raises(LLMClientError) as caught:
            await ref.ask(call(), timeout=10)
    base = upstream.base_url.removesuffix("/v1")
    assert type(caught.value) is LLMBadRequestError
    assert (caught.value.message, caught.value.status_code) == (message.format(base=base),
                                                                status)
    assert "pw" not in str(caught.value)
    assert len(upstream.heads) == 1


async def test_a_redirect_to_a_path_holding_our_key_does_not_show_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Our key, not shaped like one (no "sk-"): only the provider's secrets can redact it.
    key = "k3y-0123456789abcdefXYZ"
    monkeypatch.setenv("REVIEW5_TEST_KEY", key)
    async with scripted_upstream(redirect_answer(
            302, f"https://h.example/{key}/chat?k={key}")) as upstream:
        provider = config(upstream.base_url).model_copy(
            update={"requires_api_key": True, "api_key_env": "REVIEW5_TEST_KEY"})
        async with running(provider) as (_, ref):
            with pytest.raises(LLMClientError) as caught:
                await ref.ask(call(), timeout=10)
    assert type(caught.value) is LLMBadRequestError
    assert caught.value.message == ("sim's base_url redirects (HTTP 302) to https://h.example/"
                                    "[REDACTED]/chat: set base_url to the target")
    assert key not in str(caught.value) + repr(caught.value)


@pytest.mark.parametrize("way", ["answer", "stream-json", "stream-event"])
@pytest.mark.parametrize(("error", "kind"), [
    ({"code": 402, "message": "Insufficient credits"}, LLMQuotaExceededError),
    ({"message": "Provider returned error"}, LLMServerError),
], ids=["402", "no-code"])
async def test_an_error_in_a_200_body_is_charged_its_prompt(
        way: str, error: dict[str, Any], kind: type[LLMClientError], tmp_path: Path) -> None:
    # Unlike an error status: the upstream took the request before it failed, and may bill its
    # prompt (OpenRouter answers 200 only once the model has started). A limit must count it.
    answer = (sse_answer(": OPENROUTER PROCESSING\n\n", {"error": error})
              if way == "stream-event" else json_answer({"error": error}))
    async with scripted_upstream(answer) as upstream, one_provider(
            upstream.base_url, tmp_path, "aiohttp") as rt:
        with anyio.fail_after(10), pytest.raises(LLMClientError) as caught:
            if way == "answer":
                await rt.chat(HELLO)
            else:
                async with rt.stream(HELLO) as items:
                    async for _ in items:
                        pass
        snapshot = await settled(rt)
        prompt = build_catalog(rt.config).cost_of(MODEL, count_message_tokens(HELLO, MODEL), 0)
    assert type(caught.value) is kind
    assert caught.value.accepted is True
    assert prompt is not None and prompt > 0
    assert snapshot.settled == pytest.approx(prompt, rel=1e-12)
    assert snapshot.reserved == 0.0


# -- what counts as output before an error event (review of the change above) ----------------


def delta_chunk(delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None, **extra}]}


@pytest.mark.parametrize(("before", "streamed"), [
    (delta_chunk({"reasoning": "Let me think"}), "Let me think"),
    (delta_chunk({"refusal": "I can't help with that"}), ""),
    (delta_chunk({"reasoning_details": [{"type": "reasoning.encrypted", "data": "gAAAA"}]}),
     ""),
    (delta_chunk({"content": ""}, logprobs={"content": [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}), ""),
    ({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [],
      "usage": {"prompt_tokens": 9, "completion_tokens": 40, "total_tokens": 49}}, ""),
], ids=["reasoning", "refusal", "reasoning-details", "logprobs", "usage"])
async def test_an_error_event_after_output_that_is_not_text_is_charged_its_prompt(
        before: dict[str, Any], streamed: str, tmp_path: Path) -> None:
    # Output that is not text (reasoning; and, not streamed to the caller, a refusal, encrypted
    # reasoning, log probabilities, a usage report) says the upstream worked, and billed: its
    # error is a stream's failure, charged its prompt and what streamed. The change took all but
    # reasoning for "no output" and released them ($0).
    answer = sse_answer(before, {"error": {"code": 402, "message": "Insufficient credits"}})
    async with scripted_upstream(answer) as upstream, one_provider(
            upstream.base_url, tmp_path, "aiohttp") as rt:
        with anyio.fail_after(10), pytest.raises(LLMClientError) as caught:
            async with rt.stream(HELLO) as items:
                async for _ in items:
                    pass
        snapshot = await settled(rt)
        # A usage report is charged as reported (the sixth review: it was the prompt alone).
        report = before.get("usage")
        prompt = build_catalog(rt.config).cost_of(
            MODEL, count_message_tokens(HELLO, MODEL),
            count_text_tokens(streamed, MODEL) if streamed else 0) if report is None else (
            build_catalog(rt.config).cost_of(MODEL, report["prompt_tokens"],
                                             report["completion_tokens"]))
    failed = "stream from sim failed: Insufficient credits"
    # What reached the caller cannot fall back: the router says so, around the provider's error.
    expected = (f"the stream from sim failed after the first chunk: {failed} (sim:{MODEL})",
                None, streamed) if streamed else (failed, 402, "")
    assert type(caught.value) is LLMStreamingError
    assert (caught.value.message, caught.value.status_code, caught.value.partial_text
            ) == expected
    assert prompt is not None and prompt > 0
    assert snapshot.settled == pytest.approx(prompt, rel=1e-12)
    assert snapshot.reserved == 0.0
