"""Tests for actors.llm._limits: buckets, pauses and the window, stepped on a fake clock."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import pydantic
import pytest

from actors.llm import LLMTokenLimitError
from actors.llm._limits import (
    MAX_SERVER_PAUSE,
    ProviderRateLimiter,
    RateLimitConfig,
    SlidingWindowLimit,
    parse_reset_duration,
)
from runtime.testing import FakeClock


def limiter(
    rpm: int | None = None, tpm: int | None = None, clock: FakeClock | None = None
) -> ProviderRateLimiter:
    config = RateLimitConfig(requests_per_minute=rpm, tokens_per_minute=tpm)
    return ProviderRateLimiter(config, clock=clock or FakeClock(), name="openai")


async def admitted_after(clock: FakeClock, lim: ProviderRateLimiter, tokens: int,
                         steps: list[float]) -> list[bool]:
    """Whether one ``acquire(tokens)`` has returned after each clock step in ``steps``."""
    done = anyio.Event()
    seen: list[bool] = []

    async def request() -> None:
        await lim.acquire(tokens)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(request)
        await anyio.wait_all_tasks_blocked()
        for step in steps:
            await clock.advance(step)
            await anyio.wait_all_tasks_blocked()
            seen.append(done.is_set())
        tg.cancel_scope.cancel()
    return seen


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


async def test_window_admits_no_request_after_a_full_minute_burst() -> None:
    # rpm=600: the burst takes the whole window. A bucket alone would refill 10 per second.
    clock = FakeClock()
    lim = limiter(rpm=600, clock=clock)
    with anyio.fail_after(1):
        for _ in range(600):
            await lim.acquire()
    assert lim.window_usage() == (600.0, 0.0)
    assert await admitted_after(clock, lim, 0, [0.5, 59.0, 0.5]) == [False, False, True]


async def test_window_admits_no_tokens_after_the_budget_is_spent() -> None:
    clock = FakeClock()
    lim = limiter(tpm=6000, clock=clock)
    with anyio.fail_after(1):
        await lim.acquire(5990)
        await lim.acquire(10)
    assert lim.window_usage() == (0.0, 6000.0)
    assert await admitted_after(clock, lim, 1, [59.5, 0.5]) == [False, True]


async def test_unlimited_config_never_waits() -> None:
    clock = FakeClock()
    lim = limiter(clock=clock)
    with anyio.fail_after(1):
        for _ in range(1000):
            await lim.acquire(10**9)
    assert clock.sleepers == 0
    assert lim.wait_time(10**9) == 0.0


async def test_cancelled_acquire_gives_its_request_back() -> None:
    # rpm=60 refills one request per second; tpm=100 is drained by the first call.
    clock = FakeClock()
    lim = limiter(rpm=60, tpm=100, clock=clock)
    await lim.acquire(100)
    assert await admitted_after(clock, lim, 100, [1.0]) == [False]  # waits for tokens: cancelled
    assert lim.window_usage() == (1.0, 100.0)
    # 59 requests left in the window (the cancelled call gave its request back): all go at once.
    with anyio.fail_after(1):
        for _ in range(59):
            await lim.acquire(0)
    assert lim.window_usage() == (60.0, 100.0)
    assert lim.wait_time(0) == 59.0


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
    # The server says nothing is left: our bucket is full and refills 10 per second.
    lim.update_from_headers({"x-ratelimit-remaining-requests": "0"})
    done = anyio.Event()

    async def request() -> None:
        await lim.acquire()  # waits 0.1 s for the bucket
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(request)
        await anyio.wait_all_tasks_blocked()
        lim.pause_for(30)
        await clock.advance(0.2)
        assert not done.is_set()
        await clock.advance(29.8)
        await anyio.wait_all_tasks_blocked()
        assert done.is_set()


async def test_a_cancelled_wait_takes_nothing() -> None:
    clock = FakeClock()
    lim = limiter(rpm=600, tpm=1000, clock=clock)
    lim.update_from_headers({"x-ratelimit-remaining-tokens": "0"})  # tokens bucket full
    with anyio.move_on_after(0.05) as scope:
        await lim.acquire(500)
    assert scope.cancelled_caught
    assert lim.window_usage() == (0.0, 0.0)
    with anyio.fail_after(1):
        for _ in range(600):
            await lim.acquire()


async def test_remaining_zero_in_headers_pauses_until_reset() -> None:
    clock = FakeClock()
    lim = limiter(rpm=100, tpm=10_000, clock=clock)
    lim.update_from_headers(
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "2m30s",
            "x-ratelimit-remaining-tokens": "5000",
            "x-ratelimit-reset-tokens": "20ms",
        }
    )
    assert lim.pause_remaining() == 150.0


async def test_a_reset_longer_than_the_cap_pauses_for_the_cap_only() -> None:
    clock = FakeClock()
    lim = limiter(rpm=100, tpm=10_000, clock=clock)
    lim.update_from_headers(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
    )
    assert lim.pause_remaining() == MAX_SERVER_PAUSE == 300.0


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
    # Our bucket believes 120 requests are left; the server says 2.
    clock = FakeClock()
    lim = limiter(rpm=120, clock=clock)
    lim.update_from_headers({"x-ratelimit-remaining-requests": "2"})
    with anyio.fail_after(1):
        await lim.acquire()
        await lim.acquire()
    # The next one is 0.5 s away at 120 per minute.
    assert lim.wait_time() == 0.5
    assert await admitted_after(clock, lim, 0, [0.25, 0.25]) == [False, True]


# -- the exact sliding window --------------------------------------------------------------


async def test_burst_on_a_fake_clock_admits_exactly_the_limit_per_window() -> None:
    # A bucket alone would let 9 more through just before t=60 (it refills 10 per minute).
    clock = FakeClock()
    lim = limiter(rpm=10, tpm=1000, clock=clock)
    admitted: list[float] = []

    async def request() -> None:
        await lim.acquire(50)
        admitted.append(clock.now())

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(request)
        await anyio.wait_all_tasks_blocked()  # let the admissions run; the fake clock stays at 0
        assert admitted == [0.0] * 10
        await clock.advance(59.999)
        await anyio.wait_all_tasks_blocked()
        assert len(admitted) == 10
        for _ in range(200):
            await clock.advance(0.5)
            await anyio.lowlevel.checkpoint()
            if len(admitted) == 30:
                break
    assert admitted == [0.0] * 10 + [pytest.approx(60.5, abs=0.6)] * 10 + [
        pytest.approx(121.0, abs=1.1)
    ] * 10
    for end in admitted:
        assert sum(1 for t in admitted if end < t + 60.0 and t <= end) <= 10


async def test_in_flight_requests_never_expire_until_sent() -> None:
    clock = FakeClock()
    lim = limiter(rpm=2, clock=clock)
    async with lim.admit() as first, lim.admit():
        await clock.advance(120)
        assert lim.window_usage() == (2.0, 0.0)
        with anyio.move_on_after(0.05) as scope:
            await lim.acquire()
        assert scope.cancelled_caught
        first.sent()
        assert repr(first) == "<RatePermit tokens=0 sent>"
        await clock.advance(59.9)
        with anyio.move_on_after(0.05) as scope:
            await lim.acquire()
        assert scope.cancelled_caught
    # Leaving the block stamped the second permit now; the first expires at 180.
    await clock.advance(0.1)
    with anyio.fail_after(1):
        await lim.acquire()
    assert lim.window_usage() == (2.0, 0.0)


async def test_a_stamp_wakes_a_request_waiting_only_on_in_flight_capacity() -> None:
    clock = FakeClock()
    lim = limiter(tpm=100, clock=clock)
    done = anyio.Event()

    async def request() -> None:
        await lim.acquire(60)
        done.set()

    async with lim.admit(60) as permit, anyio.create_task_group() as tg:
        tg.start_soon(request)
        await clock.advance(1000)
        assert not done.is_set()
        permit.sent()
        await anyio.wait_all_tasks_blocked()  # the waiter wakes and sleeps for the stamp's expiry
        await clock.advance(59.99)
        assert not done.is_set()
        await clock.advance(0.01)
        await anyio.wait_all_tasks_blocked()
        assert done.is_set()


async def test_sliding_window_bound_holds_over_every_window_of_a_random_schedule() -> None:
    rng = random.Random(7)
    clock = FakeClock()
    window = SlidingWindowLimit(100, clock=clock)
    sent: list[tuple[float, float]] = []
    for _ in range(2000):
        amount = float(rng.choice([1, 5, 20, 60]))
        await clock.advance(rng.random() * 2)
        for _ in range(3):  # a float rounding may leave a sliver of a wait
            if (wait := window.wait_time(amount)) == 0.0:
                break
            await clock.advance(wait)
        assert window.wait_time(amount) == 0.0
        window.take(amount)
        window.stamp(amount)
        sent.append((clock.now(), amount))
    # Every window that ends at an arrival holds at most the limit (the maximal windows).
    for end, _ in sent:
        total = sum(a for t, a in sent if end < t + 60.0 and t <= end)
        assert total <= 100
    assert sent[-1][0] > 600  # many windows were covered


def test_sliding_window_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError, match=r"^limit and window must be positive$"):
        SlidingWindowLimit(0, clock=FakeClock())
