"""The specification's monitoring API (``LLMMetrics``) and its ``cost_info``, over our actors.

:class:`LLMMetrics` writes nothing itself: ``record_request`` tells the MetricsActor (the one
writer of the metrics, so a request never waits on it), and ``get_summary`` reads the actor's
store, the same one ``/metrics`` renders. Calls made through a client or the runtime are recorded
by their provider actor already; ``record_request`` is for requests made elsewhere.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, TypedDict

from actors.metrics import MetricsStore, RequestFinished
from runtime import ActorRef, ActorSystem

from ._catalog import ModelCatalog
from ._messages import LLMResponse

__all__ = ["CostInfo", "LLMMetrics", "cost_info"]

logger = logging.getLogger("actors.llm.metrics")


class LLMMetrics:
    """Usage metrics per ``provider:model``, kept by the MetricsActor.

    Made with :meth:`of` from a running system that has a ``metrics`` actor (a client's or the
    runtime's); a client offers its own as ``client.metrics``. ``LLMMetrics()`` alone, as the
    specification writes it, keeps a store of its own (the same :class:`MetricsStore` the actor
    owns) and records into it directly: it is then its only writer.
    """

    def __init__(self, actor: ActorRef | None = None, store: MetricsStore | None = None) -> None:
        if actor is not None and store is None:
            raise ValueError("an actor's LLMMetrics needs the store that actor owns")
        self._actor = actor
        self._store = store if store is not None else MetricsStore()

    @classmethod
    def of(cls, system: ActorSystem, name: str = "metrics") -> LLMMetrics:
        """The metrics kept by ``system``'s actor ``name``. Raises ``KeyError`` if it has none."""
        store = system.durable(name)
        if not isinstance(store, MetricsStore):
            raise KeyError(f"actor {name!r} keeps no MetricsStore")
        return cls(system.ref(name), store)

    def __repr__(self) -> str:
        return f"<LLMMetrics {self._store!r}>"

    def record_request(
        self,
        provider: str,
        model: str,
        tokens: int,
        cost: float | None,
        response_time_ms: float,
        error: str | None = None,
    ) -> None:
        """Record one request: ``tokens`` in all, ``cost`` in USD (``None``: unknown), ``error``
        the error's type when it failed.

        Never blocks: the event is told to the MetricsActor, and dropped (counted as
        ``dropped_events``) if its mailbox is full. ``tokens`` are counted as prompt tokens,
        the specification's API not telling them apart. Raises ``ValueError`` for a negative or
        non-finite ``response_time_ms``.
        """
        if not response_time_ms >= 0 or response_time_ms == float("inf"):
            raise ValueError(f"invalid response_time_ms {response_time_ms!r}")
        event = RequestFinished(
            provider=provider, model=model, latency_s=response_time_ms / 1000, ttft_s=None,
            prompt_tokens=tokens, completion_tokens=0, cost=cost or 0.0, error_type=error,
        )
        if self._actor is None:
            self._store.apply(event)
        else:
            self._actor.try_tell(event)
        logger.info(
            "LLM Request - %s:%s | Tokens: %d | Cost: %s | Time: %.0fms", provider, model, tokens,
            f"${cost:.4f}" if cost is not None else "Unknown", response_time_ms,
        )

    def get_summary(self) -> dict[str, Any]:
        """The specification's summary: ``total_requests``, ``total_tokens``, ``total_cost``,
        ``avg_response_time`` (ms), ``error_rate`` and ``by_model`` (requests per
        ``provider:model``).

        Read from the actor's store: it counts what the actor has applied, so a request recorded
        in the same step of the event loop shows once the actor has had its turn.
        """
        summary = self._store.summary()
        return {
            "total_requests": summary["total_requests"],
            "total_tokens": summary["total_tokens"],
            "total_cost": summary["total_cost"],
            "avg_response_time": summary["avg_response_time"] * 1000,
            "error_rate": summary["error_rate"],
            "by_model": {key: model["total_requests"]
                         for key, model in summary["by_model"].items()},
        }


    # The specification's counters, read from the store: copies (``defaultdict``, as the
    # specification's: a key never seen reads 0), keyed ``provider:model``.

    @property
    def request_count(self) -> defaultdict[str, int]:
        """Requests per ``provider:model``."""
        return defaultdict(int, {key: s["total_requests"] for key, s in self._by_model()})

    @property
    def token_usage(self) -> defaultdict[str, int]:
        """Tokens per ``provider:model``."""
        return defaultdict(int, {key: s["total_tokens"] for key, s in self._by_model()})

    @property
    def cost_tracking(self) -> defaultdict[str, float]:
        """USD per ``provider:model`` (only those that cost something)."""
        return defaultdict(float, {key: s["total_cost"] for key, s in self._by_model()
                                   if s["total_cost"]})

    @property
    def error_count(self) -> defaultdict[str, int]:
        """Errors per ``provider:model:error_type``."""
        return defaultdict(int, {f"{key}:{error}": n for key, s in self._by_model()
                                 for error, n in s["errors_by_type"].items()})

    def _by_model(self) -> list[tuple[str, dict[str, Any]]]:
        return list(self._store.summary()["by_model"].items())


class CostInfo(TypedDict):
    """What one call cost in USD, in the specification's shape (``None``: unknown)."""

    total_cost: float | None
    prompt_cost: float | None
    completion_cost: float | None


def cost_info(response: LLMResponse, catalog: ModelCatalog) -> CostInfo:
    """The cost of ``response``: its ``usage.total_cost`` (OpenRouter's reported cost, or ours
    from the price table), split into prompt and completion by the model's prices.

    When the provider reported a total that differs from the price table's (OpenRouter's actual
    price), the two parts are apportioned so that they add up to the reported total. Without a
    known price the parts are ``None``.
    """
    usage = response.usage
    total = usage.total_cost
    price = catalog.price(response.model)
    if price is None:
        return {"total_cost": total, "prompt_cost": None, "completion_cost": None}
    cached = min(max(usage.cached_tokens, 0), usage.prompt_tokens)
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    prompt = ((usage.prompt_tokens - cached) * price.input + cached * cached_rate) / 1_000_000
    completion = usage.completion_tokens * price.output / 1_000_000
    if total is None:
        total = prompt + completion
    elif prompt + completion > 0:
        scale = total / (prompt + completion)
        prompt, completion = prompt * scale, completion * scale
    return {"total_cost": total, "prompt_cost": prompt, "completion_cost": completion}
