"""SharedRateWindow against a real redis-server: the strict sliding window, shared."""

from __future__ import annotations

import math

import anyio

from actors.cluster import ClusterConfig, RedisLink, SharedRateWindow, WindowUsage

_US = 1_000_000


async def _stamp_us(link: RedisLink, provider: str, permit: int) -> int:
    score = await link.client.zscore(link.key(f"rate:{provider}", "stamped"), str(permit))
    assert score is not None
    return int(score)


async def test_admits_up_to_rpm_then_names_the_next_slot_one_window_after_the_oldest_stamp(
    link: RedisLink,
) -> None:
    window = SharedRateWindow(link, "openai", requests_per_minute=2, tokens_per_minute=None)
    first, second = await window.admit(), await window.admit()
    assert (first.admitted, first.permit, second.admitted, second.permit) == (True, 1, True, 2)
    assert await window.sent(1) is True
    assert await window.sent(2) is True
    refused = await window.admit()
    assert (refused.admitted, refused.permit) == (False, None)
    assert refused.retry_after is not None
    next_slot = round(refused.server_time * _US) + round(refused.retry_after * _US)
    assert next_slot == await _stamp_us(link, "openai", 1) + 60 * _US
    assert await window.usage() == WindowUsage(requests=2, tokens=0, in_flight=0, paused_for=0.0)


async def test_an_in_flight_request_counts_until_sent_then_one_window_from_its_stamp(
    link: RedisLink,
) -> None:
    window = SharedRateWindow(link, "p", requests_per_minute=1, tokens_per_minute=None,
                              window=0.2)
    assert (await window.admit()).permit == 1
    await anyio.sleep(0.3)  # longer than the window: an unsent request still counts
    waiting = await window.admit()
    assert (waiting.admitted, waiting.retry_after) == (False, None)
    await window.sent(1)
    refused = await window.admit()
    assert refused.retry_after is not None
    stamp = await _stamp_us(link, "p", 1)
    assert round(refused.server_time * _US) + round(refused.retry_after * _US) == stamp + 200_000
    await anyio.sleep(refused.retry_after + 0.01)
    assert (await window.admit()).permit == 2


async def test_admission_of_a_request_and_its_tokens_is_all_or_nothing(link: RedisLink) -> None:
    window = SharedRateWindow(link, "p", requests_per_minute=10, tokens_per_minute=100)
    assert (await window.admit(60)).admitted is True
    refused = await window.admit(50)
    assert (refused.admitted, refused.retry_after) == (False, None)  # only a send frees it
    assert await window.usage() == WindowUsage(requests=1, tokens=60, in_flight=1,
                                               paused_for=0.0)
    assert (await window.admit(40)).admitted is True
    assert await window.usage() == WindowUsage(requests=2, tokens=100, in_flight=2,
                                               paused_for=0.0)


async def test_a_request_larger_than_the_token_budget_is_never_admitted(link: RedisLink) -> None:
    window = SharedRateWindow(link, "p", requests_per_minute=None, tokens_per_minute=100)
    refused = await window.admit(101)
    assert (refused.admitted, refused.retry_after) == (False, math.inf)
    assert await window.usage() == WindowUsage(0, 0, 0, 0.0)


async def test_a_refund_forgets_an_unsent_request(link: RedisLink) -> None:
    window = SharedRateWindow(link, "p", requests_per_minute=1, tokens_per_minute=50)
    admitted = await window.admit(50)
    assert admitted.permit is not None
    assert await window.refund(admitted.permit) is True
    assert await window.refund(admitted.permit) is False
    assert await window.usage() == WindowUsage(0, 0, 0, 0.0)
    assert (await window.admit(50)).admitted is True


async def test_a_pause_set_by_one_instance_stops_every_instance(
    link: RedisLink, cluster_config: ClusterConfig
) -> None:
    async with RedisLink(cluster_config) as other:
        here = SharedRateWindow(link, "p", requests_per_minute=None, tokens_per_minute=None)
        there = SharedRateWindow(other, "p", requests_per_minute=None, tokens_per_minute=None)
        assert await here.pause_for(5.0) == 5.0
        refused = await there.admit()
        assert refused.admitted is False
        assert refused.retry_after is not None
        assert 4.0 < refused.retry_after <= 5.0
        assert await there.pause_for(1.0) > 4.0  # a shorter pause never shortens a longer one


