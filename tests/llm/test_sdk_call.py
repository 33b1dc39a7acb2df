"""price_usage: what an answer cost, as reported or estimated. The estimate counts the reasoning
too; a reported count or cost that cannot be one (NaN, negative, past any answer) is estimated or
priced instead, so the caller, the ledger and the metrics never see it. Unit tests on a real
catalog, and a runtime in front of a raw upstream reporting garbage usage."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.llm import (
    ChatRequest,
    LLMRuntime,
    ModelCatalog,
    ModelPrice,
    ProviderCall,
    ToolCall,
    build_catalog,
    count_message_tokens,
    open_runtime,
)
from actors.llm._messages import Usage
from actors.llm._sdk_call import price_usage
from actors.llm._tokens import count_text_tokens
from actors.llm._wire_decode import WireUsage, decode_completion
from tests.chaos.upstream import GarbageUpstream, Reply, good_completion
from tests.llm.test_attempt_spend import HELLO, MODEL, garbage_config, settled

# $1 per million input tokens, $2 per million output.
CATALOG = ModelCatalog(prices={"m": ModelPrice(input=1.0, output=2.0)}, builtin=False)
CALL = ProviderCall(ChatRequest.of(HELLO, []), "m", 8)
THOUGHT = "first I weigh the options, then I compare their costs " * 20


def wire_usage(**fields: Any) -> WireUsage | None:
    """``usage`` as read from a body that carries ``fields``."""
    return decode_completion({"usage": fields}).usage


def test_an_answer_without_usage_is_estimated_with_its_reasoning() -> None:
    call = ToolCall(id="c1", name="lookup", arguments='{"q": "costs"}')
    usage = price_usage(CATALOG, CALL, None, "42", [call], "m", reasoning=THOUGHT)
    thought = count_text_tokens(THOUGHT, "m")
    output = thought + count_text_tokens('42lookup{"q": "costs"}', "m")
    assert thought == 221
    assert usage == Usage(prompt_tokens=8, completion_tokens=output, total_tokens=8 + output,
                          reasoning_tokens=thought, total_cost=(8 + 2 * output) / 1e6)


def test_a_reported_usage_is_kept_and_the_reasoning_is_not_counted_twice() -> None:
    usage = wire_usage(prompt_tokens=30, completion_tokens=250, total_tokens=280,
                       completion_tokens_details={"reasoning_tokens": 200}, cost=0.125)
    assert price_usage(CATALOG, CALL, usage, "42", [], "m", reasoning=THOUGHT) == Usage(
        prompt_tokens=30, completion_tokens=250, total_tokens=280, reasoning_tokens=200,
        total_cost=0.125)


@pytest.mark.parametrize("cost", [math.nan, math.inf, -math.inf, -5.0])
def test_a_reported_cost_that_is_not_an_amount_is_priced_from_the_table(cost: float) -> None:
    usage = wire_usage(prompt_tokens=1000, completion_tokens=250, total_tokens=1250, cost=cost)
    assert price_usage(CATALOG, CALL, usage, "fine", [], "m") == Usage(
        prompt_tokens=1000, completion_tokens=250, total_tokens=1250, total_cost=0.0015)


@pytest.mark.parametrize("bad", [-1000, 2**53 + 1, 10**400],
                         ids=["negative", "2**53+1", "10**400"])
def test_reported_counts_that_are_not_counts_are_estimated(bad: int) -> None:
    usage = wire_usage(prompt_tokens=bad, completion_tokens=bad, total_tokens=bad,
                       prompt_tokens_details={"cached_tokens": bad},
                       completion_tokens_details={"reasoning_tokens": bad})
    fine = count_text_tokens("fine", "m")
    assert price_usage(CATALOG, CALL, usage, "fine", [], "m") == Usage(
        prompt_tokens=8, completion_tokens=fine, total_tokens=8 + fine,
        total_cost=(8 + 2 * fine) / 1e6)


async def metrics_after_one_call(rt: LLMRuntime) -> dict[str, Any]:
    """The metrics summary once the call's report arrived (it comes by tell)."""
    with anyio.fail_after(10):
        while (summary := rt.metrics_summary())["total_requests"] < 1:
            await anyio.sleep(0.02)
    return summary


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6, "cost": math.nan},
    {"prompt_tokens": -1000, "completion_tokens": -1000, "total_tokens": -2000, "cost": -5.0},
], ids=["nan_cost", "negative"])
async def test_garbage_usage_reaches_neither_the_caller_nor_the_ledger_nor_the_metrics(
        tmp_path: Path, usage: dict[str, Any]) -> None:
    answer = good_completion("fine")
    answer["usage"] = usage
    async with GarbageUpstream() as upstream:
        upstream.reply = Reply(body=json.dumps(answer).encode())  # NaN goes out as NaN
        async with open_runtime(garbage_config(upstream, tmp_path)) as rt:
            response = await rt.chat(HELLO)
            if usage["prompt_tokens"] > 0:
                prompt, completion = 5, 1
            else:  # estimated: the router's prompt count, the answer's text
                prompt = count_message_tokens(HELLO, MODEL)
                completion = count_text_tokens("fine", MODEL)
            cost = build_catalog(rt.config).cost_of(MODEL, prompt, completion)
            assert cost is not None and cost > 0
            assert response.usage == Usage(prompt_tokens=prompt, completion_tokens=completion,
                                           total_tokens=prompt + completion, total_cost=cost)
            assert (await settled(rt)).settled == pytest.approx(cost, abs=1e-9)
            summary = await metrics_after_one_call(rt)
            assert (summary["total_cost"], summary["prompt_tokens"],
                    summary["completion_tokens"]) == (cost, prompt, completion)
            values = [sample.value for family in text_string_to_metric_families(
                rt.prometheus_text().decode()) for sample in family.samples]
            assert values and all(0 <= value < math.inf for value in values)
