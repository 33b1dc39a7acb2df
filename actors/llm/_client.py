"""The seed's client API, for those who embed the LLM client directly (no router, no ledger).

::

    client = create_llm_client("openai", {"model": "gpt-4o-mini"}, api_key="sk-...")
    async with client:
        answer = await client.get_response([{"role": "user", "content": "Hello"}])
        async with client.stream_response([{"role": "user", "content": "Hello"}]) as stream:
            async for item in stream:
                ...  # str deltas, then one LLMResponse

Underneath, :meth:`LLMClient.initialize` starts a private actor system with one
:class:`~actors.llm._provider.ProviderActor` under a supervisor, so the client has the same pool,
limits, breaker, error mapping and restarts as the service. Fallbacks across providers are the
router's job (:mod:`actors.llm._runtime`); OpenRouter's native ``models`` list is used when
configured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, get_args

from pydantic import SecretStr, ValidationError

from runtime import ActorRef, ActorSystem, Backoff, SupervisorSpec

from ._catalog import ModelCatalog
from ._config import LLMClientConfig, ProviderConfig, ProviderKind
from ._messages import ChatRequest, LLMResponse, ProviderCall, StreamEnd, TextDelta
from ._provider import provider_child_spec
from ._tokens import acount_message_tokens, count_message_tokens

__all__ = ["LLMClient", "ResponseStream", "create_llm_client"]

Message = dict[str, Any]
_PROVIDERS: tuple[str, ...] = get_args(ProviderKind)
# The whole call's deadline is the configured timeout plus this margin, so that the provider's
# own typed timeout (httpx2's) wins the race when the provider is the slow part.
_DEADLINE_MARGIN = 5.0


def create_llm_client(
    provider: str,
    config: LLMClientConfig | ProviderConfig | Mapping[str, Any],
    api_key: str | None = None,
) -> LLMClient:
    """A client for ``provider`` (``openai``, ``openrouter`` or ``openai-compatible``).

    ``config`` is validated here: an unknown provider or an invalid value raises ``ValueError``
    naming the field. ``api_key`` given explicitly is used instead of the environment (never
    shown in a repr, a log or an error). Call :meth:`LLMClient.initialize` (or ``async with``)
    before use.
    """
    if provider not in _PROVIDERS:
        raise ValueError(
            f"provider: unknown provider {provider!r} (expected one of {', '.join(_PROVIDERS)})"
        )
    if isinstance(config, ProviderConfig):
        data: dict[str, Any] = config.model_dump(exclude_unset=True)
        data["kind"] = config.kind
    elif isinstance(config, LLMClientConfig):
        data = config.model_dump(exclude_unset=True)
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise TypeError(f"config must be a mapping or LLMClientConfig, not {type(config).__name__}")
    if data.setdefault("kind", provider) != provider:
        raise ValueError(f"kind: {data['kind']!r} does not match provider {provider!r}")
    if (
        api_key is not None
        and provider == "openai-compatible"
        and data.get("api_key_env") is None
        and data.get("api_key_file") is None
    ):
        # The key comes with the call: the configuration need not say where to read one.
        data.setdefault("requires_api_key", False)
    try:
        validated = ProviderConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_describe(provider, exc)) from None
    return LLMClient(provider, validated, SecretStr(api_key) if api_key is not None else None)


def _describe(provider: str, error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"]) or "config"
        problems.append(f"{where}: {item['msg']}")
    return f"invalid configuration for provider {provider!r}: " + "; ".join(problems)


class LLMClient:
    """One provider behind a private actor system. Made by :func:`create_llm_client`.

    :meth:`initialize` and :meth:`aclose` must run in the same task (the system is an anyio task
    group); ``async with client:`` does both.
    """

    def __init__(self, provider: str, config: ProviderConfig, api_key: SecretStr | None) -> None:
        self.provider = provider
        self.config = config
        self._api_key = api_key
        self._stack: AsyncExitStack | None = None
        self._ref: ActorRef | None = None

    def __repr__(self) -> str:
        state = "running" if self._ref is not None else "not initialized"
        return f"<LLMClient {self.provider} {self.config.model} [{state}]>"

    async def initialize(self) -> None:
        """Start the provider actor (a no-op if already started)."""
        if self._ref is not None:
            return
        catalog = ModelCatalog(self.config.context_windows, self.config.prices)
        spec = provider_child_spec(self.provider, self.config, catalog=catalog,
                                   api_key=self._api_key)
        root = SupervisorSpec(f"llm-client:{self.provider}", [spec], max_restarts=10,
                              max_seconds=60.0, backoff=Backoff(initial=0.1, maximum=5.0))
        async with AsyncExitStack() as stack:
            system = await stack.enter_async_context(ActorSystem(root))
            self._ref = system.ref(self.provider)
            self._stack = stack.pop_all()

    async def aclose(self) -> None:
        """Stop the actor and close its connections. Idempotent."""
        stack, self._stack, self._ref = self._stack, None, None
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

    def estimate_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of ``messages`` for the configured model (OpenAI's counting recipe)."""
        return count_message_tokens(list(messages), self.config.model)

    async def get_response(
        self, messages: Sequence[Message], tools: Sequence[Message] | None = None, **kwargs: Any
    ) -> LLMResponse:
        """One complete answer.

        ``kwargs`` override generation parameters (``temperature``, ``max_tokens``, ...);
        ``model=`` picks another model. Raises ``LLMClientError`` subclasses (or
        ``runtime.ActorError`` ones, such as ``DeadlineExceeded``).
        """
        call = await self._call(messages, tools, kwargs, stream=False)
        response: LLMResponse = await self._started().ask(call, timeout=self._deadline())
        return response

    def stream_response(
        self, messages: Sequence[Message], tools: Sequence[Message] | None = None, **kwargs: Any
    ) -> ResponseStream:
        """Stream an answer: ``str`` text deltas, then one final :class:`LLMResponse`.

        Use as ``async with client.stream_response(...) as stream: async for item in stream``
        so that leaving early closes the upstream stream at once; a plain ``async for`` closes it
        when the iteration ends. Arguments as for :meth:`get_response`.
        """
        return ResponseStream(self, messages, tools, kwargs)

    # -- internals ------------------------------------------------------------------------------

    def _started(self) -> ActorRef:
        if self._ref is None:
            raise RuntimeError("LLMClient is not initialized: call initialize() or use async with")
        return self._ref

    def _deadline(self) -> float:
        return self.config.timeout + _DEADLINE_MARGIN

    async def _call(self, messages: Sequence[Message], tools: Sequence[Message] | None,
                    kwargs: dict[str, Any], *, stream: bool) -> ProviderCall:
        params = dict(kwargs)
        model = str(params.pop("model", None) or self.config.model)
        prompt_tokens = await acount_message_tokens(list(messages), model,
                                                    tools=list(tools) if tools else None)
        chat = ChatRequest.of(list(messages), list(tools) if tools else None, model=model,
                              provider=self.provider, params=params)
        fallbacks = tuple(m for m in self.config.fallback_models if m != model)
        return ProviderCall(chat, model, prompt_tokens, stream=stream,
                            fallback_models=fallbacks if self.config.use_native_fallbacks else ())


class ResponseStream:
    """The items of one streamed answer: ``str`` deltas, then the final :class:`LLMResponse`."""

    def __init__(self, client: LLMClient, messages: Sequence[Message],
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
        try:
            item = await self._items.__anext__()
        except BaseException:
            await self.aclose()
            raise
        if isinstance(item, TextDelta):
            return item.text
        if isinstance(item, StreamEnd):
            await self.aclose()
            return item.response
        await self.aclose()
        raise TypeError(f"unexpected stream item {type(item).__name__}")

    async def _open(self) -> None:
        messages, tools, kwargs = self._args
        call = await self._client._call(messages, tools, kwargs, stream=True)
        ref = self._client._started()
        async with AsyncExitStack() as stack:
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