async def test_concurrent_admissions_from_two_clients_never_pass_the_limit(
    redis_server: object, cluster_config: ClusterConfig
) -> None:
    admitted: list[int] = []
    # Exactness, not latency, is under test: a loaded test machine may queue 200 calls > 0.75 s.
    patient = cluster_config.model_copy(update={"op_timeout": 5.0, "connect_timeout": 5.0})
    async with RedisLink(patient) as link, RedisLink(patient) as other:
        windows = [SharedRateWindow(shared, "p", requests_per_minute=37, tokens_per_minute=1000)
                   for shared in (link, other)]

        async def one(i: int) -> None:
            answer = await windows[i % 2].admit(20)
            if answer.permit is not None:
                admitted.append(answer.permit)

        async with anyio.create_task_group() as group:
            for i in range(200):
                group.start_soon(one, i)
        assert sorted(admitted) == list(range(1, 38))  # 37 requests, 740 tokens
        assert await windows[0].usage() == WindowUsage(37, 740, 37, 0.0)


async def test_an_in_flight_permit_of_a_vanished_sender_counts_as_sent_at_its_deadline(
    redis_server: object, cluster_config: ClusterConfig
) -> None:
    config = cluster_config.model_copy(update={"in_flight_ttl": 0.2})
    async with RedisLink(config) as link:
        window = SharedRateWindow(link, "p", requests_per_minute=1, tokens_per_minute=None,
                                  window=0.3)
        assert (await window.admit()).admitted is True
        await anyio.sleep(0.25)  # past its in-flight deadline: now stamped at that deadline
        refused = await window.admit()
        assert refused.retry_after is not None
        assert 0 < refused.retry_after <= 0.3
        assert await window.usage() == WindowUsage(1, 0, 0, 0.0)


async def test_windows_lost_after_use_pause_the_provider_for_one_window_in_quarantine(
    redis_server: object, cluster_config: ClusterConfig
) -> None:
    config = cluster_config.model_copy(update={"rate_quarantine_on_loss": True})
    async with RedisLink(config) as link:
        window = SharedRateWindow(link, "p", requests_per_minute=5, tokens_per_minute=None)
        # A first use is no loss: admitted at once.
        assert (await window.admit()).admitted is True
        assert (await window.admit()).admitted is True
        # Redis lost the windows (restarted empty): one window of quarantine from the loss.
        await link.client.flushdb()
        refused = await window.admit()
        assert (refused.admitted, refused.retry_after) == (False, 60.0)
        usage = await window.usage()
        assert (usage.requests, usage.tokens, usage.in_flight) == (0, 0, 0)
        assert 0 < usage.paused_for <= 60.0
        # A worker that noticed the loss later is paused until the same moment, not longer.
        later = SharedRateWindow(link, "p", requests_per_minute=5, tokens_per_minute=None)
        assert (await later.admit()).admitted is False
        again = await window.admit()
        assert again.admitted is False and again.retry_after is not None
        assert 0 < again.retry_after <= 60.0
        # Another provider, first used now, is not paused.
        fresh = SharedRateWindow(link, "q", requests_per_minute=5, tokens_per_minute=None)
        assert (await fresh.admit()).admitted is True


async def test_a_stamp_sent_in_the_background_has_landed_when_the_link_closes(
    redis_server: object, cluster_config: ClusterConfig
) -> None:
    async with RedisLink(cluster_config) as link:
        window = SharedRateWindow(link, "p", requests_per_minute=5, tokens_per_minute=None)
        assert (await window.admit(7)).permit == 1
        window.sent_soon(1)  # returns at once; the link's close waits for it
    window.sent_soon(1)  # after the close: nothing runs
    async with RedisLink(cluster_config) as other:
        assert await SharedRateWindow(other, "p", requests_per_minute=5,
                                      tokens_per_minute=None).usage() == WindowUsage(1, 7, 0, 0.0)
        assert await _stamp_us(other, "p", 1) > 0
