"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use; our machines have no network. The files ship inside
this package (``actors/llm/data/tiktoken/*.tiktoken``). An encoding is built by tiktoken's own
definition of it (``tiktoken_ext.openai_public``: its pattern, special tokens and the sha256 it
expects) with the ranks read from the shipped file (``tiktoken.load.load_tiktoken_bpe``'s format,
parsed in bulk) instead of downloaded. Each encoding is loaded when a model that uses it is
first counted (or by :func:`preload_encodings`), not at start: ~0.6 s of CPU (a quarter of it
holding the GIL, in tiktoken's Rust constructor) and ~45 MiB resident once loaded (tiktoken's
Python copy of the ranks, ~25 MiB more, is dropped after the load); encodings no counted model
uses are never loaded. If the files are absent (a broken install), counting falls back to a
``chars / 4`` estimate and logs one warning.

Counts are cached per message (see :func:`count_message_tokens`): a conversation's unchanged
history is tokenized once, not once per turn and once more per layer (the session's trimming and
the router's pre-flight count both read the cache).

Message counting follows OpenAI's published recipe (``_token_recipe``); tool definitions are an
approximation of the same cookbook (see :func:`count_tools_tokens`).
"""

from __future__ import annotations

import binascii
import ctypes
import ctypes.util
import hashlib
import json
import logging
import threading
import time
import types
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from ._token_recipe import IMAGE_TOKENS, Encoder, MessageCounts

# tiktoken itself (its Rust core, ~1.5 MB) is imported by the first load of an encoding.
if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "IMAGE_TOKENS",
    "OFFLOAD_THRESHOLD_CHARS",
    "EncodingDataError",
    "acount_message_tokens",
    "count_message_tokens",
    "count_text_tokens",
    "count_tools_tokens",
    "encoding_for_model",
    "encoding_name_for_model",
    "preload_encodings",
]

logger = logging.getLogger(__name__)

#: Inputs longer than this (in characters) are counted in a worker thread by the async API.
OFFLOAD_THRESHOLD_CHARS = 50_000

# Relative to the ``actors`` package (``data/`` is not a package itself: no ``__init__.py``).
_DATA_DIR = ("data", "tiktoken")

# Checked in order: the first matching prefix wins, so the newer families come before "gpt-4".
_FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("gpt-oss", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
)
_DEFAULT_ENCODING = "o200k_base"
class EncodingDataError(RuntimeError):
    """A shipped encoding file is present but corrupt (not the sha256 tiktoken expects)."""


class _EstimateEncoder:
    """Stands in for tiktoken when the encoding files are missing: about 4 characters a token."""

    def encode_ordinary(self, text: str) -> list[int]:
        return [0] * ((len(text) + 3) // 4)


def encoding_name_for_model(model: str) -> str:
    """Name of the tiktoken encoding for ``model`` (provider prefixes like ``openai/`` ignored)."""
    name = model.rsplit("/", 1)[-1].split(":", 1)[0].lower()
    for prefix, encoding in _FAMILY_PREFIXES:
        if name.startswith(prefix):
            return encoding
    return _DEFAULT_ENCODING


# Loaded encoders by name. Filled once per name; a race between two threads loading the same file
# only wastes the work of one of them.
_encoders: dict[str, Encoder] = {}


_loading = threading.Lock()


def _load_encoding(name: str) -> Encoder:
    encoder = _encoders.get(name)
    if encoder is None:
        # One load per encoding: concurrent first requests (each in a worker thread) wait for
        # it instead of each spending a second of CPU on the same file.
        with _loading:
            encoder = _encoders.get(name)
            if encoder is None:
                started = time.perf_counter()
                encoder = _encoders[name] = _read_encoding(name)
                _release_freed_memory()
                logger.info("token encoding %s loaded in %.2f s (first use)", name,
                            time.perf_counter() - started)
    return encoder


def _release_freed_memory() -> None:
    # A load frees tens of MB of temporaries that glibc keeps in its heap; hand them back.
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


def _read_encoding(name: str) -> Encoder:
    import tiktoken
    from tiktoken_ext import openai_public

    shipped = resources.files(__package__).joinpath(*_DATA_DIR, f"{name}.tiktoken")
    with resources.as_file(shipped) as path:
        if not path.is_file():
            _warn_missing_once(name)
            return _EstimateEncoder()

        def load_shipped(_url: str, expected_hash: str | None = None) -> dict[bytes, int]:
            contents = path.read_bytes()
            if expected_hash is not None and hashlib.sha256(contents).hexdigest() != expected_hash:
                raise EncodingDataError(
                    f"{name}.tiktoken is corrupt: its sha256 is not {expected_hash}")
            # tiktoken.load.load_tiktoken_bpe's format (``base64-token rank`` lines), parsed in
            # bulk: the same dict in 60% of its time (this is on the first turn's path).
            fields = contents.split()
            return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]),
                            strict=True))

        # tiktoken's constructor for ``name``, run with the shipped file in place of the download:
        # the same function over the same globals, except its loader.
        constructor = openai_public.ENCODING_CONSTRUCTORS[name]
        definition = types.FunctionType(
            constructor.__code__, {**constructor.__globals__, "load_tiktoken_bpe": load_shipped}
        )()
        encoding = tiktoken.Encoding(**definition)
        # tiktoken keeps the ranks twice: in its Rust core and as this Python dict (~25 MB for
        # o200k_base), which only pickling reads. Encoders here are never pickled.
        encoding._mergeable_ranks = {}
        return encoding


_warned_missing = False


def _warn_missing_once(name: str) -> None:
    # One warning per process, not one per count (nor per encoding): the cause is the same.
    global _warned_missing
    if not _warned_missing:
        _warned_missing = True
        logger.warning(
            "tiktoken encoding file %s.tiktoken is missing from the package; "
            "token counts are estimated as characters / 4",
            name,
        )


def preload_encodings(models: Iterable[str]) -> list[str]:
    """Load the encodings of ``models`` now; returns their names, sorted.

    Blocks (seconds per encoding on a first load, holding the GIL): call it before serving, not
    on the event loop of a running server. Raises :class:`EncodingDataError` like a count would.
    """
    names = sorted({encoding_name_for_model(model) for model in models})
    for name in names:
        _load_encoding(name)
    return names


def encoding_for_model(model: str) -> tiktoken.Encoding | None:
    """The cached :class:`tiktoken.Encoding` for ``model``, or ``None`` if its file is missing.

    Raises :class:`EncodingDataError` if the shipped file is corrupt.
    """
    encoder = _load_encoding(encoding_name_for_model(model))
    import tiktoken

    return encoder if isinstance(encoder, tiktoken.Encoding) else None


def _encoder(model: str) -> Encoder:
    return _load_encoding(encoding_name_for_model(model))


def count_text_tokens(text: str, model: str) -> int:
    """Number of tokens of ``text`` for ``model`` (special-token strings count as plain text)."""
    return len(_encoder(model).encode_ordinary(text))


_counts: dict[str, MessageCounts] = {}


def _counter(model: str) -> MessageCounts:
    name = encoding_name_for_model(model)
    encoder = _load_encoding(name)
    counts = _counts.get(name)
    if counts is None or counts.encoder is not encoder:
        counts = _counts[name] = MessageCounts(encoder)
    return counts


def _is_cl100k(model: str) -> bool:
    # The cookbook's constants for tool definitions differ for cl100k_base.
    return encoding_name_for_model(model) == "cl100k_base"


def count_tools_tokens(tools: Sequence[Mapping[str, Any]], model: str) -> int:
    """Approximate prompt tokens taken by the ``tools`` (function definitions) of a request.

    Uses the constants of OpenAI's cookbook (per function, property and enum item), at every
    level of the schemas (see :func:`~actors.llm._token_recipe.tools_tokens`): exact for simple
    schemas, an estimate for nested ones.
    """
    return _counter(model).tools(tools, cl100k=_is_cl100k(model)) if tools else 0


def count_message_tokens(
    messages: Sequence[Mapping[str, Any]],
    model: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Prompt tokens of a chat request: the messages (OpenAI's recipe) plus the tool definitions.

    Each message's count is cached (by a hash of its content, per encoding, process-wide): a
    message already counted, in this conversation's previous turn or by another layer in this
    one, is not tokenized again. Blocks for as long as encoding the new messages takes (about a
    millisecond per 10k characters; the first count of an encoding loads it, about a second): in
    async code use :func:`acount_message_tokens`.
    """
    counts = _counter(model)
    total = counts.messages(messages)
    if tools:
        total += counts.tools(tools, cl100k=_is_cl100k(model))
    return total


def _size_in_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    size = 0
    for message in messages:
        for value in message.values():
            size += len(value) if isinstance(value, str) else len(json.dumps(value, default=str))
    return size


async def acount_message_tokens(
    messages: Sequence[Mapping[str, Any]],
    model: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Like :func:`count_message_tokens`, counted in a worker thread when the input is large.

    Inputs over :data:`OFFLOAD_THRESHOLD_CHARS` characters, tools other than those counted last,
    and the first load of an encoding (which parses a few MB) run in a worker thread so the
    event loop is not blocked. Cancelling
    abandons the result; the thread itself finishes its (bounded) work.
    """
    loaded = encoding_name_for_model(model) in _encoders
    # Tools are counted here only when they are the ones counted last (every turn's case): new
    # ones may be hundreds of KB of schema, walked and tokenized.
    tools_known = not tools or (
        loaded and _counter(model).known_tools(tools, cl100k=_is_cl100k(model)) is not None
    )
    if loaded and tools_known and _size_in_chars(messages) <= OFFLOAD_THRESHOLD_CHARS:
        return count_message_tokens(messages, model, tools)
    return await anyio.to_thread.run_sync(count_message_tokens, messages, model, tools)
