"""Tests for actors._error_mapping: real SDK calls against a local mock transport, no network."""

from __future__ import annotations

import json
import pickle
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx2
import openai
import pytest

from actors.llm import (
    ContentRefused,
    LLMAuthError,
    LLMBadRequestError,
    LLMClientError,
    LLMConnectionError,
    LLMModelNotFoundError,
    LLMQuotaExceededError,
    LLMRateLimitError,
    LLMServerError,
    LLMStreamingError,
    LLMTimeoutError,
    LLMTokenLimitError,
)
from actors.llm._error_mapping import error_from_sdk, map_sdk_errors
from actors.llm._upstream_errors import parse_retry_after

KEY = "sk-test-0123456789abcdefABCDEF"
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]

Handler = Callable[[httpx2.Request], httpx2.Response]


def error_response(
    status: int, error: dict[str, Any], headers: dict[str, str] | None = None
) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json={"error": error}, headers=headers)

    return handler


def make_client(handler: Handler) -> openai.AsyncOpenAI:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return openai.AsyncOpenAI(
        api_key=KEY, base_url="http://127.0.0.1:9/v1", http_client=http, max_retries=0
    )


async def call(handler: Handler, provider: str = "openai") -> LLMClientError:
    """Run one chat completion through the SDK and return the typed error it ended with."""
    client = make_client(handler)
    try:
        with pytest.raises(LLMClientError) as info, map_sdk_errors(provider, "gpt-4o", [KEY]):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    finally:
        await client.close()
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value)
    assert KEY not in str(pickle.loads(pickle.dumps(info.value)))
    assert info.value.provider == provider
    assert info.value.model == "gpt-4o"
    return info.value


async def test_429_with_retry_after_seconds_is_a_retryable_rate_limit() -> None:
    error = await call(
        error_response(
            429,
            {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"},
            {"retry-after": "7"},
        )
    )
    assert type(error) is LLMRateLimitError
    assert error.retryable is True
    assert error.retry_after == 7.0
    assert error.status_code == 429
    assert str(error) == "rate limited by openai: Rate limit reached (openai:gpt-4o)"


async def test_429_retry_after_ms_takes_precedence() -> None:
    error = await call(
        error_response(429, {"message": "slow"}, {"retry-after-ms": "1500", "retry-after": "9"})
    )
    assert isinstance(error, LLMRateLimitError)
    assert error.retry_after == 1.5


async def test_429_insufficient_quota_is_not_retryable() -> None:
    error = await call(
        error_response(
            429,
            {
                "message": "You exceeded your current quota",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
            },
        )
    )
    assert type(error) is LLMQuotaExceededError
    assert error.retryable is False
    assert error.provider_specific is True


async def test_openrouter_402_no_credits_is_quota_exceeded() -> None:
    error = await call(
        error_response(402, {"code": 402, "message": "Insufficient credits"}), "openrouter"
    )
    assert type(error) is LLMQuotaExceededError
    assert error.status_code == 402
    assert str(error) == (
        "openrouter has no credits left: Insufficient credits (openrouter:gpt-4o)"
    )


async def test_401_is_auth_error_without_the_key_in_the_message() -> None:
    error = await call(
        error_response(
            401,
            {"message": f"Incorrect API key provided: {KEY}.", "code": "invalid_api_key"},
        )
    )
    assert type(error) is LLMAuthError
    assert error.retryable is False
    assert str(error) == (
        "openai rejected the API key: Incorrect API key provided: [REDACTED]. (openai:gpt-4o)"
    )


async def test_openrouter_403_moderation_is_content_refused() -> None:
    body = {
        "code": 403,
        "message": "Input was flagged",
        "metadata": {"reasons": ["violence"], "flagged_input": "...", "provider_name": "x"},
    }
    error = await call(error_response(403, body), "openrouter")
    assert type(error) is ContentRefused
    assert error.retryable is False


async def test_403_without_moderation_is_auth_error() -> None:
    error = await call(error_response(403, {"message": "Country not supported"}))
    assert type(error) is LLMAuthError


async def test_404_is_model_not_found() -> None:
    error = await call(
        error_response(
            404, {"message": "The model `gpt-9` does not exist", "code": "model_not_found"}
        )
    )
    assert type(error) is LLMModelNotFoundError
    assert error.provider_specific is True


async def test_400_context_length_exceeded_is_token_limit() -> None:
    error = await call(
        error_response(
            400,
            {
                "message": "This model's maximum context length is 128000 tokens.",
                "code": "context_length_exceeded",
                "type": "invalid_request_error",
            },
        )
    )
    assert type(error) is LLMTokenLimitError
    assert error.retryable is False


async def test_400_other_is_bad_request() -> None:
    error = await call(error_response(400, {"message": "bad 'messages'", "code": None}))
    assert type(error) is LLMBadRequestError
    assert error.retryable is False


async def test_400_content_filter_is_content_refused() -> None:
    error = await call(error_response(400, {"message": "filtered", "code": "content_filter"}))
    assert type(error) is ContentRefused


async def test_422_is_bad_request() -> None:
    error = await call(error_response(422, {"message": "unprocessable"}))
    assert type(error) is LLMBadRequestError
    assert error.status_code == 422


@pytest.mark.parametrize("status", [500, 502, 503, 529])
async def test_5xx_is_retryable_server_error(status: int) -> None:
    error = await call(error_response(status, {"message": "upstream down"}))
    assert type(error) is LLMServerError
    assert error.retryable is True
    assert error.status_code == status


async def test_5xx_with_non_json_body() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(502, text="<html>Bad gateway</html>")

    error = await call(handler)
    assert type(error) is LLMServerError
    assert str(error) == "openai failed: <html>Bad gateway</html> (openai:gpt-4o)"


async def test_unknown_4xx_status_is_bad_request() -> None:
    error = await call(error_response(418, {"message": "teapot"}))
    assert type(error) is LLMBadRequestError
    assert error.status_code == 418


async def test_timeout_is_retryable_timeout_error() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=request)

    error = await call(handler)
    assert type(error) is LLMTimeoutError
    assert error.retryable is True
    assert str(error) == "request to openai timed out (openai:gpt-4o)"


