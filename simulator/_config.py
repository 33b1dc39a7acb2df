"""The simulator's configuration: models, accepted keys, limits and fault rates.

Every model forbids unknown keys, so a typo in ``faults.yaml`` is an error with its path rather
than a fault that silently never fires.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, model_validator

__all__ = [
    "CONTROL_TOKEN_VARIABLE",
    "FAULT_KINDS",
    "FaultConfig",
    "Flavor",
    "ModelSpec",
    "ReasoningStyle",
    "SimulatorConfig",
    "load_config",
    "merge_patch",
]

CONTROL_TOKEN_VARIABLE = "SIMULATOR_CONTROL_TOKEN"
"""When set, the ``/_sim/`` control endpoints (but ``/_sim/health``) need it as a bearer token."""

Flavor = Literal["openai", "openrouter"]
ReasoningStyle = Literal["openai", "openrouter", "deepseek"]
"""How a model reasons: ``openai`` hides it (counts only ``reasoning_tokens``) and refuses
``max_tokens`` and non-default sampling; ``openrouter`` streams ``reasoning`` and
``reasoning_details``; ``deepseek`` streams ``reasoning_content``."""

FAULT_KINDS: tuple[str, ...] = (
    "429",
    "401",
    "402",
    "500",
    "502",
    "503",
    "timeout",
    "reset",
    "midstream_drop",
    "midstream_error",
)
"""Fault kinds in the order a random draw walks their rates (``X-Sim-Fault`` takes these names)."""

Rate = float


class ModelSpec(BaseModel):
    """One served model: its context window, reply length, prices (USD per million tokens) and
    whether (and how) it reasons."""

    model_config = ConfigDict(extra="forbid")

    context_window: PositiveInt = 128_000
    reply_words: int = Field(default=0, ge=0)
    price_in: NonNegativeFloat = 0.0
    price_out: NonNegativeFloat = 0.0
    reasoning: ReasoningStyle | None = None


class FaultConfig(BaseModel):
    """Fault rates in [0, 1] (their sum at most 1) and delays in seconds."""

    model_config = ConfigDict(extra="forbid")

    rate_429: Rate = Field(default=0.0, ge=0.0, le=1.0)
    retry_after: NonNegativeFloat = 1.0
    rate_401: Rate = Field(default=0.0, ge=0.0, le=1.0)
    rate_402: Rate = Field(default=0.0, ge=0.0, le=1.0)
    rate_500: Rate = Field(default=0.0, ge=0.0, le=1.0)
    rate_502: Rate = Field(default=0.0, ge=0.0, le=1.0)
    rate_503: Rate = Field(default=0.0, ge=0.0, le=1.0)
    rate_timeout: Rate = Field(default=0.0, ge=0.0, le=1.0)
    hang_seconds: NonNegativeFloat = 30.0
    rate_reset: Rate = Field(default=0.0, ge=0.0, le=1.0)
    rate_midstream_drop: Rate = Field(default=0.0, ge=0.0, le=1.0)
    rate_midstream_error: Rate = Field(default=0.0, ge=0.0, le=1.0)
    latency: NonNegativeFloat = 0.0
    first_byte_delay: NonNegativeFloat = 0.0
    chunk_delay: NonNegativeFloat = 0.0
    keepalive_interval: float = Field(default=0.5, gt=0.0)
    invalid_json: bool = False
    """JSON-mode answers are cut short by one character (``X-Sim-Fault: invalid_json`` does it
    for one request); they draw nothing, so the other faults stay where the seed puts them."""

    @model_validator(mode="after")
    def _rates_fit_in_one(self) -> FaultConfig:
        if sum(self.rates()) > 1.0 + 1e-9:
            raise ValueError("the fault rates add up to more than 1")
        return self

    def rates(self) -> tuple[float, ...]:
        """The rates in the order of :data:`FAULT_KINDS`."""
        return (
            self.rate_429,
            self.rate_401,
            self.rate_402,
            self.rate_500,
            self.rate_502,
            self.rate_503,
            self.rate_timeout,
            self.rate_reset,
            self.rate_midstream_drop,
            self.rate_midstream_error,
        )


def _default_models() -> dict[str, ModelSpec]:
    return {
        "gpt-4o-mini": ModelSpec(context_window=128_000, price_in=0.15, price_out=0.6),
        "gpt-4o": ModelSpec(context_window=128_000, price_in=2.5, price_out=10.0),
        "gpt-4.1-mini": ModelSpec(context_window=1_047_576, price_in=0.4, price_out=1.6),
        "openai/gpt-4o-mini": ModelSpec(context_window=128_000, price_in=0.15, price_out=0.6),
        "sim-long": ModelSpec(context_window=128_000, reply_words=200),
        "sim-tiny": ModelSpec(context_window=256),
        "o4-mini": ModelSpec(context_window=200_000, price_in=1.1, price_out=4.4,
                             reasoning="openai"),
        "gpt-5-mini": ModelSpec(context_window=400_000, price_in=0.25, price_out=2.0,
                                reasoning="openai"),
        "deepseek-reasoner": ModelSpec(context_window=128_000, price_in=0.56, price_out=1.68,
                                       reasoning="deepseek"),
        "deepseek/deepseek-r1": ModelSpec(context_window=163_840, price_in=0.4, price_out=2.0,
                                          reasoning="openrouter"),
    }


class SimulatorConfig(BaseModel):
    """Everything the simulator does differently from a well-behaved upstream.

    ``api_keys`` empty or ``None`` accepts any bearer key; ``requests_per_minute`` and
    ``tokens_per_minute`` ``None`` enforce no limit of the simulator's own.
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    flavor: Flavor = "openai"
    models: dict[str, ModelSpec] = Field(default_factory=_default_models)
    api_keys: list[str] | None = None
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    faults: FaultConfig = Field(default_factory=FaultConfig)


def merge_patch(config: SimulatorConfig, patch: Mapping[str, Any]) -> SimulatorConfig:
    """``config`` with ``patch`` merged in (nested mappings merge, other values replace).

    Raises ``pydantic.ValidationError`` if the result is not a valid configuration.
    """
    return SimulatorConfig.model_validate(_merge(config.model_dump(), patch))


def _merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path) -> SimulatorConfig:
    """Read a YAML or JSON configuration file (JSON is chosen by a ``.json`` suffix).

    Raises ``OSError`` if the file cannot be read, ``ValueError`` (``pydantic.ValidationError``
    included) if its content is not a valid configuration.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return SimulatorConfig.model_validate(data or {})
