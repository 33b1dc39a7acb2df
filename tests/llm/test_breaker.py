"""Tests for actors.breaker, in resilience4j's style: a fake clock, the state after every step."""

from __future__ import annotations

import anyio
import pydantic
import pytest

from actors.llm import LLMBadRequestError, LLMServerError, LLMTokenLimitError
from actors.llm._breaker import BreakerConfig, BreakerState, CircuitBreaker
from runtime.testing import FakeClock

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

SMALL = BreakerConfig(
    failure_rate_threshold=50,
    sliding_window_size=4,
    minimum_number_of_calls=4,
    wait_duration_in_open_state=10,
    permitted_calls_in_half_open_state=2,
)


def make(
    config: BreakerConfig = SMALL,
) -> tuple[CircuitBreaker, FakeClock, list[tuple[BreakerState, BreakerState]]]:
    clock = FakeClock()
    transitions: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        config, clock=clock, on_transition=lambda old, new: transitions.append((old, new))
    )
    return breaker, clock, transitions


def succeed(breaker: CircuitBreaker) -> None:
    assert breaker.try_acquire()
    breaker.on_success()


def fail(breaker: CircuitBreaker, exc: BaseException | None = None) -> None:
    assert breaker.try_acquire()
    breaker.on_error(exc if exc is not None else LLMServerError("boom"))


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(SMALL.sliding_window_size):
        fail(breaker)
    assert breaker.state is OPEN


def test_defaults_follow_resilience4j_and_the_design() -> None:
    config = BreakerConfig()
    assert config.failure_rate_threshold == 50.0
    assert config.sliding_window_size == 20
    assert config.minimum_number_of_calls == 10
    assert config.wait_duration_in_open_state == 30.0
    assert config.permitted_calls_in_half_open_state == 3
    assert LLMBadRequestError in config.ignored_exceptions


def test_config_is_frozen_and_validated() -> None:
    with pytest.raises(pydantic.ValidationError):
        SMALL.sliding_window_size = 3  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        BreakerConfig(failure_rate_threshold=0)
    with pytest.raises(pydantic.ValidationError):
        BreakerConfig(failure_rate_threshold=101)


def test_starts_closed_and_permits_calls() -> None:
    breaker, _, transitions = make()
    assert breaker.state is CLOSED
    assert breaker.try_acquire()
    assert repr(breaker) == "<CircuitBreaker state=CLOSED failure_rate=0.0% calls=0>"
    assert transitions == []


def test_failures_below_minimum_number_of_calls_do_not_open() -> None:
    breaker, _, _ = make()
    fail(breaker)
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.state is CLOSED
    assert repr(breaker) == "<CircuitBreaker state=CLOSED failure_rate=100.0% calls=3>"


def test_opens_when_failure_rate_reaches_threshold_at_minimum_calls() -> None:
    breaker, _, transitions = make()
    succeed(breaker)
    fail(breaker)
    succeed(breaker)
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.state is OPEN
    assert transitions == [(CLOSED, OPEN)]
    assert repr(breaker) == "<CircuitBreaker state=OPEN failure_rate=50.0% calls=4>"


def test_stays_closed_below_threshold() -> None:
    breaker, _, _ = make()
    for _ in range(3):
        succeed(breaker)
    fail(breaker)
    assert breaker.state is CLOSED
    assert breaker.failure_rate == 25.0


def test_window_slides_over_the_last_outcomes() -> None:
    breaker, _, _ = make()
    fail(breaker)
    succeed(breaker)
    succeed(breaker)
    succeed(breaker)
    assert breaker.state is CLOSED
    assert breaker.failure_rate == 25.0
    succeed(breaker)  # pushes the failure out of the window of 4
    assert breaker.failure_rate == 0.0
    assert breaker.recorded_calls == 4
    fail(breaker)
    assert breaker.state is CLOSED
    assert breaker.failure_rate == 25.0
    fail(breaker)
    assert breaker.state is OPEN


def test_minimum_larger_than_window_is_capped_at_the_window() -> None:
    breaker, _, _ = make(SMALL.model_copy(update={"minimum_number_of_calls": 100}))
    trip(breaker)


def test_open_breaker_rejects_without_calling_upstream() -> None:
    breaker, _, _ = make()
    trip(breaker)
    assert breaker.try_acquire() is False
    assert breaker.retry_after() == 10.0


async def test_open_becomes_half_open_lazily_after_the_wait() -> None:
    breaker, clock, transitions = make()
    trip(breaker)
    await clock.advance(9.5)
    assert breaker.retry_after() == 0.5
    assert breaker.state is OPEN
    await clock.advance(0.5)
    assert transitions == [(CLOSED, OPEN)]  # nobody asked yet
    assert repr(breaker) == "<CircuitBreaker state=OPEN failure_rate=100.0% calls=4>"
    assert breaker.state is HALF_OPEN
    assert transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]
    assert breaker.retry_after() == 0.0
    assert repr(breaker) == "<CircuitBreaker state=HALF_OPEN failure_rate=0.0% calls=0>"


