"""LedgerActor: reservations against the limits, settling, expiry, days, persistence, restarts."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import CostConfig, LLMCostLimitError, ModelCatalog, ModelPrice
from actors.llm._ledger import LedgerActor, LedgerBook, ledger_child_spec
from actors.llm._ledger_lock import LedgerUnavailable
from actors.llm._messages import (
    GetSpend,
    Release,
    Reservation,
    Reserve,
    Settle,
    SpendSnapshot,
    Usage,
)
from actors.metrics import GetSummary, metrics_child_spec
from runtime import ActorRef, ActorSystem, ChildSpec, SupervisorSpec
from runtime.testing import FakeClock

# 1 USD per million input tokens, 2 per million output: 1000 + 1000 tokens cost $0.003.
CATALOG = ModelCatalog(prices={"m": ModelPrice(input=1.0, output=2.0)}, builtin=False)
WORST = 0.003
DAY = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NANO = 1e-9  # the ledger's unit: totals are exact to it


def config(tmp_path: Path, **limits: Any) -> CostConfig:
    return CostConfig(db_path=str(tmp_path / "ledger.sqlite3"), **limits)


def reserve(request_id: str = "r", model: str = "m", prompt: int = 1000,
            max_tokens: int = 1000) -> Reserve:
    return Reserve(request_id, "p", model, prompt, max_tokens)


def ledger_system(
    cost: CostConfig,
    *,
    now: Callable[[], datetime] = lambda: DAY,
    clock: FakeClock | None = None,
    with_metrics: bool = False,
    **spec: Any,
) -> ActorSystem:
    """A system with the ledger (and, if asked, a MetricsActor that the ledger reports to)."""
    systems: dict[str, ActorSystem] = {}
    ledger = ledger_child_spec(cost, CATALOG, now=now, **spec)
    children: list[ChildSpec | SupervisorSpec] = [ledger]
    if with_metrics:
        options = {k: v for k, v in spec.items() if k in ("reservation_ttl", "sweep_interval")}
        ledger = dataclasses.replace(ledger, factory=lambda: LedgerActor(
            cost, CATALOG, metrics=systems["s"].ref("metrics"), now=now, **options))
        children = [metrics_child_spec(), ledger]
    system = ActorSystem(SupervisorSpec("root", children), clock=clock)
    systems["s"] = system
    return system


async def spend(ledger: ActorRef) -> SpendSnapshot:
    snapshot: SpendSnapshot = await ledger.ask(GetSpend(), timeout=5)
    return snapshot


def persisted(path: str, day: str) -> tuple[float, float, int]:
    """(sum of the charges, the day total, the number of charges), read from the file itself."""
    with closing(sqlite3.connect(path)) as conn:
        charges, count = conn.execute(
            "SELECT COALESCE(SUM(cost), 0), COUNT(*) FROM charges WHERE day = ?", (day,)
        ).fetchone()
        row = conn.execute("SELECT total FROM day_totals WHERE day = ?", (day,)).fetchone()
    return float(charges), 0.0 if row is None else float(row[0]), int(count)


# -- the invariant ------------------------------------------------------------------------------


async def test_concurrent_requests_never_pass_the_daily_limit_and_the_day_survives_restart(
    tmp_path: Path,
) -> None:
    limit = 0.25  # room for 83 worst cases at once; 500 requests want far more
    cost = config(tmp_path, daily_cost_limit=limit)
    charged: list[float] = []
    refused = 0
    highest = 0.0

    async def check(ledger: ActorRef) -> None:
        nonlocal highest
        snapshot = await spend(ledger)
        assert snapshot.settled + snapshot.reserved <= limit + NANO, snapshot
        highest = max(highest, snapshot.settled + snapshot.reserved)

    async def request(ledger: ActorRef, i: int) -> None:
        nonlocal refused
        rng = random.Random(i)
        for _ in range(3):
            try:
                reservation: Reservation = await ledger.ask(reserve(f"r{i}"), timeout=10)
            except LLMCostLimitError:
                refused += 1
                await check(ledger)
                await anyio.sleep(rng.uniform(0, 0.01))
                continue
            assert reservation.amount == pytest.approx(WORST)
            await check(ledger)
            await anyio.sleep(rng.uniform(0, 0.005))
            draw = rng.random()
            if draw < 0.2:
                await ledger.ask(Release(reservation.id), timeout=10)
            elif draw < 0.6:
                usage = Usage(prompt_tokens=1000, completion_tokens=rng.randint(0, 1000))
                charged.append(await ledger.ask(Settle(reservation.id, usage), timeout=10))
            else:
                reported = rng.uniform(0, reservation.amount)
                charged.append(await ledger.ask(Settle(reservation.id, Usage(), reported),
                                                timeout=10))
            await check(ledger)
            return

    async with ledger_system(cost) as system:
        ledger = system.ref("ledger")
        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(request, ledger, i)
        end = await spend(ledger)
        book: LedgerBook = system.durable("ledger")
        assert book.peak_usd <= limit
        assert system.status()["ledger"].restart_count == 0

    # The limit was the binding constraint, not the test's generosity.
    assert refused > 50
    assert highest > limit - WORST
    assert (end.reserved, end.open_reservations) == (0.0, 0)
    assert end.settled == pytest.approx(math.fsum(charged), abs=NANO)
    charges, total, count = persisted(cost.db_path, "2026-11-25")
    assert count == len(charged)
    assert charges == pytest.approx(math.fsum(charged), abs=NANO)
    assert total == pytest.approx(math.fsum(charged), abs=NANO)

    # A new process on the same file continues the day: same total, refused at the limit.
    async with ledger_system(cost) as system:
        ledger = system.ref("ledger")
        again = await spend(ledger)
        assert again.settled == pytest.approx(end.settled, abs=NANO)
        room = round(limit * 1e9) - round(again.settled * 1e9)  # nano-USD left today
        fitting = room // 2000  # output tokens at $2 per million: 2000 nano-USD each
        with pytest.raises(LLMCostLimitError, match=r"^daily_cost_limit \$0\.250000 would be"):
            await ledger.ask(reserve("over", prompt=0, max_tokens=fitting + 1), timeout=5)
        last: Reservation = await ledger.ask(reserve("fits", prompt=0, max_tokens=fitting),
                                             timeout=5)
        assert last.amount == pytest.approx(fitting * 2e-6)
        assert (await spend(ledger)).settled + last.amount <= limit + NANO


# -- refusals ------------------------------------------------------------------------------------


async def test_reservation_over_max_cost_per_request_is_refused_with_the_numbers(
    tmp_path: Path,
) -> None:
    async with ledger_system(config(tmp_path, max_cost_per_request=0.002)) as system:
        ledger = system.ref("ledger")
        with pytest.raises(
            LLMCostLimitError,
            match=r"^worst-case cost \$0\.003000 of m \(1000 prompt \+ 1000 max tokens\) "
            r"exceeds max_cost_per_request \$0\.002000 \(p:m\)$",
        ):
            await ledger.ask(reserve(), timeout=5)
        assert (await spend(ledger)).open_reservations == 0
        small: Reservation = await ledger.ask(reserve(max_tokens=100), timeout=5)
        assert small.amount == pytest.approx(0.0012)
        assert system.status()["ledger"].restart_count == 0


async def test_daily_limit_refusal_counts_settled_and_open_reservations(tmp_path: Path) -> None:
    async with ledger_system(config(tmp_path, daily_cost_limit=0.007)) as system:
        ledger = system.ref("ledger")
        first: Reservation = await ledger.ask(reserve("a"), timeout=5)
        assert await ledger.ask(Settle(first.id, Usage(), 0.002), timeout=5) == 0.002
        await ledger.ask(reserve("b"), timeout=5)
        with pytest.raises(
            LLMCostLimitError,
            match=r"^daily_cost_limit \$0\.007000 would be passed on 2026-11-25: settled "
            r"\$0\.002000 \+ reserved \$0\.003000 \+ worst case \$0\.003000 of m = \$0\.008000 "
            r"\(p:m\)$",
        ):
            await ledger.ask(reserve("c"), timeout=5)
        assert await spend(ledger) == SpendSnapshot("2026-11-25", 0.002, 0.003, 1, 0.007, None)


async def test_negative_token_counts_are_refused_without_reserving(tmp_path: Path) -> None:
    async with ledger_system(config(tmp_path)) as system:
        ledger = system.ref("ledger")
        with pytest.raises(ValueError, match=r"^token counts must not be negative: "):
            await ledger.ask(reserve(max_tokens=-1000), timeout=5)
        assert await spend(ledger) == SpendSnapshot("2026-11-25", 0.0, 0.0, 0, None, None)
        assert system.status()["ledger"].restart_count == 0


async def test_unpriced_model_is_refused_under_limits(tmp_path: Path) -> None:
    async with ledger_system(config(tmp_path, daily_cost_limit=1.0)) as system:
        with pytest.raises(
            LLMCostLimitError,
            match=r"^no price is known for model 'mystery', so its cost cannot be bounded",
        ):
            await system.ref("ledger").ask(reserve(model="mystery"), timeout=5)


async def test_unpriced_model_without_limits_reserves_zero_and_charges_the_reported_cost(
    tmp_path: Path,
) -> None:
    cost = config(tmp_path)
    async with ledger_system(cost) as system:
        ledger = system.ref("ledger")
        reservation: Reservation = await ledger.ask(reserve(model="mystery"), timeout=5)
        assert reservation.amount == 0.0
        assert await ledger.ask(Settle(reservation.id, Usage(), 0.01), timeout=5) == 0.01
        other: Reservation = await ledger.ask(reserve(model="mystery"), timeout=5)
        assert await ledger.ask(Settle(other.id, Usage(completion_tokens=5)), timeout=5) == 0.0
        book: LedgerBook = system.durable("ledger")
        assert (book.unpriced, book.overages, book.settled_usd) == (3, 1, 0.01)
    assert persisted(cost.db_path, "2026-11-25")[2] == 2


# -- settling and releasing ----------------------------------------------------------------------


async def test_settle_prices_the_usage_when_no_cost_is_reported(tmp_path: Path) -> None:
    async with ledger_system(config(tmp_path)) as system:
        ledger = system.ref("ledger")
        reservation: Reservation = await ledger.ask(reserve(), timeout=5)
        usage = Usage(prompt_tokens=1000, completion_tokens=250)
        assert await ledger.ask(Settle(reservation.id, usage), timeout=5) == pytest.approx(0.0015)
        assert await spend(ledger) == SpendSnapshot("2026-11-25", 0.0015, 0.0, 0, None, None)


async def test_release_is_idempotent_and_a_released_reservation_cannot_be_settled(
    tmp_path: Path,
) -> None:
    cost = config(tmp_path)
    async with ledger_system(cost) as system:
        ledger = system.ref("ledger")
        kept: Reservation = await ledger.ask(reserve("kept"), timeout=5)
        gone: Reservation = await ledger.ask(reserve("gone"), timeout=5)
        for _ in range(2):
            assert await ledger.ask(Release(gone.id), timeout=5) is None
        assert await ledger.ask(Release(12345), timeout=5) is None
        assert await ledger.ask(Settle(gone.id, Usage(), 0.001), timeout=5) is None
        assert await spend(ledger) == SpendSnapshot("2026-11-25", 0.0, WORST, 1, None, None)
        await ledger.ask(Settle(kept.id, Usage(), 0.001), timeout=5)
        assert await ledger.ask(Settle(kept.id, Usage(), 0.001), timeout=5) is None
        assert await spend(ledger) == SpendSnapshot("2026-11-25", 0.001, 0.0, 0, None, None)
    assert persisted(cost.db_path, "2026-11-25")[2] == 1


async def test_settle_above_the_reservation_is_charged_and_counted(tmp_path: Path) -> None:
    async with ledger_system(config(tmp_path, daily_cost_limit=1.0)) as system:
        ledger = system.ref("ledger")
        reservation: Reservation = await ledger.ask(reserve(), timeout=5)
        assert await ledger.ask(Settle(reservation.id, Usage(), 0.005), timeout=5) == 0.005
        book: LedgerBook = system.durable("ledger")
        assert (book.overages, book.settled_usd, book.reserved_usd) == (1, 0.005, 0.0)


async def test_a_failed_write_takes_the_ledger_down_until_the_database_is_back(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    cost = config(tmp_path, daily_cost_limit=0.005)
    async with ledger_system(cost, clock=clock) as system:
        ledger = system.ref("ledger")
        book: LedgerBook = system.durable("ledger")
        reservation: Reservation = await ledger.ask(reserve(), timeout=5)
        with closing(sqlite3.connect(cost.db_path)) as conn:
            conn.execute("DROP TABLE charges")
        # Counted at once; the write behind it fails and the ledger goes down (no crash).
        assert await ledger.ask(Settle(reservation.id, Usage(), 0.001), timeout=5) == 0.001
        for _ in range(100):
            if book.down is not None:
                break
            await anyio.sleep(0.01)
        assert book.down == (f"database {cost.db_path!r} cannot be used: no such table: charges")
        with pytest.raises(LedgerUnavailable, match=r"^the ledger cannot reserve: database "):
            await ledger.ask(reserve("refused"), timeout=5)
        assert system.status()["ledger"].restart_count == 0

        await clock.advance(5.0)  # the ledger reopens the file (schema recreated) and writes
        assert book.down is None
        assert await spend(ledger) == SpendSnapshot("2026-11-25", 0.001, 0.0, 0, 0.005, None)
        await ledger.ask(reserve("second"), timeout=5)
        with pytest.raises(LLMCostLimitError):
            await ledger.ask(reserve("third"), timeout=5)
    assert persisted(cost.db_path, "2026-11-25") == (0.001, 0.001, 1)


async def test_an_unusable_database_refuses_reservations_at_once_and_recovers(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    cost = config(tmp_path, daily_cost_limit=0.005)
    await anyio.Path(cost.db_path).mkdir()  # a directory where the database file should be
    async with ledger_system(cost, clock=clock) as system:
        ledger = system.ref("ledger")
        book: LedgerBook = system.durable("ledger")
        assert book.down == (
            f"database {cost.db_path!r} cannot be used: unable to open database file")
        with anyio.fail_after(1):
            with pytest.raises(LedgerUnavailable) as caught:
                await ledger.ask(reserve(), timeout=5)
        assert (caught.value.retryable, caught.value.error_type) == (True, "ledger_unavailable")
        await anyio.Path(cost.db_path).rmdir()
        await clock.advance(5.0)
        assert book.down is None
        reservation: Reservation = await ledger.ask(reserve(), timeout=5)
        assert reservation.amount == pytest.approx(WORST)
        assert system.status()["ledger"].restart_count == 0


# -- warnings, days, expiry ----------------------------------------------------------------------


async def test_warning_threshold_warns_once_per_day(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="actors.llm._ledger")
    cost = config(tmp_path, daily_cost_limit=0.01, cost_warning_threshold=0.5)
    async with ledger_system(cost, with_metrics=True) as system:
        ledger = system.ref("ledger")
        warned = []
        for i in range(3):  # settled: 0.003 (below half), 0.006, 0.009
            reservation: Reservation = await ledger.ask(reserve(f"r{i}"), timeout=5)
            await ledger.ask(Settle(reservation.id, Usage(), 0.003), timeout=5)
            summary = await system.ref("metrics").ask(GetSummary(), timeout=5)
            warned.append(summary["cost_warnings"]["count"])
        assert warned == [0, 1, 1]
        assert summary["cost_warnings"]["last"] == {"day": "2026-11-25", "spent": 0.006,
                                                    "limit": 0.01}
    assert [r.getMessage() for r in caplog.records if "of the daily limit" in r.getMessage()] == [
        "ledger: spend on 2026-11-25 reached $0.006000, 60% of the daily limit $0.010000"
    ]


async def test_a_new_day_starts_from_zero_and_open_reservations_carry_over(
    tmp_path: Path,
) -> None:
    cost = config(tmp_path, daily_cost_limit=0.005)
    clock = {"now": DAY}
    async with ledger_system(cost, now=lambda: clock["now"]) as system:
        ledger = system.ref("ledger")
        first: Reservation = await ledger.ask(reserve("first"), timeout=5)
        await ledger.ask(Settle(first.id, Usage(), 0.002), timeout=5)
        carried: Reservation = await ledger.ask(reserve("carried", max_tokens=500), timeout=5)
        with pytest.raises(LLMCostLimitError):
            await ledger.ask(reserve("refused"), timeout=5)

        clock["now"] = DAY + timedelta(hours=12)  # 2026-11-26T00:00Z
        assert await spend(ledger) == SpendSnapshot("2026-11-26", 0.0, 0.002, 1, 0.005, None)
        await ledger.ask(reserve("accepted"), timeout=5)
        await ledger.ask(Settle(carried.id, Usage(), 0.0015), timeout=5)

    assert persisted(cost.db_path, "2026-11-25")[1:] == (0.002, 1)
    assert persisted(cost.db_path, "2026-11-26")[1:] == (0.0015, 1)


async def test_the_day_follows_the_configured_time_zone(tmp_path: Path) -> None:
    cost = config(tmp_path, day_timezone="America/New_York")
    early = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)  # still the 24th in New York
    async with ledger_system(cost, now=lambda: early) as system:
        assert (await spend(system.ref("ledger"))).day == "2026-11-24"


async def test_unsettled_reservations_expire_after_the_ttl_charged_what_they_held(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    cost = config(tmp_path, daily_cost_limit=0.007)
    async with ledger_system(cost, clock=clock, reservation_ttl=60.0,
                             sweep_interval=10.0) as system:
        ledger = system.ref("ledger")
        lost: Reservation = await ledger.ask(reserve("lost"), timeout=5)
        for _ in range(5):
            await clock.advance(10.0)
        assert (await spend(ledger)).open_reservations == 1  # 50 s old: kept
        await clock.advance(10.0)
        # Its settle never came: charged its worst case (the upstream may have billed it).
        assert await spend(ledger) == SpendSnapshot("2026-11-25", WORST, 0.0, 0, 0.007, None)
        book: LedgerBook = system.durable("ledger")
        assert (book.expired, book.expired_charged_usd) == (1, WORST)

        # A late settle adds only what it cost beyond what the expiry charged.
        fresh: Reservation = await ledger.ask(reserve("fresh"), timeout=5)
        assert await ledger.ask(Settle(lost.id, Usage(), 0.001), timeout=5) == 0.0
        assert await ledger.ask(Settle(lost.id, Usage(), 0.001), timeout=5) is None
        assert await spend(ledger) == SpendSnapshot("2026-11-25", WORST, WORST, 1, 0.007, None)
        assert fresh.id != lost.id


async def test_without_track_costs_nothing_is_written(tmp_path: Path) -> None:
    cost = config(tmp_path, daily_cost_limit=0.005, track_costs=False)
    async with ledger_system(cost) as system:
        ledger = system.ref("ledger")
        reservation: Reservation = await ledger.ask(reserve(), timeout=5)
        await ledger.ask(Settle(reservation.id, Usage(), 0.004), timeout=5)
        with pytest.raises(LLMCostLimitError):
            await ledger.ask(reserve(), timeout=5)
    assert not await anyio.Path(cost.db_path).exists()
