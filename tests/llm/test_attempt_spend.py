"""AttemptSpend: an answer that arrived but that we cannot use (malformed, or not the JSON asked
for) was billed, so it is charged on every provider it reached: an answer not the JSON asked for
at its own usage (it arrived whole), a malformed one at its output limit (its error does not say
how much it produced). A raw upstream for the malformed answers, simulators
for JSON mode; the real ledger on SQLite."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import (
    LLMConfig,
    LLMInvalidJSONError,
    LLMRuntime,
    LLMServerError,
    LLMStreamingError,
    build_catalog,
    count_message_tokens,
    open_runtime,
)
from actors.llm._messages import SpendSnapshot
from actors.llm._tokens import count_text_tokens
from simulator.process import SimulatorProcess
from tests.chaos.upstream import GarbageUpstream, Reply, good_completion, sse
from tests.llm.test_router import llm_config

HELLO = [{"role": "user", "content": "hello there"}]
MODEL = "gpt-4o-mini"
MAX_TOKENS = 64


def garbage_config(upstream: GarbageUpstream, tmp_path: Path, providers: int = 1) -> LLMConfig:
    """``providers`` providers (``garbage``, ``garbage2``...) on ``upstream``, the ledger on
    SQLite with a daily limit of $10."""
    names = ["garbage", *(f"garbage{n}" for n in range(2, providers + 1))]
    return LLMConfig.model_validate({
        "providers": {name: {"kind": "openai-compatible", "base_url": upstream.base_url,
                             "model": MODEL, "requires_api_key": False,
                             "max_tokens": MAX_TOKENS,
                             "breaker": {"minimum_number_of_calls": 100}} for name in names},
        "active": "garbage",
        "fallback_order": names,
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0},
        "request_timeout": 20,
    })


async def settled(rt: LLMRuntime) -> SpendSnapshot:
    """Today's spend once no reservation is open any more (a failed attempt settles by tell)."""
    with anyio.fail_after(10):
        while (snapshot := await rt.spend()).open_reservations:
            await anyio.sleep(0.02)
    return snapshot


def output_limit_cost(rt: LLMRuntime, model: str, max_tokens: int = MAX_TOKENS) -> float:
    """What an unusable answer is charged: its prompt and its whole output limit."""
    cost = build_catalog(rt.config).cost_of(model, count_message_tokens(HELLO, model),
                                            max_tokens)
    assert cost is not None
    return cost


async def test_a_malformed_answer_is_charged_its_output_limit_on_each_provider(
        tmp_path: Path) -> None:
    malformed = good_completion("fine")
    malformed["choices"][0]["message"]["content"] = 12345
    async with GarbageUpstream() as upstream:
        upstream.reply = Reply(body=json.dumps(malformed).encode())
        async with open_runtime(garbage_config(upstream, tmp_path, providers=2)) as rt:
            with pytest.raises(LLMServerError, match=(
                    r"^garbage2 sent a malformed response \(MalformedResponse\) "
                    r"\(garbage2:gpt-4o-mini\)$")) as info:
                await rt.chat(HELLO)
            assert info.value.status_code == 200
            snapshot = await settled(rt)
            assert (snapshot.settled, snapshot.reserved) == (
                pytest.approx(2 * output_limit_cost(rt, MODEL), abs=1e-9), 0.0)
        assert upstream.requests == 2


async def test_a_stream_malformed_before_its_first_text_is_charged_its_output_limit(
        tmp_path: Path) -> None:
    def tool_piece(arguments: str) -> dict[str, Any]:
        call = {"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": arguments}}
        return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                "choices": [{"index": 0, "delta": {"tool_calls": [call]},
                             "finish_reason": None}]}

    events = [tool_piece('{"q": "word word word ') for _ in range(20)]
    async with GarbageUpstream() as upstream:
        upstream.stream_reply = Reply(content_type="text/event-stream", chunked_stream=True,
                                      body=sse([*events, {"id": "c", "choices": "garbage"}]))
        async with open_runtime(garbage_config(upstream, tmp_path)) as rt:
            with pytest.raises(LLMServerError, match=(
                    r"^garbage sent a malformed response \(MalformedResponse\) ")):
                async with rt.stream(HELLO) as items:
                    async for _ in items:
                        pass
            snapshot = await settled(rt)
            # Its tool-call pieces (each names the tool again here) outnumber the output limit,
            # which the body sent: the upstream cannot have billed more than the limit.
            streamed = count_text_tokens("".join(
                "lookup" + '{"q": "word word word ' for _ in events), MODEL)
            assert streamed > MAX_TOKENS
            assert snapshot.settled == pytest.approx(output_limit_cost(rt, MODEL), abs=1e-9)
        assert upstream.requests == 1


@asynccontextmanager
async def json_mode(tmp_path: Path) -> AsyncIterator[tuple[LLMRuntime, SimulatorProcess]]:
    """Two simulators in JSON mode; the primary's answers are not JSON."""
    async with SimulatorProcess() as primary, SimulatorProcess() as backup:
        await primary.configure(faults={"invalid_json": True})
        async with open_runtime(in_json_mode(llm_config(primary, backup, tmp_path))) as rt:
            yield rt, primary


