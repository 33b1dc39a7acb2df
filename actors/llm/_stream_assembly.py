"""A stream's chunks, decoded by :func:`~actors.llm._wire_decode.decode_chunk`, accumulated
into the answer.

Every piece is appended to a list and joined once: a hostile stream may send a tool call's name
one character per chunk, or one chunk of a hundred thousand choices, and a string grown piece by
piece may be copied at each piece (800,000 one-letter pieces of a name took 35 s of the event
loop). An answer holds at most :data:`MAX_TOOL_CALLS` tool calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ._messages import ToolCall

if TYPE_CHECKING:
    # Annotations only: _wire_decode imports StreamAssembly back from here.
    from ._wire_decode import Chunk, TokenLogprob, ToolCallDelta, WireUsage

__all__ = ["MAX_TOOL_CALLS", "MalformedResponse", "NoEvent", "StreamAssembly", "TooManyToolCalls"]

MAX_TOOL_CALLS: Final = 256
"""Tool calls one answer may hold (models make a few, in the tens at most; the chat runs 32 a
step and answers each other one). More is a malformed answer: each call is kept, returned, and
answered in the history."""


class MalformedResponse(ValueError):
    """A chunk or body whose shape is not a chat completion's (the message names the field)."""


class TooManyToolCalls(MalformedResponse):
    """An answer with more than :data:`MAX_TOOL_CALLS` tool calls."""

    def __init__(self) -> None:
        super().__init__(f"more than {MAX_TOOL_CALLS} tool calls")


class NoEvent(MalformedResponse):
    """A stream that ended without a single data event: not SSE (a proxy's page, a text), or
    only comments. Read as SSE it was an empty successful answer."""

    def __init__(self) -> None:
        super().__init__("a stream that holds no event")


@dataclass
class _ToolCallBuilder:
    id: str = ""
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamAssembly:
    """Accumulates a stream's chunks into the answer, with the provider's rules.

    The last non-empty ``model``, ``finish_reason`` and ``usage`` win; text, reasoning and
    refusal concatenate; tool calls are assembled per ``index`` (the id replaced when given, name
    pieces joined, argument pieces joined) and listed by index. Not thread-safe (one stream).
    """

    model: str | None = None
    finish_reason: str | None = None
    usage: WireUsage | None = None
    added_reasoning: str = ""
    """The reasoning text the last :meth:`add` took in ("" if none)."""
    added_tool_text: str = ""
    """The tool-call names and argument pieces the last :meth:`add` took in ("" if none)."""
    _text: list[str] = field(default_factory=list)
    _reasoning: list[str] = field(default_factory=list)
    _refusal: list[str] = field(default_factory=list)
    _reasoning_details: list[Any] = field(default_factory=list)
    _logprobs: list[TokenLogprob] = field(default_factory=list)
    _tools: dict[int, _ToolCallBuilder] = field(default_factory=dict)

    def add(self, chunk: Chunk) -> str:
        """Take in one decoded chunk; returns the answer text it adds ("" if none).

        The reasoning it adds is :attr:`added_reasoning`, the tool-call names and argument
        pieces :attr:`added_tool_text`, until the next call. Raises :class:`TooManyToolCalls`.
        """
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.model:
            self.model = chunk.model
        added: list[str] = []
        reasoning_added: list[str] = []
        tool_text: list[str] = []
        for choice in chunk.choices:
            delta = choice.delta
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            if delta.tool_calls:
                self._add_tool_deltas(delta.tool_calls, tool_text)
            if delta.content:
                self._text.append(delta.content)
                added.append(delta.content)
            reasoning = delta.reasoning_text
            if reasoning:
                self._reasoning.append(reasoning)
                reasoning_added.append(reasoning)
            if delta.refusal:
                self._refusal.append(delta.refusal)
            if delta.reasoning_details:
                self._reasoning_details.extend(delta.reasoning_details)
            if choice.logprobs is not None and choice.logprobs.content:
                self._logprobs.extend(choice.logprobs.content)
        self.added_reasoning = "".join(reasoning_added)
        self.added_tool_text = "".join(tool_text)
        return "".join(added)

    def _add_tool_deltas(self, pieces: list[ToolCallDelta], tool_text: list[str]) -> None:
        tools = self._tools
        for piece in pieces:
            builder = tools.get(piece.index)
            if builder is None:
                if len(tools) == MAX_TOOL_CALLS:
                    raise TooManyToolCalls()
                builder = tools[piece.index] = _ToolCallBuilder()
            if piece.id:
                builder.id = piece.id
            function = piece.function
            if function is not None:
                if function.name:
                    builder.name.append(function.name)
                    tool_text.append(function.name)
                if function.arguments:
                    builder.arguments.append(function.arguments)
                    tool_text.append(function.arguments)

    @property
    def text(self) -> str:
        """The answer text so far (also the partial text of a failed stream)."""
        return "".join(self._text)

    @property
    def reasoning(self) -> str:
        """The reasoning text so far."""
        return "".join(self._reasoning)

    @property
    def refusal(self) -> str:
        """The refusal text so far."""
        return "".join(self._refusal)

    @property
    def reasoning_details(self) -> tuple[Any, ...]:
        """OpenRouter's ``reasoning_details`` items, in order."""
        return tuple(self._reasoning_details)

    @property
    def logprobs(self) -> tuple[TokenLogprob, ...]:
        """The tokens' log probabilities, in order."""
        return tuple(self._logprobs)

    def tool_calls(self) -> list[ToolCall]:
        """The assembled tool calls, by index; empty arguments read as ``"{}"``."""
        return [ToolCall(id=b.id, name="".join(b.name), arguments="".join(b.arguments) or "{}")
                for _, b in sorted(self._tools.items())]
