"""What one worker shares with the others through Redis: its providers' windows and its ledger.

``open_runtime(config, shared=SharedState(link, instance_id))`` builds every provider's limiter
on the shared windows (:mod:`._shared_limits`) and the ledger on the shared day totals
(:mod:`._shared_ledger`). ``instance_id`` names this worker's journal (its ledger file) for as
long as the file lives: Redis adds a journal's day to the shared total once per ``instance_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from actors.cluster import RedisLink
from runtime import ActorRef

from ._catalog import ModelCatalog
from ._config import CostConfig
from ._provider import ProviderState
from ._provider_config import ProviderConfig
from ._shared_ledger import SharedLedgerActor
from ._shared_limits import shared_limiter_factory

__all__ = ["SharedState"]


@dataclass(frozen=True)
class SharedState:
    """The Redis link and this worker's stable ``instance_id`` (no ``|`` in it)."""

    link: RedisLink
    instance_id: str

    def provider_state(self, name: str, config: ProviderConfig) -> Callable[[], ProviderState]:
        """The durable state factory of provider ``name``: its limiter on the shared windows."""
        make = shared_limiter_factory(self.link, name, config.rate_limits,
                                      admission_timeout=min(config.timeout, 30.0))
        return lambda: ProviderState(make_limiter=make)

    def ledger(self, config: CostConfig, catalog: ModelCatalog, *,
               providers: Mapping[str, ProviderConfig],
               metrics: ActorRef | None) -> SharedLedgerActor:
        """A ledger actor whose day totals are shared."""
        return SharedLedgerActor(config, catalog, link=self.link, instance_id=self.instance_id,
                                 providers=providers, metrics=metrics)
