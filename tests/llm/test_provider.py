"""ProviderActor against the simulator running as a real process on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from actors.llm import (
    ChatRequest,
    LLMAuthError,
    LLMClientError,
    LLMConnectionError,
    LLMModelNotFoundError,
    LLMQuotaExceededError,
    LLMRateLimitError,
    LLMResponse,
    LLMServerError,
    LLMStreamingError,
    LLMTimeoutError,
    LLMTokenLimitError,
    ProviderCall,
    ProviderConfig,
    ProviderUnavailable,
    ReasoningDelta,
    StreamEnd,
    TextDelta,
)
from actors.llm._http_pool import DEFAULT_TRANSPORT, Transport
from actors.llm._provider import ProviderActor, ProviderState, provider_child_spec
from actors.metrics import BreakerTransition, RequestFinished
from runtime import (
    Actor,
    ActorRef,
    ActorState,
    ActorSystem,
    Backoff,
    ChildSpec,
    DeadlineExceeded,
    SupervisorSpec,
)
from runtime.testing import FakeClock
from simulator.process import SimulatorProcess

MODEL = "gpt-4o-mini"
HELLO = [{"role": "user", "content": "hello there"}]
ADD_TOOL = {
    "type": "function",
    "function": {"name": "add", "parameters": {"type": "object", "properties": {}}},
}


class Collector(Actor[Any]):
    """Stands in for the MetricsActor: keeps every event it is told."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    async def receive(self, message: Any) -> Any:
        self.events.append(message)


def provider_config(sim: SimulatorProcess, **overrides: Any) -> ProviderConfig:
    values: dict[str, Any] = {
        "kind": "openai-compatible",
        "base_url": sim.base_url,
        "model": MODEL,
        "requires_api_key": False,
        "max_tokens": 100,
    }
    values.update(overrides)
    return ProviderConfig(**values)


@asynccontextmanager
async def running(
    config: ProviderConfig,
    *,
    clock: FakeClock | None = None,
    events: list[Any] | None = None,
    transport: Transport = DEFAULT_TRANSPORT,
) -> AsyncIterator[tuple[ActorSystem, ActorRef]]:
    holder: dict[str, ActorSystem] = {}

    def metrics() -> ActorRef | None:
        return holder["system"].ref("metrics") if events is not None else None

    children: list[ChildSpec | SupervisorSpec] = []
    if events is not None:
        children.append(ChildSpec("metrics", lambda: Collector(events)))
    spec = provider_child_spec("sim", config)
    children.append(
        ChildSpec(
            spec.name,
            lambda: provider_child_spec("sim", config, metrics=metrics(),
                                        transport=transport).factory(),
            crash_on=spec.crash_on,
            durable=spec.durable,
            mailbox_size=spec.mailbox_size,
        )
    )
    root = SupervisorSpec(
        "root", children, max_restarts=10, max_seconds=10, backoff=Backoff(initial=0.05)
    )
    system = ActorSystem(root, clock=clock, seed=1)
    holder["system"] = system
    async with system:
        yield system, system.ref("sim")


def call(
    messages: list[dict[str, Any]] = HELLO,
    *,
    model: str = MODEL,
    stream: bool = False,
    prompt_tokens: int = 10,
    tools: list[dict[str, Any]] | None = None,
    **params: Any,
) -> ProviderCall:
    return ProviderCall(
        ChatRequest.of(messages, tools, params=params), model, prompt_tokens, stream=stream
    )


async def collect(ref: ActorRef, message: ProviderCall, timeout: float = 5) -> list[Any]:
    items: list[Any] = []
    async with ref.ask_stream(message, timeout=timeout) as stream:
        async for item in stream:
            items.append(item)
    return items


async def restarted(system: ActorSystem, count: int) -> None:
    """Wait (bounded) until actor ``sim`` has been restarted ``count`` times and runs again."""
    with anyio.fail_after(5):
        # Polled: the supervisor has no event to wait on from outside.
        while (status := system.status()["sim"]).restart_count < count or (
            status.state is not ActorState.RUNNING
        ):
            await anyio.sleep(0.01)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorProcess]:
    async with SimulatorProcess() as process:
        yield process


# -- replies ------------------------------------------------------------------------------------


