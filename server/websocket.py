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

import logging
from collections import deque
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup
from starlette.websockets import WebSocket, WebSocketDisconnect

from actors.chat import ClearHistory
from runtime import ActorRef, Clock, MonotonicClock
from server import protocol
from server._hub import CLOSE_GRACE, ChatHub, ConnectionLimits, Conversations, Owners
from server._outbox import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    Close,
    Outbox,
)
from server._turns import CANCEL_MESSAGES, Turn, converse, error_type_of, failure
from server.conversations import ConversationStoreUnavailable, TooManyConversations
from server.protocol import ChatFrame, ClearHistoryFrame, Envelope, ProtocolError

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TRY_AGAIN_LATER",
    "ChatConnection",
    "ChatHub",
    "ConnectionLimits",
    "Conversations",
    "Owners",
    "error_type_of",
]


logger = logging.getLogger("server.websocket")

_CLEAR_TIMEOUT = 10.0
_STILL_RUNNING = "a request with this request_id is still running"


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
        self._turns: dict[str, Turn] = {}
        self._clears: set[str] = set()  # request ids of clear_history frames not answered yet
        self._held: dict[str, int] = {}  # conversation -> its running requests (turns, clears)
        self._recent: deque[float] = deque()
        self.conversation_id: str | None = None
        self._issued: str | None = None
        """The id issued for the socket's first conversation while no room could be found for
        it: a socket retrying in a full server must not record a new id with every frame."""
        self._outbox = Outbox()
        self._task_group: TaskGroup | None = None
        self._closing = False
        self._order = anyio.Lock()

    async def run(self) -> None:
        """Serve the socket until either side closes it. Cancels its turns on the way out."""
        self._hub.connection_opened(self)
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_group.start_soon(self._write)
                await self._read()
                if self._closing:  # we close: let the writer flush and send the close frame
                    with anyio.move_on_after(CLOSE_GRACE):
                        await self._outbox.written.wait()
                task_group.cancel_scope.cancel()
        finally:
            self._hub.connection_closed(self)
            self._outbox.close()
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
            self._outbox.send_nowait(Close(code, reason))
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
            try:
                await self._on_text(text)
            except Exception:
                # A bug in serving one frame must not take the socket and its turns down.
                logger.exception("a chat frame could not be served")
                await self._reject(_request_id_of(text), "internal error", "internal_error")

    def _oversized(self) -> None:
        self._hub.frame_rejected("too_big")
        self.close(
            CLOSE_MESSAGE_TOO_BIG, f"message larger than {self._limits.max_message_bytes} bytes"
        )

    async def _on_text(self, text: str) -> None:
        # The JSON and the action first: a frame over the rate limit is refused before its
        # validation is paid for (a flood of large frames costs a parse each, no more).
        try:
            raw = protocol.read_frame(text)
        except ProtocolError as exc:
            if self._over_rate():
                await self._reject_rate(exc.request_id)
            else:
                await self._reject(exc.request_id, exc.message, exc.error_type)
            return
        if raw.action == "cancel" and raw.request_id in self._turns:
            # Always served, neither counted nor refused: it only stops work, which a client
            # that has used up its budget must still be able to do, and it is never answered
            # (the turn it stops ends once, with its own envelope).
            self._turns[raw.request_id].cancel("cancelled")
            return
        if self._over_rate():
            await self._reject_rate(raw.request_id)
            return
        try:
            frame = protocol.validate_frame(raw)
        except ProtocolError as exc:
            await self._reject(exc.request_id, exc.message, exc.error_type)
            return
        if isinstance(frame, ChatFrame):
            await self._start_turn(frame)
        elif isinstance(frame, ClearHistoryFrame):
            await self._start_clear(frame)
        # A cancel of no running turn (one that crossed its turn's last envelope) is counted and
        # otherwise not an error: that turn has already ended exactly once.

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
        """Refuse a frame with an ``error`` envelope addressed to its ``request_id``, or to none
        (``chunk.refused_request_id`` names it) while a request with that id is still running
        here: the refusal must not look like that request's ending."""
        self._hub.frame_rejected(error_type)
        if request_id is not None and self._running(request_id):
            envelope = protocol.error(None, message, error_type, refused_request_id=request_id)
        else:
            envelope = protocol.error(request_id, message, error_type)
        await self._send(envelope)

    def _running(self, request_id: str) -> bool:
        """Whether a turn or a clear with this ``request_id`` has yet to end on this socket."""
        return request_id in self._turns or request_id in self._clears

    async def _start_turn(self, frame: ChatFrame) -> None:
        request_id = frame.request_id
        if self._hub.draining:
            await self._reject(request_id, CANCEL_MESSAGES["shutting_down"], "shutting_down")
            return
        if self._running(request_id):
            await self._reject(request_id, _STILL_RUNNING, "duplicate_request")
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
        most = self._limits.max_turns_in_flight
        if not self._hub.take_turn(most):
            await self._reject(
                request_id, f"the server is busy with {most} requests; try again shortly",
                "overloaded")
            return
        started = False
        try:
            conversation_id = await self._claim(request_id, frame.payload.conversation_id)
            if conversation_id is None:
                return
            # The socket is on it from now on; only running requests hold a conversation's
            # actor, so an idle socket (a tab left open) never keeps a new conversation out of a
            # full server.
            self.conversation_id = conversation_id
            await self._send(protocol.processing(request_id, frame.payload.text, conversation_id))
            turn = self._turns[request_id] = Turn()
            assert self._task_group is not None
            self._task_group.start_soon(self._run_turn, frame, conversation_id, turn)
            started = True  # from here _run_turn gives the slot back
        finally:
            if not started:  # refused, failed or cancelled (the socket closed) before it ran
                self._hub.turn_not_started()

    async def _start_clear(self, frame: ClearHistoryFrame) -> None:
        request_id = frame.request_id
        if self._hub.draining:
            await self._reject(request_id, CANCEL_MESSAGES["shutting_down"], "shutting_down")
            return
        if request_id is not None and self._running(request_id):
            await self._reject(request_id, _STILL_RUNNING, "duplicate_request")
            return
        if frame.conversation_id is None and self.conversation_id is None:
            await self._send(protocol.history_cleared(request_id, None))
            return
        conversation_id = await self._claim(request_id, frame.conversation_id)
        if conversation_id is None:
            return
        if request_id is not None:
            self._clears.add(request_id)
        self._hub.clear_started()
        # In a task of its own: it waits behind the conversation's running turns, and the
        # reader must stay free for a cancel meanwhile.
        assert self._task_group is not None
        self._task_group.start_soon(self._clear_history, request_id, conversation_id)

    async def _claim(self, request_id: str | None, requested: str | None) -> str | None:
        """The conversation a frame is for, held for its request; ``None``: refused, answered.

        ``requested`` ``None`` means the socket's current conversation, or a new one.
        """
        new = requested is None and self.conversation_id is None
        try:
            if requested is None:
                conversation_id = self.conversation_id or self._issued or self._owners.create(
                    self._owner
                )
            elif (requested == self.conversation_id or requested in self._held
                  or self._owners.owned_by(requested, self._owner)):
                conversation_id = requested
            else:
                await self._reject(
                    request_id,
                    "no conversation with this id for this client (conversation ids are issued"
                    " by the server)",
                    "unknown_conversation",
                )
                return None
        except ConversationStoreUnavailable as exc:
            await self._reject(request_id, str(exc), "unavailable")
            return None
        try:
            await self._hold(conversation_id, new=new)
        except TooManyConversations as exc:
            if new:
                self._issued = conversation_id
            await self._reject(request_id, str(exc), "too_many_conversations")
            return None
        self._issued = None
        return conversation_id

    async def _hold(self, conversation_id: str, *, new: bool = False) -> None:
        if conversation_id not in self._held:
            if len(self._held) >= self._limits.max_conversations_per_socket:
                raise TooManyConversations(
                    f"at most {self._limits.max_conversations_per_socket} conversations may be"
                    " in use on one connection"
                )
            await self._conversations.acquire(conversation_id, new=new)
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
            ending = await self._clear(request_id, conversation_id)
            if ending["status"] == "error":
                self._hub.frame_rejected(ending["chunk"]["error_type"])
            await self._send(ending)
        finally:
            self._unhold(conversation_id)
            if request_id is not None:
                self._clears.discard(request_id)
            self._hub.clear_ended()

    async def _clear(self, request_id: str | None, conversation_id: str) -> Envelope:
        """Clear the conversation's history; returns the envelope that answers the frame."""
        try:
            async with self._ordered(conversation_id, ClearHistory(), _CLEAR_TIMEOUT) as done:
                async for _ in done:
                    pass  # no items: the stream ends once the history is cleared
        except Exception as exc:
            return failure(request_id, exc, "clear_history", conversation_id)
        return protocol.history_cleared(request_id, conversation_id)

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

    async def _run_turn(self, frame: ChatFrame, conversation_id: str, turn: Turn) -> None:
        request_id = frame.request_id
        outcome = "abandoned"  # the socket closed before the turn could end
        try:
            last: Envelope | None = None
            with turn.scope:
                last = await converse(
                    frame,
                    conversation_id,
                    ordered=self._ordered,
                    outbox=self._outbox,
                    timeout=self._limits.turn_timeout,
                )
            if last is None:
                last = protocol.error(request_id, CANCEL_MESSAGES[turn.reason], turn.reason)
            outcome = last["status"] if last["status"] == "complete" else last["chunk"][
                "error_type"
            ]
            await self._send(last)
        finally:
            del self._turns[request_id]
            self._unhold(conversation_id)
            self._hub.turn_ended(outcome)

    # -- writing ------------------------------------------------------------------------------

    async def _send(self, envelope: Envelope) -> None:
        await self._outbox.send(envelope)

    async def _write(self) -> None:
        await self._outbox.write(self._websocket)
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()


def _request_id_of(text: str) -> str | None:
    try:
        raw = protocol.loads_bounded(text)
    except ProtocolError:
        return None
    request_id = raw.get("request_id") if isinstance(raw, dict) else None
    return request_id if isinstance(request_id, str) and request_id else None

