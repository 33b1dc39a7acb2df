"""A failed request is an answer, not a crash: other requests in flight in the router go on.

Found by the chaos suite (seed 1): ``actors/llm/_runtime.py`` builds the router's ``ChildSpec``
without ``crash_on``, whose default ``(Exception,)`` makes every error the router answers with
(a timeout, a cost-limit refusal, a token limit) crash it. Every other request in flight then ends
with ``ActorCrashed``, the settles of answers already paid for are lost (their reservations stay
open until the TTL sweep), and ten failed requests in a minute escalate to the root supervisor.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from actors.llm import LLMConfig, LLMTokenLimitError, open_runtime
from actors.llm._ledger import LedgerBook
from simulator.process import SimulatorProcess

HELLO = [{"role": "user", "content": "hello"}]


def config(sim: SimulatorProcess, tmp_path: Path) -> LLMConfig:
    return LLMConfig.model_validate({
        "providers": {"sim": {"kind": "openai-compatible", "base_url": sim.base_url,
                              "model": "gpt-4o-mini", "requires_api_key": False,
                              "max_tokens": 16}},
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 1.0},
        "request_timeout": 10,
    })


async def test_a_refused_request_leaves_the_request_in_flight_alone(tmp_path: Path) -> None:
    async with (SimulatorProcess({"faults": {"latency": 1.0}}) as sim,
                open_runtime(config(sim, tmp_path)) as rt):
        slow: list[object] = []

        async def slow_request() -> None:
            slow.append(await rt.chat(HELLO))

        async with anyio.create_task_group() as group:
            group.start_soon(slow_request)
            await anyio.sleep(0.3)
            with pytest.raises(LLMTokenLimitError):
                await rt.chat(HELLO, max_tokens=10_000_000)
        assert len(slow) == 1
        assert rt.system.status()["router"].restart_count == 0
        book = rt.system.durable("ledger")
        assert isinstance(book, LedgerBook)
        assert book.open == {}


async def test_eleven_failed_requests_in_a_minute_do_not_stop_the_runtime(tmp_path: Path) -> None:
    async with SimulatorProcess() as sim, open_runtime(config(sim, tmp_path)) as rt:
        for _ in range(11):
            with pytest.raises(LLMTokenLimitError):
                await rt.chat(HELLO, max_tokens=10_000_000)
        answer = await rt.chat(HELLO)
        assert answer.content == "Echo: hello"
        assert rt.system.failure is None
