"""ProviderActor: one OpenAI-compatible provider behind an actor (OpenAI, OpenRouter, any base_url).

The actor owns an ``httpx2`` pool with the configured limits and an ``AsyncOpenAI`` client built on
it with ``max_retries=0`` (the runtime is the only retry loop). It answers
``ask(ProviderCall(stream=False))`` with an :class:`LLMResponse` and
``ask_stream(ProviderCall(stream=True))`` with :class:`TextDelta` items then one
:class:`StreamEnd`.

Per call, in the actor's loop: the pre-flight context-window check, then the breaker's permit (an
open breaker refuses at once with :class:`ProviderUnavailable`). In a child task: the rate
limiter (one request, and the prompt's estimated tokens plus ``max_tokens``: what OpenAI counts
against a tokens-per-minute limit when the request arrives), the SDK call; every response's
``x-ratelimit-*`` headers reach the limiter through an ``httpx2`` response hook. Back in the
actor's loop (the ``then`` callback, the single writer of breaker and counters): the breaker's
outcome, metrics events, and the deliberate crashes:

* an upstream 401 crashes the instance (the caller still gets its :class:`LLMAuthError`); the
  supervisor restarts it and the new instance re-reads the key and rebuilds the pool. A key that
  was already rejected is not sent again: calls fail fast with :class:`LLMAuthError` until the
  key read from the environment (or the key file) changes, which is checked on every call;
* ``max_connection_failures`` consecutive connection errors crash it too (a new pool).

The rate limiter, the breaker and a :class:`ProviderHealth` survive restarts (``durable``): the
provider's quota did not reset because we restarted, and other actors read the health without a
round trip (``system.durable(name).health``).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import openai
from openai.resources.chat.completions import AsyncCompletions
from pydantic import SecretStr

from actors.metrics._store import (
    POOL_CONNECTIONS_IN_USE,
    BreakerTransition,
    GaugeSet,
    RequestFinished,
)
from runtime import Actor, ActorRef, ChildSpec, Clock, Outcome, Request, unwrap_group

from ._breaker import BreakerState, CircuitBreaker
from ._catalog import ModelCatalog
from ._config import ProviderConfig
from ._error_mapping import map_sdk_errors
from ._errors import (
    LLMAuthError,
    LLMClientError,
    LLMConnectionError,
    LLMRateLimitError,
    LLMServerError,
    LLMStreamingError,
    ProviderUnavailable,
)
from ._http_pool import provider_http_client
from ._limits import ProviderRateLimiter
from ._messages import LLMResponse, ProviderCall, StreamEnd, TextDelta, ToolCall, Usage
from ._tokens import count_text_tokens

__all__ = ["ProviderActor", "ProviderHealth", "ProviderState", "provider_child_spec"]

logger = logging.getLogger(__name__)

# Without a key (``requires_api_key: false``, a local server) the SDK still wants one.
_PLACEHOLDER_KEY = "no-key-required"
_GAUGE_INTERVAL = 1.0
# Keyword arguments ``chat.completions.create`` takes; other request params go in ``extra_body``.
_SDK_PARAMS = frozenset(inspect.signature(AsyncCompletions.create).parameters) - {
    "self", "messages", "model", "stream", "stream_options", "extra_headers", "extra_query",
    "extra_body", "timeout",
}
_GENERATION_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens")


class _AuthRejected(LLMAuthError):
    """The provider rejected the key: the caller's error, and the reason to crash (restart)."""


class _ConnectionFailuresExceeded(LLMConnectionError):
    """The last of ``max_connection_failures`` consecutive connection errors: crash, new pool."""


