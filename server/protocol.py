"""The ``/ws/chat`` wire protocol: incoming frames as pydantic models, outgoing envelopes.

Compatible with the MCP Backend frontend protocol; everything beyond it is additive.

Client to server::

    {"action": "chat", "request_id": "r1",
     "payload": {"text": "...", "streaming": true, "metadata": {}, "conversation_id": "...",
                 "model": "...", "reasoning_effort": "low"}}
    {"action": "cancel", "request_id": "r1"}
    {"action": "clear_history", "request_id": "c1", "conversation_id": "..."}

``conversation_id`` is optional in both (default: the socket's current conversation), and so is
the ``request_id`` of ``clear_history``. ``model`` (one of ``GET /api/models``; an unconfigured one
is an ``invalid_request``) and ``reasoning_effort`` (``minimal``, ``low``, ``medium``, ``high``)
are optional too. Server to client, envelopes
``{"request_id", "status", "chunk"}``::

    processing  {"metadata": {"user_message": "...", "conversation_id": "..."}}
    chunk       {"type": "text", "data": "delta"}
    chunk       {"type": "reasoning", "data": "delta"}   (the model's thinking, before the text)
    chunk       {"type": "tool_call_started", "data": {"server", "tool", "arguments", "call_id"}}
    chunk       {"type": "tool_call_finished", "data": {"server", "tool", "call_id", "is_error",
                                                         "result_preview", "duration_ms"}}
    error       {"error": "message", "error_type": "rate_limited"}
                (a frame refused while a request with its request_id is still running is
                answered with request_id null and "refused_request_id" in the chunk)
    complete    {"usage", "cost", "provider", "model", "hops", "finish_reason", "conversation_id"}
                (and "cost_warning": true when a call of the turn passed its provider's
                cost_warning_threshold)
    complete    {"type": "history_cleared", "conversation_id": "..."}   (answers clear_history)

Every chat request ends with exactly one ``complete`` or one ``error`` envelope. A ``cancel`` is
never answered, and never refused by the message rate limit.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from actors.llm import describe_validation_error

__all__ = [
    "CONVERSATION_ID_PATTERN",
    "MAX_JSON_DEPTH",
    "CancelFrame",
    "ChatFrame",
    "ChatPayload",
    "ClearHistoryFrame",
    "Envelope",
    "Frame",
    "ProtocolError",
    "RawFrame",
    "complete",
    "error",
    "history_cleared",
    "loads_bounded",
    "parse_frame",
    "processing",
    "read_frame",
    "reasoning_chunk",
    "text_chunk",
    "tool_call_finished",
    "tool_call_started",
    "validate_frame",
]

Envelope = dict[str, Any]
"""One outgoing message: ``{"request_id", "status", "chunk"}``."""

CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
"""Conversation ids are names of actors and database keys: keep them plain."""

MAX_JSON_DEPTH = 32
"""Frames nested deeper are refused (``invalid_json``) before they are parsed."""

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
ConversationId = Annotated[str, StringConstraints(pattern=CONVERSATION_ID_PATTERN)]


class _Frame(BaseModel):
    # Unknown keys are ignored rather than rejected: a frontend may send more than we read.
    model_config = ConfigDict(frozen=True, extra="ignore")


class ChatPayload(_Frame):
    """What the user said, and how the answer should come back."""

    text: Annotated[str, StringConstraints(min_length=1)]
    streaming: bool = True
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    conversation_id: ConversationId | None = None
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None


class ChatFrame(_Frame):
    """Start a turn: ``{"action": "chat", "request_id", "payload": {...}}``."""

    action: Literal["chat"]
    request_id: RequestId
    payload: ChatPayload


class CancelFrame(_Frame):
    """Stop the turn ``request_id``; a turn that already ended is left alone."""

    action: Literal["cancel"]
    request_id: RequestId


class ClearHistoryFrame(_Frame):
    """Forget a conversation's history (default: the conversation of this socket)."""

    action: Literal["clear_history"]
    request_id: RequestId | None = None
    conversation_id: ConversationId | None = None


Frame = Annotated[ChatFrame | CancelFrame | ClearHistoryFrame, Field(discriminator="action")]
_FRAME: TypeAdapter[ChatFrame | CancelFrame | ClearHistoryFrame] = TypeAdapter(Frame)
_ACTIONS = ("chat", "cancel", "clear_history")


