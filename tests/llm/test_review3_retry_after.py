"""A Retry-After that is an HTTP date too large for a datetime (a huge year or zone offset) is
ignored, as any unparseable one: it raised OverflowError while the 429 (or 5xx) was being
mapped, so the call ended in a raw OverflowError instead of its typed error. A raw upstream
on 127.0.0.1."""

from __future__ import annotations

import anyio
import pytest

from actors.llm import LLMRateLimitError, LLMServerError, ProviderConfig
from actors.llm._upstream_errors import parse_retry_after
from tests.llm.raw_upstream import raw_upstream
from tests.llm.test_provider import call, running

pytestmark = pytest.mark.anyio

OVERFLOWING = ["Mon, 1 Jan 99999999999999999999999 00:00:00 GMT",
               "Mon, 01 Jan 2020 00:00:00 +99999999999999999999"]


@pytest.mark.parametrize("value", OVERFLOWING, ids=["year", "zone"])
def test_an_http_date_too_large_for_a_datetime_is_no_retry_after(value: str) -> None:
    assert parse_retry_after({"retry-after": value}, now=1.7e9) is None



@pytest.mark.parametrize(("status", "expected", "message"), [
    (429, LLMRateLimitError, "rate limited by sim: slow down"),
    (503, LLMServerError, "sim failed: slow down"),
])
@pytest.mark.parametrize("value", OVERFLOWING, ids=["year", "zone"])
async def test_a_status_error_with_an_overflowing_retry_after_keeps_its_type(
        value: str, status: int, expected: type[Exception], message: str) -> None:
    body = b'{"error": {"message": "slow down", "type": "requests"}}'
    reply = (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nConnection: close\r\n"
             b"Retry-After: %s\r\nContent-Length: %d\r\n\r\n" % (status, value.encode(),
                                                                  len(body)) + body)
    async with raw_upstream(reply) as base_url:
        config = ProviderConfig(kind="openai-compatible", base_url=base_url,
                                model="gpt-4o-mini", requires_api_key=False, max_tokens=10)
        async with running(config) as (system, ref):
            with anyio.fail_after(10), pytest.raises(expected) as failed:
                await ref.ask(call(), timeout=8)
            assert system.durable("sim").limiter.pause_remaining() == 0.0
    assert type(failed.value) is expected
    assert (failed.value.message, failed.value.retry_after) == (message, None)
