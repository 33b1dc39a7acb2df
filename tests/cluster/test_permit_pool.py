"""Rate permits leased ahead against a real redis-server: counted in flight before they are
used, a quarter of what is left at most, and given back at a pause."""

from __future__ import annotations

import anyio
import pytest

from actors.cluster import ClusterConfig, RedisLink, SharedRateWindow, WindowUsage
from actors.llm import LLMRateLimitError
from actors.llm._limits import RateLimitConfig
from actors.llm._shared_limits import SharedProviderLimiter
from runtime import MonotonicClock


@pytest.fixture
def cluster_config(cluster_config: ClusterConfig) -> ClusterConfig:
    """The longest lease: a loaded machine still sees a pool before it expires."""
    return cluster_config.model_copy(update={"permit_lease": 1.0})


def _limiter(link: RedisLink, rpm: int | None, tpm: int | None = None, *,
             timeout: float = 1.0) -> SharedProviderLimiter:
    window = SharedRateWindow(link, "p", requests_per_minute=rpm, tokens_per_minute=tpm)
    return SharedProviderLimiter(
        RateLimitConfig(requests_per_minute=rpm, tokens_per_minute=tpm), clock=MonotonicClock(),
        name="p", window=window, admission_timeout=timeout)


async def _until_in_flight(window: SharedRateWindow, count: int) -> WindowUsage:
    for _ in range(200):  # bounded: 10 s
        usage = await window.usage()
        if usage.in_flight == count:
            return usage
        await anyio.sleep(0.05)
    raise AssertionError(f"never {count} in flight: {await window.usage()}")


async def test_a_lease_takes_at_most_a_quarter_of_what_is_left_and_none_near_the_limit(
    link: RedisLink,
) -> None:
    window = SharedRateWindow(link, "p", requests_per_minute=100, tokens_per_minute=None)
    first = await window.admit(extra=7)
    assert (first.permit, first.extra) == (1, (2, 3, 4, 5, 6, 7, 8))  # (99 - 28) / 4 >= 7
    assert await window.usage() == WindowUsage(8, 0, 8, 0.0)  # each counted in flight
    for _ in range(59):
        assert (await window.admit()).extra == ()
    # 33 left, 32 after its own: a quarter of the 4 above the last 28 is 1.
    assert (await window.admit(extra=7)).extra == (69,)
    # 31 left: nothing is leased, a request still gets its own permit, a refill gets none.
    assert (await window.admit(extra=7)).extra == ()
    refused = await window.admit(extra=7, lease_only=True)
    assert (refused.admitted, refused.retry_after) == (False, None)
    assert (await window.usage()).requests == 70


async def test_a_leased_permit_holds_its_tokens_until_its_stamp_shrinks_them_to_the_estimate(
    link: RedisLink,
) -> None:
    window = SharedRateWindow(link, "p", requests_per_minute=None, tokens_per_minute=200)
    first = await window.admit(10, extra=1, extra_tokens=20)
    assert (first.permit, first.extra) == (1, (2,))  # (190 - 4 x 20) // (4 x 20): one more
    assert await window.usage() == WindowUsage(2, 30, 2, 0.0)
    assert await window.sent(2, 5) is True
    assert await window.usage() == WindowUsage(2, 15, 1, 0.0)


async def test_two_workers_pools_never_let_the_upstream_pass_the_rpm(
    cluster_config: ClusterConfig,
) -> None:
    sent: list[str] = []
    async with RedisLink(cluster_config) as one, RedisLink(cluster_config) as two:
        workers = [_limiter(one, 40, timeout=2.0), _limiter(two, 40, timeout=2.0)]

        async def worker(index: int) -> None:
            for number in range(30):  # one request after another, each worker
                try:
                    async with workers[index].admit(1):
                        sent.append(f"{index}:{number}")  # the upstream call
                except LLMRateLimitError:
                    pass

        async with anyio.create_task_group() as tasks:
            for index in range(2):
                tasks.start_soon(worker, index)
        usage = await _until_in_flight(workers[0].shared, 0)  # leftovers refunded
        assert (len(sent), usage.requests) == (40, 40)
        assert workers[0].asked + workers[1].asked < 60  # some took a leased permit


async def test_a_pause_set_by_another_worker_stops_this_one_within_the_lease(
    cluster_config: ClusterConfig,
) -> None:
    async with RedisLink(cluster_config) as one, RedisLink(cluster_config) as two:
        holder, other = _limiter(one, 100), _limiter(two, 100)
        async with holder.admit(1):
            pass
        usage = await _until_in_flight(holder.shared, 7)  # its pool: 7 leased permits
        assert usage.requests == 8
        await other.shared.pause_for(30.0)  # e.g. a 429 with Retry-After seen by the other
        await anyio.sleep(cluster_config.permit_lease + 0.05)
        # The holder's pooled permits are older than the lease: given back, not used.
        with pytest.raises(LLMRateLimitError):
            async with holder.admit(1):
                raise AssertionError("sent during the pause")
        assert (await _until_in_flight(holder.shared, 0)).requests == 1


async def test_a_pause_seen_by_this_worker_gives_its_pool_back_at_once(
    link: RedisLink,
) -> None:
    limiter = _limiter(link, 100)
    async with limiter.admit(1):
        pass
    await _until_in_flight(limiter.shared, 7)
    with pytest.raises(LLMRateLimitError):
        async with limiter.admit(1):  # a pooled permit: no call
            raise LLMRateLimitError("slow down", provider="p", status_code=429,
                                    retry_after=30.0)
    usage = await _until_in_flight(limiter.shared, 0)
    assert (usage.requests, usage.paused_for > 29.0) == (2, True)
    assert limiter.asked == 1


async def test_a_closing_link_gives_the_pool_back(cluster_config: ClusterConfig) -> None:
    async with RedisLink(cluster_config) as link:
        limiter = _limiter(link, 100)
        async with limiter.admit(1):
            pass
        await _until_in_flight(limiter.shared, 7)
    async with RedisLink(cluster_config) as other:
        window = SharedRateWindow(other, "p", requests_per_minute=100, tokens_per_minute=None)
        assert await window.usage() == WindowUsage(1, 1, 0, 0.0)
