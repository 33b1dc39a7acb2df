"""The sixth review of the cluster's promises, each attack on a real redis-server."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import anyio
import pytest

from actors.cluster import (
    ClusterConfig,
    ClusterUnavailable,
    LedgerLimits,
    RedisLink,
    ReserveResult,
    SettleResult,
    SharedLedger,
    SharedRateWindow,
    redact_url,
)
from actors.cluster._link import logger as link_logger
from actors.llm import LLMRateLimitError
from actors.llm._limits import RateLimitConfig
from actors.llm._messages import Reservation, Reserve, Settle, Usage
from actors.llm._shared_limits import SharedProviderLimiter
from runtime import ActorSystem, MonotonicClock
from tests.cluster.reply_proxy import ReplyProxy
from tests.cluster.test_allowance import CENT, DAY, _journal, _open_epoch, _spec, _until_held
from tests.redis_server import RedisServer, free_port

SECRET = "s3cr3t-in-the-query"


def test_a_password_in_the_urls_query_is_redacted_like_one_in_its_user_info() -> None:
    # redis-py takes ``?password=`` from the query (the usual form of a unix:// URL).
    assert redact_url(f"redis://127.0.0.1:6390/0?password={SECRET}") == (
        "redis://127.0.0.1:6390/0?password=***")
    assert redact_url(f"unix:///run/redis.sock?db=2&password={SECRET}&x=1") == (
        "unix:///run/redis.sock?db=2&password=***&x=1")
    assert redact_url(f"rediss://u:{SECRET}@h:1/0?Password={SECRET}") == (
        "rediss://***@h:1/0?Password=***")


async def test_a_query_password_reaches_redis_and_never_a_repr_an_error_or_a_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with RedisServer(password=SECRET) as server:
        url = f"redis://127.0.0.1:{server.port}/0?password={SECRET}"
        config = ClusterConfig(redis_url=url, key_prefix="review6")
        shown = f"redis://127.0.0.1:{server.port}/0?password=***"
        assert f"redis_url='{shown}'" in repr(config)
        async with RedisLink(config) as link:
            assert repr(link) == f"<RedisLink {shown} prefix='review6'>"
            assert await link.server_time() > 0  # the password in the query is the one used
        # The same URL to a port nobody listens on: a typed error, nothing of the password.
        dead = ClusterConfig(redis_url=f"redis://127.0.0.1:{free_port()}/0?password={SECRET}",
                             connect_timeout=0.2, op_timeout=0.2)
        caplog.set_level(logging.DEBUG, logger=link_logger.name)
        async with RedisLink(dead) as link:
            with pytest.raises(ClusterUnavailable) as caught:
                await link.server_time()
            assert (await link.ping()).ok is False
            link.run_soon(link.script("return 1"), "probe", [], [])
        assert caught.value.reason == "connection failed"
        for text in (str(caught.value), repr(caught.value), repr(dead), repr(link), caplog.text):
            assert SECRET not in text


async def test_a_settle_redis_missed_is_counted_once_after_redis_restarted_empty(
    tmp_path: Path, redis_server: RedisServer, cluster_config: ClusterConfig,
) -> None:
    # Per-request reservations (no allowance): the settle is shared behind its answer, and
    # retried every second while Redis is down.
    config = cluster_config.model_copy(update={"allowances": False})
    async with RedisLink(config) as link:
        await _open_epoch(link)
        observer = SharedLedger(link, "observer", _journal, LedgerLimits())
        async with ActorSystem(_spec(tmp_path, link, "w", 1.00)) as system:
            ledger = system.ref("ledger")
            first: Reservation = await ledger.ask(Reserve("r0", "p", "m", 0, 1), timeout=10)
            await _until_held(observer, CENT)
            redis_server.stop()
            # Charged in the worker's journal; Redis cannot take it now.
            assert await ledger.ask(Settle(first.id, Usage(), 0.01), timeout=10) == 0.01
            await anyio.sleep(0.3)
            redis_server.start()  # empty: the worker's seed brings its journal back
            seen: list[tuple[int, int]] = []
            for _ in range(50):  # bounded: 2.5 s, past the settle's retry (every 1 s)
                with contextlib.suppress(ClusterUnavailable):  # a connection from before
                    seen.append(await observer.totals(DAY))
                await anyio.sleep(0.05)
        assert seen[-1] == (CENT, 0)
        assert max(settled for settled, _ in seen) == CENT


async def test_a_provider_name_with_a_bar_is_released_from_its_own_totals(link: RedisLink) -> None:
    # A provider's name is any key of llm.providers; a reservation's record is
    # "amount|provider|turn key" in Redis.
    provider = "eu|openai"
    await _open_epoch(link)
    ledger = SharedLedger(link, "w", _journal, LedgerLimits(
        daily_cost_limit=100 * CENT, provider_daily_limits={provider: 10 * CENT}))
    assert (await ledger.reserve("r1", 5 * CENT, provider, DAY)).granted
    assert await ledger.settle("r1", 3 * CENT, provider, DAY) == SettleResult(True, False, 5 * CENT)
    assert (await ledger.reserve("r2", 5 * CENT, provider, DAY)).granted
    assert await ledger.release("r2") is True
    assert await ledger.totals(DAY, provider) == (3 * CENT, 0)
    assert await ledger.allow("alw", provider, DAY, charge=0, out=0, carry=0, want=CENT,
                              min_free=1, call=1) == (CENT, CENT)
    assert await ledger.allow("alw", provider, DAY, charge=CENT, out=0, carry=0, want=0,
                              min_free=0, call=2) == (0, 0)
    assert await ledger.totals(DAY, provider) == (4 * CENT, 0)
    assert await ledger.totals(DAY) == (4 * CENT, 0)
    # The provider's room is exactly what its limit leaves.
    assert await ledger.reserve("r3", 6 * CENT, provider, DAY) == ReserveResult(True, 6 * CENT)
    assert (await ledger.reserve("r4", 1, provider, DAY)).granted is False
    with pytest.raises(ValueError, match=r"^turn_id must not contain '\|'$"):
        await ledger.reserve("r5", 1, provider, DAY, turn_id="t|1")
    keys = [key async for key in link.client.scan_iter()]
    assert [key for key in keys if await link.client.pttl(key) < 0] == []
    assert all(key.startswith(b"test:") for key in keys)


async def test_a_permit_whose_grant_was_read_late_is_not_used_past_its_lease_after_a_pause(
    redis_server: RedisServer, cluster_config: ClusterConfig, link: RedisLink,
) -> None:
    rpm = 1000
    proxy = ReplyProxy(redis_server.port)
    other = SharedRateWindow(link, "p", requests_per_minute=rpm, tokens_per_minute=None)
    assert (await other.admit()).admitted  # loads the script: a's first call is one round trip
    async with anyio.create_task_group() as group:
        await group.start(proxy.serve)
        late = cluster_config.model_copy(update={"redis_url": proxy.url})
        async with RedisLink(late) as a_link:
            window = SharedRateWindow(a_link, "p", requests_per_minute=rpm,
                                      tokens_per_minute=None)
            a = SharedProviderLimiter(RateLimitConfig(requests_per_minute=rpm),
                                      clock=MonotonicClock(), name="p", window=window)
            assert (await a_link.ping()).ok  # connected: only the admission's answer is late
            proxy.delay = 0.6  # Redis answers at once; the answer reaches a 0.6 s later

            async def pause_elsewhere() -> None:
                await anyio.sleep(0.1)  # after Redis granted a's permits
                await other.pause_for(60.0)  # past the 30 s a request waits for a slot

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(pause_elsewhere)
                async with a.admit(0):  # its own permit, and 7 leased for the pool
                    pass
            proxy.delay = 0.0
            asked_first = a.asked
            # 0.6 s after the grant and 0.5 s after the pause: past permit_lease (0.2 s).
            try:
                async with a.admit(0):
                    refused = False
            except LLMRateLimitError:
                refused = True
            asked = a.asked
        group.cancel_scope.cancel()
    assert (asked_first, refused, asked) == (1, True, 2)
