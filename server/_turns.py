"""One chat turn on a socket: asking the conversation's SessionActor with ``ask_stream`` and
turning its events, and its errors, into envelopes for the client."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

from actors.chat import (
    HistoryWriteError,
    RunTurn,
    ToolCallFinished,
    ToolCallStarted,
    TurnComplete,
    TurnReasoning,
    TurnText,
    conversation_label,
)
from actors.llm import LLMClientError
from runtime import ActorCrashed, ActorError, ActorStopped, DeadlineExceeded, Overloaded
from server import protocol
from server._outbox import Outbox
from server.protocol import ChatFrame, Envelope

__all__ = ["CANCEL_MESSAGES", "Ordered", "Turn", "converse", "describe", "error_type_of", "failure"]

logger = logging.getLogger("server.websocket")

Ordered = Callable[[str, Any, float | None], AbstractAsyncContextManager[AsyncIterator[Any]]]
"""``ask_stream`` a conversation's actor in frame order: (conversation id, message, timeout)."""

CANCEL_MESSAGES = {
    "cancelled": "the request was cancelled",
    "shutting_down": "the server is shutting down",
}


class Turn:
    """A running turn's cancel scope, and why it was cancelled."""

    __slots__ = ("reason", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.reason = "cancelled"

    def cancel(self, reason: str) -> None:
        self.reason = reason
        self.scope.cancel()


async def converse(
    frame: ChatFrame,
    conversation_id: str,
    *,
    ordered: Ordered,
    outbox: Outbox,
    timeout: float | None,
) -> Envelope:
    """Run one turn; the returned envelope ends it (``complete`` or ``error``)."""
    request_id = frame.request_id
    payload = frame.payload
    send = outbox.send
    texts: list[str] = []
    thoughts: list[str] = []
    ended = False
    # The provider's reading task is not this one: a delta it read as the turn was cancelled
    # must not follow the turn's last envelope.
    deltas = outbox.deltas(request_id, lambda: not ended) if payload.streaming else None

    message = RunTurn(
        text=payload.text,
        request_id=request_id,
        metadata=payload.metadata,
        model=payload.model,
        reasoning_effort=payload.reasoning_effort,
        deltas=deltas,
    )
    try:
        async with ordered(conversation_id, message, timeout) as events:
            async for event in events:
                if isinstance(event, TurnText):
                    if payload.streaming:
                        await send(protocol.text_chunk(request_id, event.text))
                    else:
                        texts.append(event.text)
                elif isinstance(event, TurnReasoning):
                    if payload.streaming:
                        await send(protocol.reasoning_chunk(request_id, event.text))
                    else:
                        thoughts.append(event.text)
                elif isinstance(event, ToolCallStarted):
                    await send(_started(request_id, event))
                elif isinstance(event, ToolCallFinished):
                    await send(_finished(request_id, event))
                elif isinstance(event, TurnComplete):
                    if thoughts:
                        await send(protocol.reasoning_chunk(request_id, "".join(thoughts)))
                    if texts:
                        await send(protocol.text_chunk(request_id, "".join(texts)))
                    return _complete(request_id, conversation_id, event)
    except Exception as exc:
        return failure(request_id, exc, "turn", conversation_id)
    finally:
        ended = True
    return protocol.error(request_id, "the turn ended without an answer", "internal_error")


def failure(request_id: str | None, exc: Exception, what: str, conversation_id: str) -> Envelope:
    """The single ending of a ``what`` (``"turn"``, ``"clear_history"``) of a conversation that
    failed with ``exc``.

    An unexpected error lands here too: the client still gets its ending, and the bug is logged
    with its traceback rather than lost; the log names the conversation by its label (its id is
    the capability to use it) and shows the client's request id quoted (it may hold anything,
    line breaks too).
    """
    if isinstance(exc, LLMClientError | ActorError):
        return protocol.error(request_id, describe(exc), error_type_of(exc))
    if isinstance(exc, HistoryWriteError):  # logged by the session
        return protocol.error(request_id, str(exc), exc.error_type)
    logger.error("%s %r of conversation %s failed", what, request_id,
                 conversation_label(conversation_id), exc_info=exc)
    return protocol.error(request_id, "internal error", "internal_error")


def _started(request_id: str, event: ToolCallStarted) -> Envelope:
    return protocol.tool_call_started(
        request_id,
        call_id=event.call_id,
        server=event.server,
        tool=event.tool,
        arguments=event.arguments,
    )


def _finished(request_id: str, event: ToolCallFinished) -> Envelope:
    return protocol.tool_call_finished(
        request_id,
        call_id=event.call_id,
        server=event.server,
        tool=event.tool,
        is_error=event.is_error,
        result_preview=event.result_preview,
        duration_ms=event.duration_ms,
    )


def _complete(request_id: str, conversation_id: str, event: TurnComplete) -> Envelope:
    usage = event.usage
    usage_data: dict[str, Any] = (
        usage.model_dump(exclude={"total_cost"}) if hasattr(usage, "model_dump") else dict(usage)
    )
    cost = event.cost
    return protocol.complete(
        request_id,
        usage=usage_data,
        cost=None if cost is None or math.isnan(cost) else cost,
        provider=event.provider,
        model=event.model,
        conversation_id=conversation_id,
        hops=event.hops,
        finish_reason=event.finish_reason,
        cost_warning=event.cost_warning,
    )


_RUNTIME_ERROR_TYPES: tuple[tuple[type[ActorError], str], ...] = (
    (Overloaded, "overloaded"),
    (DeadlineExceeded, "timeout"),
    (ActorStopped, "unavailable"),
    (ActorCrashed, "internal_error"),
)


def error_type_of(exc: BaseException) -> str:
    """The ``error_type`` a client sees for ``exc`` (an LLM error declares its own)."""
    if isinstance(exc, LLMClientError):
        return exc.error_type
    for cls, error_type in _RUNTIME_ERROR_TYPES:
        if isinstance(exc, cls):
            return error_type
    return "internal_error"


def describe(exc: BaseException) -> str:
    """What a client is told about ``exc``."""
    if isinstance(exc, LLMClientError):
        return str(exc)
    if isinstance(exc, Overloaded):
        return "the service is overloaded; try again shortly"
    if isinstance(exc, DeadlineExceeded):
        return "the request took too long"
    if isinstance(exc, ActorStopped):
        return "the conversation is not available (the server may be shutting down)"
    return "the conversation failed; try again"
