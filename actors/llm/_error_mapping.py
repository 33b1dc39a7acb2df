"""The one place where the openai SDK's and httpx2's exceptions become our typed errors.

Everything that talks to a provider wraps its SDK calls (and the iteration of a stream) in
:func:`map_sdk_errors`; nothing else catches SDK exceptions. Upstream messages are copied through
:func:`~actors.llm._errors.redact`, and the SDK exception stays reachable as ``__cause__`` for logs
(it is not pickled, and its request carries the Authorization header, so it never travels).
"""

from __future__ import annotations

import email.utils
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx2
import openai

from ._errors import (
    ContentRefused,
    LLMAuthError,
    LLMBadRequestError,
    LLMClientError,
    LLMConnectionError,
    LLMModelNotFoundError,
    LLMQuotaExceededError,
    LLMRateLimitError,
    LLMServerError,
    LLMStreamingError,
    LLMTimeoutError,
    LLMTokenLimitError,
    redact,
)
from ._limits import MAX_SERVER_PAUSE
from ._response_bounds import ResponseRefused
from ._wire_decode import malformed_error

__all__ = ["error_from_sdk", "error_in_answer", "map_sdk_errors", "parse_retry_after"]

_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
_TOKEN_LIMIT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_REFUSAL_CODES = frozenset({"content_filter", "content_policy_violation", "moderation"})
_MODEL_CODES = frozenset({"model_not_found"})
# An upstream's own words in our errors: enough to say what went wrong (a hostile upstream's
# megabyte of "message" is not relayed to the client and the logs).
_MAX_UPSTREAM_MESSAGE = 500

# What the SDK lets through for an answer it cannot decode: bytes that are not UTF-8 in an SSE
# stream, JSON nested deeper than the parser's recursion limit.
_UNDECODABLE = (UnicodeDecodeError, RecursionError)
_TRANSLATED = (openai.OpenAIError, httpx2.HTTPError, json.JSONDecodeError, *_UNDECODABLE)


def _aiohttp_error() -> type[BaseException] | None:
    """aiohttp's base error, when the SDK's aiohttp transport is loaded (else ``None``)."""
    aiohttp = sys.modules.get("aiohttp")
    return None if aiohttp is None else aiohttp.ClientError


def _translated() -> tuple[type[BaseException], ...]:
    """The exceptions :func:`map_sdk_errors` translates (looked up only when one is raised).

    With the SDK's aiohttp transport, aiohttp's own errors too: its exception map covers
    connection, timeout and payload errors only, so a malformed status line, header or chunk
    size (``ClientResponseError``) comes through raw.
    """
    aiohttp_error = _aiohttp_error()
    return _TRANSLATED if aiohttp_error is None else (*_TRANSLATED, aiohttp_error)


@contextmanager
def map_sdk_errors(
    provider: str,
    model: str | None,
    secrets: Sequence[str] = (),
    *,
    partial_text: Callable[[], str] | None = None,
) -> Iterator[None]:
    """Translate SDK and transport exceptions raised inside the block into :class:`LLMClientError`.

    Pass ``partial_text`` (a callable returning the text delivered so far) around the iteration
    of a stream: failures there become :class:`LLMStreamingError` carrying that text. Errors that
    are already ours, cancellation and unrelated exceptions pass through unchanged. Keep only the
    SDK call (or the stream's iteration) inside the block: a :class:`json.JSONDecodeError`,
    :class:`UnicodeDecodeError` or :class:`RecursionError` there is taken for upstream garbage.
    """
    try:
        yield
    except _translated() as exc:
        text = partial_text() if partial_text is not None else None
        raise error_from_sdk(exc, provider, model, secrets, partial_text=text) from exc
    except RuntimeError as exc:
        if not _closed_by_aiohttp(exc):
            raise
        text = partial_text() if partial_text is not None else None
        raise error_from_sdk(exc, provider, model, secrets, partial_text=text) from exc


