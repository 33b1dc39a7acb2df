"""The router: picks providers and models in fallback order, with budgets and hedging.

For each request the router builds its candidates (the requested or active provider first, then
the configured order; each provider with its model and its ``fallback_models``) and tries them in
turn. Every attempt reserves its worst-case cost with the ledger first and settles or releases it
after. The router falls back on retryable errors (429, 5xx, timeouts, connection errors, breaker
open, provider restarting) and on errors tied to one provider (bad key, quota, unknown model); it
returns at once on errors every candidate would repeat (bad request, token limit, cost limit,
content refusal unless ``fallback_on_refusal``). A stream falls back only before its first chunk
reached the caller; after that a failure is an :class:`LLMStreamingError` and what was delivered
stays delivered.

Each request runs as a child task of the router (``pipe``), so the router serves any number of
requests at once while its own state (rate-limit pauses, latency samples, hedge counts) has one
writer: the actor's loop, through the ``then`` callbacks.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from actors.metrics import FallbackTaken, HedgeSent
from runtime import (
    Actor,
    ActorError,
    ActorRef,
    ActorState,
    ActorStatus,
    DeadlineExceeded,
    Outcome,
    Request,
    RequestKind,
)

from ._catalog import ModelCatalog
from ._config import LLMConfig
from ._errors import (
    ContentRefused,
    LLMClientError,
    LLMStreamingError,
    LLMTimeoutError,
    ProviderUnavailable,
    as_llm_error,
)
from ._messages import (
    Attempt,
    ChatRequest,
    LLMResponse,
    ProviderCall,
    Release,
    Reservation,
    Reserve,
    Settle,
    StreamEnd,
    TextDelta,
    Usage,
)
from ._tokens import acount_message_tokens, count_text_tokens, encoding_name_for_model

__all__ = ["RouterActor", "provider_actor_name"]

logger = logging.getLogger(__name__)

_LATENCY_SAMPLES = 200


def provider_actor_name(provider: str) -> str:
    """The actor name of the provider called ``provider``."""
    return f"provider:{provider}"


@dataclass(frozen=True)
class _Candidate:
    provider: str
    model: str
    fallback_models: tuple[str, ...] = ()


class _Trace:
    """What happened during one request, collected by its child task."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.rate_limited: list[tuple[str, float]] = []
        self.latencies: list[tuple[str, float]] = []
        self.hedged = False
        self.prompt_tokens: dict[str, int] = {}  # by encoding: counted once per request


