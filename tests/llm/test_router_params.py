"""The request parameters the router checks before any reservation or call: the output limit
(``max_tokens``/``max_completion_tokens``), which bounds the ledger's reservation and the
provider's token limiter. Real simulators, the real ledger on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.llm import LLMBadRequestError, LLMRuntime, create_llm_client
from simulator.process import SimulatorProcess
from tests.llm.test_router import HELLO, two_providers

pytestmark = pytest.mark.anyio

BAD_LIMITS = [
    ("abc", "str"), ("12x", "str"), ("12", "str"), (-5, "-5"), (0, "0"),
    (float("inf"), "inf"), (2.5, "2.5"), (True, "True"), ([64], "list"),
]


async def nothing_sent_or_held(rt: LLMRuntime, *sims: SimulatorProcess) -> None:
    for sim in sims:
        assert (await sim.stats())["total_requests"] == 0
    spend = await rt.spend()
    assert (spend.settled, spend.reserved, spend.open_reservations) == (0.0, 0.0, 0)


async def test_an_output_limit_that_is_not_a_positive_integer_is_a_bad_request(
        tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        for name in ("max_tokens", "max_completion_tokens"):
            for value, shown in BAD_LIMITS:
                with pytest.raises(LLMBadRequestError,
                                   match=rf"^{name} must be a positive integer, not {shown}$"):
                    await rt.chat(HELLO, **{name: value})
        await nothing_sent_or_held(rt, primary, backup)
        # A good one still goes through.
        answer = await rt.chat(HELLO, max_tokens=5)
        assert answer.content == "Echo: hello there"


async def test_the_client_refuses_a_bad_output_limit_before_calling() -> None:
    async with SimulatorProcess() as sim:
        config = {"kind": "openai-compatible", "model": "gpt-4o-mini", "base_url": sim.base_url,
                  "requires_api_key": False}
        async with create_llm_client("sim", config) as client:
            with pytest.raises(LLMBadRequestError,
                               match=r"^max_tokens must be a positive integer, not str$"):
                await client.get_response(HELLO, max_tokens="abc")
        assert (await sim.stats())["total_requests"] == 0
