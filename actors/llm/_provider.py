"""ProviderActor: one OpenAI-compatible provider behind an actor (OpenAI, OpenRouter, any base_url).

The actor owns an HTTP pool with the configured limits and an ``AsyncOpenAI`` client built on it
with ``max_retries=0`` (the runtime is the only retry loop). It answers
``ask(ProviderCall(stream=False))`` with an :class:`LLMResponse` and
``ask_stream(ProviderCall(stream=True))`` with :class:`TextDelta` and :class:`ReasoningDelta`
items then one :class:`StreamEnd`. The body holds only what the model accepts
(:mod:`._sdk_call`); the call runs in :mod:`._provider_calls` and its answer is read as plain
data (:mod:`._wire_decode`, :mod:`._stream`);
what differs per provider kind is in :mod:`._provider_kinds`.

Per call, in the actor's loop: the pre-flight context-window check, then the breaker's permit (an
open breaker refuses at once with :class:`ProviderUnavailable`). In the piped work (the caller's
task or a child task): the rate
limiter (one request, and the prompt's estimated tokens plus the output limit: what OpenAI counts
against a tokens-per-minute limit when the request arrives), the SDK call; every response's
``x-ratelimit-*`` headers reach the limiter through a response hook. An "Unsupported
parameter/value" 400 is retried once without that parameter, and the rule is kept for the model
(in the durable state, logged once). Back in the actor's loop (the ``then`` callback, the single
writer of breaker and counters): the breaker's outcome, metrics events, and deliberate crashes:

* an upstream 401 crashes the instance (the caller still gets its :class:`LLMAuthError`); the
  supervisor restarts it and the new instance re-reads the key and rebuilds the pool. A key that
  was already rejected is not sent again: calls fail fast with :class:`LLMAuthError` until the
  key read from the environment (or the key file) changes, which is checked on every call;
* ``max_connection_failures`` consecutive connection errors crash it too (a new pool).

Secrets: the key and every ``extra_headers`` value (of 8 characters or more) are redacted from
the errors the provider raises.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import httpx2
import openai
from pydantic import SecretStr

from runtime import Actor, ActorRef, ChildSpec, Outcome, RequestKind, unwrap_group

from ._catalog import ModelCatalog
from ._errors import (
    LLMAuthError,
    LLMConnectionError,
    LLMRateLimitError,
    ProviderUnavailable,
    redact,
)
from ._http_pool import DEFAULT_TRANSPORT, Transport, provider_http_client
from ._messages import LLMResponse, ProviderCall
from ._provider_calls import CallSite
from ._provider_config import ProviderConfig
from ._provider_kinds import rules_for
from ._provider_reports import ProviderReports
from ._provider_state import ProviderHealth, ProviderState
from ._response_bounds import bound_response
from ._sdk_call import (
    PLATFORM_HEADERS_OMITTED,
    CallPlan,
    plan_call,
)
from ._stream import Progress
from ._wire_decode import MalformedResponse, malformed_error

__all__ = ["ProviderActor", "ProviderHealth", "ProviderState", "provider_child_spec"]

logger = logging.getLogger(__name__)

# Without a key (``requires_api_key: false``, a local server) the SDK still wants one.
_PLACEHOLDER_KEY = "no-key-required"
# Shorter header values (``X-Title: demo``) are not credentials, and redacting them would mangle
# every message that happens to contain the word.
_MIN_SECRET_HEADER = 8


class _AuthRejected(LLMAuthError):
    """The provider rejected the key: the caller's error, and the reason to crash (restart)."""


class _ConnectionFailuresExceeded(LLMConnectionError):
    """The last of ``max_connection_failures`` consecutive connection errors: crash, new pool."""


