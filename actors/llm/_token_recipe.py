"""OpenAI's token counting recipe over an encoder, and the per-message count cache.

Message counting follows OpenAI's published recipe ("How to count tokens with tiktoken"): 3 tokens
per message, +1 when it has a ``name``, +3 to prime the reply. Tool definitions and tool-call
arguments are an approximation of the same cookbook. Loading encoders is ``_tokens``' part.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = [
    "COUNT_CACHE_ENTRIES",
    "IMAGE_TOKENS",
    "REPLY_PRIMING_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "Encoder",
    "MessageCounts",
    "message_key",
    "one_message_tokens",
    "tools_tokens",
]

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# Images are billed by size and detail, which a message does not tell us; 85 is the low-detail
# price, so a request with images is under-estimated rather than refused.
IMAGE_TOKENS = 85


class Encoder(Protocol):
    """What counting needs of an encoding (tiktoken's ``Encoding`` has it)."""

    def encode_ordinary(self, text: str) -> list[int]: ...


def _content_tokens(encoder: Encoder, content: object) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(encoder.encode_ordinary(content))
    if isinstance(content, Sequence):
        total = 0
        for part in content:
            if isinstance(part, Mapping):
                if part.get("type") == "text":
                    total += len(encoder.encode_ordinary(str(part.get("text", ""))))
                elif part.get("type") in ("image_url", "input_image", "image"):
                    total += IMAGE_TOKENS
                else:
                    total += len(encoder.encode_ordinary(json.dumps(part, default=str)))
            else:
                total += len(encoder.encode_ordinary(str(part)))
        return total
    return len(encoder.encode_ordinary(json.dumps(content, default=str)))


def _tool_calls_tokens(encoder: Encoder, tool_calls: object) -> int:
    # Approximation: the function name and its JSON arguments, plus 3 tokens of framing per call
    # (OpenAI does not publish the exact rendering of an assistant's tool calls).
    if not isinstance(tool_calls, Sequence):
        return 0
    total = 0
    for call in tool_calls:
        function = call.get("function", {}) if isinstance(call, Mapping) else {}
        total += 3
        total += len(encoder.encode_ordinary(str(function.get("name", ""))))
        total += len(encoder.encode_ordinary(str(function.get("arguments", ""))))
    return total


def one_message_tokens(encoder: Encoder, message: Mapping[str, Any]) -> int:
    total = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "tool_calls":
            total += _tool_calls_tokens(encoder, value)
        elif key == "content":
            total += _content_tokens(encoder, value)
        elif isinstance(value, str):
            total += len(encoder.encode_ordinary(value))
            if key == "name":
                total += TOKENS_PER_NAME
    return total


def message_key(message: Mapping[str, Any]) -> int | None:
    """A hash of what :func:`one_message_tokens` reads of ``message`` (``None``: not hashable).

    Strings go in as they are (a history's strings are the same objects every turn, and a ``str``
    keeps its hash: no rehashing); content parts and tool calls as their JSON.
    """
    parts: list[object] = []
    for key, value in message.items():
        if isinstance(value, str):
            parts.append((key, value))
        elif key in ("content", "tool_calls") and value is not None:
            try:
                parts.append((key, 1, json.dumps(value, sort_keys=True, default=str)))
            except (TypeError, ValueError):
                return None
    return hash(tuple(parts))


#: Entries of one encoding's count cache (least recently used out): ~100 bytes each.
COUNT_CACHE_ENTRIES = 50_000


class MessageCounts:
    """One encoder's token counts of the messages (and tool lists) it already counted.

    Keyed by a hash of the content, not by the message: it keeps no text alive, so its memory is
    bounded by the entry count whatever the messages' sizes. Two different messages with the same
    64-bit hash would share a count (an estimate off for one request; vanishingly unlikely).
    """

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._counts: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()  # counts run on the loop and in worker threads

    def get(self, key: int) -> int | None:
        with self._lock:
            count = self._counts.get(key)
            if count is not None:
                self._counts.move_to_end(key)
            return count

    def put(self, key: int, count: int) -> None:
        with self._lock:
            self._counts[key] = count
            if len(self._counts) > COUNT_CACHE_ENTRIES:
                self._counts.popitem(last=False)

    def __len__(self) -> int:
        return len(self._counts)

    def messages(self, messages: Sequence[Mapping[str, Any]]) -> int:
        total = REPLY_PRIMING_TOKENS
        for message in messages:
            key = message_key(message)
            count = self.get(key) if key is not None else None
            if count is None:
                count = one_message_tokens(self.encoder, message)
                if key is not None:
                    self.put(key, count)
            total += count
        return total

    def tools(self, tools: Sequence[Mapping[str, Any]], *, cl100k: bool) -> int:
        try:
            key = hash(("tools", cl100k, json.dumps(tools, sort_keys=True, default=str)))
        except (TypeError, ValueError):
            return tools_tokens(self.encoder, tools, cl100k=cl100k)
        count = self.get(key)
        if count is None:
            count = tools_tokens(self.encoder, tools, cl100k=cl100k)
            self.put(key, count)
        return count


def tools_tokens(encoder: Encoder, tools: Sequence[Mapping[str, Any]], *, cl100k: bool) -> int:
    # OpenAI's cookbook approximation for function definitions: constants per function, per
    # property and per enum item on top of the encoded names, types and descriptions.
    func_init, prop_init, prop_key, enum_init, enum_item, func_end = (
        (10, 3, 3, -3, 3, 12) if cl100k else (7, 3, 3, -3, 3, 12)
    )
    if not tools:
        return 0
    total = 0
    for tool in tools:
        function = tool.get("function", tool)
        total += func_init
        name = str(function.get("name", ""))
        description = str(function.get("description", "")).rstrip(".")
        total += len(encoder.encode_ordinary(f"{name}:{description}"))
        properties = (function.get("parameters") or {}).get("properties") or {}
        if properties:
            total += prop_init
            for key, spec in properties.items():
                total += prop_key
                spec = spec if isinstance(spec, Mapping) else {}
                prop_type = str(spec.get("type", ""))
                prop_desc = str(spec.get("description", "")).rstrip(".")
                enum = spec.get("enum")
                if isinstance(enum, Sequence) and not isinstance(enum, str):
                    total += enum_init
                    for item in enum:
                        total += enum_item
                        total += len(encoder.encode_ordinary(str(item)))
                total += len(encoder.encode_ordinary(f"{key}:{prop_type}:{prop_desc}"))
    return total + func_end
