"""A request's timeout is below the ledger's reservation TTL, in the config and per request: a call
still running when the ledger sweeps its reservation would let the ledger grant the same money
twice. Real simulators, the real ledger on SQLite."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from actors.llm import LLMBadRequestError, LLMConfig, describe_validation_error, open_runtime
from actors.llm._config import RESERVATION_TTL
from simulator.process import SimulatorProcess
from tests.llm.test_router import HELLO, two_providers

pytestmark = pytest.mark.anyio

PROVIDERS = {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1",
                   "model": "m", "requires_api_key": False}}


@pytest.mark.parametrize("timeout", [600, 1800])
def test_a_request_timeout_not_below_the_reservation_ttl_is_a_config_error(
        timeout: float) -> None:
    assert RESERVATION_TTL == 600
    with pytest.raises(ValidationError) as info:
        LLMConfig.model_validate({"providers": PROVIDERS, "request_timeout": timeout})
    assert describe_validation_error(info.value, model=LLMConfig) == [
        "request_timeout: must be below the ledger's reservation TTL (600 s): a longer call "
        "would lose its cost reservation while it runs"]
    config = LLMConfig.model_validate({"providers": PROVIDERS, "request_timeout": 599.5})
    assert config.request_timeout == 599.5


async def test_a_per_request_timeout_outside_the_reservation_ttl_is_a_bad_request(
        tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        for timeout in (600.0, 1800.0, math.inf, math.nan, 0.0, -1.0):
            message = (r"^timeout must be above 0 s and below the ledger's reservation TTL "
                       rf"\(600 s\), not {re.escape(repr(timeout))}$")
            with pytest.raises(LLMBadRequestError, match=message):
                await rt.chat(HELLO, timeout=timeout)
            with pytest.raises(LLMBadRequestError, match=message):
                async with rt.stream(HELLO, timeout=timeout) as items:
                    async for _ in items:
                        pass
        for sim in (primary, backup):
            assert (await sim.stats())["total_requests"] == 0
        spend = await rt.spend()
        assert (spend.settled, spend.open_reservations) == (0.0, 0)
        answer = await rt.chat(HELLO, timeout=599.0)
        assert answer.content == "Echo: hello there"


async def test_a_config_copied_past_validation_cannot_outlive_the_reservation_ttl(
        tmp_path: Path) -> None:
    async with SimulatorProcess() as sim:
        config = LLMConfig.model_validate({
            "providers": {"p": {**PROVIDERS["p"], "base_url": sim.base_url,
                                "model": "gpt-4o-mini"}},
            "cost": {"db_path": str(tmp_path / "ledger.sqlite3")}})
        # model_copy(update=...) does not validate: the router checks the timeout it uses.
        config = config.model_copy(update={"request_timeout": 1800.0})
        async with open_runtime(config) as rt:
            with pytest.raises(LLMBadRequestError, match=(
                    r"^timeout must be above 0 s and below the ledger's reservation TTL "
                    r"\(600 s\), not 1800\.0$")):
                await rt.chat(HELLO)
            answer = await rt.chat(HELLO, timeout=30)
            assert answer.content == "Echo: hello there"
        assert (await sim.stats())["total_requests"] == 1
