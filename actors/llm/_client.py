"""The specification's client API, for those who embed one provider directly (no router).

::

    client = create_llm_client("openai", {"model": "gpt-4o-mini"}, api_key="sk-...")
    await client.initialize()
    tokens = await client.estimate_tokens(messages)
    response = await client.get_response(messages)             # an LLMResponse
    tracked = await client.get_response_with_cost_tracking(messages=messages)
    tracked["cost_info"]                                       # total, prompt, completion cost
    client.metrics.get_summary()                               # LLMMetrics, the actor's counts
    async with client.stream_response(messages) as stream:     # str deltas, then an LLMResponse
        ...
    await client.aclose()                                      # or: async with client: ...

``create_llm_client`` gives an :class:`OpenAIClient` (``openai``, ``openai-compatible``) or an
:class:`OpenRouterClient`; both are :class:`BaseLLMClient`. Underneath, :meth:`initialize` starts a
private actor system: a MetricsActor, a LedgerActor in memory, one
:class:`~actors.llm._provider.ProviderActor` and a RouterActor over it, so the client has the same
pool, limits, breaker, error mapping and restarts as the service, and honours the provider block's
``fallback_models`` (``model`` and at most ``max_retries`` of them), ``max_cost_per_request``,
``daily_cost_limit`` (the client's own day, in memory) and ``cost_warning_threshold``.
Every error raised is an :class:`~actors.llm._errors.LLMClientError` subclass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypedDict, get_args

from pydantic import SecretStr, ValidationError

from runtime import ActorRef, ActorSystem, Backoff, SupervisorSpec

from ._catalog import ModelCatalog
from ._client_settings import LLMClientConfig
from ._config import RESERVATION_TTL, CostConfig, LLMConfig
from ._errors import LLMStreamingError, translate_actor_errors
from ._messages import (
    ChatRequest,
    LLMResponse,
    ReasoningDelta,
    StreamEnd,
    TextDelta,
)
from ._provider_config import ProviderConfig, ProviderKind
from ._runtime import runtime_children
from ._spec_metrics import CostInfo, LLMMetrics, cost_info
from ._tokens import acount_message_tokens
from ._validation import describe_validation_error

__all__ = [
    "BaseLLMClient",
    "CostTrackedResponse",
    "OpenAIClient",
    "OpenRouterClient",
    "ResponseStream",
    "create_llm_client",
]

Message = dict[str, Any]
_KINDS: tuple[str, ...] = get_args(ProviderKind)
# The whole call's deadline is the configured timeout plus this margin, so that the provider's
# own typed timeout (httpx2's) wins the race when the provider is the slow part.
_DEADLINE_MARGIN = 5.0


def create_llm_client(
    provider: str,
    config: LLMClientConfig | ProviderConfig | Mapping[str, Any],
    api_key: str | None = None,
) -> BaseLLMClient:
    """A client for ``provider``: ``openai``, ``openrouter`` or ``openai-compatible``, or any name
    when ``config`` gives its ``kind``.

    ``config`` is a provider's block of ``config.yaml`` (either form), a :class:`ProviderConfig`
    or an :class:`LLMClientConfig`; it is validated here. ``ValueError`` names an unsupported
    provider or each invalid field. ``api_key`` given explicitly is used instead of the
    environment (never shown in a repr, a log or an error). Call :meth:`~BaseLLMClient.initialize`
    (or ``async with``) before use.
    """
    if isinstance(config, LLMClientConfig):
        key = config.api_key.get_secret_value() if api_key is None else api_key
        return create_llm_client(provider, config.model_dump(exclude={"api_key"},
                                                             exclude_unset=True), key)
    if isinstance(config, ProviderConfig):
        data: dict[str, Any] = config.model_dump(exclude_unset=True)
        data["kind"] = config.kind
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise TypeError(f"config must be a mapping or LLMClientConfig, not {type(config).__name__}")
    if provider in _KINDS:
        if data.setdefault("kind", provider) != provider:
            raise ValueError(f"kind: {data['kind']!r} does not match provider {provider!r}")
    elif data.get("kind") not in _KINDS:
        raise ValueError(f"Unsupported provider: {provider!r} (expected one of"
                         f" {', '.join(_KINDS)}, or a config with one of them as kind)")
    if (
        api_key is not None
        and data["kind"] == "openai-compatible"
        and data.get("api_key_env") is None
        and data.get("api_key_file") is None
    ):
        # The key comes with the call: the configuration need not say where to read one.
        data.setdefault("requires_api_key", False)
    try:
        validated = ProviderConfig.model_validate(data)
    except ValidationError as exc:
        problems = describe_validation_error(exc, model=ProviderConfig)
        raise ValueError(
            f"invalid configuration for provider {provider!r}: " + "; ".join(problems)
        ) from None
    client_class = OpenRouterClient if validated.kind == "openrouter" else OpenAIClient
    return client_class(validated, provider=provider,
                        api_key=SecretStr(api_key) if api_key is not None else None)


class CostTrackedResponse(TypedDict):
    """What :meth:`BaseLLMClient.get_response_with_cost_tracking` returns."""

    response: LLMResponse
    cost_info: CostInfo


class BaseLLMClient:
    """One provider behind a private actor system. Made by :func:`create_llm_client`, or
    directly from an :class:`LLMClientConfig` as the specification does (``OpenAIClient(config)``).

    :meth:`initialize` and :meth:`aclose` must run in the same task (the system is an anyio task
    group); ``async with client:`` does both.
    """

    kind: ProviderKind = "openai"

    def __init__(
        self,
        config: LLMClientConfig | ProviderConfig,
        *,
        provider: str | None = None,
        api_key: SecretStr | None = None,
    ) -> None:
        if isinstance(config, LLMClientConfig):
            api_key = config.api_key if api_key is None else api_key
            settings = config.model_dump(exclude={"api_key"}, exclude_unset=True)
            config = ProviderConfig.model_validate({**settings, "kind": self.kind})
        self.provider = provider if provider is not None else config.kind
        self.config = config
        self._api_key = api_key
        self._catalog = ModelCatalog(config.context_windows, config.prices)
        self._llm = self._llm_config()
        self._stack: AsyncExitStack | None = None
        self._ref: ActorRef | None = None
        self._metrics: LLMMetrics | None = None

    def __repr__(self) -> str:
        state = "running" if self._ref is not None else "not initialized"
        return f"<{type(self).__name__} {self.provider} {self.config.model} [{state}]>"

    async def initialize(self) -> None:
        """Start the metrics and provider actors (a no-op if already started)."""
        if self._ref is not None:
            return
        keys = None if self._api_key is None else {self.provider: self._api_key}
        root = SupervisorSpec(f"llm-client:{self.provider}",
                              runtime_children(self._llm, self._catalog, api_keys=keys),
                              max_restarts=10, max_seconds=60.0,
                              backoff=Backoff(initial=0.1, maximum=5.0))
        async with AsyncExitStack() as stack:
            system = await stack.enter_async_context(ActorSystem(root))
            self._metrics = LLMMetrics.of(system)
            self._ref = system.ref("router")
            self._stack = stack.pop_all()

    async def aclose(self) -> None:
        """Stop the actors and close their connections. Idempotent."""
        stack, self._stack, self._ref, self._metrics = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def metrics(self) -> LLMMetrics:
        """This client's :class:`LLMMetrics`: every call it made, recorded by its provider actor.

        Raises ``RuntimeError`` before :meth:`initialize`.
        """
        self._started()
        assert self._metrics is not None
        return self._metrics

    async def estimate_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of ``messages`` for the configured model (OpenAI's counting recipe).

        Large inputs are counted in a worker thread, so the event loop never waits on them.
        """
        return await acount_message_tokens(list(messages), self.config.model)

    async def get_response(
        self, messages: Sequence[Message], tools: Sequence[Message] | None = None, **kwargs: Any
    ) -> LLMResponse:
        """One complete answer.

        ``kwargs`` override generation parameters (``temperature``, ``max_tokens``, ...);
        ``model=`` picks another model. Raises ``LLMClientError`` subclasses, among them
        ``LLMTokenLimitError`` before any call when the prompt does not fit the context window.
        """
        call = self._call(messages, tools, kwargs)
        with translate_actor_errors(provider=self.provider, model=call.model):
            response: LLMResponse = await self._started().ask(call, timeout=self._deadline())
        return response

    async def get_response_with_cost_tracking(
        self,
        messages: Sequence[Message] | None = None,
        tools: Sequence[Message] | None = None,
        **kwargs: Any,
    ) -> CostTrackedResponse:
        """:meth:`get_response`, and what it cost: ``{"response", "cost_info": {"total_cost",
        "prompt_cost", "completion_cost"}}`` in USD.

        The total is OpenRouter's reported cost where there is one, the price table's otherwise;
        with ``enable_cost_tracking: false`` every cost is ``None``. Arguments as for
        :meth:`get_response` (``messages`` may be given by keyword, as the specification does).
        """
        if messages is None:
            raise TypeError("get_response_with_cost_tracking() needs messages")
        response = await self.get_response(messages, tools, **kwargs)
        if not self.config.enable_cost_tracking:
            info: CostInfo = {"total_cost": None, "prompt_cost": None, "completion_cost": None}
        else:
            info = cost_info(response, self._catalog)
        return {"response": response, "cost_info": info}

    def stream_response(
        self, messages: Sequence[Message], tools: Sequence[Message] | None = None, **kwargs: Any
    ) -> ResponseStream:
        """Stream an answer: ``str`` text deltas, then one final :class:`LLMResponse` (a
        reasoning model's reasoning is not streamed here: it is the response's ``reasoning``).

        Use as ``async with client.stream_response(...) as stream: async for item in stream``
        so that leaving early closes the upstream stream at once; a plain ``async for`` closes it
        when the iteration ends. Arguments as for :meth:`get_response`.
        """
        return ResponseStream(self, messages, tools, kwargs)

    # -- internals ------------------------------------------------------------------------------

    def _started(self) -> ActorRef:
        if self._ref is None:
            raise RuntimeError(
                f"{type(self).__name__} is not initialized: call initialize() or use async with"
            )
        return self._ref

    def _llm_config(self) -> LLMConfig:
        # One provider; the ledger's day is this client's, in memory; no budget but the
        # provider block's own. Each attempt may take ``timeout``: the request has room for all.
        attempts = len(self.config.models[: 1 + self.config.max_retries])
        return LLMConfig(
            providers={self.provider: self.config}, active=self.provider,
            fallback_order=[self.provider], cost=CostConfig(track_costs=False),
            request_timeout=min(self.config.timeout * attempts + _DEADLINE_MARGIN,
                                RESERVATION_TTL - _DEADLINE_MARGIN))

    def _deadline(self) -> float:
        return self._llm.request_timeout + _DEADLINE_MARGIN

    def _call(self, messages: Sequence[Message], tools: Sequence[Message] | None,
              kwargs: dict[str, Any]) -> ChatRequest:
        params = dict(kwargs)
        model = params.pop("model", None)
        self.config.output_limit(params)  # refuses a bad limit with a typed error, before a call
        return ChatRequest.of(list(messages), list(tools) if tools else None,
                              model=str(model) if model else None, provider=self.provider,
                              params=params)


