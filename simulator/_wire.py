"""Bodies as OpenAI and OpenRouter write them: completions, stream events, errors."""

from __future__ import annotations

import json
from typing import Any

from ._config import Flavor, ReasoningStyle
from ._logprobs import token_logprob
from ._replies import Reply

__all__ = [
    "StreamEvents",
    "completion_body",
    "dumps",
    "error_body",
    "logprobs_of",
    "reasoning_fields",
    "usage_of",
]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any) -> bytes:
    """Compact JSON, as the real APIs send it."""
    return _encode(value).encode()


def error_body(
    flavor: Flavor,
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
) -> bytes:
    """OpenAI: ``{"error": {"message", "type", "param", "code"}}``; OpenRouter: numeric ``code``."""
    if flavor == "openrouter":
        return dumps({"error": {"code": status, "message": message, "metadata": {"type": type_}}})
    return dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def usage_of(
    flavor: Flavor,
    prompt: int,
    completion: int,
    cost: float,
    reasoning: ReasoningStyle | None = None,
    reasoning_tokens: int = 0,
) -> dict[str, Any]:
    """The ``usage`` object; a reasoning model details its ``reasoning_tokens``."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if reasoning == "openai":
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": reasoning_tokens, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        }
    elif reasoning == "deepseek":
        usage["prompt_tokens_details"] = {"cached_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        usage["prompt_cache_hit_tokens"] = 0
        usage["prompt_cache_miss_tokens"] = prompt
    elif reasoning == "openrouter":
        usage["prompt_tokens_details"] = {"cached_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    if flavor == "openrouter":
        usage["cost"] = cost
    return usage


def reasoning_fields(style: ReasoningStyle | None, text: str) -> dict[str, Any]:
    """The message (or delta) fields carrying reasoning ``text`` in ``style``."""
    if style == "deepseek":
        return {"reasoning_content": text}
    if style == "openrouter":
        return {"reasoning": text, "reasoning_details": [
            {"type": "reasoning.text", "text": text, "format": "unknown", "index": 0}
        ]}
    return {}


def logprobs_of(words: tuple[str, ...], top: int | None) -> dict[str, Any] | None:
    """``choices[].logprobs``: one entry per token, or ``None`` when none were asked for."""
    if top is None:
        return None
    return {"content": [token_logprob(word, top) for word in words], "refusal": None}


def _head(
    flavor: Flavor, completion_id: str, created: int, model: str, kind: str
) -> dict[str, Any]:
    head: dict[str, Any] = {"id": completion_id}
    if flavor == "openrouter":
        head["provider"] = "Simulator"
    head.update(object=kind, created=created, model=model, system_fingerprint="fp_sim")
    return head


def completion_body(
    flavor: Flavor,
    completion_id: str,
    created: int,
    model: str,
    reply: Reply,
    usage: dict[str, Any],
    reasoning: ReasoningStyle | None = None,
    top_logprobs: int | None = None,
) -> bytes:
    """A non-streaming ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None, "refusal": None}
    if reply.reasoning:
        message.update(reasoning_fields(reasoning, reply.reasoning_text))
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.tool_calls
        ]
    body = _head(flavor, completion_id, created, model, "chat.completion")
    body["choices"] = [{
        "index": 0, "message": message, "logprobs": logprobs_of(reply.words, top_logprobs),
        "finish_reason": reply.finish_reason,
    }]
    body["usage"] = usage
    return dumps(body)


class StreamEvents:
    """The SSE events of one streamed completion, built from a pre-encoded prefix."""

    __slots__ = ("_content_tail", "_flavor", "_head", "_prefix", "_reasoning", "_suffix", "_top")

    def __init__(
        self,
        flavor: Flavor,
        completion_id: str,
        created: int,
        model: str,
        include_usage: bool,
        reasoning: ReasoningStyle | None = None,
        top_logprobs: int | None = None,
    ) -> None:
        self._flavor = flavor
        self._reasoning = reasoning
        self._top = top_logprobs
        self._head = _head(flavor, completion_id, created, model, "chat.completion.chunk")
        self._prefix = b"data: " + dumps(self._head)[:-1] + b',"choices":[{"index":0,"delta":'
        self._suffix = b"]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"
        # DeepSeek names the absent reasoning in every content delta.
        self._content_tail = b',"reasoning_content":null}' if reasoning == "deepseek" else b"}"

    def delta(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        return (
            self._prefix + dumps(delta) + b',"logprobs":' + dumps(logprobs)
            + b',"finish_reason":' + dumps(finish_reason) + b"}" + self._suffix
        )

    def content(self, text: str) -> bytes:
        if self._top is not None:
            logprobs = {"content": [token_logprob(text, self._top)], "refusal": None}
            return self.delta({"content": text}, None, logprobs)
        return (
            self._prefix + b'{"content":' + dumps(text) + self._content_tail
            + b',"logprobs":null,"finish_reason":null}' + self._suffix
        )

    def thought(self, text: str) -> bytes:
        """One reasoning delta, in the model's style."""
        if self._reasoning == "openrouter":
            delta: dict[str, Any] = {"role": "assistant", "content": ""}
        else:
            delta = {"content": None}
        delta.update(reasoning_fields(self._reasoning, text))
        return self.delta(delta)

    def usage(self, usage: dict[str, Any]) -> bytes:
        return b"data: " + dumps({**self._head, "choices": [], "usage": usage}) + b"\n\n"

    def _role(self, content: str | None) -> bytes:
        delta: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if self._reasoning == "deepseek":
            delta = {"role": "assistant", "content": None, "reasoning_content": ""}
        empty: dict[str, Any] | None = None
        if self._top is not None:
            empty = {"content": [], "refusal": None}
        return self.delta(delta, None, empty)

    def reply(self, reply: Reply) -> list[bytes]:
        """The role chunk, reasoning chunks, the content or tool-call chunks, the finishing one."""
        if not reply.tool_calls:
            events = [self._role("")]
            events.extend(self.thought(word) for word in reply.reasoning)
            events.extend(self.content(word) for word in reply.words)
        else:
            events = [self._role(None)]
            events.extend(self.thought(word) for word in reply.reasoning)
            for index, call in enumerate(reply.tool_calls):
                opening = {"index": index, "id": call.id, "type": "function",
                           "function": {"name": call.name, "arguments": ""}}
                events.append(self.delta({"tool_calls": [opening]}))
                size = max(1, -(-len(call.arguments) // 4))
                for start in range(0, len(call.arguments), size):
                    fragment = call.arguments[start : start + size]
                    events.append(self.delta(
                        {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
                    ))
        events.append(self.delta({}, reply.finish_reason))
        return events

    def error(self, message: str) -> bytes:
        """A mid-stream error: OpenRouter's error chunk, or OpenAI's bare ``error`` event."""
        if self._flavor == "openrouter":
            chunk = {
                **self._head,
                "error": {"code": 502, "message": message},
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error",
                             "native_finish_reason": "error"}],
            }
            return b"data: " + dumps(chunk) + b"\n\n"
        error = {"message": message, "type": "server_error", "param": None, "code": None}
        return b"data: " + dumps({"error": error}) + b"\n\n"
