"""A request whose estimated tokens exceed one provider's whole tokens-per-minute budget can never
be served by that provider, but another provider (with a larger budget) may serve it: the router
falls back instead of answering ``token_limit`` at once. Two simulator processes on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import LLMConfig, LLMTokenLimitError, open_runtime
from simulator.process import SimulatorProcess

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "hello there"}]


def config(primary: SimulatorProcess, backup: SimulatorProcess, tmp_path: Path,
           backup_tpm: int | None) -> LLMConfig:
    def provider(sim: SimulatorProcess, model: str, tpm: int | None) -> dict[str, Any]:
        return {"kind": "openai-compatible", "base_url": sim.base_url, "model": model,
                "requires_api_key": False, "max_tokens": 64,
                "rate_limits": {"tokens_per_minute": tpm}}

    return LLMConfig.model_validate({
        "providers": {"primary": provider(primary, "gpt-4o-mini", 50),  # 64 + the prompt > 50
                      "backup": provider(backup, "gpt-4o", backup_tpm)},
        "active": "primary",
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0},
        "request_timeout": 20,
    })


async def test_a_request_over_one_providers_whole_tpm_budget_falls_back(tmp_path: Path) -> None:
    async with SimulatorProcess() as primary, SimulatorProcess() as backup:
        async with open_runtime(config(primary, backup, tmp_path, None)) as rt:
            with anyio.fail_after(15):
                answer = await rt.chat(HELLO)
        assert (answer.provider, answer.model, answer.content) == (
            "backup", "gpt-4o", "Echo: hello there")
        assert [(a.provider, a.error_type) for a in answer.attempts] == [
            ("primary", "LLMTokenLimitError"), ("backup", None)]
        assert (await primary.stats())["total_requests"] == 0
        assert (await backup.stats())["total_requests"] == 1


async def test_over_every_providers_budget_it_ends_in_the_token_limit(tmp_path: Path) -> None:
    async with SimulatorProcess() as primary, SimulatorProcess() as backup:
        async with open_runtime(config(primary, backup, tmp_path, 60)) as rt:
            with anyio.fail_after(15), pytest.raises(LLMTokenLimitError) as refused:
                await rt.chat(HELLO)
        assert refused.value.message.startswith("estimated ")
        assert refused.value.message.endswith(
            " tokens exceed the whole budget of 60 tokens per minute of backup")
        assert refused.value.retryable is False
        assert (await primary.stats())["total_requests"] == 0
        assert (await backup.stats())["total_requests"] == 0
