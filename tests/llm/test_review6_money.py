"""The sixth review of money: what a hostile client (many requests at once, cancels) and a hostile
or slow upstream can make the product spend, record or refuse. Exact amounts in USD, exact counts.

Real components: simulator processes (``tests/llm/test_router.py``'s two providers), or a
scripted upstream on 127.0.0.1 (``tests/llm/raw_upstream.py``); the real ledger on SQLite.
"""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from actors.llm import (
    LLMConfig,
    LLMCostLimitError,
    build_catalog,
    count_message_tokens,
    open_runtime,
)
from actors.llm._ledger import LedgerBook
from actors.llm._ledger_book import nanos_up
from actors.llm._messages import Release, Reservation, Settle, Usage
from actors.llm._wire_decode import WireUsage
from runtime.testing import FakeClock
from tests.llm.raw_upstream import scripted_upstream
from tests.llm.test_ledger import WORST as LEDGER_WORST
from tests.llm.test_ledger import config as ledger_config
from tests.llm.test_ledger import ledger_system
from tests.llm.test_ledger import reserve as ledger_reserve
from tests.llm.test_review4_answer_shape import completion, json_answer
from tests.llm.test_review5_upstream_errors import one_provider
from tests.llm.test_router import (
    HELLO,
    hedging_runtime,
    one_in_flight,
    settled,
    two_providers,
    warm_up,
)

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o-mini"
#: The simulators' providers in ``test_router.llm_config`` allow this many output tokens.
SIM_MAX_TOKENS = 64
#: And ``test_review5_upstream_errors.one_provider``'s this many.
ONE_PROVIDER_MAX_TOKENS = 10

# OpenRouter's documentation (API reference, "Streaming", "Stream Cancellation"): "Cancellation
# only works for streaming requests with supported providers. For non-streaming requests or
# unsupported providers, the model will continue processing and you will be billed for the
# complete response." The complete response is at most the body's output limit.


def worst_case(max_tokens: int = SIM_MAX_TOKENS) -> float:
    """The price-table cost of HELLO's prompt and ``max_tokens`` output on :data:`MODEL`."""
    cost = build_catalog(LLMConfig()).cost_of(MODEL, count_message_tokens(HELLO, MODEL),
                                              max_tokens)
    assert cost is not None
    return cost


# -- hedging and cancellation: what a non-streaming attempt left in flight is billed ------------


async def test_a_hedges_cancelled_primary_is_charged_what_the_upstream_bills_it(
        tmp_path: Path) -> None:
    # Hedges are asks (never streams): the loser is a non-streaming request, cancelled after it
    # was sent. Before: charged its prompt ($0.00000135), though the upstream bills its whole
    # answer, up to 64 output tokens ($0.00003975).
    clock = FakeClock()
    async with await hedging_runtime(tmp_path, clock) as (rt, primary, backup):
        await warm_up(rt)
        before = await settled(rt)
        await primary.configure(faults={"latency": 60})
        async with one_in_flight(rt, clock) as answers:
            await clock.advance(2.0)
        [answer] = answers
        assert [(a.provider, a.hedge) for a in answer.attempts] == [("backup", True)]
        assert answer.usage.total_cost is not None
        spent = await settled(rt) - before
    assert round(spent, 12) == round(worst_case() + answer.usage.total_cost, 12)


