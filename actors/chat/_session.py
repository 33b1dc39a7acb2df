"""One actor per conversation: its history, and the tool loop of each turn.

A turn (:class:`RunTurn`, asked with ``ask_stream``) streams :class:`TurnText` deltas, tool
events, and ends with one :class:`TurnComplete`; an error ends it instead (``LLMClientError`` or
``runtime.ActorError`` from the router, raised from the iteration). The tool loop::

    system prompt + history trimmed to the budget + user message
      └─► router (stream) ──text──► TurnText
            └─ tool calls? ── run them in parallel (each with chat.tool_timeout) ──► tool messages
                  └─► router again ... at most chat.max_tool_hops rounds of tools, then a notice

Rules a caller can rely on:

- **Serialised turns.** Turns of one conversation run one at a time, in the order they arrived; a
  second ``RunTurn`` (from any socket) waits for the first to end, then sees its messages.
  ``ClearHistory`` takes its place in the same queue. With ``leases`` (several workers) a turn
  or a clear also holds its conversation's lease, so this holds across workers, and a turn that
  follows another worker's turn or clear reads the history again from the store.
- **Tool problems never abort a turn**: unknown tools, invalid arguments, tool errors, timeouts
  and servers that are down reach the model as the tool's result (``actors.mcp.ToolCatalog``).
- **What is persisted, and when**: the user message as the turn starts, once it holds the
  conversation (its slot, and with ``leases`` its lease), written while the model is called
  and before anything of the answer reaches the client or the store (``_Turn.written``), so
  that a killed process (SIGKILL, a crash) keeps what the user sent: the conversation read back
  then ends with it unanswered, and the next turn adds its own (two user messages in a row,
  which OpenAI-compatible APIs accept). A turn that waits behind another (without ``leases``)
  has its message written when it is accepted, apart from the history (``queued_messages``:
  the running turn's steps still go before it); its start moves it into the history in the
  same transaction, so the stored order is the order turns run. A queued turn that ends before
  it starts (cancelled) forgets it; killed, its message joins the history, after what the
  killed process wrote and in the order the queued turns were sent, when the conversation's
  actor next starts. Then every *completed* step (an assistant message that
  asked for tools together with all its tool results) when its last tool ends, and the final
  assistant message *before* :class:`TurnComplete` is sent, so that a crash loses nothing the
  client was told is done. Each write is one transaction, committed with the appends of every
  conversation that arrive while one is written (``appends``). A turn that lost its lease
  writes nothing more. A turn cancelled or failed midway keeps what was written and drops the
  partial answer being streamed and tool calls still running; an assistant ``tool_calls``
  message is never stored without its results.
  The in-memory history takes a message only after its write succeeded; a failed write ends the
  turn with :class:`HistoryWriteError` (logged), never with a ``complete`` for an unsaved answer
  (when the user message cannot be written, the model's call is cancelled and nothing of its
  answer is sent).
- **A turn that fails before its model answered anything leaves the conversation as it was**:
  refused (a cost or token limit, every provider rate-limited, unavailable or failing, no
  lease...), its user message is taken back from the store (under the lease), with what
  ``max_stored_messages`` trimmed for it put back (``TurnStart``), so the client,
  told why, may send it again and no later turn carries it unanswered, nor pays for it. Once
  the model answered something (a delta, or tool calls), a failure keeps the user message and
  the completed steps, as does a cancelled or timed-out turn. Live and read back alike.
- **Memory is bounded**: the history kept between turns is the newest whole units within
  ``chat.max_history_messages`` and ``chat.max_history_bytes`` (each message measured once by
  ``message_bytes``); older messages stay in the store (its own bound, ``max_stored_messages``),
  and a new actor reads it back newest first, no further than those bounds. Inside a turn, its
  tool steps hold at most ``chat.max_history_bytes`` too: past it the oldest steps' results are
  replaced by a note in what the model is sent for the rest of the turn; the newest step is
  always whole (``TurnSteps``). The notes end with the turn: the history it leaves is what the
  store holds (whole results) within the bounds, so the next turn sends the same messages
  whether the conversation stayed live or was read back (a restart, another worker).
- **Tool results are capped** at ``chat.max_tool_result_chars``, with a note telling the model
  what was cut; the capped text is what the model sees and what is stored.
- **Reasoning** streams as :class:`TurnReasoning` and is never stored as assistant content
  (OpenRouter's ``reasoning_details`` are kept on the assistant message, which is sent back).
- **Cancellation**: leaving the ``ask_stream`` block cancels the turn's task, which leaves the
  router's stream (so the upstream call stops) and cancels running tool calls.
- ``hops`` in :class:`TurnComplete` counts rounds of tool calls that ran (0: a plain answer).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import sqlite3
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NotRequired, TypedDict, Unpack, assert_never

import anyio
import anyio.lowlevel
import anyio.to_thread

from actors.llm import (
    ChatRequest,
    DeltaSink,
    LLMResponse,
    LLMStreamingError,
    ModelCatalog,
    ReasoningDelta,
    StreamEnd,
    TextDelta,
)
from actors.mcp import ToolCatalog
from runtime import Actor, ActorRef, ChildSpec, Outcome, Request, Restart

from ._group_commit import GroupCommit
from ._history import HistoryStore, HistoryStoreClosed, TurnStart
from ._leases import ConversationUnavailable, TurnLeases
from ._messages import (
    ChatSettings,
    ClearHistory,
    HistoryWriteError,
    RunTurn,
    SessionMessage,
    TurnComplete,
    TurnReasoning,
    TurnText,
    conversation_label,
)
from ._tool_steps import run_tool_calls
from ._trimming import HistoryFit, TurnSteps, message_bytes, newest_units, trim_history

__all__ = ["SessionActor", "SessionDeps", "session_actor_name", "session_child_spec"]

Message = dict[str, Any]

logger = logging.getLogger(__name__)

#: Without ``context_budget_tokens``: this share of the model's context window goes to the prompt
#: (system, history, user message); the rest is left for tool definitions and the answer.
DEFAULT_BUDGET_SHARE: Final = 0.75


# -- the actor ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    """A place in the conversation's queue: granted when every earlier job has ended."""

    granted: anyio.Event = field(default_factory=anyio.Event)
    history: tuple[Message, ...] = ()