async def test_connect_error_is_retryable_connection_error() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    error = await call(handler)
    assert type(error) is LLMConnectionError
    assert error.retryable is True
    assert str(error) == (
        "connection to openai failed: Connection error. (ConnectError: connection refused)"
        " (openai:gpt-4o)"
    )


class _Chunks(httpx2.AsyncByteStream):
    def __init__(self, chunks: list[bytes], error: Exception | None) -> None:
        self._chunks = chunks
        self._error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
        if self._error is not None:
            raise self._error


def _delta(text: str) -> bytes:
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def sse(chunks: list[bytes], error: Exception | None = None) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, stream=_Chunks(chunks, error)
        )

    return handler


async def stream(handler: Handler) -> tuple[LLMClientError, str]:
    client = make_client(handler)
    text: list[str] = []
    try:
        with pytest.raises(LLMClientError) as info:
            with map_sdk_errors("openrouter", "gpt-4o", [KEY]):
                response = await client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, stream=True
                )
            with map_sdk_errors("openrouter", "gpt-4o", [KEY], partial_text=lambda: "".join(text)):
                async for chunk in response:
                    text.append(chunk.choices[0].delta.content or "")
    finally:
        await client.close()
    return info.value, "".join(text)


async def test_mid_stream_error_event_is_streaming_error_with_partial_text() -> None:
    event = {"error": {"code": 502, "message": "Provider disconnected"}}
    error, text = await stream(
        sse([_delta("Hel"), _delta("lo"), f"data: {json.dumps(event)}\n\n".encode()])
    )
    assert text == "Hello"
    assert type(error) is LLMStreamingError
    assert error.partial_text == "Hello"
    assert error.retryable is False
    assert error.status_code == 502
    assert str(error) == (
        "stream from openrouter failed: Provider disconnected (openrouter:gpt-4o)"
    )


async def test_error_event_before_first_chunk_is_typed_by_its_code_and_retryable() -> None:
    # Before any output an error event is typed as its code's status (tests/llm/
    # test_review5_upstream_errors.py): a 503 is a server error, retryable.
    event = {"error": {"code": 503, "message": "No endpoints"}}
    error, _ = await stream(
        sse([b": OPENROUTER PROCESSING\n\n", f"data: {json.dumps(event)}\n\n".encode()])
    )
    assert type(error) is LLMServerError
    assert (error.status_code, error.retryable) == (503, True)


async def test_error_event_with_client_code_is_not_retryable_even_before_first_chunk() -> None:
    event = {"error": {"code": 400, "message": "bad"}}
    error, _ = await stream(sse([f"data: {json.dumps(event)}\n\n".encode()]))
    assert type(error) is LLMBadRequestError
    assert (error.status_code, error.retryable) == (400, False)


@pytest.mark.parametrize(
    "exc",
    [
        httpx2.ReadError("connection reset"),
        httpx2.RemoteProtocolError("peer closed connection"),
        httpx2.ReadTimeout("read timed out"),
    ],
)
async def test_transport_failure_mid_stream_is_streaming_error(exc: Exception) -> None:
    error, text = await stream(sse([_delta("Partial")], exc))
    assert text == "Partial"
    assert type(error) is LLMStreamingError
    assert error.partial_text == "Partial"
    assert error.retryable is False


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx2.ReadError("reset"), LLMConnectionError),
        (httpx2.RemoteProtocolError("bad"), LLMConnectionError),
        (httpx2.ConnectError("refused"), LLMConnectionError),
        (httpx2.PoolTimeout("pool"), LLMTimeoutError),
    ],
)
def test_raw_httpx2_errors_outside_a_stream(exc: Exception, expected: type[LLMClientError]) -> None:
    with pytest.raises(expected), map_sdk_errors("openai", None):
        raise exc


