"""The LLM runtime in one call: metrics, ledger, providers and router under one supervisor.

::

    async with open_runtime(config.llm) as rt:
        answer = await rt.chat([{"role": "user", "content": "Hello"}])
        async with rt.stream([{"role": "user", "content": "Hello"}]) as events:
            async for event in events:
                ...  # TextDelta..., then StreamEnd(response)
        print(rt.metrics_summary(), rt.health())

The supervision tree::

    root (one_for_one)
    ├── metrics            MetricsActor
    ├── ledger             LedgerActor (SQLite, WAL)
    ├── providers          one_for_one, one ProviderActor per configured provider
    │   ├── provider:openrouter
    │   └── provider:openai ...
    ├── router             RouterActor
    └── extra children     (the server adds the MCP servers and the sessions)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pydantic import SecretStr

from actors.metrics import MetricsStore, metrics_child_spec
from runtime import (
    ActorRef,
    ActorState,
    ActorSystem,
    Backoff,
    ChildSpec,
    Clock,
    SupervisorSpec,
)

from ._catalog import ModelCatalog
from ._config import RESERVATION_TTL, LLMConfig
from ._errors import translate_actor_errors
from ._ledger import LedgerBook, ledger_child_spec
from ._ledger_lock import LedgerLock, check_ledger
from ._messages import ChatRequest, GetSpend, LLMResponse, SpendSnapshot
from ._provider import provider_child_spec
from ._provider_state import ProviderState
from ._router import RouterActor, provider_actor_name
from ._shared import SharedState

__all__ = ["LLMRuntime", "build_catalog", "configured_models", "open_runtime"]

Message = dict[str, Any]


def build_catalog(config: LLMConfig) -> ModelCatalog:
    """The built-in model catalog extended by every provider's ``context_windows``/``prices``."""
    windows: dict[str, int] = {}
    prices: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for provider in config.providers.values():
        windows.update(provider.context_windows)
        prices.update(provider.prices)
        params.update(provider.model_params)
    return ModelCatalog(context_windows=windows, prices=prices, params=params)


def configured_models(config: LLMConfig) -> list[str]:
    """Every model a provider of ``config`` may call (its model, then its fallbacks), once each."""
    return list(dict.fromkeys(m for provider in config.providers.values() for m in provider.models))


class LLMRuntime:
    """A running runtime: chat, stream, metrics, health. Made by :func:`open_runtime`."""

    def __init__(self, system: ActorSystem, config: LLMConfig) -> None:
        self.system = system
        self.config = config
        self.router: ActorRef = system.ref("router")
        self.ledger: ActorRef = system.ref("ledger")
        self.metrics: ActorRef = system.ref("metrics")

    def request(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Message] | None = None,
        model: str | None = None,
        provider: str | None = None,
        timeout: float | None = None,
        turn_id: str | None = None,
        turn_cost_limit: float | None = None,
        reasoning_effort: str | None = None,
        **params: Any,
    ) -> ChatRequest:
        """Build the :class:`ChatRequest` that :meth:`chat` and :meth:`stream` send.

        ``turn_id`` with ``turn_cost_limit`` (USD): every attempt of every request of that turn
        is reserved against the turn's budget (``chat.max_cost_per_turn``). ``reasoning_effort``
        (``minimal``/``low``/``medium``/``high``) wins over the model's and the provider's
        configured one; it is sent in each provider's own form.
        """
        return ChatRequest.of(list(messages), list(tools or ()), model=model, provider=provider,
                              timeout=timeout, params=params, turn_id=turn_id,
                              turn_cost_limit=turn_cost_limit, reasoning_effort=reasoning_effort)

    async def chat(self, messages: Sequence[Message], **kwargs: Any) -> LLMResponse:
        """One complete answer. Raises only ``LLMClientError`` subclasses."""
        request = self.request(messages, **kwargs)
        with translate_actor_errors():
            response: LLMResponse = await self.router.ask(request, timeout=self._timeout(request))
        return response

    @asynccontextmanager
    async def stream(self, messages: Sequence[Message], **kwargs: Any) -> AsyncIterator[
            AsyncIterator[Any]]:
        """Stream an answer: ``TextDelta`` items, then one ``StreamEnd``.

        Leaving the block early cancels the request and closes the upstream stream. Raises (also
        from the iteration) only ``LLMClientError`` subclasses.
        """
        request = self.request(messages, **kwargs)
        with translate_actor_errors():
            async with self.router.ask_stream(request, timeout=self._timeout(request)) as events:
                yield events

    async def spend(self) -> SpendSnapshot:
        """Today's spend as the ledger sees it. Raises only ``LLMClientError`` subclasses."""
        with translate_actor_errors():
            snapshot: SpendSnapshot = await self.ledger.ask(GetSpend(), timeout=5)
        return snapshot

    def metrics_summary(self) -> dict[str, Any]:
        """Counters, percentiles, tokens and cost by ``provider:model`` (see MetricsStore)."""
        return self._metrics_actor_store().summary()

    def prometheus_text(self) -> bytes:
        """Every metric in Prometheus text exposition format."""
        return self._metrics_actor_store().prometheus_text()

    def health(self) -> dict[str, Any]:
        """Per provider: actor state, restarts, breaker, last error; and the overall status."""
        statuses = self.system.status()
        providers: dict[str, Any] = {}
        for name in self.config.providers:
            actor = provider_actor_name(name)
            status = statuses.get(actor)
            entry: dict[str, Any] = {
                "state": status.state.value if status else "absent",
                "restarts": status.restart_count if status else 0,
                "mailbox": status.mailbox_depth if status else 0,
            }
            health = getattr(self.system.durable(actor), "health", None) if status else None
            if health is not None and hasattr(health, "snapshot"):
                entry.update(health.snapshot())
            providers[name] = entry
        usable = [p for p in providers.values()
                  if p["state"] == ActorState.RUNNING.value and p.get("breaker") != "open"]
        overall = "ok" if len(usable) == len(providers) else "degraded" if usable else "failing"
        ledger = self._ledger_health()
        if ledger["state"] != "ok":
            overall = "failing"  # no reservation, no call
        return {"status": overall, "providers": providers, "ledger": ledger}

    def _ledger_health(self) -> dict[str, Any]:
        """``state`` ``ok`` or ``down`` (with ``error``), today's settled and reserved USD."""
        status = self.system.actor_status("ledger")
        book = self.system.durable("ledger")
        error: str | None = None
        if not isinstance(book, LedgerBook) or status is None:
            error = "the ledger is absent"
        elif book.down is not None:
            error = book.down
        elif status.state is not ActorState.RUNNING:
            error = f"the ledger is {status.state.value}"
        entry: dict[str, Any] = {"state": "ok" if error is None else "down"}
        if error is not None:
            entry["error"] = error
        if isinstance(book, LedgerBook):
            entry.update(day=book.day, settled_usd=book.settled_usd,
                         reserved_usd=book.reserved_usd, open_reservations=len(book.open))
        return entry

    def _metrics_actor_store(self) -> MetricsStore:
        store: MetricsStore = self.system.durable("metrics")
        return store

    def _timeout(self, request: ChatRequest) -> float:
        # A little beyond the router's own budget, so the router's typed timeout wins the race.
        budget = request.timeout if request.timeout is not None else self.config.request_timeout
        return budget + 5.0


