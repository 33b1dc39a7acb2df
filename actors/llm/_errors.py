"""Typed errors of the LLM domain: every failure of a model call is one of these.

Our exception hierarchy::

    LLMClientError                    error_type            retryable?  what the router does
    ├── LLMRateLimitError             rate_limit            yes         next provider; here only
    │   │                                                               after ``retry_after``
    │   └── LLMQuotaExceededError     quota_exceeded        no          next provider (this
    │                                                                   account is out of money)
    ├── LLMAuthError                  auth                  no          next provider (only this
    │                                                                   provider's key is bad)
    ├── LLMTokenLimitError            token_limit           no          return at once (every
    │                                                                   provider would refuse it)
    ├── LLMModelNotFoundError         model_not_found       no          next candidate
    ├── LLMStreamingError             streaming             if no text  fall back only if
    │                                                                   ``partial_text`` is empty
    ├── LLMCostLimitError             cost_limit            no          return at once (our budget)
    ├── LLMTimeoutError               timeout               yes         next provider
    ├── LLMConnectionError            connection            yes         next provider
    ├── LLMServerError                server                yes         next provider
    ├── LLMBadRequestError            bad_request           no          return at once
    ├── LLMInvalidJSONError           invalid_json_response no          next candidate (JSON mode
    │                                                                   asked, the answer is not)
    ├── LLMOverloadedError            overloaded            yes         next provider (a mailbox
    │                                                                   of ours is full)
    ├── ContentRefused                content_refused       no          return at once unless
    │                                                                   configured to fall back
    └── ProviderUnavailable           provider_unavailable  yes         skip this provider

``error_type`` is the name a WebSocket client sees (``{"status": "error", "chunk": {"error_type":
...}}``): part of the protocol, declared per class, never derived from a class name, so renaming a
class changes nothing on the wire. ``retry_after`` (seconds, when known) says when trying the same
provider again makes sense; rate limits and unavailable providers set it.

``retryable`` answers one question: *may the same request, unchanged, succeed if sent again (later
or elsewhere)?* It is a class default that an instance may override (a mid-stream failure before the
first chunk is retryable, after it is not). Errors that are not retryable split in two for the
router: those tied to one provider (:class:`LLMAuthError`, :class:`LLMQuotaExceededError`,
:class:`LLMModelNotFoundError`) are worth trying on *another* provider, never on the same one; those
tied to the request (:class:`LLMTokenLimitError`, :class:`LLMBadRequestError`,
:class:`LLMCostLimitError`, :class:`ContentRefused`) would be repeated everywhere. The attribute
:attr:`LLMClientError.provider_specific` carries that distinction.

The actor kernel's errors (:class:`runtime.ActorError`) never leave this package: the facades and
the router translate them with :func:`as_llm_error`, the one place that knows both trees::

    runtime.Overloaded                 -> LLMOverloadedError
    runtime.DeadlineExceeded           -> LLMTimeoutError
    runtime.ActorCrashed               -> ProviderUnavailable (retryable)
    runtime.ActorStopped               -> ProviderUnavailable (not retryable: stopped for good)
    runtime.RestartIntensityExceeded   -> ProviderUnavailable (not retryable)

Messages never contain secrets: whatever text we copy from upstream goes through :func:`redact`
first, and every error pickles and reprs from its (already redacted) fields only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from runtime import ActorCrashed, ActorError, DeadlineExceeded, Overloaded

if TYPE_CHECKING:
    from ._messages import Usage

__all__ = [
    "ContentRefused",
    "LLMAuthError",
    "LLMBadRequestError",
    "LLMClientError",
    "LLMConnectionError",
    "LLMCostLimitError",
    "LLMInvalidJSONError",
    "LLMModelNotFoundError",
    "LLMOverloadedError",
    "LLMQuotaExceededError",
    "LLMRateLimitError",
    "LLMServerError",
    "LLMStreamingError",
    "LLMTimeoutError",
    "LLMTokenLimitError",
    "ProviderUnavailable",
    "as_llm_error",
    "redact",
    "translate_actor_errors",
]

REDACTED = "[REDACTED]"

# Shapes of credentials that must never leave the process even when we were not told the exact
# value: OpenAI/OpenRouter keys (`sk-...`, `sk-or-v1-...`, `sk-proj-...`) and bearer tokens.
_SECRET_PATTERNS = re.compile(
    r"\bsk-[A-Za-z0-9_\-]{6,}"
    r"|\b(?i:bearer)\s+[A-Za-z0-9_\-.=~+/]{8,}"
)


# A URL's user info: everything between "://" and the authority's last "@" (a password may hold
# an unencoded "@"; urlsplit also splits at the last one).
_USER_INFO = re.compile(r"(?<=://)[^/?#\s]*@")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with every given secret, anything shaped like a key and the user info of
    any URL in it (``https://user:pw@host``, ``redis://:pw@host``: ``***@``) replaced.

    Secrets shorter than 4 characters are ignored (replacing them would garble the message and
    they are not credentials anyway).
    """
    if "@" in text:
        text = _USER_INFO.sub("***@", text)
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _SECRET_PATTERNS.sub(REDACTED, text)