@dataclass
class ProviderHealth:
    """What other actors may read about a provider without asking it (never mutate it).

    Written only by the provider actor. ``breaker`` is ``closed``, ``open`` or ``half_open``.
    """

    clock: Clock | None = None
    breaker: str = "closed"
    open_until: float = 0.0
    restarting: bool = False
    pool_in_use: int = 0
    last_error_type: str | None = None
    auth_rejected: bool = False

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial call through (0.0 when not open)."""
        if self.breaker != "open" or self.clock is None:
            return 0.0
        return max(0.0, self.open_until - self.clock.now())

    def available(self) -> bool:
        """Whether a call now has a chance: not restarting, breaker not open (or its wait over)."""
        return not self.restarting and self.retry_after() == 0.0

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view for ``/health``."""
        return {
            "breaker": self.breaker,
            "retry_after": round(self.retry_after(), 3),
            "restarting": self.restarting,
            "pool_in_use": self.pool_in_use,
            "last_error_type": self.last_error_type,
            "auth_rejected": self.auth_rejected,
        }


@dataclass
class ProviderState:
    """The durable part of a provider actor: created once, kept across its restarts.

    ``limiter`` and ``breaker`` are built by the first instance (they need the kernel's clock).
    """

    health: ProviderHealth = field(default_factory=ProviderHealth)
    limiter: ProviderRateLimiter | None = None
    breaker: CircuitBreaker | None = None
    rejected_key: str | None = field(default=None, repr=False)
    """Fingerprint (sha256) of the last key the provider rejected; never the key itself."""
    on_transition: Callable[[BreakerState, BreakerState], None] | None = field(
        default=None, repr=False)
    make_limiter: Callable[[Clock], ProviderRateLimiter] | None = field(default=None, repr=False)
    """Builds the limiter instead of a local one (the shared windows of a cluster)."""

    def ensure(self, name: str, config: ProviderConfig, clock: Clock) -> None:
        if self.limiter is None and self.make_limiter is not None:
            self.limiter = self.make_limiter(clock)
        if self.limiter is None:
            self.limiter = ProviderRateLimiter(config.rate_limits, clock=clock, name=name)
        if self.breaker is None:
            self.breaker = CircuitBreaker(
                config.breaker, clock=clock, name=name, on_transition=self._transition
            )
            self.health.clock = clock

    def _transition(self, old: BreakerState, new: BreakerState) -> None:
        self.health.breaker = new.value.lower()
        if new is BreakerState.OPEN and self.breaker is not None and self.health.clock:
            wait = self.breaker.config.wait_duration_in_open_state
            self.health.open_until = self.health.clock.now() + wait
        if self.on_transition is not None:
            self.on_transition(old, new)


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# What reading a response of the wrong shape raises: the SDK builds its models without validating
# (`construct`), so a list where an object belongs surfaces as AttributeError/TypeError when read;
# ValueError covers bad JSON, bad UTF-8 and pydantic's ValidationError.
_MALFORMED = (AttributeError, TypeError, ValueError, KeyError, IndexError)


def _malformed(
    provider: str, model: str, error: Exception, partial_text: str = ""
) -> LLMClientError:
    detail = f"{provider} sent a malformed response ({type(error).__name__})"
    if partial_text:
        return LLMStreamingError(detail, provider=provider, model=model,
                                 partial_text=partial_text, retryable=False)
    return LLMServerError(detail, provider=provider, model=model)


@dataclass
class _Progress:
    """What a call's child task learned, read by ``then`` even when the call failed."""

    started: float
    ttft: float | None = None
    rate_limited: bool = False
    streamed: LLMResponse | None = None  # a stream's final response (its outcome carries none)