async def test_non_streaming_reply_with_usage_and_price_table_cost(sim: SimulatorProcess) -> None:
    async with running(provider_config(sim)) as (_, ref):
        response: LLMResponse = await ref.ask(call(), timeout=5)
    assert response.content == "Echo: hello there"
    assert response.finish_reason == "stop"
    assert response.provider == "sim"
    assert response.model == MODEL
    stats = await sim.stats()
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (
        stats["prompt_tokens"],
        stats["completion_tokens"],
    )
    assert response.usage.total_tokens == stats["prompt_tokens"] + stats["completion_tokens"]
    # gpt-4o-mini: 0.15 USD in, 0.60 USD out per million tokens.
    expected = (stats["prompt_tokens"] * 0.15 + stats["completion_tokens"] * 0.60) / 1e6
    assert response.usage.total_cost == pytest.approx(expected)


async def test_streaming_reply_is_text_deltas_then_one_stream_end(sim: SimulatorProcess) -> None:
    async with running(provider_config(sim)) as (_, ref):
        items = await collect(ref, call(stream=True))
    # Deltas read from one network read go out joined (the simulator writes them at once).
    assert all(isinstance(item, TextDelta) for item in items[:-1])
    assert "".join(item.text for item in items[:-1]) == "Echo: hello there"
    end = items[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.content == "Echo: hello there"
    assert end.response.finish_reason == "stop"
    assert end.response.time_to_first_token_ms is not None
    assert 0 < end.response.time_to_first_token_ms <= end.response.response_time_ms
    stats = await sim.stats()
    assert end.response.usage.prompt_tokens == stats["prompt_tokens"]
    assert end.response.usage.completion_tokens == stats["completion_tokens"] == 3
    assert stats["streams"]["completed"] == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_are_assembled(sim: SimulatorProcess, stream: bool) -> None:
    messages = [{"role": "user", "content": 'call add {"a": 2, "b": 3} and call add {"a": 1}'}]
    async with running(provider_config(sim)) as (_, ref):
        message = call(messages, tools=[ADD_TOOL], stream=stream)
        if stream:
            items = await collect(ref, message)
            assert len(items) == 1
            response = items[0].response
        else:
            response = await ref.ask(message, timeout=5)
    assert response.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [
        ("call_1", "add", '{"a": 2, "b": 3}'),
        ("call_2", "add", '{"a": 1}'),
    ]
    assert response.content == ""


async def test_request_params_override_config_and_reach_the_wire(sim: SimulatorProcess) -> None:
    await sim.configure(models={"sim-long": {"reply_words": 50}})
    async with running(provider_config(sim, max_tokens=40)) as (_, ref):
        configured = await ref.ask(call(model="sim-long"), timeout=5)
        overridden = await ref.ask(call(model="sim-long", max_tokens=5), timeout=5)
    assert configured.usage.completion_tokens == 40
    assert configured.finish_reason == "length"
    assert overridden.usage.completion_tokens == 5


# -- errors through the real wire ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "stream", "error", "retryable"),
    [
        ("429", False, LLMRateLimitError, True),
        ("402", False, LLMQuotaExceededError, False),
        ("500", False, LLMServerError, True),
        ("502", True, LLMServerError, True),
        ("503", False, LLMServerError, True),
        ("timeout", False, LLMTimeoutError, True),
        ("timeout", True, LLMTimeoutError, True),
        ("reset", False, LLMConnectionError, True),
        ("reset", True, LLMConnectionError, True),
        ("midstream_drop", True, LLMStreamingError, False),
        ("midstream_drop", False, LLMConnectionError, True),
        ("midstream_error", True, LLMStreamingError, False),
        ("midstream_error", False, LLMServerError, True),
    ],
)
async def test_forced_fault_becomes_its_typed_error(
    sim: SimulatorProcess, fault: str, stream: bool, error: type[LLMClientError], retryable: bool
) -> None:
    await sim.configure(faults={"hang_seconds": 5, "retry_after": 2})
    config = provider_config(sim, extra_headers={"X-Sim-Fault": fault}, timeout=0.5)
    async with running(config) as (_, ref):
        with anyio.fail_after(5), pytest.raises(error) as info:
            if stream:
                await collect(ref, call(stream=True))
            else:
                await ref.ask(call(), timeout=5)
    assert type(info.value) is error
    assert info.value.retryable is retryable
    assert info.value.provider == "sim"
    if fault == "429":
        assert info.value.retry_after == 2.0
    if fault.startswith("midstream") and stream:
        assert info.value.partial_text.startswith("Echo:")  # type: ignore[attr-defined]


