"""What the simulated model answers: a pure function of the request (see the package docstring)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._options import JsonFormat
from ._structured import json_answer

__all__ = ["Reply", "ToolCall", "estimate_prompt_tokens", "plan_reply", "tool_call_tokens"]

_DIRECTIVE = re.compile(r"\bcall\s+([A-Za-z0-9_.\-]+)")
_WORD = re.compile(r"\s*\S+")
_FILLER = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
    "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua",
)
_THOUGHTS = ("weighing", "the", "options", "then", "checking", "each", "step", "again")
_TOOL_RESULT_CHARS = 200


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model asks for; ``arguments`` is a JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The planned answer: either word chunks or tool calls, and why it ends."""

    words: tuple[str, ...]
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    completion_tokens: int
    """Reasoning tokens included."""
    reasoning: tuple[str, ...] = ()
    """The reasoning words sent before the answer (empty when the model keeps them hidden)."""
    reasoning_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.words)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)


def text_of(content: Any) -> str:
    """The text of a message ``content``: a string, or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"] for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def estimate_prompt_tokens(messages: Sequence[Any]) -> int:
    """``characters // 4 + 4 per message``: characters of contents, tool-call names, arguments."""
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        chars += len(text_of(message.get("content")))
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                chars += len(str(function.get("name", "")))
                chars += len(str(function.get("arguments", "")))
    return chars // 4 + 4 * len(messages)


def tool_call_tokens(calls: Sequence[ToolCall]) -> int:
    """Completion tokens of a tool-call answer: ``(name + arguments characters) // 4 + 1`` each."""
    return sum((len(call.name) + len(call.arguments)) // 4 + 1 for call in calls)


def plan_reply(
    messages: Sequence[Any],
    offered_tools: Sequence[str],
    reply_words: int,
    max_tokens: int | None,
    first_call_number: int,
    *,
    reasoning_tokens: int = 0,
    show_reasoning: bool = False,
    json_format: JsonFormat | None = None,
    broken_json: bool = False,
) -> Reply:
    """The answer to ``messages``; tool calls are numbered from ``first_call_number``.

    Reasoning comes first and spends ``max_tokens`` before the answer does; a JSON answer
    (``json_format``) wraps the text that would otherwise be sent.
    """
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    role = last.get("role")
    if max_tokens is not None:
        reasoning_tokens = min(reasoning_tokens, max_tokens)
    reasoning = _reasoning(messages, reasoning_tokens) if show_reasoning else ()
    if offered_tools and role == "user":
        calls = _tool_calls(text_of(last.get("content")), offered_tools, first_call_number)
        if calls:
            return Reply((), calls, "tool_calls", tool_call_tokens(calls) + reasoning_tokens,
                         reasoning, reasoning_tokens)
    text = _tool_results(messages) if role == "tool" else "Echo: " + _last_user_text(messages)
    words = _WORD.findall(text)
    index = 0
    while len(words) < reply_words:
        words.append(" " + _FILLER[index % len(_FILLER)])
        index += 1
    if json_format is not None:
        words = _WORD.findall(json_answer("".join(words), json_format.schema, broken_json))
    finish = "stop"
    if max_tokens is not None and len(words) > max_tokens - reasoning_tokens:
        words = words[: max_tokens - reasoning_tokens]
        finish = "length"
    return Reply(tuple(words), (), finish, len(words) + reasoning_tokens, reasoning,
                 reasoning_tokens)


def _reasoning(messages: Sequence[Any], tokens: int) -> tuple[str, ...]:
    words = _WORD.findall("Thinking about the request: " + _last_user_text(messages))
    index = 0
    while len(words) < tokens:
        words.append(" " + _THOUGHTS[index % len(_THOUGHTS)])
        index += 1
    return tuple(words[:tokens])


def _last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def _tool_calls(text: str, offered: Sequence[str], first_number: int) -> tuple[ToolCall, ...]:
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    for match in _DIRECTIVE.finditer(text):
        name = match.group(1)
        if name not in offered:
            continue
        arguments: Any = {}
        rest = match.end()
        while rest < len(text) and text[rest].isspace():
            rest += 1
        if text.startswith("{", rest):
            try:
                parsed, _ = decoder.raw_decode(text, rest)
            except ValueError:
                parsed = {}
            arguments = parsed if isinstance(parsed, dict) else {}
        calls.append(ToolCall(f"call_{first_number + len(calls)}", name, json.dumps(arguments)))
    return tuple(calls)


def _tool_results(messages: Sequence[Any]) -> str:
    names: dict[str, str] = {}
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "assistant":
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    names[str(call.get("id"))] = str(call["function"].get("name", "unknown"))
    trailing: list[dict[str, Any]] = []
    for message in reversed(messages):
        if not (isinstance(message, dict) and message.get("role") == "tool"):
            break
        trailing.append(message)
    lines = []
    for message in reversed(trailing):
        name = names.get(str(message.get("tool_call_id")), str(message.get("name", "unknown")))
        content = text_of(message.get("content"))[:_TOOL_RESULT_CHARS]
        lines.append(f"Tool {name} returned: {content}")
    return "\n".join(lines)