async def test_a_non_streaming_ask_cancelled_in_flight_is_charged_its_output_limit(
        tmp_path: Path) -> None:
    # The caller goes away (a closed socket, a cancel) while the upstream works on a
    # non-streaming request. Before: charged its prompt only.
    async def hold(n: int, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    async with scripted_upstream(hold) as upstream, one_provider(
            upstream.base_url, tmp_path, "aiohttp") as rt:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(rt.chat, HELLO)
                while not upstream.heads:
                    await anyio.sleep(0.01)
                group.cancel_scope.cancel()
        spent = await settled(rt)
    assert round(spent, 12) == round(worst_case(ONE_PROVIDER_MAX_TOKENS), 12)


# -- the daily limit at its edge, under concurrency ----------------------------------------------

#: Output tokens per request: HELLO's 9 prompt tokens and 30 output tokens cost exactly
#: $0.00001935 at gpt-4o-mini's $0.15 / $0.60 per million, but in floats 1.9350000000000003e-05.
EDGE_MAX_TOKENS = 30
FIT = 40
CONCURRENT = 50


def edge_cost() -> Fraction:
    """The exact worst case of one request at the edge, USD."""
    prompt = count_message_tokens(HELLO, MODEL)
    return (Fraction("0.15") * prompt + Fraction("0.6") * EDGE_MAX_TOKENS) / 1_000_000


async def test_concurrent_requests_at_the_daily_limit_admit_exactly_as_many_as_fit(
        tmp_path: Path) -> None:
    # 50 requests at once, each able to cost exactly 1/40 of the day's limit: exactly 40 fit.
    # Before: 39 were admitted and 11 refused (each worst case reserved 1 nano-USD over its
    # exact cost, a float's rounding error rounded up: 40 of them passed the limit by 40 nano).
    exact = edge_cost()
    float_cost = build_catalog(LLMConfig()).cost_of(
        MODEL, count_message_tokens(HELLO, MODEL), EDGE_MAX_TOKENS)
    assert float_cost is not None and Fraction(float_cost) != exact  # the float is inexact
    limit = float(FIT * exact)
    usage = {"prompt_tokens": count_message_tokens(HELLO, MODEL),
             "completion_tokens": EDGE_MAX_TOKENS,
             "total_tokens": count_message_tokens(HELLO, MODEL) + EDGE_MAX_TOKENS}
    body = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": MODEL,
                       "choices": [{"index": 0, "finish_reason": "length", "message": {
                           "role": "assistant", "content": "x"}}], "usage": usage}).encode()
    everyone_asked = asyncio.Event()

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        await everyone_asked.wait()  # every admitted request holds its reservation till then
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    outcomes: list[str] = []

    async def request(rt: Any) -> None:
        try:
            await rt.chat(HELLO)
        except LLMCostLimitError:
            outcomes.append("refused")
        else:
            outcomes.append("served")

    async with scripted_upstream(answer) as upstream:
        values = {"providers": {"sim": {
            "kind": "openai-compatible", "base_url": upstream.base_url, "model": MODEL,
            "requires_api_key": False, "max_tokens": EDGE_MAX_TOKENS,
            "breaker": {"minimum_number_of_calls": 1000}}},
            "active": "sim",
            "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": limit},
            "request_timeout": 30}
        async with open_runtime(LLMConfig.model_validate(values)) as rt:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as group:
                    for _ in range(CONCURRENT):
                        group.start_soon(request, rt)
                    while len(upstream.heads) + outcomes.count("refused") < CONCURRENT:
                        await anyio.sleep(0.01)
                    everyone_asked.set()
            spend = await rt.spend()
    assert (outcomes.count("served"), outcomes.count("refused")) == (FIT, CONCURRENT - FIT)
    assert len(upstream.heads) == FIT
    assert (spend.settled, spend.reserved, spend.open_reservations) == (limit, 0.0, 0)


@pytest.mark.parametrize(("amount", "expected"), [
    (1.9350000000000003e-05, 19_350),  # $0.00001935 computed in floats
    (0.1 + 0.2, 300_000_000),  # 0.30000000000000004
    (19_350.5e-9, 19_351),  # a half nano-USD is still rounded up
    (19_350.001e-9, 19_351),  # so is a thousandth of one
    (1e-18, 1),
    (0.0, 0),
])
def test_a_reservation_is_rounded_up_past_the_floats_own_error_only(
        amount: float, expected: int) -> None:
    assert nanos_up(amount) == expected


# -- a graceful stop with requests in flight -----------------------------------------------------

IN_FLIGHT = 5


