"""The ``llm:`` section of the configuration: providers, fallbacks, cost limits, hedging.

A provider's own settings, and the two forms it may be written in, are in
:mod:`actors.llm._provider_config`. Every model is frozen and forbids unknown keys, so a typo in
``config.yaml`` is an error with its path rather than a silently ignored setting.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from actors.cluster import RESERVATION_TTL

from ._limits import RateLimitConfig
from ._provider_config import DEFAULT_BASE_URLS, ProviderConfig, infer_kind

__all__ = ["RESERVATION_TTL", "CostConfig", "HedgingConfig", "LLMConfig"]


class CostConfig(BaseModel):
    """Spending limits in USD and where spend is persisted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_cost_per_request: float | None = Field(default=None, gt=0)
    daily_cost_limit: float | None = Field(default=None, gt=0)
    cost_warning_threshold: float = Field(
        default=0.8, gt=0, le=1, description="fraction of daily_cost_limit that warns"
    )
    day_timezone: str = Field(default="UTC", description="IANA zone in which a day starts")
    db_path: str = "data/ledger.sqlite3"
    track_costs: bool = True

    @field_validator("day_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class HedgingConfig(BaseModel):
    """Hedged requests: a duplicate sent to the next candidate when the first is slow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    max_share: float = Field(default=0.1, ge=0, le=1, description="at most this share of calls")
    min_delay: float = Field(default=0.2, ge=0, description="seconds before a hedge may be sent")


def _builtin_providers() -> dict[str, ProviderConfig]:
    # Keep in step with config.yaml (tests/llm/test_config.py compares them).
    return {
        "openrouter": ProviderConfig(
            kind="openrouter",
            base_url=DEFAULT_BASE_URLS["openrouter"],
            api_key_env="OPENROUTER_API_KEY",
            model="openai/gpt-4o-mini",
            fallback_models=["openai/gpt-4.1-mini"],
            app_name="mcp-backend",
            rate_limits=RateLimitConfig(requests_per_minute=600, tokens_per_minute=1_000_000),
        ),
        "openai": ProviderConfig(
            kind="openai",
            base_url=DEFAULT_BASE_URLS["openai"],
            api_key_env="OPENAI_API_KEY",
            model="gpt-4o-mini",
            fallback_models=["gpt-4.1-mini"],
            rate_limits=RateLimitConfig(requests_per_minute=500, tokens_per_minute=200_000),
        ),
    }


def _with_kind(name: str, entry: Any) -> Any:
    """``entry`` with the ``kind`` inferred from ``name`` when it has none (not from its URL yet:
    :class:`ProviderConfig` does that when no name is known)."""
    if not isinstance(entry, dict) or entry.get("kind") is not None:
        return entry
    base_url = entry.get("base_url")
    return {**entry, "kind": infer_kind(name, base_url if isinstance(base_url, str) else None)}


class LLMConfig(BaseModel):
    """The ``llm:`` section: the providers, which is active, and the order to fall back in.

    ``active`` defaults to the first provider; ``fallback_order`` defaults to ``active`` then the
    other providers in the order they are written. Without a ``cost`` section spend is capped
    (0.50 USD per request, 10 USD per day): an unconfigured service must not run up a bill.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    providers: dict[str, ProviderConfig] = Field(default_factory=_builtin_providers, min_length=1)
    active: str = "openrouter"
    fallback_order: list[str] = Field(default_factory=lambda: ["openrouter", "openai"])
    fallback_on_refusal: bool = False
    cost: CostConfig = Field(
        default_factory=lambda: CostConfig(max_cost_per_request=0.5, daily_cost_limit=10.0)
    )
    hedging: HedgingConfig = Field(default_factory=HedgingConfig)
    request_timeout: float = Field(
        default=120.0, gt=0, description="seconds for a whole request, fallbacks included"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_order(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("providers"), dict):
            return data
        names = [str(name) for name in data["providers"]]
        data = dict(data)
        data["providers"] = {
            name: _with_kind(str(name), entry) for name, entry in data["providers"].items()
        }
        if "active" not in data and names:
            data["active"] = names[0]
        if "fallback_order" not in data and isinstance(data.get("active"), str):
            data["fallback_order"] = list(dict.fromkeys([data["active"], *names]))
        return data

    @field_validator("request_timeout")
    @classmethod
    def _below_reservation_ttl(cls, value: float) -> float:
        if value >= RESERVATION_TTL:
            raise ValueError(f"must be below the ledger's reservation TTL ({RESERVATION_TTL:g} s): "
                             "a longer call would lose its cost reservation while it runs")
        return value

    @field_validator("active")
    @classmethod
    def _active_exists(cls, value: str, info: ValidationInfo) -> str:
        providers = info.data.get("providers")
        if providers is not None and value not in providers:
            raise ValueError(f"unknown provider {value!r} (known: {', '.join(providers)})")
        return value

    @field_validator("fallback_order")
    @classmethod
    def _order_exists(cls, value: list[str], info: ValidationInfo) -> list[str]:
        providers = info.data.get("providers")
        unknown = [name for name in value if providers is not None and name not in providers]
        if unknown:
            raise ValueError(f"unknown providers {unknown!r} (known: {', '.join(providers or {})})")
        return value

    def candidate_order(self) -> list[str]:
        """Provider names to try: ``active`` first, then ``fallback_order``, no duplicates."""
        return list(dict.fromkeys([self.active, *self.fallback_order]))

    def providers_with_credentials(self) -> list[str]:
        """Providers, in candidate order, whose API key is available now (or not required)."""
        return [name for name in self.candidate_order() if self.providers[name].has_api_key()]