class OpenAIClient(BaseLLMClient):
    """OpenAI, or any OpenAI-compatible endpoint: prices from the configured price table."""

    kind: ProviderKind = "openai"


class OpenRouterClient(BaseLLMClient):
    """OpenRouter: ``HTTP-Referer`` / ``X-Title`` from ``extra_headers`` (or ``site_url`` /
    ``app_name``), the cost OpenRouter reports, and optionally its native ``models`` fallbacks."""

    kind: ProviderKind = "openrouter"


class ResponseStream:
    """The items of one streamed answer: ``str`` deltas of its text, then the final
    :class:`LLMResponse` (a reasoning model's reasoning is its ``reasoning``, not a delta)."""

    def __init__(self, client: BaseLLMClient, messages: Sequence[Message],
                 tools: Sequence[Message] | None, kwargs: dict[str, Any]) -> None:
        self._client = client
        self._args = (messages, tools, kwargs)
        self._stack: AsyncExitStack | None = None
        self._items: AsyncIterator[Any] | None = None
        self._finished = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str | LLMResponse:
        if self._finished:
            raise StopAsyncIteration
        if self._items is None:
            await self._open()
        assert self._items is not None
        while True:
            try:
                with translate_actor_errors(provider=self._client.provider):
                    item = await self._items.__anext__()
            except BaseException:
                await self.aclose()
                raise
            if isinstance(item, TextDelta):
                return item.text
            if isinstance(item, ReasoningDelta):
                continue  # the specification's stream is text; the reasoning is the response's
            await self.aclose()
            if isinstance(item, StreamEnd):
                return item.response
            raise LLMStreamingError(f"the stream from {self._client.provider} sent an item of "
                                    f"unknown type {type(item).__name__}",
                                    provider=self._client.provider, retryable=False)

    async def _open(self) -> None:
        messages, tools, kwargs = self._args
        call = self._client._call(messages, tools, kwargs)
        ref = self._client._started()
        async with AsyncExitStack() as stack:
            with translate_actor_errors(provider=self._client.provider, model=call.model):
                self._items = await stack.enter_async_context(
                    ref.ask_stream(call, timeout=self._client._deadline()))
            self._stack = stack.pop_all()

    async def aclose(self) -> None:
        """Stop the stream (closing the upstream response if it is still open). Idempotent."""
        self._finished = True
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._finished else "open" if self._items is not None else "new"
        return f"<ResponseStream {self._client.provider} [{state}]>"
