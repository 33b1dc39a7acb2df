"""What we know about models: context windows, prices and the parameters they take, built in and
overridable by config.

Names are resolved the same way for built-in and configured entries: the exact name first, then
without an OpenRouter provider prefix (``openai/gpt-4o`` -> ``gpt-4o``), a ``:variant`` suffix
(``...:free``) or a dated snapshot suffix (``gpt-4o-2024-08-06`` -> ``gpt-4o``). No looser
matching: ``o3-pro`` is not priced as ``o3``, it is unknown until configured.

Built-in prices are list prices in USD per million tokens at the time of writing; configure
``prices`` to follow changes.

Parameters (:class:`ModelParams`) are known per family: OpenAI's reasoning models (``o1``, ``o3``,
``o4``, ``gpt-5`` and their variants) take ``max_completion_tokens`` instead of ``max_tokens`` and
reject non-default ``temperature``/``top_p``/penalties and ``logprobs``. Configured entries
(``model_params``) are looked up like prices and override, field by field, only what they set: the
rest stays the family's (``o4-mini: {reasoning_effort: high}`` keeps ``max_completion_tokens``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from ._errors import LLMTokenLimitError

__all__ = [
    "BUILTIN_CONTEXT_WINDOWS",
    "BUILTIN_PRICES",
    "DEFAULT_CONTEXT_WINDOW",
    "ModelCatalog",
    "ModelParams",
    "ModelPrice",
    "ReasoningEffort",
]

ReasoningEffort = Literal["minimal", "low", "medium", "high"]
"""How hard a reasoning model thinks before it answers (OpenAI's ``reasoning_effort``)."""


class ModelPrice(BaseModel):
    """Prices of one model in USD per million tokens; ``cached_input`` defaults to ``input``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)


class ModelParams(BaseModel):
    """Which request parameters a model takes: its output limit's name, and what it rejects."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    rejected_params: frozenset[str] = frozenset()
    """Never sent to this model (it answers them with a 400), even when configured."""
    reasoning_effort: ReasoningEffort | None = None
    """Asked of this model when the request names none; over its provider's ``reasoning_effort``."""


_REASONING_PARAMS = ModelParams(
    max_tokens_param="max_completion_tokens",
    rejected_params=frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty",
                               "logprobs", "top_logprobs"}),
)
_DEFAULT_PARAMS = ModelParams()
# Matched on the bare name (no provider prefix, no :variant): o1, o3-mini, o4-mini, gpt-5-nano...
_REASONING_FAMILY = re.compile(r"^(o1|o3|o4|gpt-5)(-|$)")


def _p(input: float, cached_input: float | None, output: float) -> ModelPrice:
    return ModelPrice(input=input, cached_input=cached_input, output=output)


BUILTIN_CONTEXT_WINDOWS: Mapping[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "chatgpt-4o-latest": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-4": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-4-turbo": 128_000,
    "gpt-3.5-turbo": 16_385,
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
    "anthropic/claude-sonnet-4": 200_000,
    "anthropic/claude-opus-4": 200_000,
    "anthropic/claude-3.5-sonnet": 200_000,
    "anthropic/claude-3.5-haiku": 200_000,
    "google/gemini-2.5-pro": 1_048_576,
    "google/gemini-2.5-flash": 1_048_576,
    "meta-llama/llama-3.1-8b-instruct": 131_072,
    "meta-llama/llama-3.3-70b-instruct": 131_072,
    "mistralai/mistral-small": 32_768,
    "deepseek/deepseek-chat": 163_840,
}

BUILTIN_PRICES: Mapping[str, ModelPrice] = {
    "gpt-4o": _p(2.50, 1.25, 10.00),
    "gpt-4o-mini": _p(0.15, 0.075, 0.60),
    "gpt-4.1": _p(2.00, 0.50, 8.00),
    "gpt-4.1-mini": _p(0.40, 0.10, 1.60),
    "gpt-4.1-nano": _p(0.10, 0.025, 0.40),
    "gpt-4": _p(30.00, None, 60.00),
    "gpt-4-turbo": _p(10.00, None, 30.00),
    "gpt-3.5-turbo": _p(0.50, None, 1.50),
    "gpt-5": _p(1.25, 0.125, 10.00),
    "gpt-5-mini": _p(0.25, 0.025, 2.00),
    "gpt-5-nano": _p(0.05, 0.005, 0.40),
    "o1": _p(15.00, 7.50, 60.00),
    "o1-mini": _p(1.10, 0.55, 4.40),
    "o3": _p(2.00, 0.50, 8.00),
    "o3-mini": _p(1.10, 0.55, 4.40),
    "o4-mini": _p(1.10, 0.275, 4.40),
    "anthropic/claude-sonnet-4": _p(3.00, 0.30, 15.00),
    "anthropic/claude-opus-4": _p(15.00, 1.50, 75.00),
    "anthropic/claude-3.5-sonnet": _p(3.00, 0.30, 15.00),
    "anthropic/claude-3.5-haiku": _p(0.80, 0.08, 4.00),
    "google/gemini-2.5-pro": _p(1.25, 0.31, 10.00),
    "google/gemini-2.5-flash": _p(0.30, 0.075, 2.50),
}

#: Context window assumed for a model nobody told us about.
DEFAULT_CONTEXT_WINDOW = 128_000

_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")

#: Names whose lookups a catalog keeps (then it starts over).
_RESOLVED_MAX = 1024