def in_json_mode(config: LLMConfig) -> LLMConfig:
    """``config`` with JSON mode asked of every provider."""
    providers = {name: settings.model_copy(update={"enable_json_mode": True})
                 for name, settings in config.providers.items()}
    return config.model_copy(update={"providers": providers})


def answers_cost(rt: LLMRuntime, log: list[list[Any]], models: list[str]) -> float:
    """The table price of the answers a simulator logged (its reported token counts), one model
    per logged request in order."""
    catalog = build_catalog(rt.config)
    costs = [catalog.cost_of(model, entry[2], entry[3]) for model, entry in
             zip(models, log, strict=True)]
    assert None not in costs
    return sum(cost for cost in costs if cost is not None)


async def test_answers_that_are_not_the_json_asked_for_are_charged_then_the_next_answers(
        tmp_path: Path) -> None:
    async with json_mode(tmp_path) as (rt, primary):
        answer = await rt.chat(HELLO)
        assert [(a.provider, a.model, a.error_type) for a in answer.attempts] == [
            ("primary", "gpt-4o-mini", "LLMInvalidJSONError"),
            ("primary", "gpt-4.1-mini", "LLMInvalidJSONError"),
            ("backup", "gpt-4o", None),
        ]
        assert json.loads(answer.content) == {"answer": "Echo: hello there"}
        assert answer.usage.total_cost is not None
        stats = await primary.stats()
        assert stats["total_requests"] == 2
        # Each unusable answer at its own reported usage, not at its output limit.
        expected = (answers_cost(rt, stats["log"], ["gpt-4o-mini", "gpt-4.1-mini"])
                    + answer.usage.total_cost)
        assert (await settled(rt)).settled == pytest.approx(expected, abs=3e-9)
        assert expected < (output_limit_cost(rt, "gpt-4o-mini")
                           + output_limit_cost(rt, "gpt-4.1-mini") + answer.usage.total_cost)


async def test_a_streamed_answer_that_is_not_json_is_charged_its_usage(tmp_path: Path) -> None:
    async with json_mode(tmp_path) as (rt, primary):
        with pytest.raises(LLMStreamingError, match=(
                r"^the stream from primary failed after the first chunk: primary answered with "
                r"text that is not JSON ")) as info:
            async with rt.stream(HELLO) as items:
                async for _ in items:
                    pass
        assert info.value.partial_text == '{"answer": "Echo: hello there"'
        snapshot = await settled(rt)
        stats = await primary.stats()
        assert stats["total_requests"] == 1
        assert snapshot.settled == pytest.approx(
            answers_cost(rt, stats["log"], ["gpt-4o-mini"]), abs=1e-9)


async def test_an_answer_not_the_json_asked_for_is_charged_its_reported_cost(
        tmp_path: Path) -> None:
    """OpenRouter reports what an answer cost: an unusable one is charged exactly that."""
    answer = good_completion("not json at all")
    answer["usage"]["cost"] = 0.5
    async with GarbageUpstream() as upstream:
        upstream.reply = Reply(body=json.dumps(answer).encode())
        async with open_runtime(in_json_mode(garbage_config(upstream, tmp_path))) as rt:
            with pytest.raises(LLMInvalidJSONError):
                await rt.chat(HELLO)
            assert (await settled(rt)).settled == pytest.approx(0.5, abs=1e-9)


THOUGHT = "step " * 400


async def test_an_answer_without_usage_is_priced_with_its_reasoning(tmp_path: Path) -> None:
    """No usage reported: the estimate counts the reasoning the model produced, not only its
    text (a reasoning model's thoughts are billed as output)."""
    body = good_completion("42")
    del body["usage"]
    body["choices"][0]["message"]["reasoning_content"] = THOUGHT
    delta = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    events = [{**delta, "choices": [{"index": 0, "delta": {"reasoning_content": "step " * 40},
                                     "finish_reason": None}]} for _ in range(10)]
    events += [{**delta, "choices": [{"index": 0, "delta": {"content": "42"},
                                      "finish_reason": "stop"}]}]
    expected = count_text_tokens(THOUGHT, MODEL) + count_text_tokens("42", MODEL)
    async with GarbageUpstream() as upstream:
        upstream.reply = Reply(body=json.dumps(body).encode())
        upstream.stream_reply = Reply(content_type="text/event-stream", chunked_stream=True,
                                      body=sse(events))
        async with open_runtime(garbage_config(upstream, tmp_path)) as rt:
            answer = await rt.chat(HELLO)
            assert answer.usage.completion_tokens == expected
            async with rt.stream(HELLO) as items:
                async for _ in items:
                    pass
            streamed = (await settled(rt)).settled - (answer.usage.total_cost or 0.0)
            assert streamed == pytest.approx(answer.usage.total_cost, abs=1e-12)
