"""History trimming: the one function that decides which past messages a request carries.

Every limit of a conversation goes through :func:`trim_history`: what is kept in memory (at most
``chat.max_history_messages`` messages holding at most ``chat.max_history_bytes``, measured by
:func:`message_bytes`) and the token budget of each request (``chat.context_budget_tokens`` or a
share of the model's context window).
"""

from __future__ import annotations

import functools
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import anyio.to_thread

from actors.llm import count_message_tokens

__all__ = ["HistoryFit", "TurnSteps", "message_bytes", "newest_units", "trim_history"]

Message = dict[str, Any]

#: New (not yet token-counted) characters a turn counts on the event loop; more go to a thread.
_INLINE_COUNT_CHARS: Final = 20_000

_UNCOUNTED: Final = sys.maxsize

#: Models whose tokenizer a count in a worker thread has loaded in this process.
_warm_models: set[str] = set()


def _exchanges(history: Sequence[Message]) -> list[list[Message]]:
    """Split history into units never to be separated: an assistant message with tool calls and
    its tool results form one; any other message is one alone. Incomplete units and orphan tool
    results are dropped (they would make the request invalid)."""
    units: list[list[Message]] = []
    index = 0
    while index < len(history):
        message = history[index]
        index += 1
        if message.get("role") == "tool":
            continue
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if not calls:
            units.append([message])
            continue
        wanted = {call.get("id") for call in calls}
        unit = [message]
        while index < len(history) and history[index].get("role") == "tool":
            unit.append(history[index])
            index += 1
        if {result.get("tool_call_id") for result in unit[1:]} >= wanted:
            units.append(unit)
    return units


_getsizeof = sys.getsizeof


def message_bytes(message: Message) -> int:
    """The memory ``message`` holds: Python's size of the message and of every string, list and
    dict in it (a list by its items, not its spare capacity: the same message measures the same
    built live or decoded from the store), so a string costs 1, 2 or 4 bytes a character (by
    its widest character: one emoji makes a long ASCII text take four times its length). Keys
    are not counted (they are the same few shared strings in every message)."""
    total = _getsizeof(message)
    for value in message.values():
        total += _getsizeof(value) if type(value) is str else _nested_bytes(value)
    return total


_LIST_BYTES: Final = sys.getsizeof([])
_POINTER_BYTES: Final = struct.calcsize("P")


def _nested_bytes(value: Any) -> int:
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is list:
            # Its items, not its spare capacity: a list built by appends holds more slots than
            # the same list decoded from the store, and the live history and the one read back
            # must measure the same (else one keeps a unit at the bound the other drops).
            total += _LIST_BYTES + _POINTER_BYTES * len(item)
        else:
            total += _getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total


def trim_history(
    history: Sequence[Message],
    *,
    max_messages: int,
    max_bytes: int | None = None,
    size_of: Callable[[Message], int] = message_bytes,
    model: str = "",
    budget_tokens: int | None = None,
    reserved_tokens: int = 0,
) -> list[Message]:
    """The newest part of ``history`` that fits: whole units, oldest dropped first.

    At most ``max_messages`` messages; with ``max_bytes``, also only as many as hold at most that
    many bytes by ``size_of`` (:func:`message_bytes`; give a cached one for a long history); with
    ``budget_tokens``, also only as many as keep their token estimate (OpenAI's recipe for
    ``model``) plus ``reserved_tokens`` (the system prompt and the new message) within it. An
    assistant message with tool calls is kept or dropped together with its tool results, so a
    unit larger than ``max_bytes`` by itself is dropped whole. Counting tokens blocks: with a
    budget, call it in a worker thread for long histories.
    """
    kept: list[list[Message]] = []
    count = 0
    held = 0
    tokens = reserved_tokens
    # The per-request priming is counted once for the whole request, not per unit.
    priming = count_message_tokens([], model) if budget_tokens is not None else 0
    for unit in reversed(_exchanges(history)):
        if count + len(unit) > max_messages:
            break
        if max_bytes is not None:
            size = sum(map(size_of, unit))
            if held + size > max_bytes:
                break
            held += size
        if budget_tokens is not None:
            size = count_message_tokens(unit, model) - priming
            if tokens + size > budget_tokens:
                break
            tokens += size
        kept.append(unit)
        count += len(unit)
    return [message for unit in reversed(kept) for message in unit]


