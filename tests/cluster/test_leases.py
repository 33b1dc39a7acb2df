"""ConversationLeases against a real redis-server: one turn at a time, in order, fenced."""

from __future__ import annotations

import time

import anyio
import pytest

from actors.chat import ConversationUnavailable, SharedTurnLeases
from actors.cluster import (
    ClusterConfig,
    ClusterUnavailable,
    ConversationLeases,
    Lease,
    LeaseLost,
    LeaseTimeout,
    RedisLink,
)
from tests.cluster.reply_proxy import ReplyProxy
from tests.redis_server import RedisServer


async def test_a_lease_is_exclusive_and_each_grant_has_a_larger_fencing_token(
    link: RedisLink,
) -> None:
    worker_a, worker_b = ConversationLeases(link, "a"), ConversationLeases(link, "b")
    first = await worker_a.acquire("c1", timeout=1.0)
    assert first == Lease("c1", "a", 1, first.epoch)
    assert len(first.epoch) == 16
    with pytest.raises(LeaseTimeout, match=r"^no lease on conversation 'c1' within 0.1 s$"):
        await worker_b.acquire("c1", timeout=0.1)
    assert await worker_a.release(first) is True
    assert await worker_a.release(first) is False
    assert await worker_b.acquire("c1", timeout=1.0) == Lease("c1", "b", 2, first.epoch)
    other = await worker_a.acquire("c2", timeout=1.0)
    assert (other.token, other.epoch != first.epoch) == (1, True)  # an epoch per conversation


async def test_waiting_turns_are_granted_in_arrival_order(link: RedisLink) -> None:
    leases = ConversationLeases(link, "w")
    holder = await leases.acquire("c", timeout=1.0)
    order: list[int] = []

    async def turn(n: int) -> None:
        lease = await leases.acquire("c", timeout=5.0)
        order.append(n)
        await anyio.sleep(0.01)
        await leases.release(lease)

    async with anyio.create_task_group() as group:
        for n in range(4):
            group.start_soon(turn, n)
            await anyio.sleep(0.05)  # each is queued before the next arrives
        await leases.release(holder)
    assert order == [0, 1, 2, 3]


async def test_the_lease_of_a_dead_owner_expires_after_its_ttl(
    redis_server: object, cluster_config: ClusterConfig
) -> None:
    config = cluster_config.model_copy(update={"lease_ttl": 0.2})
    async with RedisLink(config) as link:
        dead, alive = ConversationLeases(link, "dead"), ConversationLeases(link, "alive")
        stale = await dead.acquire("c", timeout=1.0)
        taken = await alive.acquire("c", timeout=2.0)  # granted once the TTL ran out
        assert taken == Lease("c", "alive", 2, stale.epoch)
        with pytest.raises(LeaseLost, match=r"^lease on conversation 'c' \(token 1\) was lost$"):
            await dead.renew(stale)
        assert await dead.release(stale) is False
        await alive.renew(taken)


async def test_a_cancelled_waiter_gives_up_its_place(link: RedisLink) -> None:
    leases = ConversationLeases(link, "w")
    holder = await leases.acquire("c", timeout=1.0)
    with anyio.move_on_after(0.1):
        await leases.acquire("c", timeout=5.0)
    await leases.release(holder)
    assert await leases.acquire("c", timeout=0.5) == Lease("c", "w", 2, holder.epoch)


async def test_hold_renews_while_the_turn_runs_and_releases_after(
    redis_server: object, cluster_config: ClusterConfig
) -> None:
    config = cluster_config.model_copy(update={"lease_ttl": 0.3})
    async with RedisLink(config) as link:
        leases = ConversationLeases(link, "w")
        async with leases.hold("c", timeout=1.0) as lease:
            await anyio.sleep(0.5)  # longer than the TTL: renewals keep it
            await leases.renew(lease)
        assert await leases.acquire("c", timeout=0.1) == Lease("c", "w", 2, lease.epoch)


async def test_hold_cancels_the_turn_and_raises_when_the_lease_is_lost(
    redis_server: object, cluster_config: ClusterConfig
) -> None:
    config = cluster_config.model_copy(update={"lease_ttl": 0.3})
    async with RedisLink(config) as link:
        leases = ConversationLeases(link, "w")
        finished = False
        with pytest.raises(LeaseLost, match=r"^lease on conversation 'c' \(token 1\) was lost$"):
            async with leases.hold("c", timeout=1.0):
                await link.client.delete(link.key("lease:c", "holder"))  # taken away
                await anyio.sleep(2.0)
                finished = True
        assert finished is False