@dataclass(eq=False)
class _Turn:
    message: RunTurn
    request: Request
    slot: _Slot = field(default_factory=_Slot)
    completed: list[Message] = field(default_factory=list)
    """Messages already written to the store, appended a whole step at a time after the write,
    as written (whole results, never the notes the model was sent instead); only the newest that
    the history's bounds may still keep (``cut``: older ones were written and left out)."""
    cut: bool = False
    """Older messages of the turn were left out of ``completed``: the history before the turn
    lies past the bounds too."""
    reloaded: tuple[Message, ...] | None = None
    """The history as re-read from the store under a new lease (another worker wrote it)."""
    answered: bool = False
    """The model has answered something: a delta, or a whole answer (text or tool calls)."""
    queued: int | None = None
    """The store's id of the message written while the turn waited, until its start moves it."""
    start: TurnStart | None = None
    """What the turn's first write did (the rows the store's bound trimmed), for a take-back."""
    started: anyio.Event = field(default_factory=anyio.Event)
    """The turn's first write (its user message) has ended, written or failed."""
    start_failed: HistoryWriteError | None = None
    """Why the first write failed: the turn ends with it at its next step."""

    async def written(self) -> None:
        """Wait for the turn's first write; raise :class:`HistoryWriteError` if it failed.

        Everything of the turn that reaches the client or the store (a delta, an answer, a
        step, a take-back) waits for it: the model is called while it is written."""
        if not self.started.is_set():
            await self.started.wait()
        if self.start_failed is not None:
            raise self.start_failed