async def test_openrouter_error_codes_map_the_same(sim: SimulatorProcess) -> None:
    await sim.configure(flavor="openrouter")
    config = provider_config(sim, extra_headers={"X-Sim-Fault": "402"})
    async with running(config) as (_, ref):
        with pytest.raises(LLMQuotaExceededError, match=r"no credits left"):
            await ref.ask(call(), timeout=5)


async def test_unknown_model_and_upstream_context_limit(sim: SimulatorProcess) -> None:
    async with running(provider_config(sim)) as (_, ref):
        with pytest.raises(LLMModelNotFoundError) as missing:
            await ref.ask(call(model="no-such-model"), timeout=5)
        # sim-tiny is not in our catalog: the pre-flight passes, the simulator refuses.
        with pytest.raises(LLMTokenLimitError) as too_long:
            await ref.ask(call(model="sim-tiny", max_tokens=1000), timeout=5)
    assert missing.value.status_code == 404
    assert too_long.value.status_code == 400


async def test_rate_limited_call_pauses_the_limiter(sim: SimulatorProcess) -> None:
    await sim.configure(faults={"retry_after": 7})
    config = provider_config(sim, extra_headers={"X-Sim-Fault": "429"})
    async with running(config) as (system, ref):
        with pytest.raises(LLMRateLimitError):
            await ref.ask(call(), timeout=5)
        state: ProviderState = system.durable("sim")
        assert state.limiter is not None
        assert 6.0 < state.limiter.pause_remaining() <= 7.0
        assert state.health.last_error_type == "LLMRateLimitError"


# -- pre-flight ---------------------------------------------------------------------------------


async def test_preflight_refuses_what_cannot_fit_before_any_call(sim: SimulatorProcess) -> None:
    config = provider_config(sim, context_windows={"sim-tiny": 256})
    async with running(config) as (_, ref):
        with pytest.raises(LLMTokenLimitError) as info:
            await ref.ask(call(model="sim-tiny", prompt_tokens=200), timeout=5)
        with pytest.raises(LLMTokenLimitError):
            await ref.ask(call(prompt_tokens=128_000 - 99), timeout=5)
        ok = await ref.ask(call(prompt_tokens=128_000 - 100), timeout=5)
    assert str(info.value) == (
        "prompt of 200 tokens plus max_tokens 100 exceeds the context window of sim-tiny "
        "(256 tokens) by 44 tokens (sim-tiny)"
    )
    assert ok.content == "Echo: hello there"
    assert (await sim.stats())["total_requests"] == 1


async def test_estimate_over_the_whole_token_budget_is_refused(sim: SimulatorProcess) -> None:
    config = provider_config(sim, rate_limits={"tokens_per_minute": 1000})
    async with running(config) as (_, ref):
        with anyio.fail_after(2), pytest.raises(LLMTokenLimitError, match=r"whole budget"):
            await ref.ask(call(prompt_tokens=950), timeout=5)
    assert (await sim.stats())["total_requests"] == 0


# -- rate limits counted at the simulator -------------------------------------------------------


async def test_limiter_never_sends_more_than_its_limits_in_a_window(
    sim: SimulatorProcess,
) -> None:
    # 5 requests per minute; tokens: prompt estimate 10 + max_tokens 100 = 110 per call.
    config = provider_config(sim, rate_limits={"requests_per_minute": 5})
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await ref.ask(call(), timeout=1.5)
            outcomes.append("ok")
        except (DeadlineExceeded, LLMRateLimitError):
            # Waited for a slot, or refused at once because the slot is after the deadline.
            outcomes.append("not sent")

    async with running(config) as (_, ref), anyio.create_task_group() as tg:
        for _ in range(15):
            tg.start_soon(one)
    stats = await sim.stats()
    assert sorted(outcomes) == ["not sent"] * 10 + ["ok"] * 5
    assert stats["total_requests"] == 5
    assert stats["max_requests_in_window"] == 5