async def test_an_error_of_the_turn_leaves_hold_unwrapped(link: RedisLink) -> None:
    leases = ConversationLeases(link, "w1")
    with pytest.raises(KeyError, match=r"^'the turn failed'$"):
        async with leases.hold("c-error", timeout=1.0):
            raise KeyError("the turn failed")
    assert (await leases.acquire("c-error", timeout=1.0)).owner == "w1"


async def test_a_turn_that_cannot_hold_its_conversation_ends_typed_as_unavailable(
    link: RedisLink, redis_server: RedisServer,
) -> None:
    turns = SharedTurnLeases(ConversationLeases(link, "a"), timeout=0.1)
    other = await ConversationLeases(link, "b").acquire("busy", timeout=1.0)
    with pytest.raises(ConversationUnavailable,
                       match=r"^the conversation is busy with other turns; try again$") as busy:
        async with turns.hold("busy"):
            pass
    assert busy.value.error_type == "unavailable"
    assert isinstance(busy.value.__cause__, LeaseTimeout)
    assert other.token == 1

    # The turn's own errors pass through unchanged, even a ClusterUnavailable.
    with pytest.raises(ClusterUnavailable):
        async with turns.hold("free") as stale:
            assert stale is True
            raise ClusterUnavailable("ledger reserve", "timed out")

    redis_server.stop()
    with pytest.raises(ConversationUnavailable, match=r"shared state did not answer") as down:
        async with turns.hold("free"):
            pass
    assert down.value.error_type == "unavailable"
    assert isinstance(down.value.__cause__, ClusterUnavailable)


async def test_the_history_is_read_again_exactly_when_another_holder_came_in_between(
    link: RedisLink,
) -> None:
    a = SharedTurnLeases(ConversationLeases(link, "a"), timeout=1.0)
    b = SharedTurnLeases(ConversationLeases(link, "b"), timeout=1.0)

    async def stale(turns: SharedTurnLeases, conversation_id: str, *, new: bool = False) -> bool:
        async with turns.hold(conversation_id, new=new) as result:
            return result

    # Issued by worker a just now: its first turn has nothing to read, nor its next ones ...
    assert [await stale(a, "c-new", new=True), await stale(a, "c-new")] == [False, False]
    # ... until worker b took a turn in between (b had never read it either).
    assert [await stale(b, "c-new"), await stale(a, "c-new"), await stale(a, "c-new")] == [
        True, True, False]
    # A new conversation whose first turn ran on another worker (a client quick to resume it
    # there) is read again.
    assert await stale(b, "c-raced") is True
    assert await stale(a, "c-raced", new=True) is True
    # A conversation this worker does not remember is read again.
    assert await stale(a, "c-old") is True


async def test_a_holder_from_before_redis_restarted_empty_cannot_renew_or_release_the_new_grant(
    link: RedisLink, redis_server: RedisServer,
) -> None:
    a, b = ConversationLeases(link, "a"), ConversationLeases(link, "b")
    before = await a.acquire("c", timeout=1.0)
    redis_server.stop()
    redis_server.start()
    after = await b.acquire("c", timeout=1.0)
    assert (before.token, after.token) == (1, 1)  # the fence restarted with the data
    assert before.epoch != after.epoch
    with pytest.raises(LeaseLost, match=r"^lease on conversation 'c' \(token 1\) was lost$"):
        await a.renew(before)
    assert await a.release(before) is False
    await b.renew(after)
    assert await b.release(after) is True


async def test_the_history_is_read_again_after_the_fence_was_lost(
    link: RedisLink, redis_server: RedisServer,
) -> None:
    # Each time, a's next token is the successor of its last one, but from another fence.
    a = SharedTurnLeases(ConversationLeases(link, "a"), timeout=1.0)
    b = SharedTurnLeases(ConversationLeases(link, "b"), timeout=1.0)

    async def stale(turns: SharedTurnLeases, conversation_id: str) -> bool:
        async with turns.hold(conversation_id) as result:
            return result

    assert await stale(a, "restarted") is True  # token 1
    redis_server.stop()
    redis_server.start()  # empty
    assert [await stale(b, "restarted"), await stale(a, "restarted"),
            await stale(a, "restarted")] == [True, True, False]  # tokens 1, 2, 3
    assert await stale(a, "expired") is True  # token 1
    # The fence and its epoch expired (a day without a turn), then b took a turn.
    await link.client.delete(*[link.key("lease:expired", name) for name in ("fence", "epoch")])
    assert [await stale(b, "expired"), await stale(a, "expired")] == [True, True]  # tokens 1, 2


