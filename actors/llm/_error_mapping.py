"""The one place where the openai SDK's and httpx2's exceptions become our typed errors.

Everything that talks to a provider wraps its SDK calls (and the iteration of a stream) in
:func:`map_sdk_errors`; nothing else catches SDK exceptions. Upstream messages are copied through
:func:`~actors.llm._errors.redact`, and the SDK exception stays reachable as ``__cause__`` for logs
(it is not pickled, and its request carries the Authorization header, so it never travels).

An upstream's error is read in one place (:func:`_typed`), whether it came as an error status or
inside a 2xx answer (a body with no choice, the JSON body answered to a stream request, a stream's
error event before any output): by its status or numeric ``code``, then its string ``code`` and
``type``. A 3xx is never followed: it names where the provider's base_url points.
"""

from __future__ import annotations

import email.utils
import json
import sys
import time
import urllib.parse
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
_AUTH_CODES = frozenset({"invalid_api_key", "authentication_error"})
_RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded"})
# The status a string code stands for when an error names no number (in a 200 body, or in a
# stream's error event): the one OpenAI answers it with.
_CODE_STATUS = {
    **dict.fromkeys(_AUTH_CODES, 401),
    **dict.fromkeys(_QUOTA_CODES | _RATE_LIMIT_CODES, 429),
    **dict.fromkeys(_TOKEN_LIMIT_CODES | _REFUSAL_CODES, 400),
    **dict.fromkeys(_MODEL_CODES, 404),
}
# Where a 3xx points, in our errors: enough for an operator to fix base_url.
_MAX_LOCATION = 200
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
    produced: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """Translate SDK and transport exceptions raised inside the block into :class:`LLMClientError`.

    Pass ``partial_text`` (a callable returning the text delivered so far) around the iteration
    of a stream: failures there become :class:`LLMStreamingError` carrying that text, except an
    error event before any output, typed as the error status its code names. ``produced`` says
    whether any output came (anything the upstream bills: text, reasoning, a tool call's piece,
    a refusal, a usage report...; default: whether there is text). Errors that are already
    ours, cancellation and unrelated exceptions pass through unchanged. Keep only the SDK call
    (or the stream's iteration) inside the block: a :class:`json.JSONDecodeError`,
    :class:`UnicodeDecodeError` or :class:`RecursionError` there is taken for upstream garbage.
    """
    try:
        yield
    except _translated() as exc:
        text = partial_text() if partial_text is not None else None
        came = produced() if produced is not None else None
        raise error_from_sdk(exc, provider, model, secrets, partial_text=text,
                             produced=came) from exc
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
    produced: bool | None = None,
) -> LLMClientError:
    """Return the typed error for an openai or httpx2 exception (``partial_text`` set: mid-stream;
    ``produced``: whether the stream gave any output yet, default whether ``partial_text`` is
    not empty).

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
        came = bool(partial_text) if produced is None else produced
        return _streaming_error(exc, partial_text, came, secrets, where)
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
        return _streaming_error(exc, "", False, secrets, where)
    return LLMClientError(f"unexpected error from {provider}: {_describe(exc, secrets)}", **where)


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
                  secrets)[:_MAX_UPSTREAM_MESSAGE]
    return _in_body(fields, text, {"provider": provider, "model": model})


def _in_body(fields: Mapping[str, Any], message: str, where: dict[str, Any]) -> LLMClientError:
    """An error an upstream answered inside a 2xx response (a body, a stream's event): typed as
    its status would be, and ``accepted`` (the upstream took the request: charged its prompt)."""
    code = fields.get("code")
    return _typed(_status_of(code), code, fields.get("type"), message,
                  {**where, "accepted": True}, body=fields, failed="answered with an error")


def _status_of(code: object) -> int | None:
    """The error status a numeric code names (an int, or a string of three ASCII digits), else
    ``None``."""
    # ASCII: str.isdigit() also takes "²²²" (which int() refuses: a ValueError escaped untyped)
    # and other scripts' digits (which int() reads: "٤٠١" was a 401).
    if isinstance(code, str) and len(code) == 3 and code.isascii() and code.isdigit():
        code = int(code)
    return code if type(code) is int and 400 <= code <= 599 else None


def _word(code: object) -> str:
    return code.lower() if isinstance(code, str) else ""


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
    if 300 <= exc.status_code < 400:
        return _redirected(exc.response, secrets, where)
    return _typed(exc.status_code, exc.code, exc.type, _upstream_message(exc, secrets), where,
                  body=exc.body, headers=exc.response.headers)


def _typed(
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
    words = tuple(word for word in (_word(code), _word(err_type)) if word)
    if status is None:
        status = next((_CODE_STATUS[word] for word in words if word in _CODE_STATUS), None)
    where = {**where, "status_code": status}
    provider = where["provider"]
    retry_after = parse_retry_after(headers) if headers is not None else None

    if status is None:
        return LLMServerError(f"{provider} {failed}: {message}", **where)
    if status == 429:
        if _QUOTA_CODES.intersection(words):
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
        if _MODEL_CODES.intersection(words):
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
        if _TOKEN_LIMIT_CODES.intersection(words):
            return LLMTokenLimitError(f"context window exceeded: {message}", **where)
        if _REFUSAL_CODES.intersection(words):
            return ContentRefused(f"{provider} refused the content: {message}", **where)
        if _MODEL_CODES.intersection(words):
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


def _redirected(response: httpx2.Response, secrets: Sequence[str],
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
    if _REFUSAL_CODES.intersection(words):
        return True
    if isinstance(body, Mapping):
        metadata = body.get("metadata")
        if isinstance(metadata, Mapping) and ("reasons" in metadata or "flagged_input" in metadata):
            return True
    return False


def _streaming_error(
    exc: BaseException, partial_text: str, produced: bool, secrets: Sequence[str],
    where: dict[str, Any]
) -> LLMClientError:
    """A stream's failure: an error event before any output is typed as the error status its code
    names (nothing reached the caller: it is a refusal like any other); anything else is an
    :class:`LLMStreamingError` with the text delivered so far and the event's numeric code."""
    body = getattr(exc, "body", None)
    if not produced and type(exc) is openai.APIError:
        return _in_body(body if isinstance(body, Mapping) else {}, _describe(exc, secrets), where)
    status: int | None = None
    retryable = not partial_text
    if isinstance(body, Mapping):
        raw = body.get("code")
        status = _status_of(raw)
        if status is not None:
            # An error event with a client-side code would be repeated by any retry.
            retryable = retryable and (status == 429 or status >= 500)
        elif _word(raw) in _TOKEN_LIMIT_CODES | _REFUSAL_CODES:
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