class SessionActor(Actor["SessionMessage"]):
    """The conversation ``conversation_id``: history, trimming, the tool loop (module doc).

    ``model`` ``None`` lets the router use each provider's configured model. ``count_model``: the
    model whose tokenizer and context window size the history when a turn names no model
    (default: ``model``; give the router's default model, so that only its encoding is loaded).
    ``catalog`` gives the context window for the default budget; ``llm_timeout`` is each model
    call's budget; ``leases`` serialise the conversation's turns across workers. ``appends``
    writes the history (give every session of a process the same one, so that appends arriving
    together are committed together; default: one of its own). ``new``: the conversation was
    just issued, so it has no history and no other worker has held it: its start reads nothing,
    and its first lease is stale only if another holder came first.
    """

    def __init__(
        self,
        conversation_id: str,
        *,
        router: ActorRef,
        tools: ToolCatalog,
        history: HistoryStore,
        chat: ChatSettings,
        model: str | None = None,
        catalog: ModelCatalog | None = None,
        llm_timeout: float | None = None,
        leases: TurnLeases | None = None,
        count_model: str | None = None,
        appends: GroupCommit | None = None,
        new: bool = False,
    ) -> None:
        self.conversation_id = conversation_id
        self._leases = leases
        self._router = router
        self._tools = tools
        self._history = history
        self._appends = appends or GroupCommit(history)
        self._new = new
        """Until the first turn takes its lease: the conversation was issued just now."""
        self._chat = chat
        self._model = model
        self._llm_timeout = llm_timeout
        self._count_model = count_model or model or ""
        if chat.context_budget_tokens is not None:
            budget = chat.context_budget_tokens
        else:
            window = (catalog or ModelCatalog()).context_window(self._count_model)
            budget = int(window * DEFAULT_BUDGET_SHARE)
        self._fit = HistoryFit(budget_tokens=budget, max_messages=chat.max_history_messages)
        self._messages: list[Message] = []
        self._measured: list[Message] | None = None
        """The list :meth:`_kept` returned last; ``_sizes``, :func:`message_bytes` of each of its
        messages, and ``_bytes``, their sum."""
        self._sizes: list[int] = []
        self._bytes = 0
        self._queue: deque[_Slot] = deque()
        self._active: _Slot | None = None
        self._unfinished: set[_Turn] = set()

    async def on_start(self) -> None:
        if self._new:
            return
        # Alone on the store (no leases), no turn of this conversation waits before its actor
        # starts: queued messages found are those of turns a killed process never started.
        # They join the history, in the order they were sent, after what that process wrote.
        self._messages = self._kept(await self._read_stored(adopt=self._leases is None))

    async def _read_stored(self, *, adopt: bool = False) -> list[Message]:
        """The newest whole units of the stored history within ``chat.max_history_messages``
        and ``chat.max_history_bytes``, read newest first: rows past the bound are never read
        (before, up to max_history_messages rows of any size were read whole, then trimmed).
        ``adopt``: the queued messages of turns that never started join the history first."""
        chat = self._chat
        history = self._history
        conversation_id = self.conversation_id

        def select(newest_first: Iterator[Message]) -> list[Message]:
            return newest_units(map(_sendable, newest_first),
                                max_messages=chat.max_history_messages,
                                max_bytes=chat.max_history_bytes)

        def read() -> list[Message]:
            if adopt:
                history.adopt_queued(conversation_id)
            return history.load_newest(conversation_id, chat.max_history_messages, select)

        return await anyio.to_thread.run_sync(read)

    def _kept(self, messages: Sequence[Message], added: Sequence[Message] = ()) -> list[Message]:
        """The newest of ``messages`` and then ``added`` within ``chat.max_history_messages``
        and ``chat.max_history_bytes``, in whole units.

        ``added`` (whole units) to the list this returned last is not walked through with the
        history: each new message is measured once, and the oldest units are dropped until both
        bounds hold, which keeps what :func:`trim_history` keeps (the longest suffix of whole
        units within them) for the few messages a turn adds and drops.
        """
        chat = self._chat
        combined = [*messages, *added]
        if messages is not self._measured:  # read from the store: whole units to be found
            measured: dict[int, int] = {}

            def size_of(message: Message) -> int:
                size = measured[id(message)] = message_bytes(message)
                return size

            kept = trim_history(combined, max_messages=chat.max_history_messages,
                                max_bytes=chat.max_history_bytes, size_of=size_of)
            self._measured, self._sizes = kept, [measured[id(message)] for message in kept]
            self._bytes = sum(self._sizes)
            return kept
        sizes = [*self._sizes, *map(message_bytes, added)]
        held = self._bytes + sum(sizes[len(messages):])
        end = len(combined)
        start = 0
        while start < end and (end - start > chat.max_history_messages
                               or held > chat.max_history_bytes):
            # The oldest unit: a message and the tool results that answer it.
            held -= sizes[start]
            start += 1
            while start < end and combined[start].get("role") == "tool":
                held -= sizes[start]
                start += 1
        if start:
            combined, sizes = combined[start:], sizes[start:]
        self._measured, self._sizes, self._bytes = combined, sizes, held
        return combined

    async def receive(self, message: SessionMessage) -> Any:
        match message:
            case RunTurn():
                request = self.context.request
                assert request is not None
                self._check_room()
                turn = _Turn(message, request)
                self._unfinished.add(turn)
                self._enqueue(turn.slot)
                self.context.pipe(
                    self._run_turn, turn, reply_to=request,
                    then=functools.partial(self._turn_ended, turn),
                )
                return None
            case ClearHistory():
                self._check_room()
                slot = _Slot()
                self._enqueue(slot)
                self.context.pipe(
                    self._run_clear, slot, reply_to=self.context.request,
                    then=functools.partial(self._clear_ended, slot),
                )
                return None
            case _:
                assert_never(message)

    # -- the queue (actor loop only) ------------------------------------------------------------

    def _check_room(self) -> None:
        """Refuse a turn or a clear when ``chat.max_queued_turns`` already wait: each waits up to
        its turn's deadline (minutes) holding its message, and any number of sockets may send to
        one conversation."""
        if len(self._queue) >= self._chat.max_queued_turns:
            raise ConversationUnavailable(
                f"the conversation is busy: {len(self._queue)} requests are waiting for it;"
                " try again when they have ended")

    def _enqueue(self, slot: _Slot) -> None:
        self._queue.append(slot)
        self._grant_next()

    def _grant_next(self) -> None:
        if self._active is None and self._queue:
            slot = self._active = self._queue.popleft()
            slot.history = tuple(self._messages)
            slot.granted.set()

    def _release(self, slot: _Slot) -> None:
        if self._active is slot:
            self._active = None
        elif slot in self._queue:
            self._queue.remove(slot)
        self._grant_next()

    async def on_stop(self) -> None:
        # Stopped or cancelled while a turn ran: its ``then`` will never run. Its steps are in
        # the store already; only the in-memory history is brought up to date.
        for turn in list(self._unfinished):
            self._commit(turn)

    async def _turn_ended(self, turn: _Turn, outcome: Outcome) -> Any:
        try:
            self._commit(turn)
        finally:
            self._release(turn.slot)
        return None if outcome.cancelled else outcome.unwrap()

    def _commit(self, turn: _Turn) -> None:
        """Take the turn's written messages into the in-memory history (actor loop only)."""
        self._unfinished.discard(turn)
        base = self._messages if turn.reloaded is None else list(turn.reloaded)
        if turn.cut:
            base = []
        self._messages = self._kept(base, turn.completed)
        self._fit.added(turn.completed)

    async def _persist(self, turn: _Turn, messages: list[Message],
                       start: TurnStart | None = None) -> None:
        """Write ``messages`` (the user message, or one whole step) in one transaction; only
        then do they count as done. ``start``: the turn's first write (its user message)."""
        try:
            # Shielded to the end of the bookkeeping: the append is written even if the turn
            # is cancelled meanwhile (``GroupCommit``), so it must be noted as written before
            # the cancellation lands (before, the user message was written again as the turn
            # ended, and the written step stayed out of the live conversation).
            with anyio.CancelScope(shield=True):
                await self._appends.append(self.conversation_id, messages, start)
                if start is not None:  # its queued message went into the history with it
                    turn.start, turn.queued = start, None
        except (sqlite3.Error, HistoryStoreClosed, OSError) as exc:
            logger.error(
                "conversation %s: history write failed (%s: %s); the turn ends unsaved",
                conversation_label(self.conversation_id), type(exc).__name__, exc,
            )
            raise HistoryWriteError(
                "the conversation could not be saved; this answer was not completed"
            ) from exc
        turn.completed.extend(messages)
        if turn.answered:  # before, ``completed`` is the user message a refusal takes back
            self._bound(turn)
        await anyio.lowlevel.checkpoint_if_cancelled()

    def _bound(self, turn: _Turn) -> None:
        """Leave out of ``turn.completed`` the oldest units no history can keep any more: once
        the newer ones pass ``chat.max_history_messages`` or ``chat.max_history_bytes`` they
        stay past them (the turn only adds), so the turn holds its steps whole within the
        bounds, as the store holds them, not every result it ran."""
        chat = self._chat
        kept = trim_history(turn.completed, max_messages=chat.max_history_messages,
                            max_bytes=chat.max_history_bytes)
        if len(kept) < len(turn.completed):
            turn.completed, turn.cut = kept, True

    async def _clear_ended(self, slot: _Slot, outcome: Outcome) -> Any:
        self._release(slot)
        return None if outcome.cancelled else outcome.unwrap()

    # -- a turn or a clear (child task) ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _held(self, slot: _Slot) -> AsyncIterator[bool]:
        """A turn's or a clear's hold on the conversation: its slot here and, with ``leases``
        (other workers may run this conversation too), its lease; yields whether another holder
        came in between (the history in memory may be stale)."""
        await slot.granted.wait()
        if self._leases is None:
            yield False
            return
        new, self._new = self._new, False
        async with self._leases.hold(self.conversation_id, new=new) as stale:
            yield stale

    async def _run_clear(self, slot: _Slot) -> None:
        # Under the lease, like a turn: its fencing token moves on, so another worker's next
        # turn reads the (now empty) history again instead of sending what it has in memory.
        async with self._held(slot):
            await self._clear()

    async def _clear(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._history.clear, self.conversation_id)
        except (sqlite3.Error, HistoryStoreClosed, OSError) as exc:
            logger.error("conversation %s: history clear failed (%s: %s)",
                         conversation_label(self.conversation_id), type(exc).__name__, exc)
            raise HistoryWriteError("the conversation's history could not be cleared") from exc
        # Here, not in _clear_ended: a clear done must be forgotten in memory even if its asker
        # gives up now. The slot is held, so nothing else uses the history in memory meanwhile.
        # Through _kept: the list it measured last (the cleared messages) goes with it.
        self._messages = self._kept(())

    async def _run_turn(self, turn: _Turn) -> None:
        try:
            # With leases another worker's turn may still wait for the conversation, so no
            # worker can tell a killed process's queued message from a waiting one: there,
            # none is written (a killed worker loses its queued turns' messages).
            if self._leases is None and not turn.slot.granted.is_set():
                await self._write_queued(turn)
            async with self._held(turn.slot) as stale:
                history = turn.slot.history
                if stale:  # another worker's turn or clear came in between: read it again
                    history = turn.reloaded = tuple(self._kept(await self._read_stored()))
                    self._fit.forget()
                await self._turn(turn, history)
        finally:
            if turn.queued is not None:  # ended (cancelled, failed) before it started
                await self._forget_queued(turn.queued)

    async def _write_queued(self, turn: _Turn) -> None:
        """Write the message of a turn that waits behind another, so that a killed process
        keeps it (the client was told ``processing``); not into the history, where the
        running turn's steps still go: its start moves it there, in the order turns run."""
        user: Message = {"role": "user", "content": turn.message.text}
        try:
            with anyio.CancelScope(shield=True):  # written, then noted, as :meth:`_persist`
                turn.queued = await anyio.to_thread.run_sync(
                    self._history.queue, self.conversation_id, user)
        except (sqlite3.Error, HistoryStoreClosed, OSError) as exc:
            logger.error(
                "conversation %s: queued message write failed (%s: %s); the turn ends unsaved",
                conversation_label(self.conversation_id), type(exc).__name__, exc,
            )
            raise HistoryWriteError(
                "the conversation could not be saved; this message was not accepted"
            ) from exc
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def _forget_queued(self, queued: int) -> None:
        """Forget a queued message whose turn ended before it started (cancelled, refused for
        its lease...): the turn never ran, as a refused one leaves nothing."""
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._history.unqueue, queued)
        except (sqlite3.Error, HistoryStoreClosed, OSError) as exc:
            logger.error("conversation %s: forgetting a queued message failed (%s: %s)",
                         conversation_label(self.conversation_id), type(exc).__name__, exc)

    async def _turn(self, turn: _Turn, history_now: Sequence[Message]) -> None:
        user: Message = {"role": "user", "content": turn.message.text}
        # Written as the turn starts, while the model is called (before, it went with the
        # turn's first step, and a kill before that lost it; then, written before the call,
        # the write's thread hop added ~400 ms to the p99 first text at 200 streams): nothing
        # of the answer reaches the client or the store before it is written (``written``).
        # Under the lease, which a turn may lose midway.
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._write_start, turn, user, tasks.cancel_scope)
            try:
                await self._tool_loop(turn, history_now, user)
            except Exception as exc:  # raised here, not grouped by the task group
                failure = exc
        if failure is not None:
            if not turn.answered:
                await self._withdraw(turn)
            raise failure
        await turn.written()  # when the write failed, it cancelled the model's call: its error

    async def _write_start(self, turn: _Turn, user: Message,
                           model_call: anyio.CancelScope) -> None:
        try:
            await self._persist(turn, [user], TurnStart(turn.queued))
        except HistoryWriteError as exc:
            turn.start_failed = exc
            model_call.cancel()  # for nothing: the turn ends with this error
        finally:
            turn.started.set()

    async def _withdraw(self, turn: _Turn) -> None:
        """A turn that failed before its model answered anything (refused: a cost or token
        limit, every provider rate-limited or down...) leaves the conversation as it was: the
        client may send the message again, and the next turn does not carry it unanswered."""
        if not turn.completed or turn.start is None:
            return
        # ``completed`` holds the user message alone: nothing else is written before the model
        # answers. With leases the lease is still held: the turn ended with its own error, not
        # by losing it.
        try:
            with anyio.CancelScope(shield=True):
                withdrawn = await anyio.to_thread.run_sync(
                    self._history.retract, self.conversation_id, turn.completed,
                    turn.start.trimmed)
        except (sqlite3.Error, HistoryStoreClosed, OSError) as exc:
            logger.error("conversation %s: withdrawing a refused turn's message failed (%s: %s)",
                         conversation_label(self.conversation_id), type(exc).__name__, exc)
            return
        if withdrawn:
            turn.completed.clear()

    async def _tool_loop(
        self, turn: _Turn, history_now: Sequence[Message], user: Message
    ) -> None:
        chat = self._chat
        request = turn.request
        count_model = turn.message.model or self._count_model
        # This turn's tools: calls resolve against the names its model was offered, whatever
        # other conversations' refreshes do to the shared catalog meanwhile.
        offered = await self._tools.refresh()
        tools = offered.openai_tools() if chat.max_tool_hops > 0 else []
        head: list[Message] = (
            [{"role": "system", "content": chat.system_prompt}] if chat.system_prompt else []
        )
        history = await self._fit.fit(history_now, head, user, count_model)
        conversation = [*head, *history, user]
        answers: list[LLMResponse] = []
        hops = 0
        turn_id = uuid.uuid4().hex  # the ledger's key for chat.max_cost_per_turn
        deltas = _answering(turn)
        steps = TurnSteps(chat.max_history_bytes)
        while True:
            response = await self._ask_model(conversation, tools, turn, turn_id, deltas)
            await turn.written()
            turn.answered = True
            answers.append(response)
            if not response.tool_calls:
                await self._persist(turn, [_sendable(response.message)])
                finish = response.finish_reason or "stop"
                await request.send(TurnComplete.of(answers, hops, finish))
                return
            if hops >= chat.max_tool_hops:
                notice = (
                    f"I stopped after {hops} rounds of tool calls, the limit for one message,"
                    " before reaching an answer. Ask me to continue, or narrow the request."
                )
                lead = "\n\n" if response.content else ""
                await request.send(TurnText(lead + notice))
                await self._persist(
                    turn, [{"role": "assistant", "content": response.content + lead + notice}]
                )
                await request.send(TurnComplete.of(answers, hops, "max_tool_hops"))
                return
            hops += 1
            results = await run_tool_calls(
                response.tool_calls, tools=offered, timeout=chat.tool_timeout,
                max_result_chars=chat.max_tool_result_chars, send=request.send,
            )
            step = [response.message, *results]
            await self._persist(turn, step)  # a whole step: never a call without its result
            conversation.extend(step)
            # Only what this turn's model is sent: the conversation kept after the turn is
            # what the store holds (whole results, within the history's bounds), the same live
            # as read back after a restart or on another worker.
            steps.add(step, (conversation,))

    async def _ask_model(
        self, conversation: list[Message], tools: list[Message], turn: _Turn, turn_id: str,
        deltas: DeltaSink | None,
    ) -> LLMResponse:
        request = turn.request
        # Not ``ChatRequest.of``, which copies every message through JSON (the whole history,
        # each hop): the session never changes a message once made, and the same string
        # objects each turn keep their cached hashes for the token counts.
        chat_request = ChatRequest(
            messages=tuple(conversation),
            tools=tuple(tools),
            model=turn.message.model or self._model,
            timeout=self._llm_timeout,
            reasoning_effort=turn.message.reasoning_effort,
            turn_id=turn_id,
            turn_cost_limit=self._chat.max_cost_per_turn,
            deltas=deltas,
        )
        response: LLMResponse | None = None
        async with self._router.ask_stream(chat_request) as items:
            async for item in items:
                if isinstance(item, TextDelta):
                    if item.text:
                        await turn.written()
                        turn.answered = True
                        await request.send(TurnText(item.text))
                elif isinstance(item, ReasoningDelta):
                    if item.text:
                        await turn.written()
                        turn.answered = True
                        await request.send(TurnReasoning(item.text))
                elif isinstance(item, StreamEnd):
                    response = item.response
        if response is None:
            raise LLMStreamingError("the model's stream ended without a final answer")
        return response

    def __repr__(self) -> str:
        running = "1 turn running" if self._active is not None else "idle"
        return (
            f"<SessionActor {self.conversation_id!r} [{len(self._messages)} messages | "
            f"{running} | {len(self._queue)} queued]>"
        )