async def test_a_stop_with_streams_in_flight_persists_each_ones_charge(tmp_path: Path) -> None:
    # Five streams sent and waiting for their first byte when the runtime stops (a deploy, a
    # SIGTERM): each left for the upstream, so each is charged its prompt, and the next process
    # on the same ledger file starts the day from those charges.
    async def hold(n: int, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    errors: list[str] = []

    async def stream(rt: Any) -> None:
        try:
            async with rt.stream(HELLO) as items:
                async for _ in items:
                    pass
        except Exception as exc:  # whatever the stop makes of it; the money is the point
            errors.append(type(exc).__name__)

    prompt = build_catalog(LLMConfig()).cost_of(MODEL, count_message_tokens(HELLO, MODEL), 0)
    assert prompt is not None
    async with scripted_upstream(hold) as upstream:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group, one_provider(
                    upstream.base_url, tmp_path, "aiohttp") as rt:
                for _ in range(IN_FLIGHT):
                    group.start_soon(stream, rt)
                while len(upstream.heads) < IN_FLIGHT:
                    await anyio.sleep(0.01)
        assert len(errors) == IN_FLIGHT, errors
        async with one_provider(upstream.base_url, tmp_path, "aiohttp") as rt:
            spend = await rt.spend()
    assert (round(spend.settled, 12), spend.reserved) == (round(IN_FLIGHT * prompt, 12), 0.0)


# -- max_cost_per_request over all the attempts of a request -------------------------------------

ERROR_IN_200 = {"error": {"message": "Provider returned error"}}


async def test_a_fallback_may_not_take_a_request_past_max_cost_per_request(
        tmp_path: Path) -> None:
    # The primary takes the request and answers an error inside a 200 body (charged its prompt,
    # retryable); the backup's worst case alone is exactly max_cost_per_request. Before: the
    # backup was asked and answered at its worst case, the request cost $0.0000087 against a
    # max_cost_per_request of $0.00000735 (each attempt was checked alone).
    limit = worst_case(ONE_PROVIDER_MAX_TOKENS)
    prompt = count_message_tokens(HELLO, MODEL)
    answer = completion({"content": "x"})
    answer["usage"] = {"prompt_tokens": prompt, "completion_tokens": ONE_PROVIDER_MAX_TOKENS,
                       "total_tokens": prompt + ONE_PROVIDER_MAX_TOKENS}

    def provider(base_url: str) -> dict[str, Any]:
        return {"kind": "openai-compatible", "base_url": base_url, "model": MODEL,
                "requires_api_key": False, "max_tokens": ONE_PROVIDER_MAX_TOKENS,
                "breaker": {"minimum_number_of_calls": 100}}

    async with scripted_upstream(json_answer(ERROR_IN_200)) as primary, scripted_upstream(
            json_answer(answer)) as backup:
        values = {"providers": {"primary": provider(primary.base_url),
                                "backup": provider(backup.base_url)},
                  "active": "primary", "fallback_order": ["primary", "backup"],
                  "cost": {"db_path": str(tmp_path / "ledger.sqlite3"),
                           "daily_cost_limit": 10.0, "max_cost_per_request": limit},
                  "request_timeout": 20}
        async with open_runtime(LLMConfig.model_validate(values)) as rt:
            with pytest.raises(LLMCostLimitError, match=r"^max_cost_per_request \$0\.000007 "
                               r"would be passed: this request settled \$0\.000001 \+ "):
                await rt.chat(HELLO)
            spent = await settled(rt)
        assert (len(primary.heads), len(backup.heads)) == (1, 0)
    assert round(spent, 12) == round(worst_case(0), 12)


async def test_the_attempts_of_one_request_share_max_cost_per_request(tmp_path: Path) -> None:
    # A hedge is a second attempt of the same request while the first is in flight: both may be
    # billed, so both must fit max_cost_per_request together. Another request is not counted.
    clock = FakeClock()
    cost = ledger_config(tmp_path, max_cost_per_request=LEDGER_WORST)
    async with ledger_system(cost, clock=clock, sweep_interval=10.0) as system:
        ledger = system.ref("ledger")
        first: Reservation = await ledger.ask(ledger_reserve("r1"), timeout=5)
        with pytest.raises(LLMCostLimitError, match=(
                r"^max_cost_per_request \$0\.003000 would be passed: this request settled "
                r"\$0\.000000 \+ reserved \$0\.003000 \+ worst case \$0\.003000 of p:m "
                r"\(p:m\)$")):
            await ledger.ask(ledger_reserve("r1"), timeout=5)
        other: Reservation = await ledger.ask(ledger_reserve("r2"), timeout=5)
        # Settled at $0.001, the request has $0.002 left: a worst case of $0.002 fits, not more.
        assert await ledger.ask(Settle(first.id, Usage(), 0.001), timeout=5) == 0.001
        with pytest.raises(LLMCostLimitError, match=r"this request settled \$0\.001000 \+ "):
            await ledger.ask(ledger_reserve("r1", max_tokens=501), timeout=5)
        again: Reservation = await ledger.ask(ledger_reserve("r1", max_tokens=500), timeout=5)
        await ledger.ask(Release(again.id), timeout=5)
        await ledger.ask(Release(other.id), timeout=5)
        book: LedgerBook = system.durable("ledger")
        assert sorted(book.requests) == ["r1", "r2"]
        # Idle for a sweep interval, a request is forgotten (its attempts follow each other at
        # once): the book does not keep one entry per request for the reservations' TTL.
        await clock.advance(10.0)
        await clock.advance(10.0)
        assert book.requests == {}



async def test_a_hedge_that_would_pass_max_cost_per_request_is_not_sent(tmp_path: Path) -> None:
    # The primary (worst case $0.00003975) is slow; its hedge on the backup (worst case
    # $0.0006625) fits max_cost_per_request ($0.00067) alone but not beside the primary, both of
    # which the upstreams may bill: the hedge is refused, the primary's answer is served. Before:
    # the hedge was sent, and answered first.
    clock = FakeClock()
    hedging = {"enabled": True, "max_share": 1.0, "min_delay": 2.0}
    cost = {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0,
            "max_cost_per_request": 0.00067}
    async with two_providers(tmp_path, clock=clock, hedging=hedging, cost=cost) as (
            rt, primary, backup):
        await warm_up(rt)
        before = await settled(rt)
        await primary.configure(faults={"latency": 1.0})
        async with one_in_flight(rt, clock) as answers:
            await clock.advance(2.0)
        [answer] = answers
        spent = await settled(rt) - before
        assert (await backup.stats())["total_requests"] == 0
        # Nothing was sent: no hedge counted (it took from hedging's max_share too).
        assert rt.metrics_summary()["hedges"] == 0
    assert [(a.provider, a.hedge, a.error_type) for a in answer.attempts] == [
        ("backup", True, "LLMCostLimitError"), ("primary", False, None)]
    assert answer.usage.total_cost is not None
    assert round(spent, 12) == round(answer.usage.total_cost, 12)


async def test_a_request_is_remembered_for_a_sweep_interval_after_its_last_release(
        tmp_path: Path) -> None:
    # An attempt of 25 s released (an error status) right before a sweep: the request's settled
    # first attempt still counts for its next one. Before: idleness was counted from when the
    # released reservation was made, the sweep forgot the request, and a next worst case of the
    # whole max_cost_per_request was granted on top of the $0.001 already settled.
    clock = FakeClock()
    cost = ledger_config(tmp_path, max_cost_per_request=LEDGER_WORST)
    async with ledger_system(cost, clock=clock, sweep_interval=10.0) as system:
        ledger = system.ref("ledger")
        first: Reservation = await ledger.ask(ledger_reserve("r1"), timeout=5)
        assert await ledger.ask(Settle(first.id, Usage(), 0.001), timeout=5) == 0.001
        second: Reservation = await ledger.ask(ledger_reserve("r1", max_tokens=500), timeout=5)
        await clock.advance(10.0)
        await clock.advance(10.0)
        await clock.advance(5.0)
        await ledger.ask(Release(second.id), timeout=5)
        await clock.advance(5.0)  # the sweep at 30 s
        with pytest.raises(LLMCostLimitError, match=r"this request settled \$0\.001000 \+ "):
            await ledger.ask(ledger_reserve("r1"), timeout=5)

# -- OpenRouter's reported cost ------------------------------------------------------------------

#: OpenRouter's documentation ("Usage Accounting"): ``cost`` is "the total amount charged to your
#: account", ``cost_details.upstream_inference_cost`` "the actual cost charged by the upstream AI
#: provider", which "only applies to BYOK (Bring Your Own Key) requests": the upstream bills the
#: user's own key for it, beside OpenRouter's fee in ``cost``.
BYOK_FEE = 0.0000005
BYOK_UPSTREAM = 0.00001


async def test_a_byok_answer_is_charged_its_upstream_inference_cost_too(tmp_path: Path) -> None:
    # Before: charged $0.0000005 (OpenRouter's fee) for an answer that cost $0.0000105.
    answer = completion({"content": "x"})
    answer["usage"] = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10,
                       "cost": BYOK_FEE,
                       "cost_details": {"upstream_inference_cost": BYOK_UPSTREAM}}
    async with scripted_upstream(json_answer(answer)) as upstream:
        values = {"providers": {"openrouter": {
            "kind": "openrouter", "base_url": upstream.base_url, "model": f"openai/{MODEL}",
            "requires_api_key": False, "max_tokens": ONE_PROVIDER_MAX_TOKENS}},
            "active": "openrouter",
            "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0},
            "request_timeout": 20}
        async with open_runtime(LLMConfig.model_validate(values)) as rt:
            response = await rt.chat(HELLO)
            spent = await settled(rt)
    assert round(spent, 12) == round(BYOK_FEE + BYOK_UPSTREAM, 12)
    assert response.usage.total_cost == pytest.approx(BYOK_FEE + BYOK_UPSTREAM, abs=1e-12)