class RouterActor(Actor):
    """Routes :class:`ChatRequest` asks (answer: :class:`LLMResponse`) and ``ask_stream``\\ s
    (items: :class:`TextDelta`, then one :class:`StreamEnd`) to the provider actors."""

    def __init__(
        self,
        config: LLMConfig,
        catalog: ModelCatalog,
        *,
        providers: Mapping[str, ActorRef],
        ledger: ActorRef | None,
        metrics: ActorRef | None = None,
        status: Callable[[str], ActorStatus | None] | None = None,
        durable: Callable[[str], Any] | None = None,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._providers = dict(providers)
        self._ledger = ledger
        self._metrics = metrics
        self._status = status
        self._durable = durable
        self._paused_until: dict[str, float] = {}
        self._latencies: dict[str, deque[float]] = {}
        self._requests = 0
        self._hedges = 0

    async def receive(self, message: Any) -> Any:
        if not isinstance(message, ChatRequest):
            raise TypeError(f"the router takes ChatRequest, not {type(message).__name__}")
        request = self.context.request
        assert request is not None
        self._requests += 1
        trace = _Trace()
        deadline = min(request.deadline, anyio.current_time() + self._timeout(message))
        if request.kind is RequestKind.STREAM:
            self.context.pipe(self._stream, message, request, deadline, trace,
                              then=lambda outcome: self._done(outcome, trace))
        else:
            self.context.pipe(self._call, message, deadline, trace,
                              then=lambda outcome: self._done(outcome, trace))
        return None

    # -- in the actor's loop ------------------------------------------------------------------

    def _done(self, outcome: Outcome, trace: _Trace) -> Any:
        now = time.monotonic()
        for provider, retry_after in trace.rate_limited:
            self._paused_until[provider] = max(self._paused_until.get(provider, 0.0),
                                               now + retry_after)
        for provider, seconds in trace.latencies:
            self._latencies.setdefault(provider, deque(maxlen=_LATENCY_SAMPLES)).append(seconds)
        if trace.hedged:
            self._hedges += 1
        return outcome.unwrap()

    # -- in the request's child task ----------------------------------------------------------

    async def _call(self, chat: ChatRequest, deadline: float, trace: _Trace) -> LLMResponse:
        last: Exception | None = None
        previous: _Candidate | None = None
        candidates = self._candidates(chat)
        for index, candidate in enumerate(candidates):
            if previous is not None and last is not None:
                self._fallback_event(previous, candidate, last)
            previous = candidate
            try:
                hedge = self._hedge_partner(candidates, index)
                if hedge is not None:
                    return await self._hedged(chat, candidate, hedge, deadline, trace)
                return await self._attempt(chat, candidate, deadline, trace)
            except LLMClientError as exc:
                if not self._should_fall_back(exc):
                    raise
                last = exc
        raise self._exhausted(chat, last)

    async def _stream(
        self, chat: ChatRequest, caller: Request, deadline: float, trace: _Trace
    ) -> None:
        last: Exception | None = None
        previous: _Candidate | None = None
        for candidate in self._candidates(chat):
            if previous is not None and last is not None:
                self._fallback_event(previous, candidate, last)
            previous = candidate
            delivered: list[str] = []
            try:
                response = await self._attempt(chat, candidate, deadline, trace, caller, delivered)
            except LLMClientError as exc:
                if delivered:
                    raise LLMStreamingError(
                        f"the stream from {candidate.provider} failed after the first chunk: "
                        f"{exc}",
                        provider=candidate.provider,
                        model=candidate.model,
                        partial_text="".join(delivered),
                        retryable=False,
                    ) from exc
                if not self._should_fall_back(exc):
                    raise
                last = exc
                continue
            await caller.send(StreamEnd(response))
            return
        raise self._exhausted(chat, last)

    async def _attempt(
        self,
        chat: ChatRequest,
        candidate: _Candidate,
        deadline: float,
        trace: _Trace,
        caller: Request | None = None,
        delivered: list[str] | None = None,
        hedge: bool = False,
    ) -> LLMResponse:
        provider, model = candidate.provider, candidate.model
        started = time.perf_counter()
        try:
            if anyio.current_time() >= deadline:
                raise LLMTimeoutError(
                    f"the request's {self._timeout(chat):g}s budget ran out before trying "
                    f"{provider}:{model}", provider=provider, model=model)
            self._check_available(provider)
            prompt_tokens = await self._prompt_tokens(chat, model, trace)
            max_tokens = self._max_tokens(chat, provider)
            self._catalog.preflight_check(prompt_tokens, max_tokens, model)
            call = ProviderCall(chat, model, prompt_tokens, stream=caller is not None,
                                fallback_models=candidate.fallback_models)
            reservation = await self._reserve(chat, provider, model, prompt_tokens, max_tokens,
                                              deadline)
            settled = False
            try:
                ref = self._providers[provider]
                if caller is None:
                    response: LLMResponse = await ref.ask(call, deadline=deadline)
                else:
                    response = await self._relay(ref, call, deadline, caller, delivered)
                await self._settle(reservation, response.usage)
                settled = True
            finally:
                if not settled:
                    self._release_after_failure(reservation, chat, model, prompt_tokens,
                                                delivered)
        except DeadlineExceeded as exc:
            elapsed = (time.perf_counter() - started) * 1000
            trace.attempts.append(Attempt(provider=provider, model=model,
                                          error_type="LLMTimeoutError", error=str(exc),
                                          duration_ms=elapsed, hedge=hedge))
            raise LLMTimeoutError(
                f"no answer from {provider}:{model} within the request's "
                f"{self._timeout(chat):g}s budget", provider=provider, model=model) from exc
        except (LLMClientError, ActorError) as caught:
            error = as_llm_error(caught, provider=provider, model=model)
            elapsed = (time.perf_counter() - started) * 1000
            trace.attempts.append(Attempt(provider=provider, model=model,
                                          error_type=type(error).__name__,
                                          error=str(error)[:300], duration_ms=elapsed, hedge=hedge))
            if error.retry_after:
                trace.rate_limited.append((provider, error.retry_after))
            if error is caught:
                raise
            raise error from caught
        elapsed = time.perf_counter() - started
        trace.latencies.append((provider, elapsed))
        trace.attempts.append(Attempt(provider=provider, model=model,
                                      duration_ms=elapsed * 1000, hedge=hedge))
        return response.model_copy(update={"attempts": list(trace.attempts),
                                           "request_id": chat.request_id})

    async def _relay(
        self,
        ref: ActorRef,
        call: ProviderCall,
        deadline: float,
        caller: Request,
        delivered: list[str] | None,
    ) -> LLMResponse:
        async with ref.ask_stream(call, deadline=deadline) as items:
            async for item in items:
                if isinstance(item, TextDelta):
                    if delivered is not None:
                        delivered.append(item.text)
                    await caller.send(item)
                elif isinstance(item, StreamEnd):
                    return item.response
        raise LLMStreamingError(f"{call.request.request_id}: the stream ended without an answer",
                                model=call.model)

    # -- hedging -------------------------------------------------------------------------------

    def _hedge_partner(self, candidates: list[_Candidate], index: int) -> _Candidate | None:
        hedging = self._config.hedging
        if not hedging.enabled or index + 1 >= len(candidates):
            return None
        if self._hedges >= hedging.max_share * max(1, self._requests):
            return None
        return candidates[index + 1]

    def _hedge_delay(self, provider: str) -> float:
        samples = sorted(self._latencies.get(provider, ()))
        if len(samples) < 20:
            return math.inf
        p95 = samples[min(len(samples) - 1, int(0.95 * len(samples)))]
        return max(self._config.hedging.min_delay, p95)

    async def _hedged(
        self,
        chat: ChatRequest,
        primary: _Candidate,
        second: _Candidate,
        deadline: float,
        trace: _Trace,
    ) -> LLMResponse:
        """Send ``chat`` to ``primary``; if it is slower than its p95, also to ``second``.

        The first answer wins and the other attempt is cancelled (its reservation released).
        """
        delay = self._hedge_delay(primary.provider)
        if math.isinf(delay):
            return await self._attempt(chat, primary, deadline, trace)
        winner: list[LLMResponse] = []
        errors: list[Exception] = []
        hedge_sent = anyio.Event()

        async def primary_run(scope: anyio.CancelScope) -> None:
            try:
                winner.append(await self._attempt(chat, primary, deadline, trace))
            except LLMClientError as exc:
                errors.append(exc)
                if hedge_sent.is_set():
                    return  # the hedge is in flight: its answer may still win
            scope.cancel()

        async def hedge_run(scope: anyio.CancelScope) -> None:
            await anyio.sleep(delay)
            hedge_sent.set()
            trace.hedged = True
            if self._metrics is not None:
                self._metrics.try_tell(HedgeSent(provider=second.provider, model=second.model,
                                                 delay_s=delay))
            try:
                winner.append(await self._attempt(chat, second, deadline, trace, hedge=True))
            except LLMClientError:
                if not errors:
                    return  # the primary is still running
            scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(primary_run, group.cancel_scope)
            group.start_soon(hedge_run, group.cancel_scope)
        if winner:
            return winner[0]
        raise errors[0]

    # -- helpers -------------------------------------------------------------------------------

    def _candidates(self, chat: ChatRequest) -> list[_Candidate]:
        order = self._config.candidate_order()
        if chat.provider is not None:
            if chat.provider not in self._config.providers:
                raise LLMClientError(f"unknown provider {chat.provider!r} "
                                     f"(configured: {', '.join(order)})")
            order = [chat.provider, *[name for name in order if name != chat.provider]]
        candidates: list[_Candidate] = []
        for name in order:
            provider = self._config.providers[name]
            models = [chat.model] if chat.model is not None else provider.models
            # max_retries bounds the attempts on one provider beyond the first.
            models = models[: 1 + provider.max_retries]
            if provider.kind == "openrouter" and provider.use_native_fallbacks:
                candidates.append(_Candidate(name, models[0], tuple(models[1:])))
            else:
                candidates.extend(_Candidate(name, model) for model in models)
        available = [c for c in candidates if not self._paused(c.provider)]
        # Rate-limited providers go last rather than away: if everyone is paused, the first one
        # still gets the request (its limiter waits for the pause to end).
        return available + [c for c in candidates if self._paused(c.provider)]

    def _paused(self, provider: str) -> bool:
        return self._paused_until.get(provider, 0.0) > time.monotonic()

    def _check_available(self, provider: str) -> None:
        if provider not in self._providers:
            raise ProviderUnavailable(f"provider {provider!r} has no actor", provider=provider)
        actor = provider_actor_name(provider)
        if self._status is not None:
            status = self._status(actor)
            if status is not None and status.state in (
                ActorState.RESTARTING, ActorState.STOPPED, ActorState.STOPPING
            ):
                raise ProviderUnavailable(f"provider {provider!r} is {status.state.value}",
                                          provider=provider)
        # The provider's own health (written only by it): skip an open breaker without asking.
        health = getattr(self._durable(actor), "health", None) if self._durable else None
        if health is not None and not health.available():
            raise ProviderUnavailable(
                f"provider {provider!r} is unavailable (circuit breaker {health.breaker})",
                provider=provider, retry_after=health.retry_after() or None)

    def _should_fall_back(self, error: Exception) -> bool:
        if isinstance(error, ContentRefused):
            return self._config.fallback_on_refusal
        if isinstance(error, LLMClientError):
            return error.retryable or error.provider_specific
        return False

    def _exhausted(self, chat: ChatRequest, last: Exception | None) -> Exception:
        if last is not None:
            return last
        return ProviderUnavailable(f"no provider could take request {chat.request_id}")

    def _fallback_event(
        self, previous: _Candidate, candidate: _Candidate, error: Exception
    ) -> None:
        logger.info("request falls back from %s:%s to %s:%s after %s", previous.provider,
                    previous.model, candidate.provider, candidate.model, type(error).__name__)
        if self._metrics is not None:
            self._metrics.try_tell(FallbackTaken(
                from_provider=previous.provider, from_model=previous.model,
                to_provider=candidate.provider, to_model=candidate.model,
                reason=type(error).__name__))

    def _timeout(self, chat: ChatRequest) -> float:
        return chat.timeout if chat.timeout is not None else self._config.request_timeout

    def _max_tokens(self, chat: ChatRequest, provider: str) -> int:
        value = chat.params.get("max_tokens") or chat.params.get("max_completion_tokens")
        return int(value) if value else self._config.providers[provider].max_tokens

    async def _prompt_tokens(self, chat: ChatRequest, model: str, trace: _Trace) -> int:
        key = encoding_name_for_model(model)
        if key not in trace.prompt_tokens:
            trace.prompt_tokens[key] = await acount_message_tokens(
                list(chat.messages), model, tools=list(chat.tools) or None)
        return trace.prompt_tokens[key]

    async def _reserve(self, chat: ChatRequest, provider: str, model: str, prompt_tokens: int,
                       max_tokens: int, deadline: float) -> Reservation | None:
        if self._ledger is None:
            return None
        reservation: Reservation = await self._ledger.ask(
            Reserve(chat.request_id, provider, model, prompt_tokens, max_tokens),
            deadline=deadline)
        return reservation

    async def _settle(self, reservation: Reservation | None, usage: Usage) -> None:
        if reservation is None or self._ledger is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self._ledger.ask(Settle(reservation.id, usage, usage.total_cost))

    def _release_after_failure(self, reservation: Reservation | None, chat: ChatRequest,
                               model: str, prompt_tokens: int,
                               delivered: list[str] | None) -> None:
        """Release a failed attempt's reservation; a stream that delivered text is charged."""
        if reservation is None or self._ledger is None:
            return
        if delivered:
            completion = count_text_tokens("".join(delivered), model)
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                          total_tokens=prompt_tokens + completion)
            if self._ledger.try_tell(Settle(reservation.id, usage)):
                return
        if not self._ledger.try_tell(Release(reservation.id)):
            logger.error("ledger mailbox full: reservation %s of %s awaits its expiry",
                         reservation.id, chat.request_id)
