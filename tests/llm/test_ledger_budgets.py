"""LedgerActor budgets beside the global ones: per provider, per turn, and concurrent overages."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import CostConfig, LLMCostLimitError, ModelCatalog, ModelPrice, ProviderConfig
from actors.llm._ledger import LedgerBook, ledger_child_spec
from actors.llm._messages import GetSpend, Reservation, Reserve, Settle, SpendSnapshot, Usage
from runtime import ActorRef, ActorSystem, SupervisorSpec

# 1 USD per million input tokens, 2 per million output: 1000 + 1000 tokens cost $0.003.
CATALOG = ModelCatalog(prices={"m": ModelPrice(input=1.0, output=2.0)}, builtin=False)
WORST = 0.003
NANO = 1e-9


def provider(**budget: Any) -> ProviderConfig:
    return ProviderConfig(kind="openai-compatible", base_url="http://127.0.0.1:9", model="m",
                          requires_api_key=False, **budget)


def system(tmp_path: Path, providers: dict[str, ProviderConfig] | None = None,
           **limits: Any) -> ActorSystem:
    cost = CostConfig(db_path=str(tmp_path / "ledger.sqlite3"), **limits)
    return ActorSystem(SupervisorSpec("root", [
        ledger_child_spec(cost, CATALOG, providers=providers)]))


def reserve(request_id: str, provider: str = "p", **extra: Any) -> Reserve:
    return Reserve(request_id, provider, "m", 1000, 1000, **extra)


async def try_reserve(ledger: ActorRef, message: Reserve) -> Reservation | None:
    try:
        reservation: Reservation = await ledger.ask(message, timeout=10)
    except LLMCostLimitError:
        return None
    return reservation


async def test_a_providers_own_daily_limit_is_exact_under_concurrency(tmp_path: Path) -> None:
    # Room for exactly 10 worst cases on "p"; "q" has only the global limit.
    providers = {"p": provider(daily_cost_limit=10 * WORST), "q": provider()}
    granted: dict[str, list[Reservation]] = {"p": [], "q": []}

    async def one(name: str, i: int) -> None:
        reservation = await try_reserve(ledger, reserve(f"{name}{i}", name))
        if reservation is not None:
            granted[name].append(reservation)

    async with system(tmp_path, providers, daily_cost_limit=1.0) as actors:
        ledger = actors.ref("ledger")
        async with anyio.create_task_group() as group:
            for i in range(50):
                group.start_soon(one, "p", i)
                group.start_soon(one, "q", i)
        assert (len(granted["p"]), len(granted["q"])) == (10, 50)
        with pytest.raises(
            LLMCostLimitError,
            match=r"^p's daily_cost_limit \$0\.030000 would be passed on \d{4}-\d\d-\d\d: settled "
            r"\$0\.000000 \+ reserved \$0\.030000 \+ worst case \$0\.003000 of p:m \(p:m\)$",
        ):
            await ledger.ask(reserve("late", "p"), timeout=5)
        # Settled money counts like reserved money; a release frees room.
        for reservation in granted["p"][:5]:
            await ledger.ask(Settle(reservation.id, Usage(), WORST), timeout=5)
        assert await try_reserve(ledger, reserve("still-full", "p")) is None
        await ledger.ask(Settle(granted["p"][5].id, Usage(), 0.001), timeout=5)
        assert await try_reserve(ledger, reserve("one-short", "p")) is None  # 0.031 > 0.030
        await ledger.ask(Settle(granted["p"][6].id, Usage(), 0.001), timeout=5)
        assert await try_reserve(ledger, reserve("fits", "p")) is not None  # 0.029
        book: LedgerBook = actors.durable("ledger")
        assert book.by_provider == {"p": 17_000_000}


async def test_a_providers_max_cost_per_request_is_checked_beside_the_global_one(
    tmp_path: Path,
) -> None:
    providers = {"p": provider(max_cost_per_request=0.002), "q": provider()}
    async with system(tmp_path, providers, max_cost_per_request=0.01) as actors:
        ledger = actors.ref("ledger")
        with pytest.raises(LLMCostLimitError, match=r"exceeds max_cost_per_request \$0\.002000"):
            await ledger.ask(reserve("a", "p"), timeout=5)
        assert await try_reserve(ledger, reserve("b", "q")) is not None


async def test_the_day_of_each_provider_survives_a_restart(tmp_path: Path) -> None:
    providers = {"p": provider(daily_cost_limit=0.005)}
    async with system(tmp_path, providers) as actors:
        ledger = actors.ref("ledger")
        first = await try_reserve(ledger, reserve("a"))
        assert first is not None
        await ledger.ask(Settle(first.id, Usage(), 0.004), timeout=5)
    async with system(tmp_path, providers) as actors:
        ledger = actors.ref("ledger")
        assert await try_reserve(ledger, reserve("b")) is None  # 0.004 + 0.003 > 0.005
        book: LedgerBook = actors.durable("ledger")
        assert book.by_provider == {"p": 4_000_000}


async def test_a_turn_may_not_pass_its_budget_and_other_turns_are_unaffected(
    tmp_path: Path,
) -> None:
    async with system(tmp_path) as actors:
        ledger = actors.ref("ledger")
        budget: dict[str, Any] = {"turn_id": "t1", "turn_cost_limit": 2.5 * WORST}
        first = await try_reserve(ledger, reserve("a", **budget))
        second = await try_reserve(ledger, reserve("b", **budget))
        assert first is not None and second is not None
        with pytest.raises(
            LLMCostLimitError,
            match=r"^max_cost_per_turn \$0\.007500 would be passed: this turn settled "
            r"\$0\.000000 \+ reserved \$0\.006000 \+ worst case \$0\.003000 of p:m \(p:m\)$",
        ):
            await ledger.ask(reserve("c", **budget), timeout=5)
        await ledger.ask(Settle(first.id, Usage(), 0.002), timeout=5)
        assert await try_reserve(ledger, reserve("d", **budget)) is None  # 0.002+0.003+0.003
        await ledger.ask(Settle(second.id, Usage(), 0.0005), timeout=5)
        assert await try_reserve(ledger, reserve("e", **budget)) is not None  # 0.0025+0.003
        other: dict[str, Any] = {"turn_id": "t2", "turn_cost_limit": 2.5 * WORST}
        assert await try_reserve(ledger, reserve("f", **other)) is not None


async def test_concurrent_overages_pass_the_limit_by_at_most_their_sum(tmp_path: Path) -> None:
    limit = 100 * WORST
    overage = 0.0015  # each attempt costs half again what it reserved

    async with system(tmp_path, daily_cost_limit=limit) as actors:
        ledger = actors.ref("ledger")
        granted: list[Reservation] = []

        async def one(i: int) -> None:
            reservation = await try_reserve(ledger, reserve(f"r{i}"))
            if reservation is not None:
                granted.append(reservation)

        async with anyio.create_task_group() as group:
            for i in range(300):
                group.start_soon(one, i)
        assert len(granted) == 100  # exactly the room there was

        charged: list[float] = []

        async def settle(reservation: Reservation) -> None:
            charged.append(await ledger.ask(
                Settle(reservation.id, Usage(), reservation.amount + overage), timeout=10))

        async with anyio.create_task_group() as group:
            for reservation in granted:
                group.start_soon(settle, reservation)
        end: SpendSnapshot = await ledger.ask(GetSpend(), timeout=5)
        book: LedgerBook = actors.durable("ledger")
        assert book.overages == 100
        assert end.settled == pytest.approx(math.fsum(charged), abs=NANO)
        # The bound the docstring promises, reached exactly: the limit plus the overages.
        assert end.settled == pytest.approx(limit + 100 * overage, abs=NANO)
        # Over the limit now: nothing more is granted, not even the cheapest call.
        assert await try_reserve(ledger, Reserve("tiny", "p", "m", 1, 0)) is None
