"""What an upstream's error means: one reading of its status, its ``code`` and ``type``.

Used for an error status (:func:`~actors.llm._error_mapping.error_from_sdk`) and for an error
inside a 2xx answer (a body with no choice, the JSON body answered to a stream request, a stream's
error event before any output): by its status or numeric ``code``, then its string ``code`` and
``type`` (:func:`typed_error`). A 3xx is never followed: it names where the provider's base_url
points (:func:`redirect_error`). ``Retry-After`` is read here too.
"""

from __future__ import annotations

import email.utils
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import httpx2

from ._errors import (
    ContentRefused,
    LLMAuthError,
    LLMBadRequestError,
    LLMClientError,
    LLMModelNotFoundError,
    LLMQuotaExceededError,
    LLMRateLimitError,
    LLMServerError,
    LLMTimeoutError,
    LLMTokenLimitError,
    redact,
)
from ._limits import MAX_SERVER_PAUSE

__all__ = ["MAX_UPSTREAM_MESSAGE", "REFUSAL_CODES", "TOKEN_LIMIT_CODES", "code_word",
           "error_in_answer", "error_in_body", "parse_retry_after", "redirect_error",
           "status_of", "typed_error"]

QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
TOKEN_LIMIT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
REFUSAL_CODES = frozenset({"content_filter", "content_policy_violation", "moderation"})
MODEL_CODES = frozenset({"model_not_found"})
_AUTH_CODES = frozenset({"invalid_api_key", "authentication_error"})
_RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded"})
# The status a string code stands for when an error names no number (in a 200 body, or in a
# stream's error event): the one OpenAI answers it with.
_CODE_STATUS = {
    **dict.fromkeys(_AUTH_CODES, 401),
    **dict.fromkeys(QUOTA_CODES | _RATE_LIMIT_CODES, 429),
    **dict.fromkeys(TOKEN_LIMIT_CODES | REFUSAL_CODES, 400),
    **dict.fromkeys(MODEL_CODES, 404),
}
# Where a 3xx points, in our errors: enough for an operator to fix base_url.
_MAX_LOCATION = 200
# An upstream's own words in our errors: enough to say what went wrong (a hostile upstream's
# megabyte of "message" is not relayed to the client and the logs).
MAX_UPSTREAM_MESSAGE = 500


def error_in_answer(error: object, provider: str, model: str | None,
                    secrets: Sequence[str] = ()) -> LLMClientError:
    """The typed error for a 2xx body that holds an ``error`` and no choice: typed as the error
    status its ``code`` names (a number, or a string code or ``type`` such as
    ``insufficient_quota``); with no code we know, a retryable :class:`LLMServerError`. Its
    message is redacted and cut like a status error's. Unlike an error status, it is charged its
    prompt (``accepted``: the upstream took the request before it failed)."""
    fields = error if isinstance(error, Mapping) else {}
    message = fields.get("message") if fields else error
    text = redact(message if isinstance(message, str) and message else "no message",
                  secrets)[:MAX_UPSTREAM_MESSAGE]
    return error_in_body(fields, text, {"provider": provider, "model": model})


def error_in_body(fields: Mapping[str, Any], message: str, where: dict[str, Any]) -> LLMClientError:
    """An error an upstream answered inside a 2xx response (a body, a stream's event): typed as
    its status would be, and ``accepted`` (the upstream took the request: charged its prompt)."""
    code = fields.get("code")
    return typed_error(status_of(code), code, fields.get("type"), message,
                  {**where, "accepted": True}, body=fields, failed="answered with an error")


def status_of(code: object) -> int | None:
    """The error status a numeric code names (an int, or a string of three ASCII digits), else
    ``None``."""
    # ASCII: str.isdigit() also takes "²²²" (which int() refuses: a ValueError escaped untyped)
    # and other scripts' digits (which int() reads: "٤٠١" was a 401).
    if isinstance(code, str) and len(code) == 3 and code.isascii() and code.isdigit():
        code = int(code)
    return code if type(code) is int and 400 <= code <= 599 else None