@dataclass
class _ToolCallBuilder:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ProviderActor(Actor):
    """Calls one provider through the official SDK (see the module docstring).

    ``metrics`` receives the events of :mod:`actors.metrics._store` (dropped when its mailbox is
    full); ``catalog`` prices and sizes models (default: built-in tables plus the config's);
    ``api_key`` replaces the configured environment variable or key file. Run it with the spec of
    :func:`provider_child_spec`: it needs its ``crash_on`` and ``durable``.
    """

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        metrics: ActorRef | None = None,
        catalog: ModelCatalog | None = None,
        api_key: SecretStr | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._api_key = api_key
        self._metrics = metrics
        self._catalog = catalog or ModelCatalog(config.context_windows, config.prices)
        self._key: str = _PLACEHOLDER_KEY
        self._http: httpx2.AsyncClient | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._connection_failures = 0
        self._in_flight = 0
        self._gauge_sent_at = float("-inf")

    def __repr__(self) -> str:
        return (
            f"<ProviderActor {self.name!r} [{self.config.kind} {self.config.base_url} | "
            f"{self._in_flight} in flight]>"
        )

    @property
    def _state(self) -> ProviderState:
        state: ProviderState = self.context.durable
        return state

    # -- lifecycle ----------------------------------------------------------------------------

    async def on_start(self) -> None:
        state = self._state
        state.ensure(self.name, self.config, self.context.clock)
        state.on_transition = self._breaker_transition
        state.health.restarting = False
        state.health.pool_in_use = 0
        self._build_client(self._read_key())

    async def on_stop(self) -> None:
        self._state.on_transition = None
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
        headers = dict(config.extra_headers)
        if config.kind == "openrouter":
            if config.site_url:
                headers.setdefault("HTTP-Referer", config.site_url)
            if config.app_name:
                headers.setdefault("X-Title", config.app_name)
        self._http = provider_http_client(
            limits=httpx2.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_keepalive_connections,
                keepalive_expiry=config.keepalive_expiry,
            ),
            timeout=httpx2.Timeout(config.timeout, connect=config.connect_timeout),
            # Every response (errors and streams included) tightens the limiter from its
            # headers, in one place and without the SDK's raw-response wrapper per call.
            event_hooks={"response": [self._on_response]},
        )
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=self._key,
            http_client=self._http,
            max_retries=0,
            default_headers=headers,
        )
        self._state.health.auth_rejected = (
            key is not None and _fingerprint(key) == self._state.rejected_key
        )

    async def _on_response(self, response: httpx2.Response) -> None:
        limiter = self._state.limiter
        if limiter is not None:
            limiter.update_from_headers(response.headers)

    async def _close_client(self) -> None:
        client, http = self._client, self._http
        self._client = self._http = None
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            if client is not None:
                await client.close()
            if http is not None:
                await http.aclose()

    # -- in the actor's loop ------------------------------------------------------------------

    async def receive(self, message: Any) -> Any:
        if not isinstance(message, ProviderCall):
            raise TypeError(f"{self.name} takes ProviderCall, not {type(message).__name__}")
        call = message
        kwargs, max_tokens = self._request_kwargs(call)
        self._catalog.preflight_check(call.prompt_tokens, max_tokens, call.model)
        await self._check_key(call.model)
        state = self._state
        assert state.breaker is not None
        if not state.breaker.try_acquire():
            retry_after = state.breaker.retry_after()
            raise ProviderUnavailable(
                f"{self.name} is unavailable: circuit breaker {state.breaker.state.value.lower()}"
                f" (retry after {retry_after:.3g} s)",
                provider=self.name, model=call.model, retry_after=retry_after,
            )
        tokens = call.prompt_tokens + max_tokens
        self._refuse_if_wait_exceeds_budget(call, tokens)
        progress = _Progress(started=time.perf_counter())
        work: Callable[..., Awaitable[Any]]
        if call.stream:
            request = self.context.request
            assert request is not None, "a stream needs ask_stream()"
            work = self._stream
            args: tuple[Any, ...] = (call, kwargs, tokens, progress, request)
        else:
            work = self._complete
            args = (call, kwargs, tokens, progress)
        self._in_flight += 1
        self._state.health.pool_in_use = min(self._in_flight, self.config.max_connections)
        self.context.pipe(self._guarded, work, *args,
                          then=lambda outcome: self._finished(call, progress, outcome))
        return None

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
        """Run one call; upstream data of the wrong shape becomes a typed error, not a bug."""
        try:
            return await work(call, *args)
        except Exception as exc:
            error = unwrap_group(exc)
            if isinstance(error, _MALFORMED) and not isinstance(error, LLMClientError):
                raise _malformed(self.name, call.model, error) from error
            raise error from None

    async def _check_key(self, model: str) -> None:
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
        # A new key appeared: a new client for it (no call is in flight on the old one).
        await self._close_client()
        self._build_client(key)

    def _finished(self, call: ProviderCall, progress: _Progress, outcome: Outcome) -> Any:
        state = self._state
        breaker = state.breaker
        assert breaker is not None
        self._in_flight -= 1
        state.health.pool_in_use = min(self._in_flight, self.config.max_connections)
        latency = time.perf_counter() - progress.started
        error = outcome.error
        response: LLMResponse | None = None
        if outcome.cancelled:
            breaker.release()
        elif error is not None:
            breaker.on_error(error)
            state.health.last_error_type = type(error).__name__
        else:
            breaker.on_success()
            response = outcome.value
        self._report(call, progress, latency, response, outcome)
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
                                status_code=error.status_code) from error
        if error is not None:
            raise error
        return None if call.stream else response

    def _report(self, call: ProviderCall, progress: _Progress, latency: float,
                response: LLMResponse | None, outcome: Outcome) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        response = response if response is not None else progress.streamed
        usage = response.usage if response is not None else Usage()
        error_type = (
            "cancelled" if outcome.cancelled
            else type(outcome.error).__name__ if outcome.error is not None else None
        )
        metrics.try_tell(RequestFinished(
            provider=self.name,
            model=response.model if response is not None and response.model else call.model,
            latency_s=latency,
            ttft_s=progress.ttft,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=usage.total_cost or 0.0,
            error_type=error_type,
            rate_limited=progress.rate_limited,
        ))
        now = self.context.clock.now()
        if now - self._gauge_sent_at >= _GAUGE_INTERVAL:
            self._gauge_sent_at = now
            metrics.try_tell(GaugeSet(POOL_CONNECTIONS_IN_USE, {"provider": self.name},
                                      float(self._state.health.pool_in_use)))

    def _breaker_transition(self, old: BreakerState, new: BreakerState) -> None:
        logger.info("%s: circuit breaker %s -> %s", self.name, old.value, new.value)
        if self._metrics is not None:
            self._metrics.try_tell(BreakerTransition(self.name, old.value.lower(),
                                                     new.value.lower()))

    def _request_kwargs(self, call: ProviderCall) -> tuple[dict[str, Any], int]:
        """The SDK's keyword arguments for ``call``, and the ``max_tokens`` it allows."""
        config = self.config
        params: dict[str, Any] = {name: getattr(config, name) for name in _GENERATION_FIELDS}
        requested = call.request.params
        if "max_completion_tokens" in requested:
            params.pop("max_tokens")
        params.update(requested)
        extra_body: dict[str, Any] = dict(config.extra_params)
        kwargs: dict[str, Any] = {"model": call.model, "messages": list(call.request.messages)}
        for key, value in params.items():
            if key in _SDK_PARAMS:
                kwargs[key] = value
            else:
                extra_body[key] = value
        if call.request.tools:
            kwargs["tools"] = list(call.request.tools)
        if config.use_native_fallbacks and call.fallback_models:
            extra_body["models"] = [call.model, *call.fallback_models]
        if extra_body:
            kwargs["extra_body"] = extra_body
        limit = params.get("max_completion_tokens", params.get("max_tokens"))
        max_tokens = int(limit) if limit else config.max_tokens
        return kwargs, max_tokens

    # -- in a call's child task ---------------------------------------------------------------

    def _secrets(self) -> Sequence[str]:
        return (self._key,) if self._key != _PLACEHOLDER_KEY else ()

    def _note_failure(self, error: LLMClientError, progress: _Progress) -> None:
        """A 429's ``Retry-After`` pauses the limiter (its headers were read by the hook)."""
        limiter = self._state.limiter
        assert limiter is not None
        if isinstance(error, LLMRateLimitError) and error.status_code == 429:
            progress.rate_limited = True
            if error.retry_after:
                limiter.pause_for(error.retry_after)

    async def _complete(self, call: ProviderCall, kwargs: dict[str, Any], tokens: int,
                        progress: _Progress) -> LLMResponse:
        client, limiter = self._client, self._state.limiter
        assert client is not None and limiter is not None
        try:
            async with limiter.admit(tokens) as permit:
                with map_sdk_errors(self.name, call.model, self._secrets()):
                    completion = await client.chat.completions.create(**kwargs)
                permit.sent()
        except LLMClientError as exc:
            self._note_failure(exc, progress)
            raise
        elapsed = time.perf_counter() - progress.started
        progress.ttft = elapsed
        choice = completion.choices[0] if completion.choices else None
        message = choice.message if choice is not None else None
        tool_calls = [
            ToolCall(id=tc.id, name=tc.function.name, arguments=tc.function.arguments or "{}")
            for tc in (message.tool_calls or ()) if tc.type == "function"
        ] if message is not None else []
        content = (message.content or "") if message is not None else ""
        return LLMResponse(
            content=content,
            tool_calls=tool_calls,
            finish_reason=choice.finish_reason if choice is not None else None,
            usage=self._usage(call, completion.usage, content, tool_calls,
                              completion.model or call.model),
            model=completion.model or call.model,
            provider=self.name,
            response_time_ms=elapsed * 1000,
            time_to_first_token_ms=elapsed * 1000,
        )

    async def _stream(self, call: ProviderCall, kwargs: dict[str, Any], tokens: int,
                      progress: _Progress, request: Request) -> None:
        client, limiter = self._client, self._state.limiter
        assert client is not None and limiter is not None
        secrets = self._secrets()
        parts: list[str] = []
        tools: dict[int, _ToolCallBuilder] = {}
        usage: Any = None
        finish_reason: str | None = None
        model = call.model
        relay = _Relay(request)
        try:
            async with limiter.admit(tokens) as permit:
                with map_sdk_errors(self.name, call.model, secrets):
                    stream = await client.chat.completions.create(
                        **kwargs, stream=True, stream_options={"include_usage": True})
                permit.sent()
            failure: LLMClientError | None = None
            try:
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(relay.run)
                    try:
                        with map_sdk_errors(self.name, call.model, secrets,
                                            partial_text=lambda: "".join(parts)):
                            async for chunk in stream:
                                if chunk.usage is not None:
                                    usage = chunk.usage
                                if chunk.model:
                                    model = chunk.model
                                for choice in chunk.choices:
                                    delta = choice.delta
                                    if choice.finish_reason:
                                        finish_reason = choice.finish_reason
                                    if delta.tool_calls:
                                        if progress.ttft is None:
                                            progress.ttft = time.perf_counter() - progress.started
                                        _add_tool_deltas(tools, delta.tool_calls)
                                    if delta.content:
                                        if progress.ttft is None:
                                            progress.ttft = time.perf_counter() - progress.started
                                        parts.append(delta.content)
                                        await relay.push(delta.content)
                    except LLMClientError as exc:
                        failure = exc  # the text read so far still reaches the caller first
                    except _MALFORMED as exc:
                        failure = _malformed(self.name, call.model, exc, "".join(parts))
                    relay.finish()
            finally:
                # At once, also when cancelled: an unread answer must not keep costing tokens.
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await stream.close()
            if failure is not None:
                raise failure
        except LLMClientError as exc:
            self._note_failure(exc, progress)
            raise
        elapsed = time.perf_counter() - progress.started
        content = "".join(parts)
        tool_calls = [
            ToolCall(id=b.id, name=b.name, arguments="".join(b.arguments) or "{}")
            for _, b in sorted(tools.items())
        ]
        response = LLMResponse(
            content=content,
            tool_calls=tool_calls,
            finish_reason=finish_reason,
            usage=self._usage(call, usage, content, tool_calls, model),
            model=model,
            provider=self.name,
            response_time_ms=elapsed * 1000,
            time_to_first_token_ms=progress.ttft * 1000 if progress.ttft is not None else None,
        )
        progress.streamed = response
        await request.send(StreamEnd(response))

    def _usage(self, call: ProviderCall, usage: Any, content: str, tool_calls: list[ToolCall],
               model: str) -> Usage:
        """Usage as reported (estimated when absent), priced: OpenRouter's cost, else ours."""
        reported_cost: float | None = None
        if usage is not None:
            prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
            details = usage.prompt_tokens_details
            cached = (details.cached_tokens or 0) if details is not None else 0
            extra: Mapping[str, Any] = usage.model_extra or {}
            cost = extra.get("cost")
            if isinstance(cost, int | float) and not isinstance(cost, bool):
                reported_cost = float(cost)
        else:
            prompt, cached = call.prompt_tokens, 0
            text = content + "".join(c.name + c.arguments for c in tool_calls)
            completion = count_text_tokens(text, model) if text else 0
        if reported_cost is None:
            reported_cost = self._catalog.cost_of(model, prompt, completion, cached)
            if reported_cost is None and model != call.model:
                reported_cost = self._catalog.cost_of(call.model, prompt, completion, cached)
        return Usage(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion, cached_tokens=cached,
                     total_cost=reported_cost)


