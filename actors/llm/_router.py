"""The router: picks providers and models in fallback order, with budgets and hedging.

For each request the router builds its candidates (:func:`build_candidates`) and tries them in
turn, in one loop for asks and streams alike. Every attempt reserves its worst-case cost with the
ledger first and settles after (:class:`AttemptSpend`: a failed attempt that was sent pays for what
it sent). The router falls back on retryable errors (429, 5xx, timeouts, connection errors, breaker
open, provider restarting) and on errors tied to one provider (bad key, quota, unknown model); it
returns at once on errors every candidate would repeat (bad request, token limit, cost limit, the
ledger down, content refusal unless ``fallback_on_refusal``). A stream falls back only before its
first item reached the caller; after that a failure is an :class:`LLMStreamingError` and what was
delivered stays delivered. Asks (not streams) may be hedged (:mod:`._hedging`). A stream's
provider delivers its deltas directly, through :func:`_tracked` (which notes what was delivered),
to the caller's own delta sink (``ChatRequest.deltas``) when it gave one, else into the caller's
stream; the provider answers a stream like an ask, with the assembled response, and the router
sends the caller the :class:`StreamEnd` (no relay task, no hop through the router per delta).

Each request runs as piped work of the router (``pipe``: in the caller's task for an ask the idle
router takes at once, else a child task), so the router serves any number of
requests at once while its own state (rate-limit pauses, latency samples, hedge counts) has one
writer: the actor's loop, through the ``then`` callbacks. Time (pauses, latencies, the hedge delay)
comes from the runtime's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from actors.metrics import FallbackTaken, HedgeSent, RequestCostWarning
from runtime import (
    Actor,
    ActorError,
    ActorRef,
    ActorState,
    Outcome,
    Request,
    RequestKind,
)

from ._attempt_spend import AttemptSpend
from ._candidates import Candidate, build_candidates, provider_actor_name
from ._catalog import ModelCatalog
from ._config import RESERVATION_TTL, LLMConfig
from ._errors import (
    ContentRefused,
    LLMAuthError,
    LLMBadRequestError,
    LLMClientError,
    LLMStreamingError,
    LLMTimeoutError,
    ProviderUnavailable,
    as_llm_error,
)
from ._hedging import HedgePolicy, race
from ._ledger_lock import LedgerUnavailable
from ._messages import (
    Attempt,
    ChatRequest,
    DeltaSink,
    LLMResponse,
    ProviderCall,
    ReasoningDelta,
    Reserve,
    StreamEnd,
    TextDelta,
)
from ._provider_kinds import rules_for
from ._tokens import acount_message_tokens, encoding_name_for_model

__all__ = ["RouterActor", "provider_actor_name"]

logger = logging.getLogger(__name__)

_GONE = frozenset({ActorState.RESTARTING, ActorState.STOPPED, ActorState.STOPPING})


class _Trace:
    """What happened during one request, collected by its child task."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.rate_limited: list[tuple[str, float]] = []
        self.latencies: list[tuple[str, float]] = []
        self.hedged = False
        self.prompt_tokens: dict[str, int] = {}  # by encoding: counted once per request


def _tracked(sink: DeltaSink, spend: AttemptSpend, delivered: list[object] | None) -> DeltaSink:
    """The caller's sink, noting what reached it: the text a cancelled attempt is charged for
    (with the tool-call pieces the provider notes: ``ProviderCall.on_output``), and whether
    anything was delivered (then the attempt can no longer fall back)."""
    streamed = spend.streamed

    async def deliver(delta: TextDelta | ReasoningDelta) -> None:
        streamed.append(delta.text)
        if delivered is not None:
            delivered.append(delta)
        await sink(delta)

    return deliver


