"""LedgerActor settles whatever it is told: a cost or counts too large for nano-USD are charged the
cap (``MAX_CHARGE``) instead of crashing the settle, NaN and negatives are never charged. The
real ledger on SQLite, and a whole runtime in front of a raw upstream that reports $1e300."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from actors.llm import LLMCostLimitError, open_runtime
from actors.llm._ledger import LedgerBook
from actors.llm._ledger_book import MAX_CHARGE, charge_nanos
from actors.llm._messages import Reservation, Settle, SpendSnapshot, Usage
from tests.chaos.upstream import GarbageUpstream, Reply, good_completion
from tests.llm.test_attempt_spend import HELLO, garbage_config, settled
from tests.llm.test_ledger import config, ledger_system, persisted, reserve, spend

CAP = 1_000_000.0  # MAX_CHARGE in USD


def test_charge_nanos_rounds_and_is_bounded_by_zero_and_the_cap() -> None:
    assert MAX_CHARGE == 10**15
    assert [charge_nanos(x) for x in (0.0015, 1e-10, 2e-9, CAP - 0.5)] == [
        1_500_000, 0, 2, MAX_CHARGE - 500_000_000]
    assert [charge_nanos(x) for x in (CAP, 1e300, math.inf)] == [MAX_CHARGE] * 3
    assert [charge_nanos(x) for x in (0.0, -5.0, -math.inf, math.nan)] == [0] * 4


async def test_a_settle_of_an_absurd_cost_or_absurd_counts_charges_the_cap(
        tmp_path: Path) -> None:
    cost = config(tmp_path, daily_cost_limit=10.0)
    async with ledger_system(cost) as system:
        ledger = system.ref("ledger")
        huge: Reservation = await ledger.ask(reserve("huge"), timeout=5)
        counts: Reservation = await ledger.ask(reserve("counts"), timeout=5)
        nan: Reservation = await ledger.ask(reserve("nan"), timeout=5)
        assert await ledger.ask(Settle(huge.id, Usage(), 1e300), timeout=5) == CAP
        assert await ledger.ask(Settle(counts.id, Usage(prompt_tokens=10**400)),
                                timeout=5) == CAP
        # Not a cost: the usage is priced instead ($1 and $2 per million tokens).
        usage = Usage(prompt_tokens=1000, completion_tokens=250)
        assert await ledger.ask(Settle(nan.id, usage, math.nan), timeout=5) == 0.0015
        assert await spend(ledger) == SpendSnapshot("2026-11-25", 2 * CAP + 0.0015, 0.0, 0,
                                                    10.0, None)
        with pytest.raises(LLMCostLimitError, match=r"^daily_cost_limit \$10\.000000 would "):
            await ledger.ask(reserve("after"), timeout=5)
        book: LedgerBook = system.durable("ledger")
        assert (book.settled, book.overages) == (2 * MAX_CHARGE + 1_500_000, 2)
        assert system.status()["ledger"].restart_count == 0
    assert persisted(cost.db_path, "2026-11-25") == (2 * CAP + 0.0015, 2 * CAP + 0.0015, 3)


async def test_an_answer_reporting_an_absurd_cost_is_delivered_and_charged_the_cap(
        tmp_path: Path) -> None:
    answer = good_completion("fine")
    answer["usage"]["cost"] = 1e300
    async with GarbageUpstream() as upstream:
        upstream.reply = Reply(body=json.dumps(answer).encode())
        async with open_runtime(garbage_config(upstream, tmp_path)) as rt:
            response = await rt.chat(HELLO)
            assert response.content == "fine"
            snapshot = await settled(rt)
            assert (snapshot.settled, snapshot.reserved, snapshot.open_reservations) == (
                CAP, 0.0, 0)
            with pytest.raises(LLMCostLimitError, match=r"^daily_cost_limit \$10\.000000 "):
                await rt.chat(HELLO)
        assert upstream.requests == 1