class _Resolved(NamedTuple):
    """What a catalog knows about one model name."""

    window: int | None
    price: ModelPrice | None
    params: ModelParams


def _candidates(model: str) -> Iterator[str]:
    """The names to look ``model`` up under, most specific first."""
    name = model.strip().lower()
    yield name
    base = name.split(":", 1)[0]
    bare = base.rsplit("/", 1)[-1]
    for candidate in (base, bare):
        yield candidate
        undated = _SNAPSHOT_SUFFIX.sub("", candidate)
        if undated != candidate:
            yield undated


class ModelCatalog:
    """Context windows and prices of models: the built-in tables overridden by ``config``.

    Entries given here replace built-in entries of the same name; ``builtin=False`` starts empty.
    """

    def __init__(
        self,
        context_windows: Mapping[str, int] | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        *,
        default_context_window: int = DEFAULT_CONTEXT_WINDOW,
        builtin: bool = True,
        params: Mapping[str, ModelParams] | None = None,
    ) -> None:
        if default_context_window <= 0:
            raise ValueError("default_context_window must be positive")
        bad = {name: size for name, size in (context_windows or {}).items() if size <= 0}
        if bad:
            raise ValueError(f"context windows must be positive: {bad}")
        self._windows: dict[str, int] = {}
        self._prices: dict[str, ModelPrice] = {}
        if builtin:
            self._windows.update({k.lower(): v for k, v in BUILTIN_CONTEXT_WINDOWS.items()})
            self._prices.update({k.lower(): v for k, v in BUILTIN_PRICES.items()})
        self._windows.update({k.lower(): v for k, v in (context_windows or {}).items()})
        self._prices.update({k.lower(): v for k, v in (prices or {}).items()})
        self._params: dict[str, ModelParams] = {k.lower(): v for k, v in (params or {}).items()}
        self.default_context_window = default_context_window
        # The tables never change after this, so a name resolves the same way every time: each
        # lookup's answer is kept per name (a request looks its model up about ten times).
        self._resolved: dict[str, _Resolved] = {}

    def _resolve(self, model: str) -> _Resolved:
        resolved = self._resolved.get(model)
        if resolved is None:
            if len(self._resolved) >= _RESOLVED_MAX:
                self._resolved.clear()  # names from upstreams: bounded, not trusted to be few
            resolved = self._resolved[model] = self._lookup(model)
        return resolved

    def _lookup(self, model: str) -> _Resolved:
        names = list(_candidates(model))
        window = next((self._windows[name] for name in names if name in self._windows), None)
        price = next((self._prices[name] for name in names if name in self._prices), None)
        family = (_REASONING_PARAMS if any(_REASONING_FAMILY.match(name) for name in names)
                  else _DEFAULT_PARAMS)
        params = family
        for name in names:
            if name in self._params:
                configured = self._params[name]
                params = family.model_copy(update={
                    field: getattr(configured, field) for field in configured.model_fields_set})
                break
        return _Resolved(window, price, params)

    def context_window(self, model: str) -> int:
        """Context window of ``model`` in tokens (:attr:`default_context_window` if unknown)."""
        window = self._resolve(model).window
        return self.default_context_window if window is None else window

    def knows_context_window(self, model: str) -> bool:
        """Whether ``model``'s context window is known rather than the default."""
        return self._resolve(model).window is not None

    def price(self, model: str) -> ModelPrice | None:
        """Prices of ``model``, or ``None`` when unknown."""
        return self._resolve(model).price

    def params(self, model: str) -> ModelParams:
        """The parameters ``model`` takes: its family's (else OpenAI's usual), with the fields a
        configured entry sets replaced by the entry's."""
        return self._resolve(model).params

    def preflight_check(self, prompt_tokens: int, max_tokens: int | None, model: str) -> None:
        """Check that ``prompt_tokens`` plus ``max_tokens`` fit ``model``'s context window.

        Without ``max_tokens`` the prompt must leave room for at least one token of reply.
        Raises :class:`LLMTokenLimitError` (not retryable) when it does not fit.
        """
        window = self.context_window(model)
        reply = max_tokens if max_tokens is not None else 1
        needed = prompt_tokens + reply
        if needed <= window:
            return
        if max_tokens is None:
            what = f"prompt of {prompt_tokens} tokens"
        else:
            what = f"prompt of {prompt_tokens} tokens plus max_tokens {max_tokens}"
        raise LLMTokenLimitError(
            f"{what} exceeds the context window of {model} ({window} tokens) "
            f"by {needed - window} token{'s' if needed - window != 1 else ''}",
            model=model,
        )

    def cost_of(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> float | None:
        """Cost in USD of a call, or ``None`` when ``model`` has no known price.

        ``prompt_tokens`` includes ``cached_tokens`` (as in OpenAI's ``usage``); the cached part
        is charged at ``cached_input``. ``None`` rather than ``0.0`` so that an unpriced model is
        never mistaken for a free one: the caller decides (the ledger refuses or uses its
        configured fallback).
        """
        price = self.price(model)
        if price is None:
            return None
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_rate = price.cached_input if price.cached_input is not None else price.input
        micro_usd = (
            (prompt_tokens - cached) * price.input
            + cached * cached_rate
            + completion_tokens * price.output
        )
        return micro_usd / 1_000_000

    def __repr__(self) -> str:
        return (
            f"<ModelCatalog windows={len(self._windows)} prices={len(self._prices)} "
            f"default_context_window={self.default_context_window}>"
        )
