"""Typed errors of the LLM domain: every failure of a model call is one of these.

Our exception hierarchy::

    LLMClientError                    retryable?  what the router does
    ├── LLMRateLimitError             yes         next provider; here only after ``retry_after``
    │   └── LLMQuotaExceededError     no          next provider (this account is out of money)
    ├── LLMAuthError                  no          next provider (only this provider's key is bad)
    ├── LLMTokenLimitError            no          return at once (every provider would refuse it)
    ├── LLMModelNotFoundError         no          next candidate (another provider may serve it)
    ├── LLMStreamingError             if no text  fall back only if ``partial_text`` is empty
    ├── LLMCostLimitError             no          return at once (our own budget)
    ├── LLMTimeoutError               yes         next provider
    ├── LLMConnectionError            yes         next provider
    ├── LLMServerError                yes         next provider
    ├── LLMBadRequestError            no          return at once (the request itself is wrong)
    ├── ContentRefused                no          return at once unless configured to fall back
    └── ProviderUnavailable           yes         skip this provider, try the next one

``retryable`` answers one question: *may the same request, unchanged, succeed if sent again (later
or elsewhere)?* It is a class default that an instance may override (a mid-stream failure before the
first chunk is retryable, after it is not). Errors that are not retryable split in two for the
router: those tied to one provider (:class:`LLMAuthError`, :class:`LLMQuotaExceededError`,
:class:`LLMModelNotFoundError`) are worth trying on *another* provider, never on the same one; those
tied to the request (:class:`LLMTokenLimitError`, :class:`LLMBadRequestError`,
:class:`LLMCostLimitError`, :class:`ContentRefused`) would be repeated everywhere. The attribute
:attr:`LLMClientError.provider_specific` carries that distinction.

Messages never contain secrets: whatever text we copy from upstream goes through :func:`redact`
first, and every error pickles and reprs from its (already redacted) fields only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ContentRefused",
    "LLMAuthError",
    "LLMBadRequestError",
    "LLMClientError",
    "LLMConnectionError",
    "LLMCostLimitError",
    "LLMModelNotFoundError",
    "LLMQuotaExceededError",
    "LLMRateLimitError",
    "LLMServerError",
    "LLMStreamingError",
    "LLMTimeoutError",
    "LLMTokenLimitError",
    "ProviderUnavailable",
    "public_name",
    "redact",
]

REDACTED = "[REDACTED]"

# Shapes of credentials that must never leave the process even when we were not told the exact
# value: OpenAI/OpenRouter keys (`sk-...`, `sk-or-v1-...`, `sk-proj-...`) and bearer tokens.
_SECRET_PATTERNS = re.compile(
    r"\bsk-[A-Za-z0-9_\-]{6,}"
    r"|\b(?i:bearer)\s+[A-Za-z0-9_\-.=~+/]{8,}"
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with every given secret and anything shaped like a key replaced.

    Secrets shorter than 4 characters are ignored (replacing them would garble the message and
    they are not credentials anyway).
    """
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _SECRET_PATTERNS.sub(REDACTED, text)


class LLMClientError(Exception):
    """Base class of every error a model call can end with.

    ``retryable`` says whether the same request may succeed if sent again; ``provider_specific``
    whether the cause is tied to this provider (so another provider may succeed even when
    ``retryable`` is false).
    """

    retryable: bool = False
    provider_specific: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status_code: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        # Key-shaped text is scrubbed even from messages built by our own code.
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model = model
        self.status_code = status_code
        if retryable is not None:
            self.retryable = retryable

    def _extra(self) -> dict[str, Any]:
        """Subclass-specific keyword arguments, for pickling and repr."""
        return {}

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "provider": self.provider,
            "model": self.model,
            "status_code": self.status_code,
        }
        if self.retryable is not type(self).retryable:
            kwargs["retryable"] = self.retryable
        kwargs.update(self._extra())
        return kwargs

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle their ``args`` only; keyword-only fields would be lost (or the
        # unpickling would fail), so rebuild from our fields through a helper.
        return (_rebuild, (type(self), self.message, self._kwargs()))

    def __str__(self) -> str:
        where = ":".join(part for part in (self.provider, self.model) if part)
        return f"{self.message} ({where})" if where else self.message

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._kwargs().items() if v is not None)
        sep = ", " if fields else ""
        return f"{type(self).__name__}({self.message!r}{sep}{fields})"


def _rebuild(cls: type[LLMClientError], message: str, kwargs: dict[str, Any]) -> LLMClientError:
    return cls(message, **kwargs)


class _RetryAfter(LLMClientError):
    """An error that says when trying this provider again makes sense (``retry_after`` s)."""

    retryable = True
    provider_specific = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after

    def _extra(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after}


class LLMRateLimitError(_RetryAfter):
    """The provider throttled us (HTTP 429); wait ``retry_after`` seconds (when known) here."""


class LLMQuotaExceededError(LLMRateLimitError):
    """The account has no quota or credits left (429 ``insufficient_quota``, OpenRouter 402).

    Waiting does not help; another provider (another account) may.
    """

    retryable = False


class LLMAuthError(LLMClientError):
    """The provider rejected our credentials (HTTP 401, or 403 for a key problem).

    Not retryable on this provider until its key is renewed (the provider actor crashes so its
    supervisor restarts it with credentials re-read); the router may try another provider.
    """

    provider_specific = True


class LLMTokenLimitError(LLMClientError):
    """The prompt plus ``max_tokens`` does not fit the model's context window or a token budget."""


class LLMModelNotFoundError(LLMClientError):
    """The provider does not know the model (HTTP 404); another provider may."""

    provider_specific = True


class LLMStreamingError(LLMClientError):
    """A stream failed after it started; ``partial_text`` is what had been delivered so far.

    Retryable by default only when nothing had been delivered: a retry after the first chunk
    would show the client the beginning of the answer twice.
    """

    provider_specific = True

    def __init__(self, message: str, *, partial_text: str = "", **kwargs: Any) -> None:
        if kwargs.get("retryable") is None:
            kwargs["retryable"] = not partial_text
        super().__init__(message, **kwargs)
        self.partial_text = partial_text

    def _kwargs(self) -> dict[str, Any]:
        kwargs = super()._kwargs()
        kwargs["retryable"] = self.retryable
        return kwargs

    def _extra(self) -> dict[str, Any]:
        return {"partial_text": self.partial_text}


class LLMCostLimitError(LLMClientError):
    """The request would exceed ``max_cost_per_request`` or the daily spend limit."""


class LLMTimeoutError(LLMClientError):
    """The provider did not answer in time (connect, read or pool timeout)."""

    retryable = True
    provider_specific = True


class LLMConnectionError(LLMClientError):
    """The connection to the provider failed or was reset."""

    retryable = True
    provider_specific = True


class LLMServerError(LLMClientError):
    """The provider failed (HTTP 5xx)."""

    retryable = True
    provider_specific = True


class LLMBadRequestError(LLMClientError):
    """The provider rejected the request as malformed (HTTP 400/422, or another 4xx)."""


class ContentRefused(LLMClientError):
    """The provider refused the content (moderation, ``content_filter``)."""


class ProviderUnavailable(_RetryAfter):
    """The provider cannot take calls now (breaker open, actor restarting); ``retry_after`` hints
    when it may.
    """


def public_name(error: BaseException) -> str:
    """The first public class name of ``error``: private subclasses stay inside their module."""
    return next(cls.__name__ for cls in type(error).__mro__ if not cls.__name__.startswith("_"))