def runtime_children(
    config: LLMConfig,
    catalog: ModelCatalog,
    shared: SharedState | None = None,
    *,
    api_keys: Mapping[str, SecretStr] | None = None,
) -> list[ChildSpec | SupervisorSpec]:
    """The runtime's children; each actor finds its siblings by name when it starts.

    ``shared``: the providers' windows and the ledger's day totals are shared through Redis.
    ``api_keys``: a provider's key given explicitly, in place of its configured environment
    variable or key file (the specification's client API).
    """
    keys = api_keys or {}
    ledger = ledger_child_spec(
        config.cost, catalog, providers=config.providers, reservation_ttl=RESERVATION_TTL,
        actor=None if shared is None else lambda: shared.ledger(
            config.cost, catalog, providers=config.providers, metrics=None),
    )
    providers = [
        provider_child_spec(
            name, provider_config, catalog=catalog, api_key=keys.get(name),
            actor_name=provider_actor_name(name), durable=(ProviderState if shared is None
                     else shared.provider_state(name, provider_config)),
        )
        for name, provider_config in config.providers.items()
    ]
    router = ChildSpec("router", lambda: RouterActor(config, catalog),
                       # Every error the router meets is an answer to its caller, never a reason
                       # to restart.
                       crash_on=(), mailbox_size=100_000)
    return [
        # The configured models keep their label whatever names the upstreams answer with.
        metrics_child_spec(models=configured_models(config)),
        ledger,
        SupervisorSpec("providers", providers, max_restarts=20, max_seconds=60.0,
                       backoff=Backoff(initial=0.2, maximum=30.0)),
        router,
    ]


@asynccontextmanager
async def open_runtime(
    config: LLMConfig,
    *,
    clock: Clock | None = None,
    extra_children: Sequence[ChildSpec | SupervisorSpec] = (),
    shared: SharedState | None = None,
) -> AsyncIterator[LLMRuntime]:
    """Start the runtime (returns once every actor is ready); stop it gracefully on exit.

    ``shared``: rate windows and day totals shared with other workers through Redis.

    Raises :class:`LedgerUnavailable` before starting anything when the ledger database cannot
    be used or another process holds it (one process per ledger file).
    """
    check_ledger(config.cost)
    with LedgerLock(config.cost):  # before the system exists: a refusal leaves nothing open
        catalog = build_catalog(config)
        root = SupervisorSpec(
            "root",
            [*runtime_children(config, catalog, shared), *extra_children],
            max_restarts=10,
            max_seconds=60.0,
        )
        system = ActorSystem(root, clock=clock)
        async with system:
            yield LLMRuntime(system, config)
