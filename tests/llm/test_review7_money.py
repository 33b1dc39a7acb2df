"""The seventh review's money: what the ledger charges when it never hears how an attempt ended.

- A reservation that expires unsettled is charged what it held (the upstream may have billed it);
  so is one still open when the process ended, at the next process's start.
- A stream that ends after the upstream's usage report (cancelled, or the router's deadline) is
  charged the report, not our estimate.
- A stream closed early on a provider that bills the whole answer anyway (a setting per provider;
  OpenRouter: by the ``provider`` that answered) is charged its whole output limit.
- With no reported cost, an answer is priced at the dearer of the asked and the answered model.

The real runtime, the real ledger on SQLite, a scripted upstream on 127.0.0.1
(``tests/llm/raw_upstream.py``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import anyio
import pydantic
import pytest

from actors.llm import (
    LLMConfig,
    LLMCostLimitError,
    LLMRuntime,
    LLMStreamingError,
    ProviderConfig,
    TextDelta,
    build_catalog,
    count_message_tokens,
    open_runtime,
)
from actors.llm._ledger import LedgerBook
from actors.llm._messages import Reservation, Reserve, Settle, Usage
from runtime.testing import FakeClock
from tests.llm.raw_upstream import Answer, scripted_upstream
from tests.llm.test_attempt_spend import HELLO, settled
from tests.llm.test_review4_answer_shape import json_answer
from tests.llm.test_review6_money_timeouts import REPORT, then_silent, usage_chunk

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o-mini"  # $0.15 and $0.60 per million tokens
MAX_TOKENS = 10
PROMPT = 9  # HELLO's tokens, as the router counts them
STREAMED = "Hello"  # 1 token


def chunk(text: str, provider: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    if provider is not None:
        event["provider"] = provider  # OpenRouter names who answered in every chunk
    return event


def values(base_url: str, tmp_path: Path, *, model: str = MODEL, limit: float | None = 10.0,
           **provider: Any) -> dict[str, Any]:
    return {"providers": {"sim": {
        "kind": "openai-compatible", "base_url": base_url, "model": model,
        "requires_api_key": False, "max_tokens": MAX_TOKENS, "timeout": 20,
        "breaker": {"minimum_number_of_calls": 100}, **provider}},
        "active": "sim",
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": limit},
        "request_timeout": 20}


@asynccontextmanager
async def runtime(answer: Answer, tmp_path: Path, **options: Any) -> AsyncIterator[LLMRuntime]:
    async with scripted_upstream(answer) as upstream, open_runtime(
            LLMConfig.model_validate(values(upstream.base_url, tmp_path, **options))) as rt:
        yield rt


async def abandoned(rt: LLMRuntime, **request: Any) -> None:
    """Stream HELLO, and leave once the first text came and the upstream went quiet."""
    with anyio.fail_after(10):
        async with rt.stream(HELLO, **request) as items:
            async for item in items:
                if isinstance(item, TextDelta):
                    await anyio.sleep(0.3)  # what was sent with the text is read by now
                    break


def test_the_prompt_is_what_the_expected_values_assume() -> None:
    assert count_message_tokens(HELLO, MODEL) == PROMPT
    assert build_catalog(LLMConfig()).cost_of(MODEL, PROMPT, MAX_TOKENS) == pytest.approx(
        7.35e-06, rel=1e-12)


# -- 1. a reservation that expires unsettled ----------------------------------------------------


async def test_a_reservation_that_expires_unsettled_is_charged_what_it_held(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Before: it was dropped after 10 minutes and its money came back ($0 settled), though the
    # attempt whose settle the ledger never took may well have been billed.
    clock = FakeClock()
    config = LLMConfig.model_validate(values("http://127.0.0.1:9/v1", tmp_path, limit=0.00001))
    caplog.set_level(logging.WARNING, logger="actors.llm._ledger")
    async with open_runtime(config, clock=clock) as rt:
        lost: Reservation = await rt.ledger.ask(
            Reserve("lost-request", "sim", MODEL, PROMPT, MAX_TOKENS), timeout=5)
        assert lost.amount == 7.35e-06
        for _ in range(19):  # 570 s: still held
            await clock.advance(30.0)
        assert (await rt.spend()).open_reservations == 1
        for _ in range(2):  # 630 s: swept at the first sweep past 600 s
            await clock.advance(30.0)
        snapshot = await rt.spend()
        assert (snapshot.settled, snapshot.reserved, snapshot.open_reservations) == (
            7.35e-06, 0.0, 0)
        book: LedgerBook = rt.system.durable("ledger")
        assert (book.expired, book.expired_charged_usd) == (1, 7.35e-06)
        assert book.by_provider == {"sim": 7350}
        # The day counts it: another worst case of $0.00000735 no longer fits under $0.00001.
        with pytest.raises(LLMCostLimitError, match=r"^daily_cost_limit "):
            await rt.ledger.ask(Reserve("next", "sim", MODEL, PROMPT, MAX_TOKENS), timeout=5)
        # A late settle that costs less adds nothing; one that costs more adds the difference.
        assert await rt.ledger.ask(Settle(lost.id, Usage(), 0.000002), timeout=5) == 0.0
        assert (await rt.spend()).settled == 7.35e-06
    lines = [r.getMessage() for r in caplog.records if "unsettled" in r.getMessage()]
    assert lines == [f"ledger: reservation {lost.id} of lost-request (sim:{MODEL}) expired after "
                     "600 s unsettled: charged what it held, $0.00000735"]
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as db:
        rows = db.execute("SELECT provider, model, cost, request_id FROM charges").fetchall()
        total = db.execute("SELECT SUM(total) FROM day_totals").fetchone()[0]
    assert rows == [("sim", MODEL, 7.35e-06, "lost-request")]
    assert total == 7.35e-06


async def test_a_late_settle_past_what_an_expired_reservation_held_adds_the_difference(
        tmp_path: Path) -> None:
    clock = FakeClock()
    config = LLMConfig.model_validate(values("http://127.0.0.1:9/v1", tmp_path))
    async with open_runtime(config, clock=clock) as rt:
        lost: Reservation = await rt.ledger.ask(
            Reserve("lost-request", "sim", MODEL, PROMPT, MAX_TOKENS), timeout=5)
        for _ in range(21):
            await clock.advance(30.0)
        assert (await rt.spend()).settled == 7.35e-06
        assert await rt.ledger.ask(Settle(lost.id, Usage(), 0.00001), timeout=5) == 2.65e-06
        assert await rt.ledger.ask(Settle(lost.id, Usage(), 0.00001), timeout=5) is None
        assert (await rt.spend()).settled == 0.00001


# -- 2. a usage report, then a cancel or the router's deadline ------------------------------------


async def test_a_stream_cancelled_after_its_usage_report_is_charged_the_report(
        tmp_path: Path) -> None:
    # Before: charged the prompt as we count it (9) plus the estimate of what streamed (1):
    # $0.00000195, whatever the upstream reported (30 + 40: $0.0000285).
    async with runtime(then_silent(chunk(STREAMED), REPORT), tmp_path) as rt:
        await abandoned(rt)
        snapshot = await settled(rt)
    assert (snapshot.settled, snapshot.reserved) == (2.85e-05, 0.0)


async def test_a_stream_past_the_routers_deadline_after_its_usage_report_is_charged_it(
        tmp_path: Path) -> None:
    reported = usage_chunk(prompt_tokens=30, completion_tokens=40, total_tokens=70, cost=0.0123)
    async with runtime(then_silent(chunk(STREAMED), reported), tmp_path) as rt:
        with anyio.fail_after(10), pytest.raises(LLMStreamingError, match="1s budget"):
            async with rt.stream(HELLO, timeout=1.0) as items:
                async for _ in items:
                    pass
        snapshot = await settled(rt)
    assert (snapshot.settled, snapshot.reserved) == (0.0123, 0.0)


# -- 3. a stream the provider cannot cancel ----------------------------------------------------


@pytest.mark.parametrize(("kind", "setting", "answered_by", "completion"), [
    ("openai-compatible", None, None, 1),  # default: closing the stream stops the upstream
    ("openai-compatible", True, None, 1),
    ("openai-compatible", False, None, MAX_TOKENS),
    ("openai", None, None, 1),
    ("openrouter", None, "OpenAI", 1),
    ("openrouter", None, "Anthropic", 1),
    ("openrouter", None, "Groq", MAX_TOKENS),
    ("openrouter", None, "Google", MAX_TOKENS),
    ("openrouter", None, "Amazon Bedrock", MAX_TOKENS),
    ("openrouter", None, "Mistral", MAX_TOKENS),
    ("openrouter", None, "Some New Host", MAX_TOKENS),  # not documented as stopping: whole
    ("openrouter", None, None, MAX_TOKENS),  # no `provider` field: whole
    ("openrouter", True, "Groq", 1),  # the setting wins over the list
    ("openrouter", False, "OpenAI", MAX_TOKENS),
])
async def test_a_stream_closed_early_is_charged_whole_when_its_upstream_bills_whole(
        kind: str, setting: bool | None, answered_by: str | None, completion: int,
        tmp_path: Path) -> None:
    # Before: every closed stream was charged what streamed (9 + 1 tokens: $0.00000195), though
    # OpenRouter's Google, Groq, Mistral, Bedrock... run on and bill the whole answer (9 + 10:
    # $0.00000735, the bound the attempt reserved).
    extra: dict[str, Any] = {"kind": kind}
    if setting is not None:
        extra["stream_cancel_stops_billing"] = setting
    async with runtime(then_silent(chunk(STREAMED, answered_by)), tmp_path, **extra) as rt:
        await abandoned(rt)
        snapshot = await settled(rt)
    expected = {1: 1.95e-06, MAX_TOKENS: 7.35e-06}[completion]
    assert (snapshot.settled, snapshot.reserved) == (expected, 0.0)


async def test_an_uncancellable_stream_past_the_routers_deadline_is_charged_whole(
        tmp_path: Path) -> None:
    answer = then_silent(chunk(STREAMED, "Groq"))
    async with runtime(answer, tmp_path, kind="openrouter") as rt:
        with anyio.fail_after(10), pytest.raises(LLMStreamingError, match="1s budget"):
            async with rt.stream(HELLO, timeout=1.0) as items:
                async for _ in items:
                    pass
        snapshot = await settled(rt)
    assert (snapshot.settled, snapshot.reserved) == (7.35e-06, 0.0)


async def test_an_uncancellable_stream_that_reported_its_usage_is_charged_the_report(
        tmp_path: Path) -> None:
    # The report came: the upstream finished; it is what was billed.
    answer = then_silent(chunk(STREAMED, "Groq"), REPORT)
    async with runtime(answer, tmp_path, kind="openrouter") as rt:
        await abandoned(rt)
        snapshot = await settled(rt)
    assert (snapshot.settled, snapshot.reserved) == (2.85e-05, 0.0)


@pytest.mark.parametrize("bad", ["sometimes", 2, [True]])
def test_stream_cancel_stops_billing_is_validated_and_named(bad: object) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"stream_cancel_stops_billing"):
        ProviderConfig.model_validate({"kind": "openai-compatible", "model": MODEL,
                                       "base_url": "http://127.0.0.1:9/v1",
                                       "requires_api_key": False,
                                       "stream_cancel_stops_billing": bad})


# -- 4. the answered model's name and the price ------------------------------------------------


def answer_naming(model: str) -> Answer:
    answer: Answer = json_answer({
        "id": "c", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}})
    return answer


@pytest.mark.parametrize(("asked", "answered", "cost", "limit"), [
    # gpt-4o: $2.50 and $10 per million; gpt-4o-mini: $0.15 and $0.60.
    ("gpt-4o", "gpt-4o-mini", 7.5e-04, 10.0),  # before: $0.000045, the cheaper name's price
    ("gpt-4o-mini", "gpt-4o", 7.5e-04, 10.0),
    ("gpt-4o", "gpt-4o-2024-08-06", 7.5e-04, 10.0),
    ("gpt-4o", "mystery-model", 7.5e-04, 10.0),  # the answered name has no price: the asked's
    ("mystery-model", "gpt-4o-mini", 4.5e-05, None),  # the asked has none: the answered's
])
async def test_an_answer_without_a_cost_is_priced_at_the_dearer_of_asked_and_answered(
        asked: str, answered: str, cost: float, limit: float | None, tmp_path: Path) -> None:
    async with runtime(answer_naming(answered), tmp_path, model=asked, limit=limit) as rt:
        with anyio.fail_after(10):
            response = await rt.chat(HELLO)
        snapshot = await settled(rt)
    assert response.model == answered
    assert response.usage.total_cost == pytest.approx(cost, rel=1e-12)
    assert (snapshot.settled, snapshot.reserved) == (cost, 0.0)


# -- 1b. a reservation open when the process ended ------------------------------------------------


def holds(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT provider, model, amount, request_id FROM holds").fetchall()


async def test_a_reservation_open_when_the_process_ended_is_charged_at_the_next_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Before: the open reservations lived in memory only; a new process started the day from
    # the settled charges, and the money of the attempts in flight was never counted.
    db = tmp_path / "ledger.sqlite3"
    config = LLMConfig.model_validate(values("http://127.0.0.1:9/v1", tmp_path))
    caplog.set_level(logging.WARNING, logger="actors.llm._ledger")
    async with open_runtime(config) as rt:
        settled_one: Reservation = await rt.ledger.ask(
            Reserve("done", "sim", MODEL, PROMPT, MAX_TOKENS), timeout=5)
        await rt.ledger.ask(Reserve("in-flight", "sim", MODEL, PROMPT, MAX_TOKENS), timeout=5)
        assert await rt.ledger.ask(Settle(settled_one.id, Usage(), 0.000001), timeout=5) == 1e-06
        with anyio.fail_after(5):
            while holds(db) != [("sim", MODEL, 7.35e-06, "in-flight")]:
                await anyio.sleep(0.02)
        assert (await rt.spend()).settled == 1e-06
    # The process ends with "in-flight" unsettled (a crash, or a stop before its settle came).
    assert holds(db) == [("sim", MODEL, 7.35e-06, "in-flight")]
    async with open_runtime(config) as rt:
        snapshot = await rt.spend()
        assert snapshot.settled == pytest.approx(8.35e-06, abs=1e-15)
        assert snapshot.reserved == 0.0
        book: LedgerBook = rt.system.durable("ledger")
        assert (book.expired, book.expired_charged_usd) == (1, 7.35e-06)
    assert holds(db) == []
    async with open_runtime(config) as rt:  # charged once
        assert (await rt.spend()).settled == pytest.approx(8.35e-06, abs=1e-15)
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT cost, request_id FROM charges ORDER BY id").fetchall()
    assert rows == [(1e-06, "done"), (7.35e-06, "in-flight")]
    lines = [r.getMessage() for r in caplog.records if "last process" in r.getMessage()]
    assert lines == [f"ledger: a reservation of in-flight (sim:{MODEL}) was open when the last "
                     "process ended: charged what it held, $0.00000735"]