def _sendable(message: Message) -> Message:
    """``message``, or, for an assistant answer without text or tool calls (a reasoning model
    whose output limit its reasoning spent, a content filter), the same with ``""`` as its
    content: OpenAI refuses a null ``content`` but beside ``tool_calls``, and the answer goes
    back to the upstream in every later turn. Also for rows stored before this held."""
    if (message.get("role") == "assistant" and message.get("content") is None
            and not message.get("tool_calls")):
        return {**message, "content": ""}
    return message


def _answering(turn: _Turn) -> DeltaSink | None:
    """The caller's own delta sink, marking ``turn`` answered as a delta passes: the router
    gives that sink deltas the session never sees, and a turn that failed after some reached
    the client keeps its user message whatever the error."""
    sink = turn.message.deltas
    if sink is None:
        return None

    async def deliver(delta: TextDelta | ReasoningDelta) -> None:
        await turn.written()
        turn.answered = True
        await sink(delta)

    return deliver


def session_actor_name(conversation_id: str) -> str:
    """The actor name of a conversation: ``"session:"`` and a digest of its id. The id is the
    capability to use the conversation, and actor names appear in logs and errors."""
    return "session:" + hashlib.sha256(conversation_id.encode()).hexdigest()[:32]


class SessionDeps(TypedDict):
    """What a conversation's actor is built with (:class:`SessionActor`'s keyword arguments)."""

    router: ActorRef
    tools: ToolCatalog
    history: HistoryStore
    chat: ChatSettings
    model: NotRequired[str | None]
    catalog: NotRequired[ModelCatalog | None]
    llm_timeout: NotRequired[float | None]
    leases: NotRequired[TurnLeases | None]
    count_model: NotRequired[str | None]
    appends: NotRequired[GroupCommit | None]
    new: NotRequired[bool]


def session_child_spec(conversation_id: str, **deps: Unpack[SessionDeps]) -> ChildSpec:
    """The spec of a conversation's actor: ``temporary`` (never restarted; the history is in the
    store, so the next turn simply starts a new one) and never crashed by an error answer."""
    return ChildSpec(
        name=session_actor_name(conversation_id),
        factory=lambda: SessionActor(conversation_id, **deps),
        restart=Restart.TEMPORARY,
        crash_on=(),
        mailbox_size=100,
        shutdown_timeout=10.0,
    )
