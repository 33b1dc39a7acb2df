"""OpenAI's token counting recipe over an encoder, and the per-message count cache.

Message counting follows OpenAI's published recipe ("How to count tokens with tiktoken"): 3 tokens
per message, +1 when it has a ``name``, +3 to prime the reply. Tool definitions (at every level of
their schemas, see :func:`tools_tokens`) and tool-call arguments are an approximation of the same
cookbook. Loading encoders is ``_tokens``' part.
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
    "MAX_SCHEMA_NODES",
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
        # Per encoding flavour, the tool dicts counted last and their count (replaced whole).
        self._last_tools: dict[bool, tuple[tuple[Mapping[str, Any], ...], int]] = {}

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

    def known_tools(self, tools: Sequence[Mapping[str, Any]], *, cl100k: bool) -> int | None:
        """The count of ``tools`` if they are the very tool dicts counted last (else ``None``).

        Every request of every turn offers the catalog's same tool dicts (shared, never
        changed): this answers without reading them, where the content key costs a JSON dump of
        them all (~5 ms for 400 KB). The dicts are kept, so their ids cannot be reused.
        """
        last = self._last_tools.get(cl100k)
        if last is None or len(last[0]) != len(tools):
            return None
        if all(mine is theirs for mine, theirs in zip(last[0], tools, strict=True)):
            return last[1]
        return None

    def tools(self, tools: Sequence[Mapping[str, Any]], *, cl100k: bool) -> int:
        known = self.known_tools(tools, cl100k=cl100k)
        if known is not None:
            return known
        count = self._keyed_tools(tools, cl100k=cl100k)
        self._last_tools[cl100k] = (tuple(tools), count)
        return count

    def _keyed_tools(self, tools: Sequence[Mapping[str, Any]], *, cl100k: bool) -> int:
        try:
            key = hash(("tools", cl100k, json.dumps(tools, sort_keys=True, default=str)))
        except (TypeError, ValueError):
            return tools_tokens(self.encoder, tools, cl100k=cl100k)
        count = self.get(key)
        if count is None:
            count = tools_tokens(self.encoder, tools, cl100k=cl100k)
            self.put(key, count)
        return count


#: A tool's schema nodes counted at most (a cycle, or a schema of millions of nodes, stops there).
MAX_SCHEMA_NODES = 10_000

# What names further schemas, by the way it holds them: a mapping of named schemas, a list of
# schemas, one schema. Each is counted as the cookbook counts a property (a name, a type, a
# description, an enum), then walked in turn.
_NAMED_SCHEMAS = frozenset({"properties", "$defs", "definitions", "patternProperties",
                            "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_ONE_SCHEMA = frozenset({"items", "additionalProperties", "not", "contains", "if", "then", "else",
                         "propertyNames", "additionalItems", "unevaluatedItems",
                         "unevaluatedProperties"})
# Counted with the property they describe, or not sent to the model (annotations of the schema
# itself, and ``required``, which marks a property optional or not).
_NOT_COUNTED_AGAIN = frozenset({"type", "description", "enum", "required", "title", "$schema",
                                "$id", "$comment"})


def tools_tokens(encoder: Encoder, tools: Sequence[Mapping[str, Any]], *, cl100k: bool) -> int:
    """Tokens of the ``tools`` of a request: OpenAI's cookbook recipe, applied at every level.

    The cookbook counts a function (constants, its name and description) and each top-level
    property (constants, ``name:type:description``, enum items). Nested schemas are counted the
    same way wherever a schema holds them (``properties`` of a property, ``items``, ``anyOf``
    variants, ``$defs``, ...; a variant or ``items`` as a property without a name), and any
    other keyword (``default``, ``format``, ``pattern``, ``$ref``, ...) as the tokens of
    ``keyword:value`` (the value as compact JSON). Linear in the schemas' size, at most
    :data:`MAX_SCHEMA_NODES` nodes a tool.
    """
    if not tools:
        return 0
    func_init = 10 if cl100k else 7
    total = 0
    for tool in tools:
        function = tool.get("function", tool)
        total += func_init
        name = str(function.get("name", ""))
        description = str(function.get("description", "")).rstrip(".")
        total += len(encoder.encode_ordinary(f"{name}:{description}"))
        total += _schema_tokens(encoder, function.get("parameters") or {})
    return total + _FUNC_END


# The cookbook's constants, the same for both encodings but ``func_init``.
_PROP_INIT, _PROP_KEY, _ENUM_INIT, _ENUM_ITEM, _FUNC_END = 3, 3, -3, 3, 12


def _schema_tokens(encoder: Encoder, schema: object) -> int:
    total = 0
    pending = [schema]
    visited = 0
    while pending and visited < MAX_SCHEMA_NODES:
        node = pending.pop()
        visited += 1
        if not isinstance(node, Mapping):
            continue
        for keyword, value in node.items():
            if keyword in _NAMED_SCHEMAS and isinstance(value, Mapping):
                if value:
                    total += _PROP_INIT
                for key, spec in value.items():
                    total += _property_tokens(encoder, str(key), spec)
                    pending.append(spec)
            elif keyword in _SCHEMA_LISTS and isinstance(value, list):
                for spec in value:
                    total += _property_tokens(encoder, "", spec)
                    pending.append(spec)
            elif keyword in _ONE_SCHEMA:
                if isinstance(value, Mapping):  # (``additionalProperties: false`` is not sent)
                    total += _property_tokens(encoder, "", value)
                    pending.append(value)
            elif keyword not in _NOT_COUNTED_AGAIN:
                text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
                total += len(encoder.encode_ordinary(f"{keyword}:{text}"))
    return total


def _property_tokens(encoder: Encoder, key: str, spec: object) -> int:
    spec = spec if isinstance(spec, Mapping) else {}
    total = _PROP_KEY
    prop_type = str(spec.get("type", ""))
    prop_desc = str(spec.get("description", "")).rstrip(".")
    enum = spec.get("enum")
    if isinstance(enum, Sequence) and not isinstance(enum, str):
        total += _ENUM_INIT
        for item in enum:
            total += _ENUM_ITEM
            total += len(encoder.encode_ordinary(str(item)))
    return total + len(encoder.encode_ordinary(f"{key}:{prop_type}:{prop_desc}"))