async def test_token_limit_counted_at_the_simulator(sim: SimulatorProcess) -> None:
    # Each call acquires 30 (our estimate, above the simulator's 6) + max_tokens 20 = 50 tokens.
    config = provider_config(sim, rate_limits={"tokens_per_minute": 400}, max_tokens=20)
    done: list[int] = []

    async def one(i: int) -> None:
        try:
            await ref.ask(call(prompt_tokens=30), timeout=1.5)
            done.append(i)
        except (DeadlineExceeded, LLMRateLimitError):
            pass

    async with running(config) as (_, ref), anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    stats = await sim.stats()
    assert len(done) == 8
    assert stats["total_requests"] == 8
    assert stats["max_tokens_in_window"] <= 400


# -- the breaker ---------------------------------------------------------------------------------


async def test_breaker_opens_rejects_without_calling_then_recovers(sim: SimulatorProcess) -> None:
    clock = FakeClock()
    events: list[Any] = []
    config = provider_config(
        sim,
        breaker={
            "sliding_window_size": 2,
            "minimum_number_of_calls": 2,
            "wait_duration_in_open_state": 30,
            "permitted_calls_in_half_open_state": 1,
        },
    )
    await sim.configure(faults={"rate_500": 1.0})
    async with running(config, clock=clock, events=events) as (system, ref):
        state: ProviderState = system.durable("sim")
        for _ in range(2):
            with pytest.raises(LLMServerError):
                await ref.ask(call(), timeout=5)
        assert state.health.breaker == "open"
        with pytest.raises(ProviderUnavailable) as info:
            await ref.ask(call(), timeout=5)
        assert info.value.retry_after == 30.0
        assert (await sim.stats())["total_requests"] == 2
        await clock.advance(10)
        assert state.health.retry_after() == 20.0
        assert not state.health.available()
        await clock.advance(20)
        await sim.configure(faults={"rate_500": 0.0})
        response = await ref.ask(call(), timeout=5)
        assert response.content == "Echo: hello there"
        assert state.health.breaker == "closed"
        assert state.health.available()
        await anyio.sleep(0.05)  # let the collector take the last events
    transitions = [(e.old, e.new) for e in events if isinstance(e, BreakerTransition)]
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    finished = [e for e in events if isinstance(e, RequestFinished)]
    assert [e.error_type for e in finished] == ["LLMServerError", "LLMServerError", None]
    assert finished[-1].prompt_tokens > 0 and finished[-1].cost > 0


async def test_a_trial_call_cut_by_a_restart_gives_its_half_open_permit_back(
        sim: SimulatorProcess) -> None:
    clock = FakeClock()
    config = provider_config(
        sim, max_connection_failures=1,
        breaker={"sliding_window_size": 2, "minimum_number_of_calls": 2,
                 "wait_duration_in_open_state": 30, "permitted_calls_in_half_open_state": 2})
    await sim.configure(faults={"rate_500": 1.0})
    async with running(config, clock=clock) as (system, ref):
        state: ProviderState = system.durable("sim")
        for _ in range(2):
            with pytest.raises(LLMServerError):
                await ref.ask(call(), timeout=5)
        await clock.advance(30)  # half-open: two trial calls
        await sim.configure(faults={"rate_500": 0.0, "chunk_delay": 0.5})
        async with ref.ask_stream(call(model="sim-long", stream=True), timeout=10) as items:
            await items.__anext__()  # the first trial is in flight, streaming slowly
            await sim.configure(faults={"chunk_delay": 0.0, "rate_reset": 1.0})
            with pytest.raises(LLMConnectionError):  # the second: the instance restarts
                await ref.ask(call(), timeout=5)
            for _ in range(5):  # the supervisor's backoff runs on the clock
                await clock.advance(1)
            await restarted(system, 1)
        await sim.configure(faults={"rate_reset": 0.0})
        assert state.health.breaker == "half_open"
        # The cut trial's permit is back: the next trial goes through.
        assert (await ref.ask(call(), timeout=5)).content == "Echo: hello there"


