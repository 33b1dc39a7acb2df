"""The ``/ws/chat`` endpoint: one :class:`ChatConnection` per socket, kept in a :class:`ChatHub`.

A connection runs three kinds of task in one task group: the reader (parses frames, enforces the
rate limit, starts and cancels turns), one task per turn (asks the conversation's SessionActor with
``ask_stream`` and turns its events into envelopes) and the writer, the only task that touches the
socket's send side. Envelopes reach the writer through a small bounded stream, so a client that
reads slowly slows its turns down, and their upstream streams with them, instead of growing a
buffer. When the socket closes the task group is cancelled: every turn leaves its ``ask_stream``
block, which abandons the request and cancels the upstream call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect

from actors.chat import (
    ClearHistory,
    HistoryWriteError,
    RunTurn,
    ToolCallFinished,
    ToolCallStarted,
    TurnComplete,
    TurnReasoning,
    TurnText,
)
from actors.llm import DeltaSink, LLMClientError, ReasoningDelta, TextDelta
from runtime import (
    ActorCrashed,
    ActorError,
    ActorRef,
    ActorStopped,
    Clock,
    DeadlineExceeded,
    MonotonicClock,
    Overloaded,
)
from server import protocol
from server.conversations import TooManyConversations
from server.protocol import CancelFrame, ChatFrame, ClearHistoryFrame, Envelope, ProtocolError

__all__ = ["ChatConnection", "ChatHub", "Conversations", "Owners", "error_type_of"]

logger = logging.getLogger("server.websocket")

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012

_OUTBOX_SIZE = 32
_CLEAR_TIMEOUT = 10.0
_CLOSE_GRACE = 2.0


class Conversations(Protocol):
    """Where a connection finds the SessionActor of a conversation."""

    async def acquire(self, conversation_id: str) -> None:
        """This socket uses the conversation (its actor is kept alive meanwhile).

        Raises :class:`~server.conversations.TooManyConversations` when there is no room.
        """
        ...

    async def session(self, conversation_id: str) -> ActorRef:
        """The conversation's actor, started if it is not running."""
        ...

    def release(self, conversation_id: str) -> None:
        """This socket no longer uses the conversation."""
        ...