class ProtocolError(ValueError):
    """A frame that cannot be served; ``request_id`` is set when the frame carried one."""

    def __init__(self, message: str, *, error_type: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.request_id = request_id


def parse_frame(text: str) -> ChatFrame | CancelFrame | ClearHistoryFrame:
    """Parse one text frame. Raises :class:`ProtocolError` saying what is wrong with it.

    ``error_type`` is ``invalid_json``, ``unknown_action`` or ``invalid_request``.
    """
    return validate_frame(read_frame(text))


@dataclass(frozen=True, slots=True)
class RawFrame:
    """A frame's JSON object with its ``action`` (a known one) and ``request_id`` (a non-empty
    string, else ``None``), before the rest of it is validated."""

    data: dict[str, Any]
    action: str
    request_id: str | None


def read_frame(text: str) -> RawFrame:
    """The cheap first half of :func:`parse_frame`: the JSON and the action, so that a frame
    can be counted and refused before its validation is paid for. Raises :class:`ProtocolError`."""
    raw = loads_bounded(text)
    if not isinstance(raw, dict):
        raise ProtocolError(
            f"a frame must be a JSON object, not {_json_type(raw)}", error_type="invalid_request"
        )
    request_id = raw.get("request_id")
    known_id = request_id if isinstance(request_id, str) and request_id else None
    action = raw.get("action")
    if action not in _ACTIONS:
        described = "missing" if action is None else repr(action)[:60]
        raise ProtocolError(
            f"unknown action {described}; expected one of {', '.join(_ACTIONS)}",
            error_type="unknown_action",
            request_id=known_id,
        )
    return RawFrame(raw, action, known_id)


def validate_frame(frame: RawFrame) -> ChatFrame | CancelFrame | ClearHistoryFrame:
    """The second half of :func:`parse_frame`. Raises :class:`ProtocolError`."""
    try:
        return _FRAME.validate_python(frame.data)
    except ValidationError as exc:
        raise ProtocolError(
            # Input values are never echoed: a frame may carry anything, a pasted secret too.
            "invalid frame: " + "; ".join(describe_validation_error(exc, drop=1)),
            error_type="invalid_request", request_id=frame.request_id,
        ) from None


def loads_bounded(text: str) -> Any:
    """``json.loads`` for untrusted text: nesting beyond :data:`MAX_JSON_DEPTH` is refused.

    Raises :class:`ProtocolError` (``invalid_json``), also for an integer over the interpreter's
    digit limit (``sys.get_int_max_str_digits()``). The stdlib parser recurses, so a few
    kilobytes of ``[`` raise ``RecursionError`` inside it; values nested a few hundred levels
    deep would do the same later, in validation or ``dumps``, far from the socket that sent them.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            f"invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            error_type="invalid_json",
        ) from None
    except ValueError:
        # Legal JSON the stdlib still refuses: an integer longer than the interpreter's
        # int/str conversion limit (a guard against quadratic conversion time).
        raise ProtocolError(
            f"invalid JSON: an integer longer than {sys.get_int_max_str_digits()} digits",
            error_type="invalid_json",
        ) from None
    except RecursionError:
        value = _TOO_DEEP
    if value is _TOO_DEEP or _deeper_than(value, MAX_JSON_DEPTH):
        raise ProtocolError(
            f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels", error_type="invalid_json"
        )
    return value


_TOO_DEEP = object()


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest in ``value`` more than ``limit`` levels (no recursion)."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


# -- outgoing envelopes -------------------------------------------------------------------------


def processing(request_id: str, user_message: str, conversation_id: str) -> Envelope:
    """The first envelope of a turn."""
    return {
        "request_id": request_id,
        "status": "processing",
        "chunk": {"metadata": {"user_message": user_message, "conversation_id": conversation_id}},
    }


def text_chunk(request_id: str, data: str) -> Envelope:
    """A piece of the answer (the whole answer when the client asked for no streaming)."""
    return {"request_id": request_id, "status": "chunk", "chunk": {"type": "text", "data": data}}


def reasoning_chunk(request_id: str, data: str) -> Envelope:
    """A piece of the model's reasoning (shown apart from the answer, never stored)."""
    return {
        "request_id": request_id, "status": "chunk", "chunk": {"type": "reasoning", "data": data}
    }


def tool_call_started(
    request_id: str, *, call_id: str, server: str, tool: str, arguments: Any
) -> Envelope:
    """The model asked for a tool and it is running."""
    return {
        "request_id": request_id,
        "status": "chunk",
        "chunk": {
            "type": "tool_call_started",
            "data": {"server": server, "tool": tool, "arguments": arguments, "call_id": call_id},
        },
    }


def tool_call_finished(
    request_id: str,
    *,
    call_id: str,
    server: str,
    tool: str,
    is_error: bool,
    result_preview: str,
    duration_ms: float,
) -> Envelope:
    """A tool call ended (``is_error``: its result was an error, which the model also sees)."""
    return {
        "request_id": request_id,
        "status": "chunk",
        "chunk": {
            "type": "tool_call_finished",
            "data": {
                "server": server,
                "tool": tool,
                "call_id": call_id,
                "is_error": is_error,
                "result_preview": result_preview,
                "duration_ms": round(duration_ms, 1),
            },
        },
    }


def error(
    request_id: str | None, message: str, error_type: str, *, refused_request_id: str | None = None
) -> Envelope:
    """A failed request, or a rejected frame (``request_id`` ``None`` when it had none, or when
    its id is that of a request still running: then ``refused_request_id`` names it)."""
    chunk = {"error": message, "error_type": error_type}
    if refused_request_id is not None:
        chunk["refused_request_id"] = refused_request_id
    return {"request_id": request_id, "status": "error", "chunk": chunk}


def complete(
    request_id: str,
    *,
    usage: dict[str, Any],
    cost: float | None,
    provider: str,
    model: str,
    conversation_id: str,
    hops: int = 0,
    finish_reason: str | None = None,
    cost_warning: bool = False,
) -> Envelope:
    """The last envelope of a successful turn (``cost_warning: true`` only when set)."""
    chunk: dict[str, Any] = {
        "usage": usage,
        "cost": cost,
        "provider": provider,
        "model": model,
        "hops": hops,
        "finish_reason": finish_reason,
        "conversation_id": conversation_id,
    }
    if cost_warning:
        chunk["cost_warning"] = True
    return {"request_id": request_id, "status": "complete", "chunk": chunk}


def history_cleared(request_id: str | None, conversation_id: str | None) -> Envelope:
    """The answer to ``clear_history`` (``conversation_id`` ``None``: there was none yet)."""
    return {
        "request_id": request_id,
        "status": "complete",
        "chunk": {"type": "history_cleared", "conversation_id": conversation_id},
    }


def is_conversation_id(value: str) -> bool:
    """Whether ``value`` is acceptable as a conversation id."""
    return re.match(CONVERSATION_ID_PATTERN, value) is not None
