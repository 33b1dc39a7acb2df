"""MetricsActor: events in, summary and Prometheus out, drops counted, restarts survived."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from actors.metrics import (
    CostWarning,
    GetPrometheus,
    GetSummary,
    MetricsStore,
    RequestFinished,
    metrics_child_spec,
)
from runtime import (
    ActorState,
    ActorSystem,
    ChildSpec,
    Restart,
    Strategy,
    SupervisorSpec,
)
from runtime.testing import FakeClock
from tests.kernel_actors import Boom, Crash, Recorder


def finished(latency: float = 0.2, error: str | None = None) -> RequestFinished:
    return RequestFinished("p", "m", latency, None, 10, 5, 0.001, error_type=error)


def metrics_system(
    *children: ChildSpec,
    clock: FakeClock | None = None,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    **spec: Any,
) -> ActorSystem:
    metrics = metrics_child_spec(**spec)
    return ActorSystem(SupervisorSpec("root", [metrics, *children], strategy=strategy),
                       clock=clock)


async def test_events_told_to_the_actor_appear_in_summary_and_prometheus_text() -> None:
    store = MetricsStore()
    async with metrics_system(store=store) as system:
        metrics = system.ref("metrics")
        metrics.tell(finished(0.1))
        metrics.tell(finished(0.3, error="LLMTimeoutError"))
        metrics.tell(CostWarning("2026-11-25", 8.0, 10.0))
        summary = await metrics.ask(GetSummary(), timeout=5)
        text: bytes = await metrics.ask(GetPrometheus(), timeout=5)
        assert system.durable("metrics") is store

    assert (summary["total_requests"], summary["total_errors"], summary["total_tokens"]) == (
        2, 1, 30)
    assert summary["by_model"]["p:m"]["errors_by_type"] == {"LLMTimeoutError": 1}
    assert summary["cost_warnings"]["count"] == 1
    lines = text.decode().splitlines()
    assert 'mcp_backend_llm_requests_total{model="m",outcome="success",provider="p"} 1.0' in lines
    errors = 'mcp_backend_llm_errors_total{model="m",provider="p",type="LLMTimeoutError"} 1.0'
    assert errors in lines
    assert "mcp_backend_cost_warnings_total 1.0" in lines


async def test_a_malformed_event_is_logged_and_the_actor_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="actors.metrics._actor")
    async with metrics_system() as system:
        metrics = system.ref("metrics")
        metrics.tell(finished(-1.0))
        metrics.tell(finished(0.1))
        summary = await metrics.ask(GetSummary(), timeout=5)
        assert summary["total_requests"] == 1
        assert system.status()["metrics"].restart_count == 0
    assert [r.getMessage() for r in caplog.records] == [
        "metrics: RequestFinished dropped: invalid latency_s -1.0"
    ]


async def test_events_dropped_by_a_full_mailbox_are_counted_in_the_store() -> None:
    async with metrics_system(mailbox_size=2) as system:
        metrics = system.ref("metrics")
        # Idle, the actor applies an event at once, in the sender's task: never dropped.
        assert metrics.try_tell(finished())
        assert system.status()["metrics"].mailbox_depth == 0
        # A queued message ahead of them makes it busy: events queue behind it. No await in
        # between: the actor cannot run, so the mailbox (2) fills after one event.
        assert metrics.try_tell(GetSummary())
        accepted = [metrics.try_tell(finished()) for _ in range(10)]
        assert accepted == [True] + [False] * 9
        assert system.status()["metrics"].dropped == 9
        await anyio.wait_all_tasks_blocked()
        summary = await metrics.ask(GetSummary(), timeout=5)
        assert (summary["total_requests"], summary["dropped_events"]) == (2, 9)
        # Counted once: asking again adds nothing.
        text: bytes = await metrics.ask(GetPrometheus(), timeout=5)
        assert "mcp_backend_metrics_events_dropped_total 9.0" in text.decode().splitlines()


async def test_the_sampler_records_mailbox_depths_and_restarts_once() -> None:
    clock = FakeClock()
    bomb = ChildSpec("bomb", Recorder, crash_on=(Boom,))
    async with metrics_system(bomb, clock=clock, sample_interval=5.0) as system:
        with pytest.raises(Boom):
            await system.ref("bomb").ask(Crash(), timeout=5)
        await clock.advance(1.0)  # past the restart backoff
        await clock.advance(4.0)  # the first sample
        summary = await system.ref("metrics").ask(GetSummary(), timeout=5)
        assert summary["restarts"] == {"bomb": 1}
        assert summary["gauges"]["mailbox_depth"] == {"actor=bomb": 0.0, "actor=metrics": 0.0}
        await clock.advance(5.0)
        summary = await system.ref("metrics").ask(GetSummary(), timeout=5)
        assert summary["restarts"] == {"bomb": 1}


async def test_counters_survive_a_restart_of_the_metrics_actor() -> None:
    clock = FakeClock()
    bomb = ChildSpec("bomb", Recorder, crash_on=(Boom,))
    async with metrics_system(bomb, clock=clock, strategy=Strategy.ONE_FOR_ALL,
                              sample_interval=5.0) as system:
        metrics = system.ref("metrics")
        for _ in range(3):
            metrics.tell(finished())
        assert (await metrics.ask(GetSummary(), timeout=5))["total_requests"] == 3
        with pytest.raises(Boom):
            await system.ref("bomb").ask(Crash(), timeout=5)
        # one_for_all: the metrics actor restarts too, after the backoff (on the fake clock).
        for _ in range(20):
            await clock.advance(0.5)
            status = system.status()["metrics"]
            if status.restart_count == 1 and status.state is ActorState.RUNNING:
                break
        assert system.status()["metrics"].state is ActorState.RUNNING

        metrics.tell(finished())
        await clock.advance(5.0)
        summary = await metrics.ask(GetSummary(), timeout=5)
        assert summary["total_requests"] == 4
        assert summary["restarts"] == {"bomb": 1, "metrics": 1}


async def test_the_sampler_leaves_temporary_actors_without_a_gauge() -> None:
    clock = FakeClock()
    session = ChildSpec("session:1", Recorder, restart=Restart.TEMPORARY)
    async with metrics_system(session, clock=clock, sample_interval=5.0) as system:
        await clock.advance(5.0)
        summary = await system.ref("metrics").ask(GetSummary(), timeout=5)
        assert summary["gauges"]["mailbox_depth"] == {"actor=metrics": 0.0}


async def test_the_configured_models_keep_their_label_past_the_unconfigured_cap() -> None:
    async with metrics_system(models=["late-configured"], sample_interval=None) as system:
        metrics = system.ref("metrics")
        for i in range(40):
            metrics.tell(RequestFinished("p", f"upstream-{i}", 0.1, None, 1, 1, 0.0))
        metrics.tell(RequestFinished("p", "late-configured", 0.1, None, 1, 1, 0.0))
        summary = await metrics.ask(GetSummary(), timeout=5)
    assert len(summary["by_model"]) == 34  # 32 upstream names, "other", the configured one
    assert summary["by_model"]["p:other"]["total_requests"] == 8
    assert summary["by_model"]["p:late-configured"]["total_requests"] == 1


def test_a_store_and_models_beside_it_are_refused() -> None:
    with pytest.raises(ValueError,
                       match=r"^models go to the MetricsStore given as store, not beside it$"):
        metrics_child_spec(store=MetricsStore(), models=["m"])