def error_from_sdk(
    exc: BaseException,
    provider: str,
    model: str | None,
    secrets: Sequence[str] = (),
    *,
    partial_text: str | None = None,
) -> LLMClientError:
    """Return the typed error for an openai or httpx2 exception (``partial_text`` set: mid-stream).

    An exception we do not recognise becomes a non-retryable :class:`LLMClientError`.
    """
    where: dict[str, Any] = {"provider": provider, "model": model}
    if isinstance(exc, LLMClientError):
        return exc
    refused = _refused(exc)
    if refused is not None:
        return _refused_error(refused, partial_text or "", where)
    if isinstance(exc, _UNDECODABLE):
        # An answer arrived (and was billed) that we cannot read, as a malformed chunk.
        return malformed_error(provider, model or "", exc, partial_text or "")
    if isinstance(exc, openai.ContentFilterFinishReasonError):
        return ContentRefused(f"{provider} stopped the answer: content filter", **where)
    if isinstance(exc, openai.LengthFinishReasonError):
        return LLMTokenLimitError(f"{provider} stopped the answer at max_tokens", **where)
    if partial_text is not None and not isinstance(exc, openai.APIStatusError):
        return _streaming_error(exc, partial_text, secrets, where)
    if isinstance(exc, openai.APIStatusError):
        return _from_status(exc, secrets, where)
    if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError):
        # Upstream garbage: the provider is misbehaving, another one may not be.
        return LLMServerError(
            f"invalid response from {provider}: {_describe(exc, secrets)}",
            status_code=getattr(exc, "status_code", None),
            **where,
        )
    reset = _aiohttp_reset(exc)
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException) and not reset:
        return LLMTimeoutError(f"request to {provider} timed out", **where)
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError) or reset or (
            _from_aiohttp(exc)):
        return LLMConnectionError(
            f"connection to {provider} failed: {_describe(exc, secrets)}", **where
        )
    if isinstance(exc, openai.APIError):
        # A plain APIError is what the SDK raises for an SSE data event carrying "error".
        return _streaming_error(exc, "", secrets, where)
    return LLMClientError(f"unexpected error from {provider}: {_describe(exc, secrets)}", **where)


def error_in_answer(error: object, provider: str, model: str | None,
                    secrets: Sequence[str] = ()) -> LLMClientError:
    """The typed error for a 2xx body that holds an ``error`` and no choice, read as a status of
    its ``code``: :class:`LLMRateLimitError` for 429, else :class:`LLMServerError` (retryable;
    an error status bills nothing). Its message is redacted and cut like a status error's."""
    fields = error if isinstance(error, Mapping) else {}
    message = fields.get("message") if fields else error
    text = redact(message if isinstance(message, str) and message else "no message",
                  secrets)[:_MAX_UPSTREAM_MESSAGE]
    code = fields.get("code")
    status = code if type(code) is int else int(code) if (
        isinstance(code, str) and code.isdigit() and len(code) == 3) else None
    where: dict[str, Any] = {"provider": provider, "model": model}
    if status == 429:
        return LLMRateLimitError(f"rate limited by {provider}: {text}", status_code=429, **where)
    status = status if status is not None and 400 <= status <= 599 else None
    return LLMServerError(f"{provider} answered with an error: {text}", status_code=status,
                          **where)


def _refused(exc: BaseException) -> ResponseRefused | None:
    """The :class:`ResponseRefused` that ``exc`` is or wraps (the SDK wraps a failed read of its
    own in ``APIConnectionError``), else ``None``."""
    cause: BaseException | None = exc
    for _ in range(3):
        if cause is None or isinstance(cause, ResponseRefused):
            return cause
        cause = cause.__cause__
    return None


def _refused_error(refused: ResponseRefused, partial_text: str,
                   where: dict[str, Any]) -> LLMClientError:
    """A body we stopped reading, like a malformed one: :class:`LLMStreamingError` (not
    retryable) once text reached the caller, else :class:`LLMServerError` with the response's
    status (a 2xx answer was billed and is charged; an error status bills nothing)."""
    message = f"{where['provider']} sent {refused.reason}"
    if partial_text:
        return LLMStreamingError(message, partial_text=partial_text, retryable=False, **where)
    return LLMServerError(message, status_code=refused.status_code, **where)