def newest_units(
    newest_first: Iterable[Message],
    *,
    max_messages: int,
    max_bytes: int,
    size_of: Callable[[Message], int] = message_bytes,
) -> list[Message]:
    """What :func:`trim_history` keeps of a history within ``max_messages`` and ``max_bytes``,
    read from its newest message back, and only as far as that needs (oldest first).

    ``newest_first`` is consumed lazily (a store's rows, decoded one at a time): the walk stops
    at the first whole unit that does not fit, and tool results waiting for their call are
    held only while they fit (past that only their ids are kept, to tell an incomplete step,
    which is skipped, from a whole one, which ends the walk). So what it holds is at most
    ``max_bytes`` and the one message it is measuring.
    """
    kept: list[Message] = []  # newest first
    count = held = 0
    results: list[Message] = []  # tool results after the unit being read, newest first
    result_ids: set[Any] = set()
    results_size = 0
    for message in newest_first:
        if message.get("role") == "tool":
            result_ids.add(message.get("tool_call_id"))
            if held + results_size <= max_bytes:  # past it the unit cannot fit: hold no more
                size = size_of(message)
                results_size += size
                results.append(message)
            continue
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if calls:
            if not result_ids >= {call.get("id") for call in calls}:
                unit: list[Message] = []  # a step missing a result: skipped, as trim_history
            else:
                unit = [*results, message]
                size = results_size
        else:
            unit = [message]  # a result before it was an orphan: skipped, as trim_history
            size = 0
        results, result_ids, results_size = [], set(), 0
        if not unit:
            continue
        if count + len(unit) > max_messages:
            break
        size += size_of(message)
        if held + size > max_bytes:
            break
        held += size
        count += len(unit)
        kept.extend(unit)
    kept.reverse()
    return kept


class TurnSteps:
    """The messages a running turn's tool steps add, held within ``max_bytes`` (by
    :func:`message_bytes`): past it, the oldest steps' results give way to a short note.

    The calls stay (every call keeps a result message, so the request stays valid) and the
    newest step is always whole: the model asked for those results to go on, and each is cut at
    ``chat.max_tool_result_chars`` already. A turn then holds at most ``max_bytes`` of steps,
    plus its newest step and its older steps' call messages (each one model answer). The store
    keeps every result whole; the notes are what the model sees for the rest of the turn only
    (the conversation the turn leaves holds what the store holds, as a restart reads it back).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._held = 0
        self._messages: list[Message] = []
        self._sizes: list[int] = []
        self._whole: deque[int] = deque()  # older steps' results not dropped yet, oldest first

    def add(self, step: Sequence[Message], tails: Sequence[list[Message]]) -> None:
        """Count ``step`` (the call message, then its results), then drop the oldest results
        while the steps hold more than ``max_bytes``, replacing each in every list of
        ``tails``: lists that end with every step's messages (``step`` appended already)."""
        count = len(self._messages)
        for message in step:
            size = message_bytes(message)
            self._messages.append(message)
            self._sizes.append(size)
            self._held += size
        steps = len(self._messages)
        while self._held > self.max_bytes and self._whole:
            index = self._whole.popleft()
            dropped = self._messages[index]
            note = {"role": "tool", "tool_call_id": dropped.get("tool_call_id"), "content": (
                f"[This result ({len(str(dropped.get('content')))} characters) was dropped from"
                f" the conversation: this turn's tool steps may hold {self.max_bytes} bytes."
                " Call the tool again if you still need it.]")}
            size = message_bytes(note)
            if size >= self._sizes[index]:
                continue  # a result shorter than its note stays
            self._messages[index] = note
            self._held += size - self._sizes[index]
            self._sizes[index] = size
            for tail in tails:
                tail[len(tail) - steps + index] = note
        self._whole.extend(range(count + 1, steps))


