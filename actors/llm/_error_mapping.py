"""The one place where the openai SDK's and httpx2's exceptions become our typed errors.

Everything that talks to a provider wraps its SDK calls (and the iteration of a stream) in
:func:`map_sdk_errors`; nothing else catches SDK exceptions. Upstream messages are copied through
:func:`~actors.llm._errors.redact`, and the SDK exception stays reachable as ``__cause__`` for logs
(it is not pickled, and its request carries the Authorization header, so it never travels).

What an upstream's error means (its status, ``code`` and ``type``, wherever it came) is read in
:mod:`~actors.llm._upstream_errors`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx2
import openai

from ._errors import (
    ContentRefused,
    LLMClientError,
    LLMConnectionError,
    LLMServerError,
    LLMStreamingError,
    LLMTimeoutError,
    LLMTokenLimitError,
    redact,
)
from ._response_bounds import ResponseRefused
from ._upstream_errors import (
    MAX_UPSTREAM_MESSAGE,
    REFUSAL_CODES,
    TOKEN_LIMIT_CODES,
    code_word,
    error_in_body,
    redirect_error,
    status_of,
    typed_error,
)
from ._wire_decode import malformed_error

__all__ = ["error_from_sdk", "map_sdk_errors"]


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


def _from_status(
    exc: openai.APIStatusError, secrets: Sequence[str], where: dict[str, Any]
) -> LLMClientError:
    if 300 <= exc.status_code < 400:
        return redirect_error(exc.response, secrets, where)
    return typed_error(exc.status_code, exc.code, exc.type, _upstream_message(exc, secrets), where,
                  body=exc.body, headers=exc.response.headers)


def _streaming_error(
    exc: BaseException, partial_text: str, produced: bool, secrets: Sequence[str],
    where: dict[str, Any]
) -> LLMClientError:
    """A stream's failure: an error event before any output is typed as the error status its code
    names (nothing reached the caller: it is a refusal like any other); anything else is an
    :class:`LLMStreamingError` with the text delivered so far and the event's numeric code."""
    body = getattr(exc, "body", None)
    if not produced and type(exc) is openai.APIError:
        fields = body if isinstance(body, Mapping) else {}
        return error_in_body(fields, _describe(exc, secrets), where)
    status: int | None = None
    retryable = not partial_text
    if isinstance(body, Mapping):
        raw = body.get("code")
        status = status_of(raw)
        if status is not None:
            # An error event with a client-side code would be repeated by any retry.
            retryable = retryable and (status == 429 or status >= 500)
        elif code_word(raw) in TOKEN_LIMIT_CODES | REFUSAL_CODES:
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
    return redact(message, secrets)[:MAX_UPSTREAM_MESSAGE]


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
