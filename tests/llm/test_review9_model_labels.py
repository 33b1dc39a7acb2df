"""Review 9: the ``model`` label of a call is a model we asked for, never a name the upstream
made up. Its answered name is kept only when the call asked for it: with OpenRouter's native
fallbacks (``use_native_fallbacks``) the upstream may answer with any model sent along, and that
model's label counts it. An upstream of our own answers every call with the name it is told."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import LLMConfig, LLMRuntime, open_runtime
from actors.metrics import GetSummary
from tests.chaos.upstream import GarbageUpstream, Reply, good_completion

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "hello there"}]


def _config(upstream: GarbageUpstream, tmp_path: Path, **provider: Any) -> LLMConfig:
    return LLMConfig.model_validate({
        "providers": {"up": {"kind": "openai-compatible", "base_url": upstream.base_url,
                             "model": "gpt-4o-mini", "requires_api_key": False,
                             "max_tokens": 16,
                             "prices": {"my-own-model": {"input": 1.0, "output": 1.0}},
                             **provider}},
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0},
        "request_timeout": 20,
    })


def _answered_as(upstream: GarbageUpstream, model: str) -> None:
    completion = good_completion()
    completion["model"] = model
    upstream.reply = Reply(body=json.dumps(completion).encode())


async def _requests_by_model(rt: LLMRuntime, total: int) -> dict[str, int]:
    with anyio.fail_after(5):
        while True:
            summary = await rt.metrics.ask(GetSummary(), timeout=5)
            if summary["total_requests"] >= total:
                return {key: s["total_requests"] for key, s in summary["by_model"].items()}
            await anyio.sleep(0.02)


async def test_a_callers_own_model_keeps_its_label_after_an_upstream_made_up_40_names(
        tmp_path: Path) -> None:
    async with GarbageUpstream() as upstream, open_runtime(_config(upstream, tmp_path)) as rt:
        for i in range(40):
            _answered_as(upstream, f"made-up-{i}")
            await rt.chat(HELLO)
        _answered_as(upstream, "made-up-40")
        await rt.chat(HELLO, model="my-own-model")
        counts = await _requests_by_model(rt, 41)
    assert counts == {"up:gpt-4o-mini": 40, "up:my-own-model": 1}


async def test_openrouters_native_fallback_answering_is_counted_under_that_model(
        tmp_path: Path) -> None:
    async with GarbageUpstream() as upstream:
        config = _config(upstream, tmp_path, kind="openrouter", model="openai/gpt-4o",
                         fallback_models=["anthropic/claude-3.5-haiku"],
                         use_native_fallbacks=True)
        async with open_runtime(config) as rt:
            for answered in ("anthropic/claude-3.5-haiku", "openai/gpt-4o-2024-08-06",
                             "made-up", "openai/gpt-4o"):
                _answered_as(upstream, answered)
                await rt.chat(HELLO)
            counts = await _requests_by_model(rt, 4)
    assert counts == {"up:anthropic/claude-3.5-haiku": 1, "up:openai/gpt-4o": 3}
