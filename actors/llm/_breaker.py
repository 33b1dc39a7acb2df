"""A circuit breaker with resilience4j's semantics (count-based sliding window).

* ``CLOSED``: calls are permitted; the outcomes of the last ``sliding_window_size`` calls are kept.
  Once at least ``minimum_number_of_calls`` are recorded, a failure rate at or above
  ``failure_rate_threshold`` percent opens the breaker.
* ``OPEN``: calls are rejected. After ``wait_duration_in_open_state`` seconds the breaker becomes
  ``HALF_OPEN``, lazily, the next time someone asks (:meth:`CircuitBreaker.try_acquire` or
  :attr:`CircuitBreaker.state`): no timer task is needed.
* ``HALF_OPEN``: only ``permitted_calls_in_half_open_state`` calls are let through. When all of
  them have reported, a failure rate at or above the threshold opens the breaker again, below it
  closes the breaker.

Exceptions in ``ignored_exceptions`` (a bad request says nothing about the provider's health) are
not recorded and return their permit, like a cancelled call (:meth:`CircuitBreaker.release`).

A call reports to the state it was admitted in (its :attr:`CircuitBreaker.epoch`): one admitted
before a transition (a slow call let through while closed, still running when the breaker is half
open) is not a trial call, so its outcome changes nothing and its end returns no trial permit.
Otherwise a straggler's success could close the breaker before any trial reported, and its
cancellation could let one more trial through than ``permitted_calls_in_half_open_state``.

The breaker belongs to one actor and is used from that actor's loop only: it has no locks.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from runtime._clock import Clock

from ._errors import (
    ContentRefused,
    LLMBadRequestError,
    LLMCostLimitError,
    LLMModelNotFoundError,
    LLMTokenLimitError,
)

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker", "TransitionListener"]


class BreakerState(enum.Enum):
    """The three states of a circuit breaker."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


TransitionListener = Callable[[BreakerState, BreakerState], None]

DEFAULT_IGNORED: tuple[type[BaseException], ...] = (
    LLMBadRequestError,
    LLMModelNotFoundError,
    LLMTokenLimitError,
    LLMCostLimitError,
    ContentRefused,
)