class LLMClientError(Exception):
    """Base class of every error a model call can end with.

    ``error_type`` is its name on the wire (the module docstring lists them); ``retryable`` says
    whether the same request may succeed if sent again; ``provider_specific`` whether the cause
    is tied to this provider (so another provider may succeed even when ``retryable`` is false);
    ``retry_after`` how many seconds to wait before trying this provider again, when known;
    ``accepted`` whether the upstream took the request and answered this error inside a 2xx
    response (a body, a stream's error event): such a request may have been billed its prompt
    (OpenRouter answers 200 only once the model has started processing the request), so its
    attempt is charged it; ``usage`` what the upstream reported the attempt used (priced),
    when it did before failing: its attempt is charged that (see :mod:`._attempt_spend`).
    """

    error_type: ClassVar[str] = "client"
    retryable: bool = False
    provider_specific: bool = False
    accepted: bool = False
    usage: Usage | None = None

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status_code: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        provider_specific: bool | None = None,
        accepted: bool = False,
        usage: Usage | None = None,
    ) -> None:
        # Key-shaped text is scrubbed even from messages built by our own code.
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model = model
        self.status_code = status_code
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable
        if provider_specific is not None:
            self.provider_specific = provider_specific
        if accepted:
            self.accepted = True
        if usage is not None:
            self.usage = usage

    def _extra(self) -> dict[str, Any]:
        """Subclass-specific keyword arguments, for pickling and repr."""
        return {}

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "provider": self.provider,
            "model": self.model,
            "status_code": self.status_code,
            "retry_after": self.retry_after,
        }
        if self.retryable is not type(self).retryable:
            kwargs["retryable"] = self.retryable
        if self.provider_specific is not type(self).provider_specific:
            kwargs["provider_specific"] = self.provider_specific
        if self.accepted:
            kwargs["accepted"] = True
        if self.usage is not None:
            kwargs["usage"] = self.usage
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


class LLMRateLimitError(LLMClientError):
    """The provider throttled us (HTTP 429); wait ``retry_after`` seconds (when known) here.

    ``retry_after`` may be given by position too, as the specification declares it.
    """

    error_type = "rate_limit"
    retryable = True
    provider_specific = True

    def __init__(self, message: str, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)


class LLMQuotaExceededError(LLMRateLimitError):
    """The account has no quota or credits left (429 ``insufficient_quota``, OpenRouter 402).

    Waiting does not help; another provider (another account) may.
    """

    error_type = "quota_exceeded"
    retryable = False


class LLMAuthError(LLMClientError):
    """The provider rejected our credentials (HTTP 401, or 403 for a key problem).

    Not retryable on this provider until its key is renewed (the provider actor crashes so its
    supervisor restarts it with credentials re-read); the router may try another provider.
    """

    error_type = "auth"
    provider_specific = True


class LLMTokenLimitError(LLMClientError):
    """The prompt plus ``max_tokens`` does not fit the model's context window or a token budget."""

    error_type = "token_limit"


class LLMModelNotFoundError(LLMClientError):
    """The provider does not know the model (HTTP 404); another provider may."""

    error_type = "model_not_found"
    provider_specific = True


class LLMStreamingError(LLMClientError):
    """A stream failed after it started; ``partial_text`` is what had been delivered so far.

    Retryable by default only when nothing had been delivered: a retry after the first chunk
    would show the client the beginning of the answer twice.
    """

    error_type = "streaming"
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

    error_type = "cost_limit"


class LLMTimeoutError(LLMClientError):
    """The provider did not answer in time (connect, read or pool timeout)."""

    error_type = "timeout"
    retryable = True
    provider_specific = True


class LLMConnectionError(LLMClientError):
    """The connection to the provider failed or was reset."""

    error_type = "connection"
    retryable = True
    provider_specific = True


class LLMServerError(LLMClientError):
    """The provider failed (HTTP 5xx)."""

    error_type = "server"
    retryable = True
    provider_specific = True


class LLMBadRequestError(LLMClientError):
    """The provider rejected the request as malformed (HTTP 400/422, or another 4xx)."""

    error_type = "bad_request"


class LLMInvalidJSONError(LLMClientError):
    """JSON mode was asked for (``response_format``, ``enable_json_mode``) and the answer is not
    JSON. Another model may do better; the same one, asked again, may not.

    ``usage`` is the answer's own (priced), when it arrived whole: the attempt is charged that.
    """

    error_type = "invalid_json_response"
    provider_specific = True


class ContentRefused(LLMClientError):
    """The provider refused the content (moderation, ``content_filter``)."""

    error_type = "content_refused"


class LLMOverloadedError(LLMClientError):
    """One of our own actors is overloaded (its mailbox is full): shed load, try again shortly."""

    error_type = "overloaded"
    retryable = True


class ProviderUnavailable(LLMClientError):
    """The provider cannot take calls now (breaker open, actor restarting or stopped).

    ``retry_after`` hints when it may.
    """

    error_type = "provider_unavailable"
    retryable = True
    provider_specific = True


def as_llm_error(
    error: LLMClientError | ActorError, *, provider: str | None = None, model: str | None = None
) -> LLMClientError:
    """``error`` as an :class:`LLMClientError`: kernel errors translated, ours returned as is.

    The one translation between the actor kernel's tree and ours (table in the module
    docstring); ``provider`` and ``model`` say which call it was, when known.
    """
    if isinstance(error, LLMClientError):
        return error
    message = str(error)
    if isinstance(error, Overloaded):
        return LLMOverloadedError(message, provider=provider, model=model)
    if isinstance(error, DeadlineExceeded):
        return LLMTimeoutError(message, provider=provider, model=model)
    if isinstance(error, ActorCrashed):
        return ProviderUnavailable(message, provider=provider, model=model)
    # Stopped, or a supervisor gave up: the same request will not succeed here again.
    return ProviderUnavailable(message, provider=provider, model=model, retryable=False)


@contextmanager
def translate_actor_errors(
    *, provider: str | None = None, model: str | None = None
) -> Iterator[None]:
    """Run the block with every :class:`runtime.ActorError` re-raised as :func:`as_llm_error`."""
    try:
        yield
    except ActorError as exc:
        raise as_llm_error(exc, provider=provider, model=model) from exc
