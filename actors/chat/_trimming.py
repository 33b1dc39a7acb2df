"""History trimming: the one function that decides which past messages a request carries.

Both limits of a conversation go through :func:`trim_history`: the message count kept in memory
(``chat.max_history_messages``) and the token budget of each request (``chat.context_budget_tokens``
or a share of the model's context window).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actors.llm import count_message_tokens

__all__ = ["trim_history"]

Message = dict[str, Any]


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


def trim_history(
    history: Sequence[Message],
    *,
    max_messages: int,
    model: str = "",
    budget_tokens: int | None = None,
    reserved_tokens: int = 0,
) -> list[Message]:
    """The newest part of ``history`` that fits: whole units, oldest dropped first.

    At most ``max_messages`` messages; with ``budget_tokens``, also only as many as keep their
    token estimate (OpenAI's recipe for ``model``) plus ``reserved_tokens`` (the system prompt and
    the new message) within it. An assistant message with tool calls is kept or dropped together
    with its tool results. Counting tokens blocks: with a budget, call it in a worker thread for
    long histories.
    """
    kept: list[list[Message]] = []
    count = 0
    tokens = reserved_tokens
    # The per-request priming is counted once for the whole request, not per unit.
    priming = count_message_tokens([], model) if budget_tokens is not None else 0
    for unit in reversed(_exchanges(history)):
        if count + len(unit) > max_messages:
            break
        if budget_tokens is not None:
            size = count_message_tokens(unit, model) - priming
            if tokens + size > budget_tokens:
                break
            tokens += size
        kept.append(unit)
        count += len(unit)
    return [message for unit in reversed(kept) for message in unit]