def _add_tool_deltas(tools: dict[int, _ToolCallBuilder], pieces: Sequence[Any]) -> None:
    for piece in pieces:
        builder = tools.setdefault(piece.index, _ToolCallBuilder())
        if piece.id:
            builder.id = piece.id
        if piece.function is not None:
            if piece.function.name:
                builder.name += piece.function.name
            if piece.function.arguments:
                builder.arguments.append(piece.function.arguments)


class _Relay:
    """Forwards a stream's text to the caller, joining the deltas read close together.

    The SDK yields the events of one network read without suspending; the relay task runs when
    the reader waits for the network, sends the first delta at once, and otherwise at least every
    ``_MAX_DELAY`` seconds: deltas read meanwhile go out as one :class:`TextDelta`. Why: each item
    through the caller's bounded stream costs a few task switches, as much as the SDK's parsing of
    a chunk. A reader with ``_MAX_PENDING`` deltas unsent waits for the consumer (backpressure).
    """

    _MAX_PENDING = 256
    _MAX_DELAY = 0.002

    def __init__(self, request: Request) -> None:
        self._request = request
        self._pending: list[str] = []
        self._ready = anyio.Event()
        self._drained = anyio.Event()
        self._oldest = 0.0
        self._sent_any = False
        self._finished = False

    async def push(self, text: str) -> None:
        pending = self._pending
        pending.append(text)
        self._ready.set()
        if len(pending) == 1:
            self._oldest = time.perf_counter()
        if len(pending) >= self._MAX_PENDING:
            await self._drained.wait()
        elif not self._sent_any or time.perf_counter() - self._oldest >= self._MAX_DELAY:
            await anyio.lowlevel.checkpoint()  # the relay runs now

    def finish(self) -> None:
        """No more text: send what is pending, then end :meth:`run`."""
        self._finished = True
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready = anyio.Event()
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                self._sent_any = True
                await self._request.send(TextDelta(text))
                self._drained.set()
                self._drained = anyio.Event()
            if self._finished and not self._pending:
                return


def provider_child_spec(
    name: str,
    config: ProviderConfig,
    metrics: ActorRef | None = None,
    catalog: ModelCatalog | None = None,
    *,
    api_key: SecretStr | None = None,
) -> ChildSpec:
    """How to run provider ``name``: it crashes on a rejected key or repeated connection failures
    (so it is restarted with a new key and pool); its limiter, breaker and health are durable.

    ``api_key`` given explicitly replaces the configured environment variable or key file.
    """
    return ChildSpec(
        name,
        lambda: ProviderActor(name, config, metrics=metrics, catalog=catalog, api_key=api_key),
        crash_on=(_AuthRejected, _ConnectionFailuresExceeded),
        mailbox_size=config.mailbox_size,
        durable=ProviderState,
    )