class BreakerConfig(BaseModel):
    """Settings of a :class:`CircuitBreaker` (resilience4j names, times in seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    failure_rate_threshold: float = Field(default=50.0, gt=0, le=100)
    sliding_window_size: int = Field(default=20, ge=1)
    minimum_number_of_calls: int = Field(default=10, ge=1)
    wait_duration_in_open_state: float = Field(default=30.0, ge=0)
    permitted_calls_in_half_open_state: int = Field(default=3, ge=1)
    ignored_exceptions: tuple[type[BaseException], ...] = DEFAULT_IGNORED


class CircuitBreaker:
    """Decides whether a provider may be called, from the outcomes of recent calls.

    Protocol for each call: ``try_acquire()``; if it returned ``True``, note :attr:`epoch`, then
    exactly one of ``on_success(epoch)``, ``on_error(exc, epoch)`` or ``release(epoch)``
    (cancelled: nothing to record). Without ``epoch`` an outcome counts for the current state.
    Not thread-safe; meant for one actor's loop. ``on_transition`` is called synchronously on every
    state change with ``(old, new)``; it must not raise.
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Clock,
        name: str | None = None,
        on_transition: TransitionListener | None = None,
    ) -> None:
        self.config = config if config is not None else BreakerConfig()
        self.name = name
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        # Like resilience4j, a minimum larger than the window could never be reached: cap it.
        self._minimum_calls = min(
            self.config.minimum_number_of_calls, self.config.sliding_window_size
        )
        self._outcomes: deque[bool] = deque(maxlen=self.config.sliding_window_size)
        self._failures = 0
        self._opened_at = 0.0
        self._half_open_permits = 0
        self._epoch = 0

    @property
    def state(self) -> BreakerState:
        """The current state (an ``OPEN`` breaker whose wait is over becomes ``HALF_OPEN`` here)."""
        if (
            self._state is BreakerState.OPEN
            and self._clock.now() - self._opened_at >= self.config.wait_duration_in_open_state
        ):
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    @property
    def epoch(self) -> int:
        """The current state's number (it changes on every transition): read it right after a
        successful :meth:`try_acquire` and report the call's end with it."""
        return self._epoch

    @property
    def failure_rate(self) -> float:
        """Percentage of failures among the recorded calls of the current window (0 if none)."""
        if not self._outcomes:
            return 0.0
        return 100.0 * self._failures / len(self._outcomes)

    @property
    def recorded_calls(self) -> int:
        """Number of outcomes in the current window."""
        return len(self._outcomes)

    def try_acquire(self) -> bool:
        """Ask permission for one call; ``False`` means do not call (breaker open or no permit)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._half_open_permits > 0:
            self._half_open_permits -= 1
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until an ``OPEN`` breaker lets a trial call through (0.0 in other states)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        elapsed = self._clock.now() - self._opened_at
        return max(0.0, self.config.wait_duration_in_open_state - elapsed)

    def on_success(self, epoch: int | None = None) -> None:
        """Record a successful call admitted in ``epoch`` (see the class docstring)."""
        self._record(failed=False, epoch=epoch)

    def on_error(self, exc: BaseException, epoch: int | None = None) -> None:
        """Record a failed call, unless ``exc`` is ignored (then it is like :meth:`release`).

        Cancellation and other non-``Exception`` errors are treated as :meth:`release` too: they
        say nothing about the provider.
        """
        if isinstance(exc, self.config.ignored_exceptions) or not isinstance(exc, Exception):
            self.release(epoch)
        else:
            self._record(failed=True, epoch=epoch)

    def release(self, epoch: int | None = None) -> None:
        """Return the permit of a call that ends without an outcome (cancelled or ignored)."""
        if self._state is BreakerState.HALF_OPEN and epoch in (None, self._epoch):
            self._half_open_permits = min(
                self._half_open_permits + 1, self.config.permitted_calls_in_half_open_state
            )

    def _record(self, *, failed: bool, epoch: int | None) -> None:
        state = self.state
        if state is BreakerState.OPEN or epoch not in (None, self._epoch):
            # A call admitted before the last transition: its outcome changes nothing now.
            return
        if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
            self._failures -= 1
        self._outcomes.append(failed)
        self._failures += failed
        if state is BreakerState.CLOSED:
            if len(self._outcomes) >= self._minimum_calls and self._over_threshold():
                self._transition(BreakerState.OPEN)
        elif len(self._outcomes) >= self.config.permitted_calls_in_half_open_state:
            self._transition(BreakerState.OPEN if self._over_threshold() else BreakerState.CLOSED)

    def _over_threshold(self) -> bool:
        return self.failure_rate >= self.config.failure_rate_threshold

    def _transition(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        self._epoch += 1
        if new is BreakerState.OPEN:
            # The window that opened the breaker stays visible (repr, metrics) until half-open.
            self._opened_at = self._clock.now()
        else:
            size = (
                self.config.permitted_calls_in_half_open_state
                if new is BreakerState.HALF_OPEN
                else self.config.sliding_window_size
            )
            self._outcomes = deque(maxlen=size)
            self._failures = 0
            self._half_open_permits = self.config.permitted_calls_in_half_open_state
        if self._on_transition is not None:
            self._on_transition(old, new)

    def __repr__(self) -> str:
        # The stored state: a repr must not trigger the lazy OPEN -> HALF_OPEN transition.
        label = f" {self.name!r}" if self.name else ""
        return (
            f"<CircuitBreaker{label} state={self._state.name} "
            f"failure_rate={self.failure_rate:.1f}% calls={len(self._outcomes)}>"
        )
