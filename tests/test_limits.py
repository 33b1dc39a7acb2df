"""Tests for actors.limits: token buckets in (short) real time, pauses on a fake clock."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pydantic
import pytest

from actors.errors import LLMTokenLimitError
from actors.limits import ProviderRateLimiter, RateLimitConfig, parse_reset_duration
from runtime._clock import FakeClock, MonotonicClock


def limiter(
    rpm: int | None = None, tpm: int | None = None, clock: FakeClock | None = None
) -> ProviderRateLimiter:
    config = RateLimitConfig(requests_per_minute=rpm, tokens_per_minute=tpm)
    return ProviderRateLimiter(config, clock=clock or MonotonicClock(), name="openai")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("2", 2.0),
        ("1m", 60.0),
        ("", None),
        ("soon", None),
        ("1x", None),
        ("6m0sgarbage", None),
    ],
)
def test_parse_reset_duration(text: str, seconds: float | None) -> None:
    assert parse_reset_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_config_is_frozen_and_rejects_non_positive_limits() -> None:
    config = RateLimitConfig(requests_per_minute=10)
    assert config.tokens_per_minute is None
    with pytest.raises(pydantic.ValidationError):
        config.requests_per_minute = 5  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        RateLimitConfig(requests_per_minute=0)


async def test_estimate_over_the_whole_token_budget_fails_at_once() -> None:
    with anyio.fail_after(1), pytest.raises(LLMTokenLimitError) as info:
        await limiter(tpm=1000).acquire(1001)
    assert str(info.value) == (
        "estimated 1001 tokens exceed the whole budget of 1000 tokens per minute of openai (openai)"
    )
    assert info.value.retryable is False


async def test_negative_tokens_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"^tokens must not be negative$"):
        await limiter().acquire(-1)


async def test_requests_per_minute_bound_against_real_time() -> None:
    # rpm=600: a full bucket of 600, then 10 per second.
    lim = limiter(rpm=600)
    with anyio.fail_after(1):
        for _ in range(600):
            await lim.acquire()
    count = 0
    start = time.monotonic()
    with anyio.move_on_after(1.0):
        while True:
            await lim.acquire()
            count += 1
    elapsed = time.monotonic() - start
    assert count <= 10 * elapsed + 1
    assert count >= 8


async def test_tokens_per_minute_bound_against_real_time() -> None:
    # tpm=6000: a full bucket of 6000 tokens, then 100 tokens per second.
    lim = limiter(tpm=6000)
    with anyio.fail_after(1):
        await lim.acquire(6000)
    start = time.monotonic()
    await lim.acquire(30)
    assert 0.2 <= time.monotonic() - start < 0.6


async def test_unlimited_config_never_waits() -> None:
    lim = limiter()
    with anyio.fail_after(1):
        for _ in range(1000):
            await lim.acquire(10**9)


async def test_cancelled_acquire_gives_its_request_back() -> None:
    # rpm=60 refills one request per second; tpm=100 is drained by the first call.
    lim = limiter(rpm=60, tpm=100)
    await lim.acquire(100)
    with anyio.move_on_after(0.05) as scope:
        await lim.acquire(100)  # takes a request, then waits for tokens: cancelled there
    assert scope.cancelled_caught
    # 59 requests left in the bucket (the cancelled call gave its request back): all go at once.
    with anyio.fail_after(0.5):
        for _ in range(59):
            await lim.acquire(0)


async def test_pause_for_holds_every_request_until_it_ends() -> None:
    clock = FakeClock()
    lim = limiter(clock=clock)
    lim.pause_for(5)
    assert lim.pause_remaining() == 5.0
    done: list[int] = []

    async def request(i: int) -> None:
        await lim.acquire()
        done.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(request, i)
        await clock.advance(4.9)
        assert done == []
        assert repr(lim) == "<ProviderRateLimiter 'openai' rpm=None tpm=None paused=0.100s>"
        await clock.advance(0.1)
        assert sorted(done) == [0, 1, 2]
    assert lim.pause_remaining() == 0.0
    assert repr(lim) == "<ProviderRateLimiter 'openai' rpm=None tpm=None>"


async def test_a_longer_pause_is_not_shortened() -> None:
    clock = FakeClock()
    lim = limiter(clock=clock)
    lim.pause_for(10)
    lim.pause_for(2)
    assert lim.pause_remaining() == 10.0
    lim.pause_for(0)
    assert lim.pause_remaining() == 10.0


async def test_pause_extended_while_waiting_is_honoured() -> None:
    clock = FakeClock()
    lim = limiter(clock=clock)
    lim.pause_for(1)
    done = anyio.Event()

    async def request() -> None:
        await lim.acquire()
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(request)
        await clock.advance(0.5)
        lim.pause_for(3)  # now until t=3.5
        await clock.advance(0.5)
        assert not done.is_set()
        await clock.advance(2.4)
        assert not done.is_set()
        await clock.advance(0.1)
        assert done.is_set()


async def test_pause_that_begins_while_waiting_for_capacity_binds() -> None:
    clock = FakeClock()
    lim = limiter(rpm=600, clock=clock)
    for _ in range(600):
        await lim.acquire()
    done = anyio.Event()

    async def request() -> None:
        await lim.acquire()  # waits ~0.1 s of real time for the bucket
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(request)
        await anyio.lowlevel.checkpoint()
        lim.pause_for(30)
        await anyio.sleep(0.3)
        assert not done.is_set()
        await clock.advance(30)
        assert done.is_set()


async def test_remaining_zero_in_headers_pauses_until_reset() -> None:
    clock = FakeClock()
    lim = limiter(rpm=100, tpm=10_000, clock=clock)
    lim.update_from_headers(
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-remaining-tokens": "5000",
            "x-ratelimit-reset-tokens": "20ms",
        }
    )
    assert lim.pause_remaining() == 360.0


async def test_remaining_tokens_zero_pauses_for_the_token_reset() -> None:
    clock = FakeClock()
    lim = limiter(clock=clock)
    lim.update_from_headers(
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}
    )
    assert lim.pause_remaining() == pytest.approx(0.02)


async def test_garbage_headers_are_ignored() -> None:
    clock = FakeClock()
    lim = limiter(rpm=10, clock=clock)
    lim.update_from_headers(
        {"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "1s"}
    )
    lim.update_from_headers(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "whenever"}
    )
    assert lim.pause_remaining() == 0.0


async def test_remaining_in_headers_drains_our_bucket_to_match() -> None:
    # Our bucket believes 100 requests are left; the server says 2.
    lim = limiter(rpm=100)
    lim.update_from_headers({"x-ratelimit-remaining-requests": "2"})
    with anyio.fail_after(0.5):
        await lim.acquire()
        await lim.acquire()
    with anyio.move_on_after(0.1) as scope:
        await lim.acquire()  # the next one is 0.6 s away at 100 per minute
    assert scope.cancelled_caught
