"""Tests for actors._ledger_store: per-day totals, persistence across reopen, WAL, day keys."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from actors.llm._ledger_store import LedgerStore, day_key


def test_day_total_sums_the_charges_of_that_day_only(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "ledger.sqlite3") as store:
        store.add_charge("2026-11-25", 0.25, "openai", "gpt-4o-mini", "r1")
        store.add_charge("2026-11-25", 0.5, "openrouter", "openai/gpt-4o-mini", "r2")
        store.add_charge("2026-11-26", 1.0, "openai", "gpt-4o-mini", "r3")

        assert store.day_total("2026-11-25") == pytest.approx(0.75)
        assert store.day_total("2026-11-26") == pytest.approx(1.0)
        assert store.day_total("2026-11-27") == 0.0
        assert store.charge_count("2026-11-25") == 2


def test_reopening_continues_the_day(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with LedgerStore(path) as store:
        store.add_charge("2026-11-25", 0.4, "openai", "gpt-4o-mini", "r1")

    with LedgerStore(path) as store:
        assert store.day_total("2026-11-25") == pytest.approx(0.4)
        store.add_charge("2026-11-25", 0.1, "openai", "gpt-4o-mini", "r2")
        assert store.day_total("2026-11-25") == pytest.approx(0.5)
        assert store.charge_count("2026-11-25") == 2


def test_a_batch_of_charges_is_one_transaction_with_the_same_totals(tmp_path: Path) -> None:
    costs = [0.1, 0.2, 0.3, 1e-7, 0.7]
    one_by_one, batched = tmp_path / "one.sqlite3", tmp_path / "batch.sqlite3"
    with LedgerStore(one_by_one) as store:
        for i, cost in enumerate(costs):
            store.add_charge("2026-11-25", cost, "openai", "gpt-4o-mini", f"r{i}")
        expected = store.day_total("2026-11-25")
    with LedgerStore(batched) as store:
        store.add_charges([("2026-11-25", cost, "openai", "gpt-4o-mini", f"r{i}")
                           for i, cost in enumerate(costs[:2])])
        store.add_charges([("2026-11-25", cost, "openai", "gpt-4o-mini", f"r{i + 2}")
                           for i, cost in enumerate(costs[2:])]
                          + [("2026-11-26", 1.0, "p", "m", "x")])
        # The same floats, added in the same order.
        assert store.day_total("2026-11-25") == expected
        assert store.provider_totals("2026-11-25") == {"openai": pytest.approx(sum(costs))}
        assert store.charge_count("2026-11-25") == 5
        assert store.day_total("2026-11-26") == 1.0
        with pytest.raises(ValueError, match=r"^a charge must be a finite, non-negative cost"):
            store.add_charges([("2026-11-25", 0.5, "p", "m", "y"),
                               ("2026-11-25", -1.0, "p", "m", "z")])
        assert store.charge_count("2026-11-25") == 5


def test_a_failing_batch_stores_none_of_its_charges(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "ledger.sqlite3") as store:
        store.add_charge("2026-11-25", 0.5, "p", "m", "r0")
        # The second row breaks a NOT NULL constraint after the first was inserted.
        bad: Any = None
        with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
            store.add_charges([("2026-11-25", 0.25, "p", "m", "r1"),
                               ("2026-11-25", 0.25, "p", "m", bad)])
        assert store.day_total("2026-11-25") == 0.5
        assert store.charge_count("2026-11-25") == 1
        store.add_charges([("2026-11-25", 0.25, "p", "m", "r1")])  # usable after the rollback
        assert store.day_total("2026-11-25") == 0.75


def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with LedgerStore(path) as store:
        assert store.journal_mode == "wal"
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ledger.sqlite3"
    with LedgerStore(path) as store:
        store.add_charge("2026-11-25", 0.01, "openai", "gpt-4o-mini", "r1")
    assert path.exists()


@pytest.mark.parametrize("cost", [-0.01, float("nan"), float("inf")])
def test_invalid_cost_is_rejected_and_nothing_is_stored(tmp_path: Path, cost: float) -> None:
    with LedgerStore(tmp_path / "ledger.sqlite3") as store:
        with pytest.raises(ValueError, match=r"^a charge must be a finite, non-negative cost"):
            store.add_charge("2026-11-25", cost, "openai", "gpt-4o-mini", "r1")
        assert store.day_total("2026-11-25") == 0.0
        assert store.charge_count("2026-11-25") == 0


def test_closed_store_refuses_calls_and_close_is_idempotent(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.sqlite3")
    assert repr(store).endswith("[open]>")
    store.close()
    store.close()
    assert repr(store).endswith("[closed]>")
    with pytest.raises(sqlite3.ProgrammingError, match=r"^Cannot operate on a closed ledger"):
        store.day_total("2026-11-25")


def test_concurrent_charges_from_threads_are_all_counted(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "ledger.sqlite3") as store:

        def charge(worker: int) -> None:
            for i in range(50):
                store.add_charge("2026-11-25", 0.5, "p", "m", f"{worker}-{i}")

        threads = [threading.Thread(target=charge, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.day_total("2026-11-25") == 100.0
        assert store.charge_count("2026-11-25") == 200


def test_day_boundary_follows_the_configured_time_zone() -> None:
    # 2026-11-25 04:59 UTC is still the 24th in New York (UTC-5 in November) ...
    before = datetime(2026, 11, 25, 4, 59, tzinfo=UTC)
    after = before + timedelta(minutes=1)
    assert day_key(before, "UTC") == "2026-11-25"
    assert day_key(before, "America/New_York") == "2026-11-24"
    # ... and midnight there is 05:00 UTC.
    assert day_key(after, "America/New_York") == "2026-11-25"
    # East of Greenwich the day starts earlier: 2026-11-24 15:00 UTC is the 25th in Tokyo.
    assert day_key(datetime(2026, 11, 24, 15, 0, tzinfo=UTC), "Asia/Tokyo") == "2026-11-25"


def test_day_key_rejects_naive_datetimes_and_unknown_zones() -> None:
    with pytest.raises(ValueError, match=r"^day_key\(\) needs a timezone-aware datetime"):
        day_key(datetime(2026, 11, 25, 12, 0), "UTC")
    with pytest.raises(ValueError, match=r"^unknown time zone 'Mars/Olympus'$"):
        day_key(datetime(2026, 11, 25, 12, 0, tzinfo=UTC), "Mars/Olympus")