async def test_a_grant_whose_reply_was_lost_with_its_connection_is_granted_again_to_its_asker(
    redis_server: RedisServer, cluster_config: ClusterConfig,
) -> None:
    # The link sends the command again on a new connection: the same ticket asks again.
    proxy = ReplyProxy(redis_server.port)
    async with anyio.create_task_group() as group:
        await group.start(proxy.serve)
        config = cluster_config.model_copy(update={"redis_url": proxy.url})
        async with RedisLink(config) as link:
            leases, other = ConversationLeases(link, "a"), ConversationLeases(link, "b")
            await leases.release(await leases.acquire("warm-up", timeout=1.0))  # loads it
            proxy.drop_next = True
            with anyio.fail_after(1.0):
                lease = await leases.acquire("c", timeout=5.0)
            assert (proxy.dropped, lease) == (1, Lease("c", "a", 1, lease.epoch))
            assert await leases.release(lease) is True
            with anyio.fail_after(1.0):  # nobody else holds it, nobody is queued before
                assert await other.acquire("c", timeout=0.1) == Lease("c", "b", 2, lease.epoch)
        group.cancel_scope.cancel()


async def test_an_acquire_cancelled_while_its_grant_is_on_the_wire_leaves_no_lease_behind(
    redis_server: RedisServer, cluster_config: ClusterConfig, link: RedisLink,
) -> None:
    proxy = ReplyProxy(redis_server.port)
    async with anyio.create_task_group() as group:
        await group.start(proxy.serve)
        slow = cluster_config.model_copy(update={"redis_url": proxy.url})
        async with RedisLink(slow) as slow_link:
            leases, other = ConversationLeases(slow_link, "a"), ConversationLeases(link, "b")
            await leases.release(await leases.acquire("warm-up", timeout=1.0))  # loads it
            proxy.delay = 0.3
            with anyio.fail_after(2.0):
                with anyio.move_on_after(0.1) as cancelled:  # the client gave up its turn
                    await leases.acquire("c", timeout=5.0)
                assert cancelled.cancelled_caught is True
            with anyio.fail_after(1.0):  # granted to a, then given back by a's cleanup
                taken = await other.acquire("c", timeout=0.1)
            assert taken == Lease("c", "b", 2, taken.epoch)
        group.cancel_scope.cancel()


async def test_a_holder_cut_off_from_redis_stops_its_turn_before_the_lease_can_go_elsewhere(
    redis_server: RedisServer, cluster_config: ClusterConfig, link: RedisLink,
) -> None:
    # a's renewals hang (a partition of a only) until the link calls its connection stuck
    # (0.4 s), while Redis counts the lease down from the last renewal that reached it.
    fast = {"lease_ttl": 0.9, "connect_timeout": 0.2, "op_timeout": 0.2}
    proxy = ReplyProxy(redis_server.port)
    stopped_at = granted_at = 0.0
    ended: list[str] = []

    async def turn_of_a(cut_off: anyio.Event) -> None:
        nonlocal stopped_at
        try:
            async with a.hold("c", timeout=1.0):
                await anyio.sleep(0.35)  # one renewal (at 0.3 s) reached Redis
                proxy.freeze()
                cut_off.set()
                try:
                    await anyio.sleep(5.0)  # the turn streams and writes its history
                finally:
                    stopped_at = time.monotonic()
        except LeaseLost as exc:
            ended.append(str(exc))

    async with anyio.create_task_group() as group:
        await group.start(proxy.serve)
        partitioned = cluster_config.model_copy(update={**fast, "redis_url": proxy.url})
        async with RedisLink(partitioned) as a_link:
            a = ConversationLeases(a_link, "a")
            b = ConversationLeases(link, "b")
            with anyio.fail_after(5.0):
                async with anyio.create_task_group() as turns:
                    cut_off = anyio.Event()
                    turns.start_soon(turn_of_a, cut_off)
                    await cut_off.wait()
                    taken = await b.acquire("c", timeout=3.0)
                    granted_at = time.monotonic()
            proxy.thaw()
        group.cancel_scope.cancel()
    assert ended == ["lease on conversation 'c' (token 1) was lost"]
    assert (taken.owner, taken.token) == ("b", 2)
    assert stopped_at < granted_at, f"a ran {stopped_at - granted_at:.3f} s after b's grant"