class RouterActor(Actor[ChatRequest]):
    """Routes :class:`ChatRequest` asks (answer: :class:`LLMResponse`) and ``ask_stream``\\ s
    (items: :class:`TextDelta` and the provider's other items, then one :class:`StreamEnd`) to the
    provider actors."""

    def __init__(
        self,
        config: LLMConfig,
        catalog: ModelCatalog,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._providers: dict[str, ActorRef] = {}
        self._ledger: ActorRef | None = None
        self._metrics: ActorRef | None = None
        self._paused_until: dict[str, float] = {}
        self._hedging = HedgePolicy(config.hedging)

    async def on_start(self) -> None:
        # Found by name: the providers' supervisor and the ledger started before the router.
        context = self.context
        self._providers = {name: context.ref(provider_actor_name(name))
                           for name in self._config.providers}
        self._ledger = context.find("ledger")
        self._metrics = context.find("metrics")

    def immediate_messages(self) -> tuple[type, ...]:
        # An ask of an idle router is taken in the caller's task, its work run there: no mailbox
        # trip, no task.
        return (ChatRequest,)

    def handle_now(self, message: ChatRequest) -> None:
        self._start(message)

    async def receive(self, message: ChatRequest) -> None:
        self._start(message)

    def _start(self, message: ChatRequest) -> None:
        request = self.context.request
        assert request is not None
        # The request's own timeout, else the config's (validated too, but a model_copy skips
        # validation): a call outliving its reservation could be granted its money twice.
        timeout = self._timeout(message)
        if not 0 < timeout < RESERVATION_TTL:
            raise LLMBadRequestError(
                f"timeout must be above 0 s and below the ledger's reservation TTL "
                f"({RESERVATION_TTL:g} s), not {timeout!r}")
        self._hedging.requests += 1
        trace = _Trace()
        deadline = min(request.deadline, anyio.current_time() + timeout)
        caller = request if request.kind is RequestKind.STREAM else None
        self.context.pipe(self._route, message, deadline, trace, caller, reply_to=request,
                          then=lambda outcome: self._done(outcome, trace, caller))

    # -- in the actor's loop ------------------------------------------------------------------

    def _done(self, outcome: Outcome, trace: _Trace, caller: Request | None) -> Any:
        now = self.context.clock.now()
        for provider, retry_after in trace.rate_limited:
            self._paused_until[provider] = max(self._paused_until.get(provider, 0.0),
                                               now + retry_after)
        for provider, seconds in trace.latencies:
            self._hedging.record_latency(provider, seconds)
        if trace.hedged:
            self._hedging.hedges += 1
        response = outcome.unwrap()
        return None if caller is not None else response

    # -- in the request's child task ----------------------------------------------------------

    async def _route(self, chat: ChatRequest, deadline: float, trace: _Trace,
                     caller: Request | None) -> LLMResponse:
        """The fallback loop: try each candidate until one answers or an error must be final."""
        if "models" in chat.params:
            raise LLMBadRequestError("models is not a request parameter (a provider's "
                                     "fallback_models, with use_native_fallbacks, send it)")
        last: LLMClientError | None = None
        previous: Candidate | None = None
        candidates = build_candidates(self._config, chat, self._paused)
        for index, candidate in enumerate(candidates):
            if previous is not None and last is not None:
                self._fallback_event(previous, candidate, last)
            previous = candidate
            delivered: list[object] = []
            partner = None if caller is not None else self._hedging.partner(candidates, index)
            try:
                if partner is not None:
                    response = await self._hedged(chat, candidate, partner, deadline, trace)
                else:
                    response = await self._attempt(chat, candidate, deadline, trace, caller,
                                                   delivered)
            except LLMClientError as exc:
                if delivered:
                    partial = "".join(getattr(item, "text", "") for item in delivered)
                    raise LLMStreamingError(
                        f"the stream from {candidate.provider} failed after the first chunk: "
                        f"{exc}", provider=candidate.provider, model=candidate.model,
                        partial_text=partial, retryable=False) from exc
                if not self._should_fall_back(exc):
                    raise
                last = exc
                continue
            if caller is not None:
                await caller.send(StreamEnd(response))
            return response
        raise last if last is not None else ProviderUnavailable(
            f"no provider could take request {chat.request_id}")

    async def _attempt(
        self,
        chat: ChatRequest,
        candidate: Candidate,
        deadline: float,
        trace: _Trace,
        caller: Request | None = None,
        delivered: list[object] | None = None,
        hedge: Callable[[], None] | None = None,
    ) -> LLMResponse:
        """One attempt; ``hedge``: it is a hedge, told once its money is reserved (one refused
        by a cost limit is no hedge sent)."""
        provider, model = candidate.provider, candidate.model
        clock = self.context.clock
        started = clock.now()
        try:
            response = await self._call(chat, candidate, deadline, trace, caller, delivered,
                                        hedge)
        except (LLMClientError, ActorError) as caught:
            error = as_llm_error(caught, provider=provider, model=model)
            if isinstance(error, LLMTimeoutError) and not isinstance(caught, LLMClientError):
                error = LLMTimeoutError(
                    f"no answer from {provider}:{model} within the request's "
                    f"{self._timeout(chat):g}s budget", provider=provider, model=model)
            trace.attempts.append(Attempt(
                provider=provider, model=model, error_type=type(error).__name__,
                error=str(error)[:300], duration_ms=(clock.now() - started) * 1000,
                hedge=hedge is not None))
            if error.retry_after:
                trace.rate_limited.append((provider, error.retry_after))
            if error is caught:
                raise
            raise error from caught
        elapsed = clock.now() - started
        trace.latencies.append((provider, elapsed))
        trace.attempts.append(Attempt(provider=provider, model=model,
                                      duration_ms=elapsed * 1000, hedge=hedge is not None))
        return response.model_copy(update={"attempts": list(trace.attempts),
                                           "request_id": chat.request_id})

    async def _call(
        self,
        chat: ChatRequest,
        candidate: Candidate,
        deadline: float,
        trace: _Trace,
        caller: Request | None,
        delivered: list[object] | None,
        reserved_hook: Callable[[], None] | None = None,
    ) -> LLMResponse:
        """One attempt on one candidate, with its money: reserve, call, settle or charge."""
        provider, model = candidate.provider, candidate.model
        if anyio.current_time() >= deadline:
            raise LLMTimeoutError(
                f"the request's {self._timeout(chat):g}s budget ran out before trying "
                f"{provider}:{model}", provider=provider, model=model)
        self._check_available(provider)
        settings = self._config.providers[provider]
        max_tokens = settings.output_limit(chat.params)
        prompt_tokens = await self._prompt_tokens(chat, model, trace)
        reserved, reserved_prompt = await self._costliest(chat, candidate, max_tokens, trace)
        tracked = settings.enable_cost_tracking
        spend = AttemptSpend(
            self._ledger if tracked else None,
            Reserve(chat.request_id, provider, reserved, reserved_prompt, max_tokens,
                    turn_id=chat.turn_id, turn_cost_limit=chat.turn_cost_limit),
            stream=caller is not None)
        await spend.reserve(deadline)
        if reserved_hook is not None:
            reserved_hook()
        # A stream's deltas go from the provider's reading task straight to the caller's sink,
        # or else into the caller's stream: no relay task in the provider, no hop here.
        sink = None if caller is None else chat.deltas or caller.send
        call = ProviderCall(chat, model, prompt_tokens, stream=caller is not None,
                            fallback_models=candidate.fallback_models,
                            deltas=None if sink is None else _tracked(sink, spend, delivered),
                            on_output=spend.streamed.append, bill=spend.bill)
        ref = self._providers[provider]
        try:
            spend.sent = True
            # A stream's deltas reach the caller through the sink: the provider answers the
            # ask with the assembled response.
            response: LLMResponse = await ref.ask(call, deadline=deadline)
        except BaseException as exc:
            # No local keeps ``exc`` past this clause: its traceback holds this frame, and a
            # cycle would keep the call's messages and answer until a full collection.
            spend.fail(None if isinstance(exc, anyio.get_cancelled_exc_class()) else exc)
            raise
        if not tracked:
            return response.model_copy(update={"usage": response.usage.model_copy(
                update={"total_cost": None})})
        charged = await spend.settle(response.usage)
        threshold = settings.cost_warning_threshold
        if threshold is not None and charged is not None and charged > threshold:
            logger.warning("request %s on %s:%s cost $%.6f, above the provider's "
                           "cost_warning_threshold $%.6f", chat.request_id, provider, model,
                           charged, threshold)
            if self._metrics is not None:
                self._metrics.try_tell(RequestCostWarning(provider, model, charged, threshold))
            return response.model_copy(update={"cost_warning": True})
        return response

    async def _hedged(
        self,
        chat: ChatRequest,
        primary: Candidate,
        second: Candidate,
        deadline: float,
        trace: _Trace,
    ) -> LLMResponse:
        delay = self._hedging.delay(primary.provider)
        if delay == float("inf"):
            return await self._attempt(chat, primary, deadline, trace)

        def hedge_sent() -> None:
            trace.hedged = True
            if self._metrics is not None:
                self._metrics.try_tell(HedgeSent(provider=second.provider, model=second.model,
                                                 delay_s=delay))

        return await race(
            lambda: self._attempt(chat, primary, deadline, trace),
            lambda: self._attempt(chat, second, deadline, trace, hedge=hedge_sent),
            delay, self.context.clock)

    # -- helpers -------------------------------------------------------------------------------

    def _paused(self, provider: str) -> bool:
        return self._paused_until.get(provider, 0.0) > self.context.clock.now()

    def _check_available(self, provider: str) -> None:
        if provider not in self._providers:
            raise ProviderUnavailable(f"provider {provider!r} has no actor", provider=provider)
        actor = provider_actor_name(provider)
        context = self.context
        state = context.actor_state(actor)
        if state in _GONE:
            assert state is not None
            raise ProviderUnavailable(f"provider {provider!r} is {state.value}",
                                      provider=provider)
        ledger = context.actor_state("ledger") if self._ledger is not None else None
        if ledger is not None and ledger is not ActorState.RUNNING:
            raise LedgerUnavailable(f"the ledger is {ledger.value}", provider=provider)
        # The provider's own health (written only by it): skip an open breaker without asking.
        health = getattr(self.context.durable_of(actor), "health", None)
        if health is not None and not health.available():
            if health.auth_rejected:
                # What the provider itself answers once restarted, and the cause to report.
                raise LLMAuthError(f"{provider} rejected this API key; waiting for a new one",
                                   provider=provider)
            why = "restarting" if health.restarting else f"circuit breaker {health.breaker}"
            raise ProviderUnavailable(f"provider {provider!r} is unavailable ({why})",
                                      provider=provider, retry_after=health.retry_after() or None)

    def _should_fall_back(self, error: LLMClientError) -> bool:
        if isinstance(error, ContentRefused):
            return self._config.fallback_on_refusal
        if isinstance(error, LedgerUnavailable):
            return False  # every candidate shares the ledger
        return error.retryable or error.provider_specific

    def _fallback_event(self, previous: Candidate, candidate: Candidate,
                        error: LLMClientError) -> None:
        logger.info("request falls back from %s:%s to %s:%s after %s", previous.provider,
                    previous.model, candidate.provider, candidate.model, type(error).__name__)
        if self._metrics is not None:
            self._metrics.try_tell(FallbackTaken(
                from_provider=previous.provider, from_model=previous.model,
                to_provider=candidate.provider, to_model=candidate.model,
                reason=type(error).__name__))

    def _timeout(self, chat: ChatRequest) -> float:
        return chat.timeout if chat.timeout is not None else self._config.request_timeout

    async def _costliest(self, chat: ChatRequest, candidate: Candidate, max_tokens: int,
                         trace: _Trace) -> tuple[str, int]:
        """The model an attempt reserves for, with its prompt tokens: of every model that may
        answer it (OpenRouter's native fallbacks too; each checked against its context window),
        the costliest, or one without a price (its cost has no bound: the ledger refuses it
        under a limit)."""
        settings = self._config.providers[candidate.provider]
        models = rules_for(settings.kind).models(settings, candidate.model,
                                                 candidate.fallback_models)
        chosen: tuple[str, int] | None = None
        worst: float | None = 0.0
        for model in models:
            tokens = await self._prompt_tokens(chat, model, trace)
            self._catalog.preflight_check(tokens, max_tokens, model)
            cost = self._catalog.cost_of(model, tokens, max_tokens)
            if chosen is None or (worst is not None and (cost is None or cost > worst)):
                chosen, worst = (model, tokens), cost
        assert chosen is not None
        return chosen

    async def _prompt_tokens(self, chat: ChatRequest, model: str, trace: _Trace) -> int:
        key = encoding_name_for_model(model)
        if key not in trace.prompt_tokens:
            trace.prompt_tokens[key] = await acount_message_tokens(
                list(chat.messages), model, tools=list(chat.tools) or None)
        return trace.prompt_tokens[key]

