"""One provider of the ``llm:`` section: where it is, how to authenticate, limits and budget.

Two forms are accepted for a provider, and may be mixed: the specification's flat one
(``requests_per_minute``, ``enable_cost_tracking``, ``cost_warning_threshold``... directly under
the provider, ``kind`` left out) and the project's richer one (``kind``, ``rate_limits:``,
``breaker:``, ``prices:``...). Both mean the same where they overlap; giving one setting both ways
with different values is an error.

API keys are never part of the configuration: a provider names an environment variable
(``api_key_env``) or a file (``api_key_file``), and :meth:`ProviderConfig.read_api_key` reads it
again on every call, so a provider restarted by its supervisor picks up a rotated key.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PositiveInt, SecretStr, field_validator, model_validator

from ._breaker import BreakerConfig
from ._catalog import ModelParams, ModelPrice, ReasoningEffort
from ._client_settings import ClientSettings
from ._errors import LLMAuthError, LLMBadRequestError, redact
from ._limits import RateLimitConfig

__all__ = ["DEFAULT_BASE_URLS", "ProviderConfig", "ProviderKind", "infer_kind"]

ProviderKind = Literal["openai", "openrouter", "openai-compatible"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
}
"""``base_url`` of each provider kind that has a well-known one."""

_DEFAULT_KEY_ENV: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}

_BOUND_KEYS: dict[str, str] = {
    "max_tokens": "use the provider's max_tokens",
    "max_completion_tokens": "use the provider's max_tokens",
    "n": "one answer per request",
    "models": "use fallback_models with use_native_fallbacks",
}
"""``extra_params`` keys that would change the output a call may produce, or the models that may
produce it, and what to do instead."""

_KIND_BY_HOST: dict[str, ProviderKind] = {
    "api.openai.com": "openai",
    "openrouter.ai": "openrouter",
}


def infer_kind(name: str | None, base_url: str | None) -> ProviderKind:
    """The ``kind`` of a provider written without one, as the specification's config does.

    The provider's name when it is ``openai`` or ``openrouter``; else the host of ``base_url``
    (``api.openai.com``, ``openrouter.ai``); ``openai-compatible`` otherwise.
    """
    if name in ("openai", "openrouter"):
        return "openai" if name == "openai" else "openrouter"
    host = urlsplit(base_url).hostname if base_url else None
    return _KIND_BY_HOST.get(host or "", "openai-compatible")


class ProviderConfig(ClientSettings):
    """One configured provider: where it is, how to authenticate, its limits, budget and breaker.

    ``kind`` may be left out (the specification's form): :func:`infer_kind` decides it from the
    provider's name or ``base_url``, and :class:`LLMConfig` passes the name in. ``base_url``
    defaults per ``kind`` and is required for ``openai-compatible``. Without ``api_key_env`` and
    ``api_key_file``, ``openai`` reads ``OPENAI_API_KEY`` and ``openrouter`` reads
    ``OPENROUTER_API_KEY``.

    The specification's provider-level keys mean what it says: ``requests_per_minute`` and
    ``tokens_per_minute`` are ``rate_limits``; ``enable_cost_tracking: false`` computes and charges
    no cost for this provider; ``cost_warning_threshold`` is USD per request (a request costing
    more is logged, counted and flagged); ``max_cost_per_request`` and ``daily_cost_limit`` are this
    provider's own budget, enforced beside the global one in ``llm.cost``;
    ``enable_fallback_models: false`` ignores ``fallback_models``; ``enable_json_mode`` asks for
    JSON answers; ``enable_logprobs`` (with ``top_logprobs``) asks for log probabilities.

    ``reasoning_effort`` is asked of every model of this provider; a model's own
    (``model_params``) and a request's win over it (request > model > provider). It goes out as
    ``reasoning_effort``, or as OpenRouter's ``reasoning`` object for ``kind: openrouter``.
    """

    kind: ProviderKind
    base_url: str
    api_key_env: str | None = Field(default=None, min_length=1, description="variable NAME")
    api_key_file: str | None = Field(default=None, min_length=1)
    requires_api_key: bool = True
    fallback_models: list[str] = Field(default_factory=list)
    use_native_fallbacks: bool = Field(
        default=False, description="send fallback_models as OpenRouter's `models` list"
    )
    rate_limits: RateLimitConfig = Field(default_factory=RateLimitConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    site_url: str | None = Field(default=None, description="OpenRouter HTTP-Referer")
    app_name: str | None = Field(default=None, description="OpenRouter X-Title")
    mailbox_size: int = Field(default=1024, ge=1)
    max_connection_failures: int = Field(
        default=5,
        ge=1,
        description="consecutive connection failures before the actor crashes to rebuild its pool",
    )
    context_windows: dict[str, PositiveInt] = Field(default_factory=dict)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    model_params: dict[str, ModelParams] = Field(
        default_factory=dict,
        description="per model: max_tokens_param, rejected_params, reasoning_effort (each over"
        " the built-in family's)",
    )
    reasoning_effort: ReasoningEffort | None = Field(
        default=None,
        description="asked of this provider's models unless model_params or the request names one",
    )
    # The specification's flat keys.
    requests_per_minute: PositiveInt | None = Field(
        default=None, description="same as rate_limits.requests_per_minute"
    )
    tokens_per_minute: PositiveInt | None = Field(
        default=None, description="same as rate_limits.tokens_per_minute"
    )
    enable_cost_tracking: bool = Field(
        default=True, description="false: no cost is computed or charged for this provider"
    )
    cost_warning_threshold: float | None = Field(
        default=None, gt=0, description="USD per request: a costlier request warns"
    )
    max_cost_per_request: float | None = Field(
        default=None, gt=0, description="USD, this provider's own limit beside llm.cost's"
    )
    daily_cost_limit: float | None = Field(
        default=None, gt=0, description="USD per day, this provider's own limit beside llm.cost's"
    )
    enable_fallback_models: bool = Field(
        default=True, description="false: fallback_models are not used"
    )
    enable_json_mode: bool = Field(
        default=False, description="ask for a JSON object (response_format json_object)"
    )
    enable_logprobs: bool = Field(default=False, description="ask for token log probabilities")
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="alternatives per token when enable_logprobs"
    )
    max_response_bytes: int = Field(
        default=32 * 2**20,
        ge=1024,
        description="bytes one answer, stream or error body may bring; past it the call ends"
        " with a typed error (32 MiB: a 64k-token stream, one token per chunk, brings ~30 MB)",
    )
    stream_cancel_stops_billing: bool | None = Field(
        default=None,
        description="whether closing a stream early stops the upstream's billing; false: a"
        " stream closed early (cancelled, the request's deadline) is charged its whole output"
        " limit, as the upstream runs on and bills the complete answer. Unset: true, except for"
        " kind openrouter, where the provider that answered decides (the stream's `provider`"
        " field against OpenRouter's documented list of providers that stop)",
    )
    transport: Literal["httpx2", "aiohttp"] | None = Field(
        default=None,
        description="HTTP transport under the SDK: httpx2's pool or the SDK's aiohttp one"
        " (default: the project's measured choice, actors.llm._http_pool.DEFAULT_TRANSPORT)",
    )

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        # Filled in before validation so the frozen model carries the effective values.
        if not isinstance(data, dict):
            return data
        data = _fold_rate_limits(data)
        if data.get("kind") is None:
            base_url = data.get("base_url")
            data["kind"] = infer_kind(None, base_url if isinstance(base_url, str) else None)
        if not isinstance(data.get("kind"), str):
            return data
        kind = data["kind"]
        if data.get("base_url") is None:
            if kind == "openai-compatible":
                raise ValueError(f"base_url is required for kind {kind!r}")
            if kind in DEFAULT_BASE_URLS:
                data["base_url"] = DEFAULT_BASE_URLS[kind]
        if (
            data.get("api_key_env") is None
            and data.get("api_key_file") is None
            and kind in _DEFAULT_KEY_ENV
        ):
            data["api_key_env"] = _DEFAULT_KEY_ENV[kind]
        return data

    @field_validator("extra_params")
    @classmethod
    def _no_output_bound_in_extra_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The body is the defaults, then extra_params, then the request's params: a limit, an
        # ``n`` or a ``models`` list here would let a call produce more, or costlier, output than
        # the ledger reserved and the token limiter acquired (output_limit(), the models that
        # the provider kind's rules say may answer).
        for name in _BOUND_KEYS:
            if name in value:
                raise ValueError(f"{name} is not allowed in extra_params ({_BOUND_KEYS[name]})")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://, got"
                             f" {redact(value)!r}")
        return value.rstrip("/")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A base_url may carry a proxy's user and password (https://user:pw@proxy/v1).
        for name, value in super().__repr_args__():
            yield name, redact(value) if name == "base_url" else value

    @model_validator(mode="after")
    def _consistent(self) -> ProviderConfig:
        if self.requires_api_key and self.api_key_env is None and self.api_key_file is None:
            raise ValueError(
                "requires_api_key is true but neither api_key_env nor api_key_file is set"
            )
        if self.use_native_fallbacks and self.kind != "openrouter":
            raise ValueError("use_native_fallbacks is only supported by kind 'openrouter'")
        if self.top_logprobs is not None and not self.enable_logprobs:
            raise ValueError("top_logprobs needs enable_logprobs: true")
        return self

    @property
    def models(self) -> list[str]:
        """``model`` then ``fallback_models`` (unless ``enable_fallback_models`` is false), without
        duplicates: the order to try them in."""
        fallbacks = self.fallback_models if self.enable_fallback_models else []
        return list(dict.fromkeys([self.model, *fallbacks]))

    def output_limit(self, params: Mapping[str, Any]) -> int:
        """The most completion tokens a call with the request's ``params`` may produce: their
        ``max_tokens`` or ``max_completion_tokens``, else this provider's ``max_tokens``.

        The ledger reserves for it and the provider's token limiter acquires it, so it must be
        what the body lets the upstream produce (``extra_params`` cannot change it: see
        :meth:`_no_output_bound_in_extra_params`). Raises :class:`LLMBadRequestError` for a limit
        that is not a positive integer, and for ``n`` other than 1 (``n`` answers cost ``n``
        times the limit, and an answer is read from one choice).
        """
        n = params.get("n")
        if n is not None and (type(n) is not int or n != 1):
            shown = repr(n) if isinstance(n, int | float) else type(n).__name__
            raise LLMBadRequestError(f"n must be 1 (one answer per request), not {shown}")
        for name in ("max_completion_tokens", "max_tokens"):
            value = params.get(name)
            if value is None:
                continue
            if type(value) is not int or value < 1:
                # Only a number is shown: a caller's text could be anything, a secret too.
                shown = repr(value) if isinstance(value, int | float) else type(value).__name__
                raise LLMBadRequestError(f"{name} must be a positive integer, not {shown}")
            return value
        return self.max_tokens

    def read_api_key(self, *, provider: str | None = None) -> SecretStr | None:
        """Read the API key now: ``api_key_env`` first, then ``api_key_file``.

        Returns ``None`` when no key is found and ``requires_api_key`` is false. Raises
        ``LLMAuthError`` (naming the variable and file, never a key) when a required key is
        missing; ``provider`` is put on that error.
        """
        tried: list[str] = []
        if self.api_key_env is not None:
            value = os.environ.get(self.api_key_env, "").strip()
            if value:
                return SecretStr(value)
            tried.append(f"environment variable {self.api_key_env} is not set or empty")
        if self.api_key_file is not None:
            path = Path(self.api_key_file).expanduser()
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                tried.append(f"key file {str(path)!r} cannot be read ({exc.strerror})")
            else:
                if value:
                    return SecretStr(value)
                tried.append(f"key file {str(path)!r} is empty")
        if not self.requires_api_key:
            return None
        raise LLMAuthError("no API key: " + "; ".join(tried), provider=provider)

    def has_api_key(self) -> bool:
        """Whether :meth:`read_api_key` would succeed now (a key found or none required)."""
        try:
            self.read_api_key()
        except LLMAuthError:
            return False
        return True


def _fold_rate_limits(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` whose ``rate_limits`` also holds the flat per-minute keys."""
    data = dict(data)
    flat = {k: data[k] for k in ("requests_per_minute", "tokens_per_minute") if k in data}
    limits = data.get("rate_limits")
    if isinstance(limits, RateLimitConfig):
        limits = limits.model_dump(exclude_unset=True)
    if not flat or not (limits is None or isinstance(limits, dict)):
        return data  # nothing to fold, or a malformed rate_limits that validation reports
    merged = dict(limits or {})
    for key, value in flat.items():
        if merged.get(key) is not None and value is not None and merged[key] != value:
            raise ValueError(
                f"{key} ({value}) and rate_limits.{key} ({merged[key]}) disagree: give one"
            )
        if value is not None:
            merged[key] = value
    data["rate_limits"] = merged
    return data
