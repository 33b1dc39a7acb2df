"""day_span: the ledger converts the day once per day; the span must agree with day_key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actors.llm._ledger_store import day_key, day_span

# UTC; a DST zone; Santiago (the spring gap is at midnight); Havana (the autumn overlap ends at
# midnight: 01:00 falls back to 00:00); Lord Howe (half-hour DST); Kathmandu (+05:45).
ZONES = ["UTC", "Europe/Berlin", "America/Santiago", "America/Havana", "Australia/Lord_Howe",
         "Asia/Kathmandu"]


@pytest.mark.parametrize("zone", ZONES)
def test_a_reused_span_gives_the_day_of_every_instant_of_2026(zone: str) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    step = timedelta(minutes=19)
    since: datetime | None = None
    until = start
    day = ""
    renewals = 0
    for i in range(365 * 24 * 60 // 19):  # bounded: one year in 19-minute steps
        now = start + i * step
        if since is None or not since <= now < until:
            day, until = day_span(now, zone)
            since = now
            renewals += 1
        assert day == day_key(now, zone), now
        assert day_key(until, zone) != day, (now, until)
        assert day_key(until - timedelta(microseconds=1), zone) == day, (now, until)
    assert renewals in (365, 366)  # once a day (plus the first)


def test_the_span_of_an_instant_ends_at_the_next_local_midnight() -> None:
    now = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    assert day_span(now, "America/New_York") == (
        "2026-11-24", datetime(2026, 11, 25, 5, 0, tzinfo=UTC))
    assert day_span(now, "UTC") == ("2026-11-25", datetime(2026, 11, 26, 0, 0, tzinfo=UTC))
    with pytest.raises(ValueError, match="unknown time zone"):
        day_span(now, "Not/A_Zone")
