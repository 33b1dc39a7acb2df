"""An OpenAI- and OpenRouter-compatible chat server with fault injection, for demos and tests.

A separate program (``python -m simulator --config faults.yaml``) that speaks the wire formats
and needs no key and no network. It depends on nothing else of this project.

Endpoints
    ``POST /v1/chat/completions`` (streaming and not), ``GET /v1/models``; the same under
    ``/api/v1`` (OpenRouter's base path). Admin: ``GET /_sim/stats``, ``POST /_sim/config`` (a
    JSON merge patch of :class:`SimulatorConfig`, applied live; ``GET`` shows the configuration
    with keys masked), ``POST /_sim/reset``, ``GET /_sim/health``. Open to any client unless the
    variable ``SIMULATOR_CONTROL_TOKEN`` is set, then all but ``/_sim/health`` need it as a
    bearer token (401 otherwise): the server's demo mode sets a random one (or passes on its own
    ``SIMULATOR_CONTROL_TOKEN``).

What the model answers (deterministic, a function of the request)
    * Tools offered and the last message is a user message containing ``call <tool>``, optionally
      followed by a JSON object (``please call add {"a": 2, "b": 3}``): one tool call per
      directive naming an offered tool, in order, ``arguments`` that object (``{}`` without one,
      or if it is not valid JSON), ids ``call_1``, ``call_2``... numbered across the whole run
      (reset by ``/_sim/reset``), ``finish_reason`` ``tool_calls``. Streamed as OpenAI does: an
      opening delta (index, id, type, name, empty arguments), then the arguments in four
      fragments. Directives naming a tool that was not offered are ignored.
    * The last message is a ``tool`` message: ``Tool <name> returned: <content[:200]>``, one
      line per trailing tool message, the name found through ``tool_call_id`` in the assistant
      message that asked for it.
    * Otherwise ``Echo: <text of the last user message>``, padded with filler words up to the
      model's ``reply_words``. Chunks are words (with their leading whitespace); ``max_tokens``
      (or ``max_completion_tokens``) keeps that many words and ends with ``length``.

Reasoning models (``ModelSpec.reasoning``; served by default: ``o4-mini`` and ``gpt-5-mini``
in OpenAI's style, ``deepseek-reasoner`` in DeepSeek's, ``deepseek/deepseek-r1`` in OpenRouter's)
    They reason before they answer: ``Thinking about the request: <last user text>`` padded with
    filler thoughts, one token a word, 16 tokens (``reasoning_effort`` ``minimal`` 2, ``low`` 8,
    ``medium`` 16, ``high`` 32). Reasoning spends ``max_completion_tokens`` / ``max_tokens``
    first, is counted in ``completion_tokens`` and reported as
    ``usage.completion_tokens_details.reasoning_tokens``.

    * ``openai``: the text is never sent. ``max_tokens``, ``logprobs`` and a non-default
      ``temperature`` / ``top_p`` / ``presence_penalty`` / ``frequency_penalty`` are refused
      with OpenAI's exact 400 bodies (``unsupported_parameter``, ``unsupported_value``);
      ``reasoning_effort`` outside the four efforts is an ``invalid_value``. Models that do not
      reason refuse ``reasoning_effort`` (OpenAI flavour).
    * ``openrouter``: streamed as deltas ``{"role": "assistant", "content": "", "reasoning": w,
      "reasoning_details": [{"type": "reasoning.text", "text": w, "format": "unknown",
      "index": 0}]}`` before the answer; ``message.reasoning`` and ``reasoning_details`` when not
      streaming. Takes the ``reasoning`` object (``effort``, ``max_tokens``: that many tokens,
      ``exclude: true``: counted but not sent, ``enabled: false``) or ``reasoning_effort``.
    * ``deepseek``: ``{"content": null, "reasoning_content": w}`` deltas before the content
      deltas (which carry ``"reasoning_content": null``); ``message.reasoning_content``.

JSON mode and logprobs
    ``response_format`` ``json_object`` answers ``{"answer": <the text>}`` (the OpenAI flavour
    refuses it, as OpenAI does, unless the messages contain the word ``json``); ``json_schema``
    answers an object with the schema's required keys (all properties when none is required),
    typed values (strings ``"<key>: <the text>"``, numbers 0.5, integers 42, booleans true, the
    first ``enum`` value, one-item arrays), clamped to ``minimum`` / ``maximum``. The JSON text
    is chunked like any answer, at whitespace. ``faults.invalid_json`` (or ``X-Sim-Fault:
    invalid_json`` for one request) cuts its last character. ``logprobs: true`` with
    ``top_logprobs`` N (0 to 20) adds ``choices[0].logprobs.content`` as OpenAI sends it, one
    entry per token with ``token``, ``logprob``, ``bytes`` and N ``top_logprobs`` (the token
    first), per chunk when streaming; the values are a function of the token alone.

Token counts
    prompt tokens = (characters of all message contents, tool-call names and arguments) // 4
    + 4 per message; completion tokens = words emitted, or for tool calls
    ``(len(name) + len(arguments)) // 4 + 1`` each.

Errors and limits
    Wrong or missing bearer key (when ``api_keys`` is set; any key is accepted otherwise) → 401
    ``invalid_api_key``; invalid JSON → 400; unknown model → 404 ``model_not_found``; prompt
    tokens + ``max_tokens`` over the model's ``context_window`` → 400
    ``context_length_exceeded``. ``requests_per_minute`` / ``tokens_per_minute`` are enforced
    over a sliding 60 s window of admitted requests, a request counting its prompt tokens plus
    the completion tokens it will produce; over the limit → 429 with ``Retry-After`` and
    ``retry-after-ms``. Every response carries ``x-ratelimit-{limit,remaining,reset}-{requests,
    tokens}`` (unenforced limits report 10,000,000 requests and 1,000,000,000 tokens; ``reset``
    is when the oldest admitted request leaves the window). OpenAI errors are ``{"error":
    {"message", "type", "param", "code"}}``; OpenRouter errors carry the numeric status as
    ``code``.

OpenRouter flavour (``flavor: openrouter`` or the header ``X-Sim-Flavor: openrouter``)
    ``usage.cost`` from the model's prices per million tokens, the usage chunk always sent,
    ``: OPENROUTER PROCESSING`` comments after the headers and every ``keepalive_interval``
    during ``first_byte_delay``, mid-stream errors as a chunk with ``error`` and
    ``finish_reason: "error"``.

Faults (``faults:`` in the configuration)
    Rates for ``429`` (with ``retry_after``), ``401``, ``402``, ``500``, ``502``, ``503``,
    ``timeout`` (no answer until the client closes, at most ``hang_seconds``), ``reset`` (TCP
    RST, no response), ``midstream_drop`` (the connection closes mid body) and
    ``midstream_error`` (an error event, then the end of the body; a 502 when not streaming);
    delays ``latency`` (before the headers), ``first_byte_delay`` and ``chunk_delay``. Every
    chat completion draws two numbers from one ``random.Random(seed)`` in arrival order, the
    first picking the fault by walking the rates in :data:`FAULT_KINDS` order, the second the
    chunk where a mid-stream fault strikes (after at least one content chunk, before the
    finishing chunk): the same seed and request sequence give the same faults. The header
    ``X-Sim-Fault: <kind>`` forces one for a request (the draws still happen). Authentication
    and body validation come before injected faults; model, context and rate limits after.

Statistics (``GET /_sim/stats``)
    Chat completions only: totals, counts by status (0 = no response: reset or timeout),
    injected faults, a log of ``[time.monotonic(), status, prompt_tokens, completion_tokens,
    key_ok]`` (the last 100,000; the clock is the system's monotonic clock, comparable across
    processes), streams started / completed / aborted by the client / dropped / errored / open,
    and the most requests and tokens (prompt + planned completion) that arrived in any 60 s
    window, rejected requests included: what the client sent, not what was admitted.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import Simulator
    from ._config import (
        FAULT_KINDS,
        FaultConfig,
        Flavor,
        ModelSpec,
        ReasoningStyle,
        SimulatorConfig,
        load_config,
        merge_patch,
    )
    from ._main import main, serve

__all__ = [
    "FAULT_KINDS",
    "FaultConfig",
    "Flavor",
    "ModelSpec",
    "ReasoningStyle",
    "Simulator",
    "SimulatorConfig",
    "load_config",
    "main",
    "merge_patch",
    "serve",
]

# Imported on first access (PEP 562): a program that only starts the simulator as a child
# process (``simulator.process``) needs none of its app (~2 MiB of resident memory).
_HOMES = {
    "Simulator": "._app",
    "main": "._main",
    "serve": "._main",
    **dict.fromkeys(
        ["FAULT_KINDS", "FaultConfig", "Flavor", "ModelSpec", "ReasoningStyle",
         "SimulatorConfig", "load_config", "merge_patch"],
        "._config",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value