async def test_a_call_refused_by_the_rate_budget_takes_no_half_open_permit(
        sim: SimulatorProcess) -> None:
    clock = FakeClock()
    config = provider_config(
        sim, rate_limits={"requests_per_minute": 2},
        breaker={"sliding_window_size": 2, "minimum_number_of_calls": 2,
                 "wait_duration_in_open_state": 30, "permitted_calls_in_half_open_state": 1})
    await sim.configure(faults={"rate_500": 1.0})
    async with running(config, clock=clock) as (system, ref):
        state: ProviderState = system.durable("sim")
        for _ in range(2):  # both slots of the minute, both failures: the breaker opens
            with pytest.raises(LLMServerError):
                await ref.ask(call(), timeout=5)
        await sim.configure(faults={"rate_500": 0.0})
        await clock.advance(30)  # half-open, one trial; the next slot is 30 s away
        with pytest.raises(LLMRateLimitError, match="after this request's deadline"):
            await ref.ask(call(), timeout=5)
        await clock.advance(31)  # the slots are free again
        # The refused call took no trial permit: the one trial goes through and closes it.
        assert (await ref.ask(call(), timeout=5)).content == "Echo: hello there"
        assert state.health.breaker == "closed"


async def test_bad_requests_do_not_count_against_the_breaker(sim: SimulatorProcess) -> None:
    config = provider_config(sim, breaker={"sliding_window_size": 2, "minimum_number_of_calls": 2})
    async with running(config) as (system, ref):
        for _ in range(3):
            with pytest.raises(LLMModelNotFoundError):
                await ref.ask(call(model="no-such-model"), timeout=5)
        state: ProviderState = system.durable("sim")
        assert state.health.breaker == "closed"
        assert state.breaker is not None and state.breaker.recorded_calls == 0