def code_word(code: object) -> str:
    return code.lower() if isinstance(code, str) else ""


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    ``now`` is the wall-clock time used for an HTTP date (defaults to :func:`time.time`).
    Returns ``None`` when absent or unparseable; never a negative number, never more than
    :data:`~actors.llm._limits.MAX_SERVER_PAUSE`.
    """
    seconds = _parse_retry_after(headers, now)
    return min(seconds, MAX_SERVER_PAUSE) if seconds is not None else None


def _parse_retry_after(headers: Mapping[str, str], now: float | None) -> float | None:
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # overflow: a year or zone past a C int
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def typed_error(
    status: int | None,
    code: object,
    err_type: object,
    message: str,
    where: dict[str, Any],
    *,
    body: object = None,
    headers: Mapping[str, str] | None = None,
    failed: str = "failed",
) -> LLMClientError:
    """The one reading of an upstream's error, wherever it came (a status, or a 2xx body).

    By ``status``, then by the string ``code`` and ``type``; with no status, the one a string
    code stands for (:data:`_CODE_STATUS`); none at all: a retryable :class:`LLMServerError`.
    ``message`` is the upstream's (redacted and cut); ``headers`` give a ``Retry-After``;
    ``failed`` words a server error.
    """
    words = tuple(word for word in (code_word(code), code_word(err_type)) if word)
    if status is None:
        status = next((_CODE_STATUS[word] for word in words if word in _CODE_STATUS), None)
    where = {**where, "status_code": status}
    provider = where["provider"]
    retry_after = parse_retry_after(headers) if headers is not None else None

    if status is None:
        return LLMServerError(f"{provider} {failed}: {message}", **where)
    if status == 429:
        if QUOTA_CODES.intersection(words):
            return LLMQuotaExceededError(f"{provider} quota exhausted: {message}", **where)
        return LLMRateLimitError(
            f"rate limited by {provider}: {message}", retry_after=retry_after, **where
        )
    if status == 402:
        return LLMQuotaExceededError(f"{provider} has no credits left: {message}", **where)
    if status == 401:
        return LLMAuthError(f"{provider} rejected the API key: {message}", **where)
    if status == 403:
        if _is_refusal(body, words):
            return ContentRefused(f"{provider} refused the content: {message}", **where)
        if MODEL_CODES.intersection(words):
            # OpenAI's "Project ... does not have access to model ...": one model, not the key
            # (an auth error would crash the provider and refuse the key for every model).
            return LLMModelNotFoundError(
                f"model {where['model']!r} not found at {provider}: {message}", **where
            )
        return LLMAuthError(f"{provider} denied access: {message}", **where)
    if status == 404:
        return LLMModelNotFoundError(
            f"model {where['model']!r} not found at {provider}: {message}", **where
        )
    if status in (400, 413, 422):
        if TOKEN_LIMIT_CODES.intersection(words):
            return LLMTokenLimitError(f"context window exceeded: {message}", **where)
        if REFUSAL_CODES.intersection(words):
            return ContentRefused(f"{provider} refused the content: {message}", **where)
        if MODEL_CODES.intersection(words):
            return LLMModelNotFoundError(
                f"model {where['model']!r} not found at {provider}: {message}", **where
            )
        return LLMBadRequestError(f"{provider} rejected the request: {message}", **where)
    if status == 408:
        return LLMTimeoutError(f"{provider} timed out: {message}", **where)
    if status >= 500:
        suffix = f" (retry after {retry_after:g} s)" if retry_after is not None else ""
        return LLMServerError(f"{provider} {failed}: {message}{suffix}", **where)
    if 400 <= status < 500:
        return LLMBadRequestError(f"{provider} rejected the request: {message}", **where)
    return LLMClientError(f"unexpected HTTP {status} from {provider}: {message}", **where)


def redirect_error(response: httpx2.Response, secrets: Sequence[str],
                where: dict[str, Any]) -> LLMBadRequestError:
    """A 3xx, never followed (our key and prompts go to base_url, nowhere else): a bad request
    (the config's, not retryable) naming where base_url points. Like an error status, it bills
    nothing."""
    status = response.status_code
    provider = where["provider"]
    target = _location(response, secrets)
    if target is None:
        message = (f"{provider}'s base_url answered HTTP {status} with no usable Location (not "
                   "followed): check base_url")
    else:
        message = (f"{provider}'s base_url redirects (HTTP {status}) to {target}: set base_url "
                   "to the target")
    return LLMBadRequestError(message, **{**where, "status_code": status})


def _location(response: httpx2.Response, secrets: Sequence[str]) -> str | None:
    """A 3xx's ``Location`` (resolved against the request's URL) as scheme://host/path: no user
    info, query or fragment (where a key would be), redacted, cut at :data:`_MAX_LOCATION`."""
    location = response.headers.get("location", "").strip()
    if not location:
        return None
    try:
        parts = urllib.parse.urlsplit(urllib.parse.urljoin(str(response.request.url), location))
    except ValueError:  # an IPv6 host without its "]"
        return None
    target = redact(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}", secrets)
    # Percent-encoded: a header's control characters and bytes never reach a log as such.
    return urllib.parse.quote(target, safe="/:[]%~!$&'()*+,;=")[:_MAX_LOCATION]


def _is_refusal(body: object, words: tuple[str, ...]) -> bool:
    # OpenRouter's moderation 403 carries `metadata.reasons` / `flagged_input`; OpenAI uses codes.
    if REFUSAL_CODES.intersection(words):
        return True
    if isinstance(body, Mapping):
        metadata = body.get("metadata")
        if isinstance(metadata, Mapping) and ("reasons" in metadata or "flagged_input" in metadata):
            return True
    return False