async def _close(client: openai.AsyncOpenAI | None, http: httpx2.AsyncClient | None) -> None:
    """Close a client and its pool (shielded, at most 5 s; a failure is only logged)."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        try:
            if client is not None:
                await client.close()
            if http is not None:
                await http.aclose()
        except Exception as exc:
            logger.warning("closing an HTTP client failed: %s", type(exc).__name__)


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ProviderActor(Actor[ProviderCall]):
    """Calls one provider through the official SDK (see the module docstring).

    ``metrics`` receives the events of :mod:`actors.metrics._store` (dropped when its mailbox is
    full); ``catalog`` prices, sizes and knows the parameters of models (default: built-in tables
    plus the config's); ``api_key`` replaces the configured environment variable or key file;
    ``transport`` is the HTTP transport under the SDK (default: the config's, else
    :data:`~actors.llm._http_pool.DEFAULT_TRANSPORT`). Run
    it with the spec of :func:`provider_child_spec`: it needs its ``crash_on`` and ``durable``.
    """

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        metrics: ActorRef | None = None,
        catalog: ModelCatalog | None = None,
        api_key: SecretStr | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.name = name
        self._transport: Transport = transport or config.transport or DEFAULT_TRANSPORT
        self.config = config
        self._api_key = api_key
        self._reports = ProviderReports(name, metrics)
        self._catalog = catalog or ModelCatalog(config.context_windows, config.prices,
                                                params=config.model_params)
        self._kind = rules_for(config.kind)
        self._cancel_stops_billing = self._kind.cancel_stops_billing(config)
        self._key: str = _PLACEHOLDER_KEY
        self._http: httpx2.AsyncClient | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._connection_failures = 0
        self._permits: Counter[int] = Counter()  # breaker epoch -> calls in flight admitted in it
        # aiohttp can lose its own read timeout (see _response_bounds): bound the reads here too.
        self._read_timeout = config.timeout if self._transport == "aiohttp" else None
        self._secret_headers = tuple(
            value for value in config.extra_headers.values() if len(value) >= _MIN_SECRET_HEADER)

    def __repr__(self) -> str:
        return (
            f"<ProviderActor {self.name!r} [{self.config.kind} {redact(self.config.base_url)}"
            f" over {self._transport} | "
            f"{self._permits.total()} in flight]>"
        )

    @property
    def _state(self) -> ProviderState:
        state: ProviderState = self.context.durable
        return state

    # -- lifecycle ----------------------------------------------------------------------------

    async def on_start(self) -> None:
        if self._reports.metrics is None:
            self._reports.metrics = self.context.find("metrics")
        state = self._state
        state.ensure(self.name, self.config, self.context.clock)
        state.on_transition = self._reports.breaker_transition
        state.health.restarting = False
        state.health.pool_in_use = 0
        self._build_client(self._read_key())

    async def on_stop(self) -> None:
        state = self._state
        state.on_transition = None
        # Calls still in flight were cancelled with this instance and their outcomes never come
        # back to it: give their breaker permits back, or a half-open breaker (durable across
        # restarts) would wait forever for trial calls that no longer exist.
        if state.breaker is not None:
            for epoch, calls in self._permits.items():
                for _ in range(calls):
                    state.breaker.release(epoch)
        self._permits.clear()
        state.health.pool_in_use = 0
        await self._close_client()

    def _read_key(self) -> str | None:
        """The key now, or ``None`` when a required key is missing (calls then fail fast)."""
        if self._api_key is not None:
            return self._api_key.get_secret_value()
        try:
            secret = self.config.read_api_key(provider=self.name)
        except LLMAuthError:
            return None
        return secret.get_secret_value() if secret is not None else _PLACEHOLDER_KEY

    def _build_client(self, key: str | None) -> None:
        config = self.config
        self._key = key if key is not None else _PLACEHOLDER_KEY
        self._http = provider_http_client(
            limits=httpx2.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_keepalive_connections,
                keepalive_expiry=config.keepalive_expiry,
            ),
            timeout=httpx2.Timeout(config.timeout, connect=config.connect_timeout),
            # Every response (errors and streams included) tightens the limiter from its
            # headers and has its body bounded, in one place and without the SDK's
            # raw-response wrapper per call.
            event_hooks={"response": [self._on_response]},
            transport=self._transport,
        )
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=self._key,
            http_client=self._http,
            max_retries=0,
            default_headers={**PLATFORM_HEADERS_OMITTED, **self._kind.headers(config)},
        )
        self._state.health.auth_rejected = (
            key is not None and _fingerprint(key) == self._state.rejected_key
        )

    async def _on_response(self, response: httpx2.Response) -> None:
        limiter = self._state.limiter
        if limiter is not None:
            limiter.update_from_headers(response.headers)
        bound_response(response, self.config.max_response_bytes)

    async def _close_client(self) -> None:
        client, http = self._client, self._http
        self._client = self._http = None
        await _close(client, http)

    # -- in the actor's loop, or at once in the caller's task (see immediate_messages) ----------

    def immediate_messages(self) -> tuple[type, ...]:
        # Handling a call never awaits (its work is piped: run in the caller's task for an ask
        # the idle provider takes at once, else a child task): no mailbox trip.
        return (ProviderCall,)

    def handle_now(self, message: ProviderCall) -> None:
        self._start(message)

    async def receive(self, message: ProviderCall) -> None:
        if type(message) is not ProviderCall:
            raise TypeError(f"{self.name} takes ProviderCall, not {type(message).__name__}")
        self._start(message)

    def _start(self, message: ProviderCall) -> None:
        call = message
        plan = self._plan(call)
        self._catalog.preflight_check(call.prompt_tokens, plan.max_tokens, call.model)
        self._check_key(call.model)
        state = self._state
        assert state.breaker is not None
        tokens = call.prompt_tokens + plan.max_tokens
        self._refuse_if_wait_exceeds_budget(call, tokens)
        request = self.context.request
        if call.stream and call.deltas is None and (
                request is None or request.kind is not RequestKind.STREAM):
            raise TypeError("a stream without a delta sink needs ask_stream()")
        # The permit last: nothing between it and the call's child task may raise, or a
        # half-open breaker would lose a trial permit for good.
        if not state.breaker.try_acquire():
            retry_after = state.breaker.retry_after()
            raise ProviderUnavailable(
                f"{self.name} is unavailable: circuit breaker {state.breaker.state.value.lower()}"
                f" (retry after {retry_after:.3g} s)",
                provider=self.name, model=call.model, retry_after=retry_after,
            )
        epoch = state.breaker.epoch
        progress = Progress(started=time.perf_counter())
        assert self._client is not None
        site = CallSite(self.name, self._client, state, self._catalog, self._secrets(),
                        self._plan, self._read_timeout, self._cancel_stops_billing,
                        self._kind.answerer_stops_billing)
        work: Callable[..., Awaitable[Any]]
        if call.stream:
            assert request is not None
            work = site.stream
            args: tuple[Any, ...] = (call, plan, tokens, progress, request)
        else:
            work = site.complete
            args = (call, plan, tokens, progress)
        self._permits[epoch] += 1
        state.health.pool_in_use = min(self._permits.total(), self.config.max_connections)
        self.context.pipe(self._guarded, work, *args, reply_to=request,
                          then=lambda outcome: self._finished(call, progress, outcome, epoch))

    def _plan(self, call: ProviderCall) -> CallPlan:
        learned = self._state.learned_params.get(call.model, frozenset())
        return plan_call(call, self.config, self._kind, self._catalog.params(call.model), learned)

    def _refuse_if_wait_exceeds_budget(self, call: ProviderCall, tokens: int) -> None:
        """Refuse at once (retryable, so the router falls back) when our own rate limits would
        hold the request past its deadline: waiting here would only end in a timeout."""
        request, limiter = self.context.request, self._state.limiter
        if request is None or limiter is None:
            return
        wait = limiter.wait_time(tokens)
        # An infinite wait means "until requests in flight are answered": that may be soon.
        if 0 < wait < math.inf and anyio.current_time() + wait >= request.deadline:
            raise LLMRateLimitError(
                f"{self.name} is at its configured rate limit: the next slot is in {wait:.3g} s, "
                "after this request's deadline",
                provider=self.name, model=call.model, retry_after=wait)

    async def _guarded(self, work: Callable[..., Awaitable[Any]], call: ProviderCall,
                       *args: Any) -> Any:
        """Run one call; upstream data of the wrong shape becomes a typed error, not a bug.

        The SDK decodes a body it takes for text as UTF-8: bytes that are not raise there.
        """
        try:
            return await work(call, *args)
        except Exception as exc:
            error = unwrap_group(exc)
            if isinstance(error, MalformedResponse | UnicodeDecodeError):
                raise malformed_error(self.name, call.model, error) from error
            raise error from None

    def _check_key(self, model: str) -> None:
        """Fail fast while the key is missing or is one the provider already rejected."""
        state = self._state
        if not state.health.auth_rejected and self._key != _PLACEHOLDER_KEY:
            return
        if not self.config.requires_api_key and state.rejected_key is None:
            return
        key = self._read_key()
        if key is None:
            raise LLMAuthError(f"{self.name} has no API key (see api_key_env / api_key_file)",
                               provider=self.name, model=model)
        if _fingerprint(key) == state.rejected_key:
            raise LLMAuthError(f"{self.name} rejected this API key; waiting for a new one",
                               provider=self.name, model=model)
        # A new key appeared: a new client for it (no call is in flight on the old one, which
        # closes in a child task).
        old = (self._client, self._http)
        self._build_client(key)
        self.context.pipe(_close, *old, reply_to=None)

    def _finished(self, call: ProviderCall, progress: Progress, outcome: Outcome,
                  epoch: int) -> Any:
        state = self._state
        breaker = state.breaker
        assert breaker is not None
        self._permits[epoch] -= 1
        if not self._permits[epoch]:
            del self._permits[epoch]
        state.health.pool_in_use = min(self._permits.total(), self.config.max_connections)
        latency = time.perf_counter() - progress.started
        error = outcome.error
        response: LLMResponse | None = None
        if outcome.cancelled:
            breaker.release(epoch)
        elif error is not None:
            breaker.on_error(error, epoch)
            state.health.last_error_type = type(error).__name__
        else:
            breaker.on_success(epoch)
            response = outcome.value
        self._reports.finished(call, progress, latency, response, outcome,
                               now=self.context.clock.now(), pool_in_use=state.health.pool_in_use)
        if isinstance(error, LLMConnectionError):
            self._connection_failures += 1
            if self._connection_failures >= self.config.max_connection_failures:
                state.health.restarting = True
                logger.warning("%s: %d consecutive connection failures, restarting", self.name,
                               self._connection_failures)
                raise _ConnectionFailuresExceeded(
                    error.message, provider=self.name, model=call.model
                ) from error
        elif not outcome.cancelled:
            self._connection_failures = 0
        if isinstance(error, LLMAuthError) and error.status_code in (401, 403):
            state.rejected_key = _fingerprint(self._key)
            state.health.auth_rejected = True
            state.health.restarting = True
            logger.warning("%s rejected its API key: restarting to re-read it", self.name)
            raise _AuthRejected(error.message, provider=self.name, model=call.model,
                                status_code=error.status_code,
                                accepted=error.accepted) from error
        if error is not None:
            raise error
        return response  # an ask's answer (a stream's was its StreamEnd)

    def _secrets(self) -> Sequence[str]:
        key = (self._key,) if self._key != _PLACEHOLDER_KEY else ()
        return key + self._secret_headers


def provider_child_spec(
    name: str,
    config: ProviderConfig,
    metrics: ActorRef | None = None,
    catalog: ModelCatalog | None = None,
    *,
    api_key: SecretStr | None = None,
    transport: Transport | None = None,
    actor_name: str | None = None,
    durable: Callable[[], ProviderState] = ProviderState,
) -> ChildSpec:
    """How to run provider ``name``: it crashes on a rejected key or repeated connection failures
    (so it is restarted with a new key and pool); its limiter, breaker and health are durable.

    ``api_key`` given explicitly replaces the configured environment variable or key file;
    ``transport`` overrides the config's HTTP transport under the SDK (see :mod:`._http_pool`);
    ``actor_name`` names the actor (default ``name``); ``durable`` makes the state that outlives
    restarts (a limiter shared through Redis, for one).
    """
    return ChildSpec(
        actor_name or name,
        lambda: ProviderActor(name, config, metrics=metrics, catalog=catalog, api_key=api_key,
                              transport=transport),
        crash_on=(_AuthRejected, _ConnectionFailuresExceeded),
        mailbox_size=config.mailbox_size,
        durable=durable,
    )
