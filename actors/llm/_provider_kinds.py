"""What differs between provider kinds (openai, openrouter, openai-compatible), in one place.

Everything else about a call is the same OpenAI wire format. The differences we know of:

* **headers**: OpenRouter ranks apps by ``HTTP-Referer`` and ``X-Title`` (``site_url``,
  ``app_name``); the configured ``extra_headers`` win.
* **reasoning effort**: OpenAI-style endpoints take ``reasoning_effort``; OpenRouter takes its
  ``reasoning`` object (``effort``, or a ``max_tokens`` budget when the effort is a number of
  tokens; ``exclude`` is left to ``extra_params``/request params).
* **native fallbacks**: OpenRouter may try ``models`` itself (``use_native_fallbacks``); any of
  them may then answer (and be billed), so the router reserves the costliest and checks each
  one's context window (:meth:`ProviderKindRules.models`).

JSON mode and logprobs are asked the same way everywhere; a model that refuses them says so with
OpenAI's "Unsupported parameter" error, which the provider learns from (see ``_sdk_call``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._provider_config import ProviderConfig

__all__ = ["ProviderKindRules", "rules_for"]


class ProviderKindRules:
    """The OpenAI (and OpenAI-compatible) way; subclasses override what their kind does else."""

    def headers(self, config: ProviderConfig) -> dict[str, str]:
        """Default headers of every call (the secrets among them are ``extra_headers``)."""
        return dict(config.extra_headers)

    def reasoning(self, effort: str) -> Mapping[str, Any]:
        """The body fields asking for this reasoning effort."""
        return {"reasoning_effort": effort}

    def models(self, config: ProviderConfig, model: str,
               fallback_models: tuple[str, ...]) -> tuple[str, ...]:
        """Every model that may answer a call to ``model``: only it, unless the upstream falls
        back by itself."""
        return (model,)

    def fallbacks(self, config: ProviderConfig, model: str,
                  fallback_models: tuple[str, ...]) -> Mapping[str, Any]:
        """Body fields letting the upstream fall back by itself, to the other :meth:`models`."""
        models = self.models(config, model, fallback_models)
        return {"models": list(models)} if len(models) > 1 else {}


class _OpenRouterRules(ProviderKindRules):
    def headers(self, config: ProviderConfig) -> dict[str, str]:
        headers = dict(config.extra_headers)
        if config.site_url:
            headers.setdefault("HTTP-Referer", config.site_url)
        if config.app_name:
            headers.setdefault("X-Title", config.app_name)
        return headers

    def reasoning(self, effort: str) -> Mapping[str, Any]:
        if effort.isdigit():
            return {"reasoning": {"max_tokens": int(effort)}}
        return {"reasoning": {"effort": effort}}

    def models(self, config: ProviderConfig, model: str,
               fallback_models: tuple[str, ...]) -> tuple[str, ...]:
        if config.use_native_fallbacks:
            return (model, *fallback_models)
        return (model,)


_DEFAULT = ProviderKindRules()
_BY_KIND: dict[str, ProviderKindRules] = {"openrouter": _OpenRouterRules()}


def rules_for(kind: str) -> ProviderKindRules:
    """The rules of provider ``kind`` (OpenAI's for any kind without its own)."""
    return _BY_KIND.get(kind, _DEFAULT)