async def test_half_open_permits_a_limited_number_of_calls() -> None:
    breaker, clock, _ = make()
    trip(breaker)
    await clock.advance(10)
    assert breaker.try_acquire() is True
    assert breaker.state is HALF_OPEN
    assert breaker.try_acquire() is True
    assert breaker.try_acquire() is False
    assert breaker.state is HALF_OPEN


async def test_half_open_closes_when_the_trial_calls_succeed() -> None:
    breaker, clock, transitions = make()
    trip(breaker)
    await clock.advance(10)
    succeed(breaker)
    assert breaker.state is HALF_OPEN
    succeed(breaker)
    assert breaker.state is CLOSED
    assert transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert repr(breaker) == "<CircuitBreaker state=CLOSED failure_rate=0.0% calls=0>"
    assert breaker.try_acquire() is True


async def test_half_open_reopens_when_trial_failure_rate_reaches_threshold() -> None:
    breaker, clock, transitions = make()
    trip(breaker)
    await clock.advance(10)
    succeed(breaker)
    assert breaker.state is HALF_OPEN
    fail(breaker)
    assert breaker.state is OPEN
    assert transitions[-1] == (HALF_OPEN, OPEN)
    assert breaker.retry_after() == 10.0
    assert repr(breaker) == "<CircuitBreaker state=OPEN failure_rate=50.0% calls=2>"


async def test_half_open_closes_when_trial_failure_rate_is_below_threshold() -> None:
    config = SMALL.model_copy(update={"permitted_calls_in_half_open_state": 3})
    breaker, clock, _ = make(config)
    trip(breaker)
    await clock.advance(10)
    succeed(breaker)
    fail(breaker)
    assert breaker.state is HALF_OPEN
    succeed(breaker)
    assert breaker.state is CLOSED


async def test_released_half_open_permit_can_be_used_again() -> None:
    breaker, clock, _ = make()
    trip(breaker)
    await clock.advance(10)
    assert breaker.try_acquire()
    assert breaker.try_acquire()
    assert not breaker.try_acquire()
    breaker.release()
    assert breaker.state is HALF_OPEN
    assert breaker.try_acquire()


async def test_cancelled_call_is_not_recorded() -> None:
    breaker, _, _ = make()
    assert breaker.try_acquire()
    breaker.on_error(anyio.get_cancelled_exc_class()())
    assert breaker.recorded_calls == 0


def test_ignored_exceptions_are_not_recorded() -> None:
    breaker, _, _ = make()
    for _ in range(10):
        fail(breaker, LLMBadRequestError("bad"))
        fail(breaker, LLMTokenLimitError("too long"))
    assert breaker.state is CLOSED
    assert breaker.recorded_calls == 0


async def test_ignored_exception_in_half_open_returns_its_permit() -> None:
    breaker, clock, _ = make()
    trip(breaker)
    await clock.advance(10)
    fail(breaker, LLMBadRequestError("bad"))
    fail(breaker, LLMBadRequestError("bad"))
    fail(breaker, LLMBadRequestError("bad"))
    assert breaker.state is HALF_OPEN
    succeed(breaker)
    succeed(breaker)
    assert breaker.state is CLOSED


def test_outcome_reported_after_opening_is_dropped() -> None:
    breaker, _, _ = make()
    assert breaker.try_acquire()  # a slow call, admitted while closed
    trip(breaker)
    breaker.on_success()
    assert breaker.state is OPEN
    assert repr(breaker) == "<CircuitBreaker state=OPEN failure_rate=100.0% calls=4>"


def test_release_while_closed_changes_nothing() -> None:
    breaker, _, _ = make()
    assert breaker.try_acquire()
    breaker.release()
    assert breaker.state is CLOSED
    assert breaker.recorded_calls == 0


def test_repr_names_the_breaker() -> None:
    breaker = CircuitBreaker(clock=FakeClock(), name="openai")
    assert repr(breaker) == "<CircuitBreaker 'openai' state=CLOSED failure_rate=0.0% calls=0>"


async def test_full_cycle_with_defaults() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    for _ in range(9):
        fail(breaker)
        assert breaker.state is CLOSED
    fail(breaker)
    assert repr(breaker) == "<CircuitBreaker state=OPEN failure_rate=100.0% calls=10>"
    await clock.advance(29.999)
    assert breaker.try_acquire() is False
    await clock.advance(0.001)
    for _ in range(3):
        succeed(breaker)
    assert breaker.state is CLOSED
