"""Which provider and model a request tries, in which order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._config import LLMConfig
from ._errors import LLMClientError
from ._messages import ChatRequest

__all__ = ["Candidate", "build_candidates", "provider_actor_name"]


def provider_actor_name(provider: str) -> str:
    """The actor name of the provider called ``provider``."""
    return f"provider:{provider}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider with one model; ``fallback_models`` go along when the provider falls back
    natively (OpenRouter's ``models`` list)."""

    provider: str
    model: str
    fallback_models: tuple[str, ...] = ()


def build_candidates(
    config: LLMConfig, chat: ChatRequest, paused: Callable[[str], bool]
) -> list[Candidate]:
    """The candidates of ``chat`` in the order to try them.

    The requested provider (else ``active``) first, then ``fallback_order``; per provider its
    ``model`` and then its ``fallback_models`` (unless ``enable_fallback_models`` is false), at
    most ``1 + max_retries`` of them. Providers for which ``paused`` is true (rate-limited) go
    last rather than away: if everyone is paused the first one still gets the request. Raises
    :class:`LLMClientError` for an unknown requested provider.
    """
    order = config.candidate_order()
    if chat.provider is not None:
        if chat.provider not in config.providers:
            raise LLMClientError(f"unknown provider {chat.provider!r} "
                                 f"(configured: {', '.join(order)})")
        order = [chat.provider, *[name for name in order if name != chat.provider]]
    candidates: list[Candidate] = []
    for name in order:
        provider = config.providers[name]
        models = [chat.model] if chat.model is not None else provider.models
        models = models[: 1 + provider.max_retries]
        if provider.kind == "openrouter" and provider.use_native_fallbacks:
            candidates.append(Candidate(name, models[0], tuple(models[1:])))
        else:
            candidates.extend(Candidate(name, model) for model in models)
    waiting = {name for name in order if paused(name)}
    return ([c for c in candidates if c.provider not in waiting]
            + [c for c in candidates if c.provider in waiting])