# -- restarts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["env", "file"])
async def test_rejected_key_restarts_and_a_rotated_key_resumes_service(
    sim: SimulatorProcess, source: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old, new = "sk-sim-old-0123456789", "sk-sim-new-9876543210"
    key_file = tmp_path / "key"

    def set_key(key: str) -> None:
        if source == "env":
            monkeypatch.setenv("SIM_TEST_KEY", key)
        else:
            key_file.write_text(key + "\n")

    set_key(old)
    where: dict[str, Any] = (
        {"api_key_env": "SIM_TEST_KEY"} if source == "env" else {"api_key_file": str(key_file)}
    )
    config = provider_config(sim, requires_api_key=True, **where)
    await sim.configure(api_keys=[old])
    async with running(config) as (system, ref):
        assert (await ref.ask(call(), timeout=5)).content == "Echo: hello there"
        await sim.configure(api_keys=[new])  # rotated at the provider
        with pytest.raises(LLMAuthError) as rejected:
            await ref.ask(call(), timeout=5)
        assert rejected.value.status_code == 401
        assert old not in str(rejected.value) and old not in repr(rejected.value)
        # The crashed instance is replaced; the same old key is not sent again.
        await restarted(system, 1)
        with pytest.raises(LLMAuthError, match=r"rejected this API key"):
            await ref.ask(call(), timeout=5)
        set_key(new)  # rotated in our environment: no process restart
        assert (await ref.ask(call(), timeout=5)).content == "Echo: hello there"
        assert system.status()["sim"].restart_count == 1
        state: ProviderState = system.durable("sim")
        assert not state.health.auth_rejected
    log = (await sim.stats())["log"]
    assert [(entry[1], entry[4]) for entry in log] == [(200, True), (401, False), (200, True)]


async def test_repeated_connection_failures_restart_with_a_new_pool() -> None:
    async with SimulatorProcess() as sim:
        config = provider_config(sim, max_connection_failures=3)
        async with running(config) as (system, ref):
            assert (await ref.ask(call(), timeout=5)).content == "Echo: hello there"
            sim.kill()
            for _ in range(3):
                with pytest.raises(LLMConnectionError):
                    await ref.ask(call(), timeout=5)
            await sim.restart()
            await restarted(system, 1)
            assert (await ref.ask(call(), timeout=5)).content == "Echo: hello there"
            assert system.status()["sim"].restart_count == 1


async def test_queued_calls_survive_a_restart(sim: SimulatorProcess) -> None:
    config = provider_config(sim, max_connection_failures=1)
    async with running(config) as (system, ref):
        cell = system.status()["sim"]
        assert cell.restart_count == 0
        await sim.configure(faults={"rate_reset": 1.0})
        with pytest.raises(LLMConnectionError):
            await ref.ask(call(), timeout=5)
        await sim.configure(faults={"rate_reset": 0.0})
        # Sent while the actor restarts: served by the new instance.
        response = await ref.ask(call(), timeout=5)
        assert response.content == "Echo: hello there"
        assert system.status()["sim"].restart_count == 1


# -- cancellation --------------------------------------------------------------------------------


async def test_deltas_arriving_apart_are_sent_apart(sim: SimulatorProcess) -> None:
    await sim.configure(faults={"chunk_delay": 0.02})
    async with running(provider_config(sim)) as (_, ref):
        items = await collect(ref, call(stream=True))
    assert items[:-1] == [TextDelta("Echo:"), TextDelta(" hello"), TextDelta(" there")]


async def test_leaving_a_stream_closes_the_upstream_response_at_once(
    sim: SimulatorProcess,
) -> None:
    await sim.configure(faults={"chunk_delay": 0.05})
    async with running(provider_config(sim, max_tokens=1000)) as (_, ref):
        received: list[str] = []
        async with ref.ask_stream(call(model="sim-long", stream=True), timeout=10) as items:
            async for item in items:
                assert isinstance(item, TextDelta)
                received.append(item.text)
                if len(received) == 2:
                    break
        with anyio.fail_after(2):
            while (stats := await sim.stats())["streams"]["open"]:
                await anyio.sleep(0.01)
    assert received == ["Echo:", " hello"]
    assert stats["streams"]["aborted_by_client"] == 1
    assert stats["streams"]["completed"] == 0


async def test_a_deadline_cancels_a_slow_call_and_returns_the_permit(
    sim: SimulatorProcess,
) -> None:
    await sim.configure(faults={"latency": 1.0})
    config = provider_config(
        sim, breaker={"permitted_calls_in_half_open_state": 1}
    )
    async with running(config) as (system, ref):
        with pytest.raises(DeadlineExceeded):
            await ref.ask(call(), timeout=0.2)
        state: ProviderState = system.durable("sim")
        await anyio.sleep(0.05)
        assert state.health.pool_in_use == 0
        assert state.breaker is not None and state.breaker.recorded_calls == 0


# -- OpenRouter ----------------------------------------------------------------------------------


async def test_openrouter_reported_cost_wins_over_the_price_table(sim: SimulatorProcess) -> None:
    await sim.configure(
        flavor="openrouter",
        models={"openai/gpt-4o-mini": {"price_in": 100.0, "price_out": 200.0}},
    )
    config = ProviderConfig(
        kind="openrouter",
        base_url=f"{sim.url}/api/v1",
        model="openai/gpt-4o-mini",
        requires_api_key=False,
        api_key_env="SIM_UNSET_KEY",
        site_url="https://example.test",
        app_name="tests",
        fallback_models=["gpt-4o"],
        use_native_fallbacks=True,
    )
    async with running(config) as (_, ref):
        plain = await ref.ask(call(model="openai/gpt-4o-mini"), timeout=5)
        items = await collect(ref, call(model="openai/gpt-4o-mini", stream=True))
    streamed = items[-1].response
    stats = await sim.stats()
    expected = (plain.usage.prompt_tokens * 100 + plain.usage.completion_tokens * 200) / 1e6
    assert plain.usage.total_cost == pytest.approx(expected)
    assert streamed.usage.total_cost == pytest.approx(expected)
    assert stats["cost"] == pytest.approx(2 * expected)
    assert streamed.content == "Echo: hello there"


# -- reasoning models ----------------------------------------------------------------------------


def items_by_kind(items: list[Any]) -> list[tuple[str, str]]:
    """The stream's deltas as (kind, text), consecutive pieces of one kind joined."""
    joined: list[tuple[str, str]] = []
    for item in items[:-1]:
        kind = "reasoning" if isinstance(item, ReasoningDelta) else "text"
        if joined and joined[-1][0] == kind:
            joined[-1] = (kind, joined[-1][1] + item.text)
        else:
            joined.append((kind, item.text))
    return joined


@pytest.mark.parametrize("model", ["o4-mini", "gpt-5-mini"])
async def test_reasoning_model_with_the_config_defaults_gets_only_what_it_accepts(
    sim: SimulatorProcess, model: str
) -> None:
    # The defaults send temperature 0.7 and max_tokens: the model refuses both.
    config = provider_config(sim, temperature=0.7, top_p=0.9)
    async with running(config) as (_, ref):
        response = await ref.ask(call(model=model), timeout=5)
    stats = await sim.stats()
    assert response.content == "Echo: hello there"
    assert stats["total_requests"] == 1
    # medium effort: 16 reasoning tokens, counted inside completion_tokens and priced as output.
    assert response.usage.reasoning_tokens == 16
    assert response.usage.completion_tokens == stats["completion_tokens"] == 16 + 3
    price_in, price_out = (1.1, 4.4) if model == "o4-mini" else (0.25, 2.0)
    expected = (stats["prompt_tokens"] * price_in + stats["completion_tokens"] * price_out) / 1e6
    assert response.usage.total_cost == pytest.approx(expected)


async def test_refused_parameters_are_dropped_and_remembered_for_the_model(
    sim: SimulatorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # A stale override says o4-mini takes max_tokens and sampling: the upstream says otherwise.
    config = provider_config(sim, model_params={
        "o4-mini": {"max_tokens_param": "max_tokens", "rejected_params": []}})
    async with running(config) as (system, ref):
        first = await ref.ask(call(model="o4-mini"), timeout=5)
        assert (await sim.stats())["total_requests"] == 3  # max_tokens, temperature, then ok
        items = await collect(ref, call(model="o4-mini", stream=True))
        state: ProviderState = system.durable("sim")
        assert state.learned_params == {"o4-mini": frozenset({"max_tokens", "temperature"})}
    assert first.content == items[-1].response.content == "Echo: hello there"
    assert (await sim.stats())["total_requests"] == 4
    refusals = [r.getMessage() for r in caplog.records if "refuses" in r.getMessage()]
    assert refusals == [
        "sim: model o4-mini refuses 'max_tokens'; not sending it from now on",
        "sim: model o4-mini refuses 'temperature'; not sending it from now on",
    ]


@pytest.mark.parametrize(
    ("model", "flavor", "effort", "reasoning_tokens"),
    [
        ("deepseek/deepseek-r1", "openrouter", "high", 32),
        ("deepseek/deepseek-r1", "openrouter", None, 16),
        ("deepseek-reasoner", "openai", None, 16),
    ],
)
async def test_reasoning_streams_before_the_text_and_is_counted(
    sim: SimulatorProcess, model: str, flavor: str, effort: str | None, reasoning_tokens: int
) -> None:
    await sim.configure(flavor=flavor)
    kind = "openrouter" if flavor == "openrouter" else "openai-compatible"
    base_url = f"{sim.url}/api/v1" if flavor == "openrouter" else sim.base_url
    config = provider_config(sim, kind=kind, base_url=base_url,
                             **({"api_key_env": "SIM_UNSET_KEY"} if kind == "openrouter" else {}))
    message = ProviderCall(ChatRequest.of(HELLO, reasoning_effort=effort), model, 10, stream=True)
    async with running(config) as (_, ref):
        items = await collect(ref, message)
    end = items[-1].response
    kinds = items_by_kind(items)
    assert [kind for kind, _ in kinds] == ["reasoning", "text"]
    assert kinds[0][1] == end.reasoning
    assert end.reasoning.startswith("Thinking about the request: hello there")
    assert kinds[1][1] == end.content == "Echo: hello there"
    assert end.usage.reasoning_tokens == reasoning_tokens
    assert end.time_to_first_reasoning_ms is not None and end.time_to_first_token_ms is not None
    assert end.time_to_first_reasoning_ms <= end.time_to_first_token_ms


async def test_reasoning_effort_reaches_an_openai_reasoning_model(sim: SimulatorProcess) -> None:
    async with running(provider_config(sim, reasoning_effort="high")) as (_, ref):
        low = await ref.ask(ProviderCall(ChatRequest.of(HELLO, reasoning_effort="low"),
                                         "o4-mini", 10), timeout=5)
        configured = await ref.ask(ProviderCall(ChatRequest.of(HELLO), "o4-mini", 10), timeout=5)
    assert (low.usage.reasoning_tokens, configured.usage.reasoning_tokens) == (8, 32)
    assert low.reasoning == ""  # OpenAI hides it


# -- JSON mode and logprobs ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_json_mode_answers_json_on_the_openai_flavour(
    sim: SimulatorProcess, stream: bool
) -> None:
    # No message says "json": the provider adds the instruction OpenAI requires.
    async with running(provider_config(sim, enable_json_mode=True)) as (_, ref):
        if stream:
            response = (await collect(ref, call(stream=True)))[-1].response
        else:
            response = await ref.ask(call(), timeout=5)
    assert isinstance(json.loads(response.content), dict)


@pytest.mark.parametrize("stream", [False, True])
async def test_logprobs_come_back_on_the_response(sim: SimulatorProcess, stream: bool) -> None:
    config = provider_config(sim, enable_logprobs=True, top_logprobs=2)
    async with running(config) as (_, ref):
        if stream:
            response = (await collect(ref, call(stream=True)))[-1].response
        else:
            response = await ref.ask(call(), timeout=5)
    assert response.logprobs is not None
    assert "".join(t.token for t in response.logprobs) == "Echo: hello there"
    assert all(t.logprob <= 0 for t in response.logprobs)


# -- rate-limit pauses ---------------------------------------------------------------------------


async def test_a_huge_retry_after_pauses_for_five_minutes_at_most(sim: SimulatorProcess) -> None:
    clock = FakeClock()
    await sim.configure(faults={"retry_after": 86_400})
    config = provider_config(sim, extra_headers={"X-Sim-Fault": "429"})
    async with running(config, clock=clock) as (system, ref):
        with pytest.raises(LLMRateLimitError) as info:
            await ref.ask(call(), timeout=5)
        state: ProviderState = system.durable("sim")
        assert info.value.retry_after == 300.0
        assert state.health.snapshot()["rate_limit_paused_for"] == 300.0
        await clock.advance(300)
        assert state.health.snapshot()["rate_limit_paused_for"] == 0.0


# -- both transports ----------------------------------------------------------------------------


TRANSPORTS: tuple[Transport, ...] = ("httpx2", "aiohttp")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("fault", "stream", "error", "retryable"),
    [
        ("429", False, LLMRateLimitError, True),
        ("500", False, LLMServerError, True),
        ("timeout", False, LLMTimeoutError, True),
        ("timeout", True, LLMTimeoutError, True),
        ("reset", False, LLMConnectionError, True),
        ("reset", True, LLMConnectionError, True),
        ("midstream_drop", True, LLMStreamingError, False),
        ("midstream_error", True, LLMStreamingError, False),
    ],
)
async def test_errors_map_the_same_on_both_transports(
    sim: SimulatorProcess, fault: str, stream: bool, error: type[LLMClientError], retryable: bool,
    transport: Transport,
) -> None:
    # A reset too: the SDK's vendored aiohttp transport reports it as httpx ConnectTimeout with
    # the aiohttp error as its cause, and the mapping reads it as the connection error it is.
    await sim.configure(faults={"hang_seconds": 5, "retry_after": 2})
    config = provider_config(sim, extra_headers={"X-Sim-Fault": fault}, timeout=0.5)
    async with running(config, transport=transport) as (_, ref):
        with anyio.fail_after(5), pytest.raises(error) as info:
            if stream:
                await collect(ref, call(stream=True))
            else:
                await ref.ask(call(), timeout=5)
        await sim.configure(faults={"hang_seconds": 0})
    assert type(info.value) is error
    assert info.value.retryable is retryable


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_both_transports_stream_and_answer(sim: SimulatorProcess,
                                                 transport: Transport) -> None:
    async with running(provider_config(sim), transport=transport) as (_, ref):
        plain = await ref.ask(call(), timeout=5)
        items = await collect(ref, call(stream=True))
    assert plain.content == items[-1].response.content == "Echo: hello there"


async def test_the_config_chooses_the_transport_and_aiohttp_is_the_default(
    sim: SimulatorProcess,
) -> None:
    assert DEFAULT_TRANSPORT == "aiohttp"
    assert provider_config(sim).transport is None
    where = f"openai-compatible {sim.base_url}"
    assert repr(ProviderActor("sim", provider_config(sim))) == (
        f"<ProviderActor 'sim' [{where} over aiohttp | 0 in flight]>")
    assert repr(ProviderActor("sim", provider_config(sim, transport="httpx2"))) == (
        f"<ProviderActor 'sim' [{where} over httpx2 | 0 in flight]>")
    with pytest.raises(ValidationError, match=r"transport"):
        provider_config(sim, transport="curl")
