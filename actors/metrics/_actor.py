"""The MetricsActor: the one writer of the :class:`MetricsStore`.

Senders ``try_tell`` it events (``actors.metrics._store``); handling one is a few dictionary
updates, so it never waits on anything and never slows a request. When its mailbox is full the
kernel drops the event and counts the drop on the actor's cell.

Decisions, and why:

- **The store is the cell's durable state**, so counters survive a restart of the actor, and
  ``system.durable("metrics")`` is the store itself: an HTTP ``/metrics`` handler may render it
  without an ask (reading it from the event loop's thread is safe; the actor is its only writer).
- **Drops reach the store through the sampler.** The store's ``dropped_events`` is brought up to
  the cell's drop count (from ``status_source``) on every sample and before answering
  ``GetSummary`` / ``GetPrometheus``; a direct read of the store may lag by one sample interval.
  Without a ``status_source`` drops are only visible in ``system.status()``.
- **The sampler** runs every ``sample_interval`` seconds of the cell's clock: a ``mailbox_depth``
  gauge per actor (those ``sampled`` accepts), and ``ActorRestarted`` for restarts not yet
  recorded. The store itself
  remembers what it recorded, so a restarted MetricsActor neither loses nor repeats counts.
- **Nothing a sender does crashes it**: a malformed event is logged and dropped (``ValueError``
  from the store), so ``crash_on`` is empty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runtime import Actor, ActorStatus, ChildSpec, Outcome

from ._store import (
    MAILBOX_DEPTH,
    ActorRestarted,
    GaugeSet,
    MetricsEvent,
    MetricsStore,
)

__all__ = ["GetPrometheus", "GetSummary", "MetricsActor", "metrics_child_spec"]

logger = logging.getLogger(__name__)

StatusSource = Callable[[], Mapping[str, ActorStatus]]
"""Where the sampler reads actor states from (normally ``system.status``)."""


@dataclass(frozen=True)
class GetSummary:
    """Ask for ``MetricsStore.summary()`` (a JSON-ready dict)."""


@dataclass(frozen=True)
class GetPrometheus:
    """Ask for the Prometheus text exposition (``bytes``)."""


class MetricsActor(Actor):
    """Applies metrics events to a :class:`MetricsStore` and samples actor gauges.

    Messages: any ``MetricsEvent`` (answers ``None``), :class:`GetSummary`,
    :class:`GetPrometheus`. ``store`` is used when the cell has no durable store (a hand-made
    spec); :func:`metrics_child_spec` gives it one.
    """

    def __init__(
        self,
        store: MetricsStore | None = None,
        *,
        status_source: StatusSource | None = None,
        sample_interval: float = 5.0,
        sampled: Callable[[str], bool] | None = None,
    ) -> None:
        if sample_interval <= 0:
            raise ValueError("sample_interval must be positive")
        self._store = store if store is not None else MetricsStore()
        self._status_source = status_source
        self._sample_interval = sample_interval
        self._sampled = sampled

    @property
    def store(self) -> MetricsStore:
        return self._store

    async def on_start(self) -> None:
        durable = self.context.durable
        if isinstance(durable, MetricsStore):
            self._store = durable
        if self._status_source is not None:
            self._arm_sampler()

    async def receive(self, message: Any) -> Any:
        if isinstance(message, MetricsEvent):
            try:
                self._store.apply(message)
            except ValueError as exc:
                logger.warning("metrics: %s dropped: %s", type(message).__name__, exc)
            return None
        if isinstance(message, GetSummary):
            self._sample_drops()
            return self._store.summary()
        if isinstance(message, GetPrometheus):
            self._sample_drops()
            return self._store.prometheus_text()
        raise TypeError(f"MetricsActor does not handle {type(message).__name__}")

    def _arm_sampler(self) -> None:
        self.context.pipe(self.context.clock.sleep, self._sample_interval, then=self._sample)

    def _sample(self, outcome: Outcome) -> None:
        if outcome.cancelled:
            return
        # Re-armed first: a failing status source must not stop the sampling for good.
        self._arm_sampler()
        assert self._status_source is not None
        statuses = self._status_source()
        recorded = self._store.summary()["restarts"]
        for name, status in statuses.items():
            if self._sampled is None or self._sampled(name):
                self._store.apply(GaugeSet(MAILBOX_DEPTH, {"actor": name}, status.mailbox_depth))
            missing = status.restart_count - recorded.get(name, 0)
            if missing > 0:
                self._store.apply(ActorRestarted(name, missing))
        self._record_drops(statuses)

    def _sample_drops(self) -> None:
        if self._status_source is not None:
            self._record_drops(self._status_source())

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
    status_source: StatusSource | None = None,
    sample_interval: float = 5.0,
    sampled: Callable[[str], bool] | None = None,
) -> ChildSpec:
    """The ``"metrics"`` child: a :class:`MetricsActor` whose store is durable state.

    Pass ``store`` to keep a handle on it (the durable state is that very object);
    ``status_source`` (normally ``system.status``) enables the gauge sampler and drop counting;
    ``sampled`` picks the actors that get a ``mailbox_depth`` gauge (default: all; leave out
    per-conversation actors, each would add a series that is never removed).
    """

    def durable() -> MetricsStore:
        return store if store is not None else MetricsStore()

    return ChildSpec(
        name="metrics",
        factory=lambda: MetricsActor(status_source=status_source,
                                     sample_interval=sample_interval, sampled=sampled),
        crash_on=(),
        mailbox_size=mailbox_size,
        durable=durable,
    )
