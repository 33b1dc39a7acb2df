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

* **closing a stream**: OpenAI, and the servers behind ``openai-compatible`` as far as we know,
  stop generating (and billing) when the client closes a stream. OpenRouter stops only for some
  of the providers it routes to and names the one that answered in each chunk's ``provider``
  field; for the others "the model will continue processing and you will be billed for the
  complete response" (its streaming documentation, "Stream Cancellation"). A provider's
  ``stream_cancel_stops_billing`` overrides both (:meth:`ProviderKindRules.cancel_stops_billing`).

JSON mode and logprobs are asked the same way everywhere; a model that refuses them says so with
OpenAI's "Unsupported parameter" error, which the provider learns from (see ``_sdk_call``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._provider_config import ProviderConfig

__all__ = ["OPENROUTER_CANCELLING_PROVIDERS", "ProviderKindRules", "rules_for"]

OPENROUTER_CANCELLING_PROVIDERS = frozenset({
    "openai", "azure", "anthropic", "fireworks", "mancer", "recursal", "anyscale", "lepton",
    "octoai", "novita", "deepinfra", "together", "cohere", "hyperbolic", "infermatic", "avian",
    "xai", "cloudflare", "sfcompute", "nineteen", "liquid", "friendli", "chutes", "deepseek",
})
"""The providers behind OpenRouter that stop generating and billing when a stream is closed, as
its documentation lists them ("Stream Cancellation", read 2026-12-01), lower case without spaces
or punctuation. Any other name (Google, Groq, Mistral, Amazon Bedrock..., a new one, or none) is
taken to bill the whole answer."""

_NOT_A_LETTER = re.compile(r"[^a-z0-9]")


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

    def cancel_stops_billing(self, config: ProviderConfig) -> bool | None:
        """Whether closing a stream stops the upstream's billing: the provider's
        ``stream_cancel_stops_billing``, else the kind's default (here ``True``); ``None``: each
        stream's first event decides (:meth:`answerer_stops_billing`)."""
        setting = config.stream_cancel_stops_billing
        return True if setting is None else setting

    def answerer_stops_billing(self, event: object) -> bool:
        """Whether the upstream that sent ``event`` (a stream's first, as plain data) stops
        billing when the stream is closed."""
        return True


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

    def cancel_stops_billing(self, config: ProviderConfig) -> bool | None:
        return config.stream_cancel_stops_billing

    def answerer_stops_billing(self, event: object) -> bool:
        answered_by = event.get("provider") if isinstance(event, Mapping) else None
        if not isinstance(answered_by, str) or len(answered_by) > 64:
            return False
        return _NOT_A_LETTER.sub("", answered_by.lower()) in OPENROUTER_CANCELLING_PROVIDERS


_DEFAULT = ProviderKindRules()
_BY_KIND: dict[str, ProviderKindRules] = {"openrouter": _OpenRouterRules()}


def rules_for(kind: str) -> ProviderKindRules:
    """The rules of provider ``kind`` (OpenAI's for any kind without its own)."""
    return _BY_KIND.get(kind, _DEFAULT)
