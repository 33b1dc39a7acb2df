"""The MetricsActor: the one writer of the :class:`MetricsStore`.

Senders ``try_tell`` it events (``actors.metrics._events``); handling one is a few dictionary
updates, so it never waits on anything and never slows a request. When its mailbox is full the
kernel drops the event and counts the drop on the actor's cell.

Decisions, and why:

- **The store is the cell's durable state**, so counters survive a restart of the actor, and
  ``system.durable("metrics")`` is the store itself: an HTTP ``/metrics`` handler may render it
  without an ask (reading it from the event loop's thread is safe; the actor is its only writer).
- **Drops reach the store through the sampler.** The store's ``dropped_events`` is brought up to
  the cell's drop count (read from the actor's context) on every sample and before answering
  ``GetSummary`` / ``GetPrometheus``; a direct read of the store may lag by one sample interval.
- **The sampler** is a timer of ``sample_interval`` seconds on the system's clock: a
  ``mailbox_depth`` gauge per actor except temporary ones (one per conversation: each would add
  a series that is never removed), and ``ActorRestarted`` for restarts not yet recorded. The
  store itself remembers what it recorded, so a restarted MetricsActor neither loses nor repeats
  counts.
- **Nothing a sender does crashes it**: a malformed event is logged and dropped (``ValueError``
  from the store), so ``crash_on`` is empty.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, assert_never

from runtime import Actor, ActorStatus, Ask, ChildSpec, Restart

from ._events import (
    MAILBOX_DEPTH,
    ActorRestarted,
    BreakerTransition,
    CostWarning,
    FallbackTaken,
    GaugeSet,
    HedgeSent,
    MetricsEvent,
    RequestCostWarning,
    RequestFinished,
)
from ._store import MetricsStore

__all__ = ["GetPrometheus", "GetSummary", "MetricsActor", "metrics_child_spec"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GetSummary(Ask[dict[str, Any]]):
    """Ask for ``MetricsStore.summary()`` (a JSON-ready dict)."""


@dataclass(frozen=True)
class GetPrometheus(Ask[bytes]):
    """Ask for the Prometheus text exposition (``bytes``)."""


@dataclass(frozen=True)
class _Sample:
    """The sampler's timer."""


MetricsMessage = MetricsEvent | GetSummary | GetPrometheus | _Sample

_EVENTS: tuple[type, ...] = (RequestFinished, FallbackTaken, HedgeSent, BreakerTransition,
                             ActorRestarted, GaugeSet, CostWarning, RequestCostWarning)


class MetricsActor(Actor[MetricsMessage]):
    """Applies metrics events to a :class:`MetricsStore` and samples actor gauges.

    Messages: any ``MetricsEvent`` (answers ``None``), :class:`GetSummary`,
    :class:`GetPrometheus`. ``store`` is used when the cell has no durable store (a hand-made
    spec); :func:`metrics_child_spec` gives it one. ``sample_interval=None`` turns the sampler
    off.
    """

    def __init__(
        self, store: MetricsStore | None = None, *, sample_interval: float | None = 5.0
    ) -> None:
        if sample_interval is not None and sample_interval <= 0:
            raise ValueError("sample_interval must be positive")
        self._store = store if store is not None else MetricsStore()
        self._sample_interval = sample_interval

    @property
    def store(self) -> MetricsStore:
        return self._store

    async def on_start(self) -> None:
        durable = self.context.durable
        if isinstance(durable, MetricsStore):
            self._store = durable
        if self._sample_interval is not None:
            self.context.start_timer(self._sample_interval, _Sample())

    def immediate_messages(self) -> tuple[type, ...]:
        # Events are applied without awaiting: an idle metrics actor applies one in the sender's
        # task (no task switch per event).
        return _EVENTS

    async def receive(self, message: MetricsMessage) -> Any:
        return self.handle_now(message)

    def handle_now(self, message: MetricsMessage) -> Any:
        match message:
            case GetSummary():
                self._sample_drops()
                return self._store.summary()
            case GetPrometheus():
                self._sample_drops()
                return self._store.prometheus_text()
            case _Sample():
                self._sample()
                return None
            case (RequestFinished() | FallbackTaken() | HedgeSent() | BreakerTransition()
                  | ActorRestarted() | GaugeSet() | CostWarning() | RequestCostWarning()):
                try:
                    self._store.apply(message)
                except ValueError as exc:
                    logger.warning("metrics: %s dropped: %s", type(message).__name__, exc)
                return None
            case _:
                assert_never(message)

    def _sample(self) -> None:
        statuses = self.context.status()
        recorded = self._store.summary()["restarts"]
        for name, status in statuses.items():
            if status.restart is not Restart.TEMPORARY:
                self._store.apply(GaugeSet(MAILBOX_DEPTH, {"actor": name}, status.mailbox_depth))
            missing = status.restart_count - recorded.get(name, 0)
            if missing > 0:
                self._store.apply(ActorRestarted(name, missing))
        self._record_drops(statuses)

    def _sample_drops(self) -> None:
        self._record_drops(self.context.status())

    def _record_drops(self, statuses: Mapping[str, ActorStatus]) -> None:
        own = statuses.get(self.context.name)
        if own is None:
            return
        missing = own.dropped - self._store.summary()["dropped_events"]
        if missing > 0:
            self._store.record_dropped(missing)

    def __repr__(self) -> str:
        return f"<MetricsActor {self._store!r}>"


def metrics_child_spec(
    mailbox_size: int = 10_000,
    *,
    store: MetricsStore | None = None,
    models: Iterable[str] = (),
    sample_interval: float | None = 5.0,
) -> ChildSpec:
    """The ``"metrics"`` child: a :class:`MetricsActor` whose store is durable state.

    Pass ``store`` to keep a handle on it (the durable state is that very object), or ``models``:
    the configured model names, which keep their ``model`` label however many other names the
    upstreams answer with (see :class:`MetricsStore`). ``sample_interval=None`` turns the gauge
    sampler off.
    """
    if store is not None and models:
        raise ValueError("models go to the MetricsStore given as store, not beside it")
    configured = tuple(models)

    def durable() -> MetricsStore:
        return store if store is not None else MetricsStore(configured)

    return ChildSpec(
        name="metrics",
        factory=lambda: MetricsActor(sample_interval=sample_interval),
        crash_on=(),
        mailbox_size=mailbox_size,
        durable=durable,
    )