def _aiohttp_reset(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection error that the SDK's aiohttp transport reported as a timeout.

    Its vendored transport maps every ``aiohttp.ClientConnectionError`` (a reset, a server gone)
    to ``ConnectTimeout``; the aiohttp error stays in the ``__cause__`` chain. Only a cause that
    is not itself a timeout makes it a connection error. aiohttp is looked up among the loaded
    modules: when it is not loaded, no error can come from it (and it is never imported here).
    """
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None or not isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return False
    cause = exc.__cause__
    for _ in range(4):  # the SDK's error, httpx2's ConnectTimeout, then aiohttp's
        if cause is None:
            return False
        if isinstance(cause, aiohttp.ClientConnectionError):
            return not isinstance(cause, TimeoutError)
        cause = cause.__cause__
    return False


def _from_aiohttp(exc: BaseException) -> bool:
    """Whether ``exc`` is one of aiohttp's errors that the SDK's transport let through raw (a
    response that is not valid HTTP: what httpx2 reports as a ``RemoteProtocolError``)."""
    aiohttp_error = _aiohttp_error()
    return (aiohttp_error is not None and isinstance(exc, aiohttp_error)) or (
        isinstance(exc, RuntimeError) and _closed_by_aiohttp(exc))


def _closed_by_aiohttp(exc: RuntimeError) -> bool:
    """Whether aiohttp's body reader raised ``exc``: a read of a connection aiohttp closed (its
    parser failed on a chunk that came while no read waited) is a bare ``RuntimeError`` there,
    told by where it was raised (its message is not ours to match)."""
    last = exc.__traceback__
    while last is not None and last.tb_next is not None:
        last = last.tb_next
    return last is not None and last.tb_frame.f_globals.get("__name__") == "aiohttp.streams"


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


def _from_status(
    exc: openai.APIStatusError, secrets: Sequence[str], where: dict[str, Any]
) -> LLMClientError:
    status = exc.status_code
    code = (exc.code or "").lower()
    err_type = (exc.type or "").lower() if isinstance(exc.type, str) else ""
    message = _upstream_message(exc, secrets)
    where = {**where, "status_code": status}
    provider = where["provider"]

    if status == 429:
        if code in _QUOTA_CODES or err_type in _QUOTA_CODES:
            return LLMQuotaExceededError(f"{provider} quota exhausted: {message}", **where)
        retry_after = parse_retry_after(exc.response.headers)
        return LLMRateLimitError(
            f"rate limited by {provider}: {message}", retry_after=retry_after, **where
        )
    if status == 402:
        return LLMQuotaExceededError(f"{provider} has no credits left: {message}", **where)
    if status == 401:
        return LLMAuthError(f"{provider} rejected the API key: {message}", **where)
    if status == 403:
        if _is_refusal(exc, code, err_type):
            return ContentRefused(f"{provider} refused the content: {message}", **where)
        if code in _MODEL_CODES:
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
        if code in _TOKEN_LIMIT_CODES:
            return LLMTokenLimitError(f"context window exceeded: {message}", **where)
        if code in _REFUSAL_CODES:
            return ContentRefused(f"{provider} refused the content: {message}", **where)
        if code in _MODEL_CODES:
            return LLMModelNotFoundError(
                f"model {where['model']!r} not found at {provider}: {message}", **where
            )
        return LLMBadRequestError(f"{provider} rejected the request: {message}", **where)
    if status == 408:
        return LLMTimeoutError(f"{provider} timed out: {message}", **where)
    if status >= 500:
        retry_after = parse_retry_after(exc.response.headers)
        suffix = f" (retry after {retry_after:g} s)" if retry_after is not None else ""
        return LLMServerError(f"{provider} failed: {message}{suffix}", **where)
    if 400 <= status < 500:
        return LLMBadRequestError(f"{provider} rejected the request: {message}", **where)
    return LLMClientError(f"unexpected HTTP {status} from {provider}: {message}", **where)


def _is_refusal(exc: openai.APIStatusError, code: str, err_type: str) -> bool:
    # OpenRouter's moderation 403 carries `metadata.reasons` / `flagged_input`; OpenAI uses codes.
    if code in _REFUSAL_CODES or err_type in _REFUSAL_CODES:
        return True
    body = exc.body
    if isinstance(body, Mapping):
        metadata = body.get("metadata")
        if isinstance(metadata, Mapping) and ("reasons" in metadata or "flagged_input" in metadata):
            return True
    return False


def _streaming_error(
    exc: BaseException, partial_text: str, secrets: Sequence[str], where: dict[str, Any]
) -> LLMStreamingError:
    status: int | None = None
    retryable = not partial_text
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        raw = body.get("code")
        if isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit()):
            status = int(raw)
            # An error event with a client-side code would be repeated by any retry.
            retryable = retryable and (status == 429 or status >= 500)
        elif isinstance(raw, str) and raw.lower() in _TOKEN_LIMIT_CODES | _REFUSAL_CODES:
            retryable = False
    return LLMStreamingError(
        f"stream from {where['provider']} failed: {_describe(exc, secrets)}",
        partial_text=partial_text,
        retryable=retryable,
        status_code=status,
        **where,
    )


def _upstream_message(exc: openai.APIError, secrets: Sequence[str]) -> str:
    body = exc.body
    message: object = None
    if isinstance(body, Mapping):
        message = body.get("message")
    elif isinstance(body, str) and body:
        message = body
    if not isinstance(message, str) or not message:
        message = exc.message
    # Redacted whole, then cut: a secret across the cut must not leave its first characters.
    return redact(message, secrets)[:_MAX_UPSTREAM_MESSAGE]


def _describe(exc: BaseException, secrets: Sequence[str]) -> str:
    if isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIConnectionError):
        return _upstream_message(exc, secrets)
    message = getattr(exc, "message", None)
    if _from_aiohttp(exc) and isinstance(message, str):
        text = f"{type(exc).__name__}: {message}"  # its str() adds the request's URL
    else:
        text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if isinstance(exc, openai.APIConnectionError) and cause is not None:
        text = f"{text} ({type(cause).__name__}: {cause})" if str(cause) else text
    return redact(text, secrets)
