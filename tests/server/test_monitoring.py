"""The specification's key metrics, scraped from a real server's ``/metrics``.

Its "Monitoring and Rollback" section names five, each checked here on a real ``mcp-backend
serve`` talking to a real simulator:

- response time percentiles (p50, p95, p99): the ``llm_request_duration_seconds`` histogram;
- error rates by provider and model: ``llm_requests_total{outcome}`` and ``llm_errors_total{type}``;
- token usage and cost trends: ``llm_tokens_total{direction}`` and ``llm_cost_usd_total``;
- rate limit hit frequency: ``llm_rate_limited_total``;
- connection pool utilization: ``pool_connections_in_use``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics._histogram import LATENCY_BOUNDS
from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat,
    chat_frame,
    connect,
    http_get,
    receive,
    send,
    until_end,
    write_config,
)

PROVIDER = "sim"
MODEL = "gpt-4o-mini"
PM = {"provider": PROVIDER, "model": MODEL}
# The store exports every 4th bound of its histograms (and the last), then +Inf.
EXPORTED_LE = [repr(b) for i, b in enumerate(LATENCY_BOUNDS)
               if i % 4 == 0 or i == len(LATENCY_BOUNDS) - 1] + ["+Inf"]


class Scrape:
    """One ``/metrics`` body, parsed: sample values by name and labels, family types."""

    def __init__(self, body: str) -> None:
        families = list(text_string_to_metric_families(body))
        self.types = {f.name: f.type for f in families}
        self.samples = [s for f in families for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        (match,) = [s.value for s in self.samples if s.name == name and s.labels == labels]
        return match

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]


def scrape(server: ServerChild) -> Scrape:
    status, content_type, body = http_get(server.url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    return Scrape(body)


QUIET = {"rate_429": 0.0, "retry_after": 1.0, "rate_401": 0.0, "chunk_delay": 0.0}
"""Every fault these tests set, undone."""


@pytest.fixture(scope="module")
def module_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorChild]:
    sim = SimulatorChild(directory=tmp_path_factory.mktemp("monitoring-sim"))
    yield sim
    sim.stop()


@pytest.fixture
def simulator(module_simulator: SimulatorChild) -> Iterator[SimulatorChild]:
    """One simulator for the module (each test has its own server, so its own metrics), its
    faults undone after every test."""
    yield module_simulator
    module_simulator.configure(faults=QUIET)


@pytest.fixture
def server(tmp_path: Path, simulator: SimulatorChild) -> Iterator[ServerChild]:
    child = ServerChild(write_config(tmp_path, simulator_url=simulator.url, model=MODEL,
                                     mcp_servers={}))
    yield child
    assert child.stop() == 0, child.output


async def test_a_streamed_turn_shows_every_key_metric(server: ServerChild) -> None:
    async with await connect(server.ws_url) as ws:
        envelopes = await chat(ws, "hello there")
    complete = envelopes[-1]
    assert complete["status"] == "complete"
    usage, cost = complete["chunk"]["usage"], complete["chunk"]["cost"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0 and cost > 0

    m = scrape(server)
    assert m.types["mcp_backend_llm_requests"] == "counter"
    assert m.value("mcp_backend_llm_requests_total", **PM, outcome="success") == 1
    assert m.value("mcp_backend_llm_requests_total", **PM, outcome="error") == 0
    assert m.value("mcp_backend_llm_requests_total", **PM, outcome="cancelled") == 0
    assert m.labels_of("mcp_backend_llm_errors_total") == []
    # Percentiles come from the histogram: its buckets, cumulative, end with the one call.
    for histogram in ("mcp_backend_llm_request_duration_seconds",
                      "mcp_backend_llm_time_to_first_token_seconds"):
        assert m.types[histogram] == "histogram"
        buckets = [s for s in m.samples if s.name == histogram + "_bucket"]
        assert [b.labels["le"] for b in buckets] == EXPORTED_LE
        assert all(b.labels.keys() == {"provider", "model", "le"} for b in buckets)
        assert [b.value for b in buckets][-1] == 1
        assert m.value(histogram + "_count", **PM) == 1
        assert 0 < m.value(histogram + "_sum", **PM) < 20
    # A streamed answer's tokens and cost are exactly what the client was told.
    assert m.value("mcp_backend_llm_tokens_total", **PM, direction="input") == (
        usage["prompt_tokens"])
    assert m.value("mcp_backend_llm_tokens_total", **PM, direction="output") == (
        usage["completion_tokens"])
    assert m.value("mcp_backend_llm_cost_usd_total", **PM) == cost
    assert m.value("mcp_backend_llm_rate_limited_total", **PM) == 0
    assert m.types["mcp_backend_pool_connections_in_use"] == "gauge"
    assert m.value("mcp_backend_pool_connections_in_use", provider=PROVIDER) == 0
    assert m.types["mcp_backend_breaker_state"] == "gauge"


async def test_rate_limited_and_rejected_calls_are_errors_by_type(
    server: ServerChild, simulator: SimulatorChild
) -> None:
    async with await connect(server.ws_url) as ws:
        simulator.configure(faults={"rate_429": 1.0, "retry_after": 0.01})
        limited = await chat(ws, "one")
        assert limited[-1]["status"] == "error"
        await anyio.sleep(0.05)  # past the Retry-After pause the provider honours
        simulator.configure(faults={"rate_429": 0.0, "rate_401": 1.0})
        rejected = await chat(ws, "two")
        assert rejected[-1]["status"] == "error"

    m = scrape(server)
    assert m.value("mcp_backend_llm_requests_total", **PM, outcome="success") == 0
    assert m.value("mcp_backend_llm_requests_total", **PM, outcome="error") == 2
    assert sorted((s.labels["type"], s.value) for s in m.samples
                  if s.name == "mcp_backend_llm_errors_total") == [
        ("LLMAuthError", 1), ("LLMRateLimitError", 1)]
    assert m.value("mcp_backend_llm_rate_limited_total", **PM) == 1


async def test_a_cancelled_call_is_counted_apart_from_errors(
    server: ServerChild, simulator: SimulatorChild
) -> None:
    simulator.configure(faults={"chunk_delay": 0.05})
    async with await connect(server.ws_url) as ws:
        frame = chat_frame(" ".join(f"word{i}" for i in range(200)))
        await send(ws, frame)
        assert (await receive(ws))["status"] == "processing"
        assert (await receive(ws))["status"] == "chunk"
        await send(ws, {"action": "cancel", "request_id": frame["request_id"]})
        envelopes = await until_end(ws, frame["request_id"])
    assert envelopes[-1]["chunk"]["error_type"] == "cancelled"

    with anyio.fail_after(5):
        # The provider reports the abandoned call once its upstream stream is closed.
        while scrape(server).value("mcp_backend_llm_requests_total", **PM,
                                   outcome="cancelled") != 1:
            await anyio.sleep(0.05)
    m = scrape(server)
    assert m.value("mcp_backend_llm_requests_total", **PM, outcome="error") == 0
    assert m.value("mcp_backend_llm_requests_total", **PM, outcome="success") == 0
    assert m.value("mcp_backend_llm_errors_total", **PM, type="cancelled") == 1


async def test_health_shows_ledger_and_history_and_complete_flags_a_costly_answer(
    tmp_path: Path, simulator: SimulatorChild
) -> None:
    path = write_config(tmp_path, simulator_url=simulator.url, model=MODEL, mcp_servers={},
                        name="warned.yaml")
    config = yaml.safe_load(path.read_text())
    config["llm"]["providers"][PROVIDER]["cost_warning_threshold"] = 1e-9  # USD per request
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    child = ServerChild(path)
    try:
        health = child.health()
        assert health["ledger"]["state"] == "ok"
        assert health["history"] == {"state": "ok"}
        assert health["status"] == "ok"
        async with await connect(child.ws_url) as ws:
            envelopes = await chat(ws, "hello there")
        complete = envelopes[-1]
        assert complete["status"] == "complete"
        assert complete["chunk"]["cost"] > 1e-9
        assert complete["chunk"]["cost_warning"] is True
        m = scrape(child)
        assert m.value("mcp_backend_llm_request_cost_warnings_total", **PM) == 1
    finally:
        assert child.stop() == 0, child.output


async def test_complete_has_no_cost_warning_below_the_threshold(server: ServerChild) -> None:
    async with await connect(server.ws_url) as ws:
        envelopes = await chat(ws, "hello there")
    assert envelopes[-1]["status"] == "complete"
    assert "cost_warning" not in envelopes[-1]["chunk"]