class HistoryFit:
    """One conversation's trimming to its token budget, in a worker thread only when it is long.

    The first count of a model in a process loads its tokenizer (over a second of CPU, which on
    the loop stalled every other turn's Redis round trip past its timeout), and a history read
    back from the store is counted whole: both run in a worker thread. After that the history's
    counts are cached (``actors.llm`` caches each message's count) and only the new messages are
    tokenized: on the loop while they are short, where a thread round trip would cost more than
    counting them. Use from the event loop only.

    A history that surely fits (an upper bound of its tokens, from its length, within the
    budget) is taken whole without counting: a plain conversation's turn tokenizes nothing
    here until it nears its budget.
    """

    def __init__(self, *, budget_tokens: int, max_messages: int) -> None:
        self.budget_tokens = budget_tokens
        self.max_messages = max_messages
        self._uncounted_chars = _UNCOUNTED  # all of it until the first count
        self._counted_model = ""

    def added(self, messages: Sequence[Message]) -> None:
        """``messages`` joined the history since the last :meth:`fit`."""
        self._uncounted_chars += sum(_size(message) for message in messages)

    def forget(self) -> None:
        """The history was read again from the store: count it whole next time."""
        self._uncounted_chars = _UNCOUNTED

    async def fit(
        self, history: Sequence[Message], head: list[Message], user: Message, model: str
    ) -> list[Message]:
        """The newest part of ``history`` (whole units, as :func:`trim_history` returns them)
        that fits the budget beside ``head`` and ``user``."""
        if len(history) <= self.max_messages:
            bound = _tokens_at_most([*head, user, *history])
            if bound is not None and bound <= self.budget_tokens:
                return list(history)
        fit = functools.partial(
            _fit, history, head, user, model=model, budget=self.budget_tokens,
            max_messages=self.max_messages,
        )
        new_chars = self._uncounted_chars + _size(user)
        if (model in _warm_models and model == self._counted_model
                and new_chars <= _INLINE_COUNT_CHARS):
            kept = fit()
        else:
            kept = await anyio.to_thread.run_sync(fit)
            _warm_models.add(model)
        self._uncounted_chars, self._counted_model = 0, model
        return kept


def _fit(
    history: Sequence[Message],
    head: list[Message],
    user: Message,
    *,
    model: str,
    budget: int,
    max_messages: int,
) -> list[Message]:
    reserved = count_message_tokens([*head, user], model)
    return trim_history(
        history, model=model, budget_tokens=budget, max_messages=max_messages,
        reserved_tokens=reserved,
    )


def _size(message: Message) -> int:
    """About how many characters counting ``message``'s tokens encodes."""
    return sum(len(value) if isinstance(value, str) else len(str(value))
               for value in message.values())


#: More than OpenAI's recipe adds per message (3, and 1 for a name) and per request (3).
_FRAMING_BOUND: Final = 8


def _tokens_at_most(messages: Sequence[Message]) -> int | None:
    """An upper bound of the recipe's token count of ``messages`` (a token is at least one
    UTF-8 byte); ``None`` when a message has content parts (not bounded here)."""
    total = _FRAMING_BOUND
    for message in messages:
        total += _FRAMING_BOUND
        for key, value in message.items():
            if isinstance(value, str):
                total += _bytes_at_most(value)
            elif key == "tool_calls":
                if not isinstance(value, list):
                    return None
                for call in value:
                    function = call.get("function") if isinstance(call, dict) else None
                    if not isinstance(function, dict):
                        return None
                    total += _FRAMING_BOUND + _bytes_at_most(str(function.get("name", "")))
                    total += _bytes_at_most(str(function.get("arguments", "")))
            elif key == "content" and value is not None:
                return None
    return total


def _bytes_at_most(text: str) -> int:
    return len(text) if text.isascii() else 4 * len(text)