def test_raw_httpx2_error_inside_a_stream_carries_partial_text() -> None:
    with (
        pytest.raises(LLMStreamingError) as info,
        map_sdk_errors("openai", None, partial_text=lambda: "abc"),
    ):
        raise httpx2.RemoteProtocolError("peer closed")
    assert info.value.partial_text == "abc"
    assert str(info.value) == "stream from openai failed: peer closed (openai)"


def test_our_own_errors_and_other_exceptions_pass_through() -> None:
    original = LLMServerError("x")
    with pytest.raises(LLMServerError) as info, map_sdk_errors("openai", None):
        raise original
    assert info.value is original
    with pytest.raises(KeyError), map_sdk_errors("openai", None):
        raise KeyError("k")


def test_the_cause_is_kept_for_logs() -> None:
    with pytest.raises(LLMConnectionError) as info, map_sdk_errors("openai", None):
        raise httpx2.ConnectError("refused")
    assert isinstance(info.value.__cause__, httpx2.ConnectError)


def test_error_from_sdk_for_an_unknown_exception_is_not_retryable() -> None:
    error = error_from_sdk(openai.OpenAIError(f"weird {KEY}"), "openai", "m", [KEY])
    assert type(error) is LLMClientError
    assert error.retryable is False
    assert str(error) == "unexpected error from openai: weird [REDACTED] (openai:m)"


def _status_error(status: int) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(status, request=request, json={"message": "odd"})
    return openai.APIStatusError("odd", response=response, body={"message": "odd"})


def test_a_3xx_is_a_bad_request_not_followed() -> None:
    # It was a bare LLMClientError, charged its prompt (tests/llm/test_review5_upstream_errors.py).
    error = error_from_sdk(_status_error(304), "openai", None)
    assert type(error) is LLMBadRequestError
    assert str(error) == ("openai's base_url answered HTTP 304 with no usable Location (not"
                          " followed): check base_url (openai)")


def test_408_is_a_timeout() -> None:
    assert type(error_from_sdk(_status_error(408), "openai", None)) is LLMTimeoutError


class TestParseRetryAfter:
    def test_seconds(self) -> None:
        assert parse_retry_after({"retry-after": "3"}) == 3.0

    def test_fractional_seconds(self) -> None:
        assert parse_retry_after({"retry-after": "0.25"}) == 0.25

    def test_milliseconds(self) -> None:
        assert parse_retry_after({"retry-after-ms": "250"}) == 0.25

    def test_http_date(self) -> None:
        now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
        header = format_datetime(datetime(2026, 11, 25, 12, 0, 30, tzinfo=UTC), usegmt=True)
        assert parse_retry_after({"retry-after": header}, now=now.timestamp()) == 30.0

    def test_date_in_the_past_is_zero(self) -> None:
        header = "Wed, 21 Oct 2015 07:28:00 GMT"
        assert parse_retry_after({"retry-after": header}) == 0.0

    def test_garbage_is_none(self) -> None:
        assert parse_retry_after({"retry-after": "soon"}) is None
        assert parse_retry_after({}) is None

    def test_negative_is_clamped(self) -> None:
        assert parse_retry_after({"retry-after": "-5"}) == 0.0


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    yield


async def test_garbage_data_mid_stream_is_a_streaming_error() -> None:
    error, text = await stream(sse([_delta("Hi"), b"data: {not json\n\n"]))
    assert text == "Hi"
    assert type(error) is LLMStreamingError
    assert error.partial_text == "Hi"
    assert error.retryable is False


def test_invalid_json_outside_a_stream_is_a_server_error() -> None:
    with (
        pytest.raises(LLMServerError, match=r"^invalid response from openai: Expecting"),
        map_sdk_errors("openai", None),
    ):
        json.loads("{oops")


def test_response_validation_error_is_a_retryable_server_error() -> None:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(200, request=request, text="<html>")
    exc = openai.APIResponseValidationError(response, "<html>")
    error = error_from_sdk(exc, "openai", "m")
    assert type(error) is LLMServerError
    assert error.retryable is True
    assert error.status_code == 200
    assert str(error) == "invalid response from openai: <html> (openai:m)"


def test_content_filter_finish_reason_is_content_refused() -> None:
    error = error_from_sdk(openai.ContentFilterFinishReasonError(), "openai", "m")
    assert type(error) is ContentRefused
    assert str(error) == "openai stopped the answer: content filter (openai:m)"