@pytest.mark.parametrize(("usage", "cost"), [
    ({"cost": 0.5, "cost_details": {"upstream_inference_cost": 10.0}}, 10.5),  # BYOK, unsaid
    ({"cost": 0.5, "is_byok": True, "cost_details": {"upstream_inference_cost": 0.25}}, 0.75),
    ({"cost": 0.5, "is_byok": False, "cost_details": {"upstream_inference_cost": 10.0}}, 0.5),
    ({"cost": 2.0, "cost_details": {"upstream_inference_cost": 2.0}}, 2.0),  # no BYOK: passed on
    ({"cost": 0.5, "cost_details": {"upstream_inference_cost": "10"}}, 0.5),
    ({"cost": 0.5, "cost_details": {"upstream_inference_cost": -1.0}}, 0.5),
    ({"cost": 0.5, "cost_details": {"upstream_inference_cost": None}}, 0.5),
    ({"cost": True, "cost_details": {"upstream_inference_cost": 10.0}}, None),
    ({"cost_details": {"upstream_inference_cost": 10.0}}, None),
])
def test_the_reported_cost_adds_a_byok_upstream_cost_only(usage: dict[str, Any],
                                                          cost: float | None) -> None:
    assert msgspec.json.decode(json.dumps(usage), type=WireUsage).reported_cost == cost
