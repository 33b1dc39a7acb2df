"""The provider's HTTP pool: httpx2's pool with the cheap idle-connection probe installed."""

from __future__ import annotations

import httpx2

from actors.llm._http_pool import _ProbedBackend, provider_http_client
from simulator.process import SimulatorProcess

LIMITS = httpx2.Limits(max_connections=4, max_keepalive_connections=4)
TIMEOUT = httpx2.Timeout(10.0)


def test_the_probe_backend_is_installed_in_httpx2s_pool() -> None:
    client = provider_http_client(LIMITS, TIMEOUT)
    # If httpx2 moves its pool, this fails and the module docstring's trade-off must be revisited.
    assert isinstance(client._transport._pool._network_backend, _ProbedBackend)  # type: ignore[attr-defined]


async def test_a_connection_closed_by_the_server_is_detected_and_replaced() -> None:
    async with SimulatorProcess() as sim, provider_http_client(LIMITS, TIMEOUT) as client:
        first = await client.get(f"{sim.url}/_sim/health")
        assert first.status_code == 200
        await sim.restart()  # the idle keep-alive connection is now closed by the server
        second = await client.get(f"{sim.url}/_sim/health")
        assert second.status_code == 200
