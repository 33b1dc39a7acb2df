"""Every shared key has a TTL, whichever call created it (a real redis-server)."""

from __future__ import annotations

import anyio

from actors.cluster import (
    ConversationLeases,
    DaySeed,
    LedgerLimits,
    RedisLink,
    SharedLedger,
    SharedRateWindow,
)

DAY = "2026-11-30"


async def _journal(day: str) -> DaySeed:
    return DaySeed(0)


async def _expiries(link: RedisLink) -> dict[str, int]:
    """``{key: PEXPIRETIME}`` of every key (-1: no TTL)."""
    client = link.client
    return {key.decode(): int(await client.pexpiretime(key))
            async for key in client.scan_iter(match=f"{link.prefix}:*")}


async def test_keys_get_a_ttl_when_created_and_a_window_s_keys_expire_together(
    link: RedisLink,
) -> None:
    window = SharedRateWindow(link, "p", requests_per_minute=100, tokens_per_minute=None)
    ledger = SharedLedger(link, "w", _journal, LedgerLimits(daily_cost_limit=10**12))
    checked = 0

    async def check() -> None:
        nonlocal checked
        expiries = await _expiries(link)
        assert [key for key, at in expiries.items() if at < 0] == []
        rate = {at for key, at in expiries.items() if "{rate:p}" in key and "born" not in key}
        assert len(rate) <= 1  # state, stamped, inflight and amounts expire together
        checked += 1

    # Twice: the second round runs between two TTL refreshes (at most one a minute), where the
    # zsets and hashes emptied by the first round are created again.
    for round_ in range(2):
        first = await window.admit()
        assert first.permit is not None
        await check()
        await window.sent(first.permit)
        await check()
        second = await window.admit()
        assert second.permit is not None
        await check()
        await window.refund(second.permit)
        await check()
        for suffix in ("a", "b"):
            request = f"{round_}{suffix}"
            assert (await ledger.reserve(request, 5, "openai", DAY,
                                         turn_id=f"t{request}")).granted
            await check()
            if suffix == "a":
                await ledger.settle(request, 4, "openai", DAY, turn_id=f"t{request}")
            else:
                await ledger.release(request)
            await check()
    assert checked == 16


async def test_every_key_of_a_conversation_lease_has_a_ttl_after_each_step(
    link: RedisLink,
) -> None:
    a, b = ConversationLeases(link, "a"), ConversationLeases(link, "b")
    first = await a.acquire("c", timeout=1.0)  # a new conversation: its fence is created
    expiries = await _expiries(link)
    assert sorted(key.rsplit(":", 1)[1] for key in expiries) == [
        "epoch", "fence", "holder", "tickets"]
    assert [key for key, at in expiries.items() if at < 0] == []
    with anyio.move_on_after(0.1):
        await b.acquire("c", timeout=5.0)  # queued, then gives up its place
    await a.renew(first)
    assert [key for key, at in (await _expiries(link)).items() if at < 0] == []
    assert await a.release(first) is True
    expiries = await _expiries(link)
    assert sorted(key.rsplit(":", 1)[1] for key in expiries) == ["epoch", "fence", "tickets"]
    assert [key for key, at in expiries.items() if at < 0] == []
