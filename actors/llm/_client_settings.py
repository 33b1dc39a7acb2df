"""Settings of one OpenAI-style client (sampling, timeouts, HTTP pool), and masking for display.

:class:`ClientSettings` is shared by a provider in ``config.yaml`` (:class:`ProviderConfig`) and
the specification's client configuration (:class:`LLMClientConfig`). Every model is frozen and
forbids unknown keys; headers never show in a repr unmasked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from ._errors import redact

__all__ = ["MASK", "ClientSettings", "LLMClientConfig", "mask_secrets"]

MASK = "**********"
_SECRET_NAME = re.compile(r"auth|key|token|secret|passw|cookie|credential", re.IGNORECASE)


def mask_secrets(values: Mapping[str, str]) -> dict[str, str]:
    """A copy of headers or environment variables fit for display.

    Values whose name suggests a credential (``Authorization``, ``*_TOKEN``, ``X-Api-Key``...) are
    replaced by ``**********``; the others go through :func:`actors.llm._errors.redact`.
    """
    return {
        name: MASK if _SECRET_NAME.search(name) else redact(value) for name, value in values.items()
    }


class ClientSettings(BaseModel):
    """Validated settings of one OpenAI-style client: sampling, timeouts, HTTP pool."""

    # hide_input_in_errors: a rejected base_url may hold a proxy's password.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    model: str = Field(min_length=1)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=1.0, ge=0, le=1)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    max_tokens: int = Field(default=4096, gt=0)
    timeout: float = Field(
        default=60.0, gt=0,
        description="seconds the upstream may stay silent: waiting for the response, then"
        " between bytes of its body (a body arriving steadily may take longer); the request's"
        " own timeout bounds the whole call")
    connect_timeout: float = Field(default=10.0, gt=0, description="seconds to connect")
    max_retries: int = Field(
        default=3,
        ge=0,
        description="attempts on this provider beyond the first (over model and fallback_models)"
        " before the router moves on; the SDK itself never retries",
    )
    max_connections: int = Field(default=100, ge=1)
    max_keepalive_connections: int = Field(default=20, ge=0)
    keepalive_expiry: float = Field(default=30.0, ge=0)
    extra_headers: dict[str, str] = Field(default_factory=dict)
    extra_params: dict[str, Any] = Field(
        default_factory=dict, description="extra JSON body fields sent with every request"
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Headers may carry credentials (an Authorization header for a proxy): never show them.
        for name, value in super().__repr_args__():
            yield name, mask_secrets(value) if name == "extra_headers" else value

    @model_validator(mode="after")
    def _keepalive_within_pool(self) -> Self:
        if self.max_keepalive_connections > self.max_connections:
            raise ValueError(
                f"max_keepalive_connections ({self.max_keepalive_connections}) must not exceed"
                f" max_connections ({self.max_connections})"
            )
        return self


class LLMClientConfig(ClientSettings):
    """The specification's client configuration: where, which model, which key, and the settings.

    Bounds as the specification writes them (``max_keepalive_connections`` at least 1 here, where
    a provider in ``config.yaml`` may say 0). ``api_key`` never shows in a repr or a dump to JSON.
    """

    base_url: str
    api_key: SecretStr
    max_keepalive_connections: int = Field(default=20, gt=0)