class Owners(Protocol):
    """Which conversation ids were issued, and to whom."""

    def create(self, owner: str) -> str:
        """A new, unguessable conversation id recorded as ``owner``'s."""
        ...

    def owned_by(self, conversation_id: str, owner: str) -> bool:
        """Whether ``conversation_id`` was issued to ``owner``."""
        ...


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits, from ``server:`` in the configuration."""

    max_message_bytes: int
    max_messages_per_minute: int
    max_concurrent_turns: int
    max_conversations_per_socket: int = 8
    """Conversations the socket uses at once: the one it is on and those its requests use."""
    turn_timeout: float | None = None
    """Seconds a turn may take from its frame to its end (queueing included); then ``timeout``."""


class ChatHub:
    """All open chat sockets: counts for /health and /metrics, and the graceful drain."""

    def __init__(self) -> None:
        self.connections: set[ChatConnection] = set()
        self.draining = False
        self.turns_in_flight = 0
        self.turns_total: dict[str, int] = {}
        self.frames_rejected: dict[str, int] = {}
        self.connections_total = 0
        self._changed = anyio.Event()

    def turn_started(self) -> None:
        self.turns_in_flight += 1

    def turn_ended(self, outcome: str) -> None:
        self.turns_in_flight -= 1
        self.turns_total[outcome] = self.turns_total.get(outcome, 0) + 1
        self._changed.set()

    def connection_opened(self, connection: ChatConnection) -> None:
        self.connections.add(connection)
        self.connections_total += 1

    def connection_closed(self, connection: ChatConnection) -> None:
        self.connections.discard(connection)
        self._changed.set()

    async def _until(self, done: Callable[[], bool], timeout: float) -> None:
        with anyio.move_on_after(timeout):
            while not done():
                self._changed = anyio.Event()
                await self._changed.wait()

    def frame_rejected(self, reason: str) -> None:
        self.frames_rejected[reason] = self.frames_rejected.get(reason, 0) + 1

    async def drain(self, timeout: float) -> None:
        """Refuse new turns, let running ones finish within ``timeout``, then cancel the rest.

        Every socket is closed with 1001 (going away) afterwards, each turn having got its last
        envelope first.
        """
        self.draining = True
        await self._until(lambda: not self.turns_in_flight, timeout)
        if self.turns_in_flight:
            logger.warning("cancelling %d turns still running at shutdown", self.turns_in_flight)
        for connection in list(self.connections):
            connection.cancel_turns("shutting_down")
        await self._until(lambda: not self.turns_in_flight, _CLOSE_GRACE)
        for connection in list(self.connections):
            connection.close(CLOSE_GOING_AWAY, "server shutting down")
        await self._until(lambda: not self.connections, _CLOSE_GRACE)

    def __repr__(self) -> str:
        return (
            f"<ChatHub [{len(self.connections)} sockets, {self.turns_in_flight} turns"
            f"{' | draining' if self.draining else ''}]>"
        )


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class _Turn:
    __slots__ = ("reason", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.reason = "cancelled"

    def cancel(self, reason: str) -> None:
        self.reason = reason
        self.scope.cancel()


_CANCEL_MESSAGES = {
    "cancelled": "the request was cancelled",
    "shutting_down": "the server is shutting down",
}


class ChatConnection:
    """One accepted chat socket: reader, writer and its turns (see the module docstring)."""

    def __init__(
        self,
        websocket: WebSocket,
        *,
        hub: ChatHub,
        conversations: Conversations,
        owners: Owners,
        owner: str,
        limits: ConnectionLimits,
        models: Collection[str] = (),
        clock: Clock | None = None,
    ) -> None:
        """``models``: the configured models a frame may name (empty: any); ``clock``: the
        system's clock (the message rate limit counts on it)."""
        self._websocket = websocket
        self._hub = hub
        self._conversations = conversations
        self._owners = owners
        self._owner = owner
        self._limits = limits
        self._models = frozenset(models)
        self._clock = clock or MonotonicClock()
        self._turns: dict[str, _Turn] = {}
        self._held: dict[str, int] = {}  # conversation -> holds (current one, running requests)
        self._recent: deque[float] = deque()
        self.conversation_id: str | None = None
        send, receive = anyio.create_memory_object_stream[Envelope | _Close](_OUTBOX_SIZE)
        self._outbox: MemoryObjectSendStream[Envelope | _Close] = send
        self._outbox_receive: MemoryObjectReceiveStream[Envelope | _Close] = receive
        self._task_group: TaskGroup | None = None
        self._closing = False
        self._order = anyio.Lock()
        self._written = anyio.Event()

    async def run(self) -> None:
        """Serve the socket until either side closes it. Cancels its turns on the way out."""
        self._hub.connection_opened(self)
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_group.start_soon(self._write)
                await self._read()
                if self._closing:  # we close: let the writer flush and send the close frame
                    with anyio.move_on_after(_CLOSE_GRACE):
                        await self._written.wait()
                task_group.cancel_scope.cancel()
        finally:
            self._hub.connection_closed(self)
            self._outbox.close()
            self._outbox_receive.close()
            for conversation_id in self._held:
                self._conversations.release(conversation_id)
            self._held.clear()

    def cancel_turns(self, reason: str) -> None:
        """End every running turn with an ``error`` envelope of type ``reason``."""
        for turn in list(self._turns.values()):
            turn.cancel(reason)

    def close(self, code: int, reason: str) -> None:
        """Close the socket after the envelopes already queued."""
        if self._closing:
            return
        self._closing = True
        try:
            self._outbox.send_nowait(_Close(code, reason))
        except anyio.WouldBlock:
            if self._task_group is not None:  # a client not reading: no flush owed
                self._task_group.cancel_scope.cancel()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    # -- reading ------------------------------------------------------------------------------

    async def _read(self) -> None:
        while not self._closing:
            try:
                message = await self._websocket.receive()
            except (WebSocketDisconnect, RuntimeError, OSError):
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                if len(data) > self._limits.max_message_bytes:
                    return self._oversized()
                # Counted like text: a flood of binary frames costs us a reply each.
                if self._over_rate():
                    await self._reject_rate(None)
                else:
                    await self._reject(None, "binary frames are not supported", "invalid_request")
                continue
            if len(text) > self._limits.max_message_bytes // 4 and (
                len(text.encode()) > self._limits.max_message_bytes
            ):
                return self._oversized()
            await self._on_text(text)

    def _oversized(self) -> None:
        self._hub.frame_rejected("too_big")
        self.close(
            CLOSE_MESSAGE_TOO_BIG, f"message larger than {self._limits.max_message_bytes} bytes"
        )

    async def _on_text(self, text: str) -> None:
        if self._over_rate():
            await self._reject_rate(_request_id_of(text))
            return
        try:
            frame = protocol.parse_frame(text)
        except ProtocolError as exc:
            await self._reject(exc.request_id, exc.message, exc.error_type)
            return
        if isinstance(frame, ChatFrame):
            await self._start_turn(frame)
        elif isinstance(frame, CancelFrame):
            turn = self._turns.get(frame.request_id)
            if turn is not None:
                turn.cancel("cancelled")
            # A cancel that crosses the turn's last envelope is not an error: the turn has
            # already ended exactly once and must not get a second ending.
        elif isinstance(frame, ClearHistoryFrame):
            if frame.conversation_id is None and self.conversation_id is None:
                await self._send(protocol.history_cleared(frame.request_id, None))
                return
            conversation_id = await self._claim(frame.request_id, frame.conversation_id)
            if conversation_id is None:
                return
            # In a task of its own: it waits behind the conversation's running turns, and the
            # reader must stay free for a cancel meanwhile.
            assert self._task_group is not None
            self._task_group.start_soon(self._clear_history, frame.request_id, conversation_id)

    def _over_rate(self) -> bool:
        now = self._clock.now()
        while self._recent and now - self._recent[0] >= 60.0:
            self._recent.popleft()
        if len(self._recent) >= self._limits.max_messages_per_minute:
            return True
        self._recent.append(now)
        return False

    async def _reject_rate(self, request_id: str | None) -> None:
        await self._reject(
            request_id,
            f"more than {self._limits.max_messages_per_minute} messages in a minute",
            "rate_limited",
        )

    async def _reject(self, request_id: str | None, message: str, error_type: str) -> None:
        self._hub.frame_rejected(error_type)
        await self._send(protocol.error(request_id, message, error_type))

    async def _start_turn(self, frame: ChatFrame) -> None:
        request_id = frame.request_id
        if self._hub.draining:
            await self._reject(request_id, _CANCEL_MESSAGES["shutting_down"], "shutting_down")
            return
        if request_id in self._turns:
            await self._reject(
                request_id, "a request with this request_id is still running", "duplicate_request"
            )
            return
        model = frame.payload.model
        if model is not None and self._models and model not in self._models:
            await self._reject(
                request_id,
                f"model {model[:80]!r} is not configured; choose one of"
                f" {', '.join(sorted(self._models))}",
                "invalid_request",
            )
            return
        if len(self._turns) >= self._limits.max_concurrent_turns:
            await self._reject(
                request_id,
                f"at most {self._limits.max_concurrent_turns} requests may run at once on one"
                " connection",
                "too_many_requests",
            )
            return
        conversation_id = await self._claim(request_id, frame.payload.conversation_id)
        if conversation_id is None:
            return
        if conversation_id != self.conversation_id:  # switch: the previous one is released
            previous, self.conversation_id = self.conversation_id, conversation_id
            self._held[conversation_id] += 1
            if previous is not None:
                self._unhold(previous)
        await self._send(protocol.processing(request_id, frame.payload.text, conversation_id))
        turn = self._turns[request_id] = _Turn()
        self._hub.turn_started()
        assert self._task_group is not None
        self._task_group.start_soon(self._run_turn, frame, conversation_id, turn)

    async def _claim(self, request_id: str | None, requested: str | None) -> str | None:
        """The conversation a frame is for, held for its request; ``None``: refused, answered.

        ``requested`` ``None`` means the socket's current conversation, or a new one.
        """
        if requested is None:
            conversation_id = self.conversation_id or self._owners.create(self._owner)
        elif requested in self._held or self._owners.owned_by(requested, self._owner):
            conversation_id = requested
        else:
            await self._reject(
                request_id,
                "no conversation with this id for this client (conversation ids are issued by"
                " the server)",
                "unknown_conversation",
            )
            return None
        try:
            await self._hold(conversation_id)
        except TooManyConversations as exc:
            await self._reject(request_id, str(exc), "too_many_conversations")
            return None
        return conversation_id

    async def _hold(self, conversation_id: str) -> None:
        if conversation_id not in self._held:
            if len(self._held) >= self._limits.max_conversations_per_socket:
                raise TooManyConversations(
                    f"at most {self._limits.max_conversations_per_socket} conversations may be"
                    " in use on one connection"
                )
            await self._conversations.acquire(conversation_id)
            self._held[conversation_id] = 0
        self._held[conversation_id] += 1

    def _unhold(self, conversation_id: str) -> None:
        holds = self._held.get(conversation_id, 0) - 1
        if holds > 0:
            self._held[conversation_id] = holds
        elif self._held.pop(conversation_id, None) is not None:
            self._conversations.release(conversation_id)

    async def _clear_history(self, request_id: str | None, conversation_id: str) -> None:
        try:
            async with self._ordered(conversation_id, ClearHistory(), _CLEAR_TIMEOUT) as done:
                async for _ in done:
                    pass  # no items: the stream ends once the history is cleared
        except (ActorError, LLMClientError) as exc:
            await self._reject(request_id, _describe(exc), error_type_of(exc))
            return
        finally:
            self._unhold(conversation_id)
        await self._send(protocol.history_cleared(request_id, conversation_id))

    @asynccontextmanager
    async def _ordered(
        self, conversation_id: str, message: Any, timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """``ask_stream`` the conversation's actor, enqueued in the order the frames arrived.

        Turn and clear tasks call this before anything else that waits: the tasks start in frame
        order and ``anyio.Lock`` is fair, so the session's mailbox gets the frames in the order
        the client sent them although each runs in a task of its own.
        """
        await self._order.acquire()
        held = True
        try:
            session = await self._session(conversation_id)
            async with session.ask_stream(message, timeout) as items:
                self._order.release()
                held = False
                yield items
        finally:
            if held:
                self._order.release()

    async def _session(self, conversation_id: str) -> ActorRef:
        return await self._conversations.session(conversation_id)

    # -- turns --------------------------------------------------------------------------------

    async def _run_turn(self, frame: ChatFrame, conversation_id: str, turn: _Turn) -> None:
        request_id = frame.request_id
        outcome = "abandoned"  # the socket closed before the turn could end
        try:
            last: Envelope | None = None
            with turn.scope:
                last = await self._converse(frame, conversation_id)
            if last is None:
                last = protocol.error(request_id, _CANCEL_MESSAGES[turn.reason], turn.reason)
            outcome = last["status"] if last["status"] == "complete" else last["chunk"][
                "error_type"
            ]
            await self._send(last)
        finally:
            del self._turns[request_id]
            self._unhold(conversation_id)
            self._hub.turn_ended(outcome)

    async def _converse(self, frame: ChatFrame, conversation_id: str) -> Envelope:
        """Run one turn; the returned envelope ends it (``complete`` or ``error``)."""
        request_id = frame.request_id
        payload = frame.payload
        texts: list[str] = []
        thoughts: list[str] = []
        message = RunTurn(
            text=payload.text,
            request_id=request_id,
            metadata=payload.metadata,
            model=payload.model,
            reasoning_effort=payload.reasoning_effort,
            deltas=self._deltas(request_id) if payload.streaming else None,
        )
        try:
            async with self._ordered(conversation_id, message,
                                     self._limits.turn_timeout) as events:
                async for event in events:
                    if isinstance(event, TurnText):
                        if payload.streaming:
                            await self._send(protocol.text_chunk(request_id, event.text))
                        else:
                            texts.append(event.text)
                    elif isinstance(event, TurnReasoning):
                        if payload.streaming:
                            await self._send(protocol.reasoning_chunk(request_id, event.text))
                        else:
                            thoughts.append(event.text)
                    elif isinstance(event, ToolCallStarted):
                        await self._send(_started(request_id, event))
                    elif isinstance(event, ToolCallFinished):
                        await self._send(_finished(request_id, event))
                    elif isinstance(event, TurnComplete):
                        if thoughts:
                            await self._send(
                                protocol.reasoning_chunk(request_id, "".join(thoughts))
                            )
                        if texts:
                            await self._send(protocol.text_chunk(request_id, "".join(texts)))
                        return _complete(request_id, conversation_id, event)
        except (LLMClientError, ActorError) as exc:
            return protocol.error(request_id, _describe(exc), error_type_of(exc))
        except HistoryWriteError as exc:  # logged by the session
            return protocol.error(request_id, str(exc), exc.error_type)
        except Exception:
            # The one place an unexpected error may land: the client still gets its single
            # ending, and the bug is logged with its traceback rather than lost.
            logger.exception("turn %s of conversation %s failed", request_id, conversation_id)
            return protocol.error(request_id, "internal error", "internal_error")
        return protocol.error(request_id, "the turn ended without an answer", "internal_error")

    # -- writing ------------------------------------------------------------------------------

    async def _send(self, envelope: Envelope) -> None:
        # A closed outbox means the socket is gone and the turn is being cancelled with it.
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._outbox.send(envelope)

    def _deltas(self, request_id: str) -> DeltaSink:
        """A streaming turn's delta sink: the provider's reading task puts each delta straight
        into the outbox (one handoff, to the writer). Without a checkpoint while there is room,
        so the deltas of one network read queue up and the writer joins them; a full outbox
        makes the reader wait (backpressure)."""
        outbox = self._outbox

        async def deliver(delta: TextDelta | ReasoningDelta) -> None:
            if type(delta) is TextDelta:
                envelope = protocol.text_chunk(request_id, delta.text)
            else:
                envelope = protocol.reasoning_chunk(request_id, delta.text)
            try:
                outbox.send_nowait(envelope)
            except anyio.WouldBlock:
                await self._send(envelope)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the socket is gone: the turn is being cancelled with it

        return deliver

    async def _write(self) -> None:
        receive = self._outbox_receive
        try:
            async for item in receive:
                batch = [item]
                while len(batch) < _OUTBOX_SIZE:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                closing = await self._write_batch(batch)
                if closing:
                    break
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the peer went away; the reader sees the disconnect
        finally:
            self._written.set()
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()

    async def _write_batch(self, batch: list[Envelope | _Close]) -> bool:
        """Send what queued up while the socket was busy, text and reasoning pieces of one turn
        joined into one frame each; True once the close frame is sent."""
        websocket = self._websocket
        for item in _joined(batch) if len(batch) > 1 else batch:
            if isinstance(item, _Close):
                await websocket.close(item.code, item.reason)
                return True
            await websocket.send_text(json.dumps(item, separators=(",", ":")))
        return False


def _joined(batch: list[Envelope | _Close]) -> list[Envelope | _Close]:
    """Consecutive text (or reasoning) chunks of one request as one chunk; the rest in order."""
    out: list[Envelope | _Close] = []
    for item in batch:
        previous = out[-1] if out else None
        if (isinstance(item, dict) and isinstance(previous, dict) and _is_piece(item)
                and _is_piece(previous) and previous["request_id"] == item["request_id"]
                and previous["chunk"]["type"] == item["chunk"]["type"]):
            chunk = previous["chunk"]
            data = chunk["data"] + item["chunk"]["data"]
            out[-1] = {**previous, "chunk": {**chunk, "data": data}}
            continue
        out.append(item)
    return out


def _is_piece(envelope: Envelope) -> bool:
    return envelope.get("status") == "chunk" and envelope["chunk"].get("type") in (
        "text", "reasoning")


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LLMClientError):
        return str(exc)
    if isinstance(exc, Overloaded):
        return "the service is overloaded; try again shortly"
    if isinstance(exc, DeadlineExceeded):
        return "the request took too long"
    if isinstance(exc, ActorStopped):
        return "the conversation is not available (the server may be shutting down)"
    return "the conversation failed; try again"


def _request_id_of(text: str) -> str | None:
    try:
        raw = protocol.loads_bounded(text)
    except ProtocolError:
        return None
    request_id = raw.get("request_id") if isinstance(raw, dict) else None
    return request_id if isinstance(request_id, str) and request_id else None

