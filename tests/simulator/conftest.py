"""Fixtures of the simulator tests: one simulator process a module, reset for each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest
from openai import AsyncOpenAI

from simulator.process import SyncSimulatorProcess

KEY = "sk-sim-test"


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SyncSimulatorProcess]:
    with SyncSimulatorProcess() as sim:
        yield sim


@pytest.fixture
def sim(shared_sim: SyncSimulatorProcess) -> SyncSimulatorProcess:
    shared_sim.reset()
    return shared_sim


@pytest.fixture
async def client(sim: SyncSimulatorProcess) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture
async def http(sim: SyncSimulatorProcess) -> AsyncIterator[httpx2.AsyncClient]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx2.AsyncClient(base_url=sim.base_url, headers=headers, timeout=10) as http:
        yield http
