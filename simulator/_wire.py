"""Bodies as OpenAI and OpenRouter write them: completions, stream events, errors."""

from __future__ import annotations

import json
from typing import Any

from ._config import Flavor
from ._replies import Reply

__all__ = ["StreamEvents", "completion_body", "dumps", "error_body", "usage_of"]

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


def usage_of(flavor: Flavor, prompt: int, completion: int, cost: float) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if flavor == "openrouter":
        usage["cost"] = cost
    return usage


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
) -> bytes:
    """A non-streaming ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.tool_calls
        ]
    body = _head(flavor, completion_id, created, model, "chat.completion")
    body["choices"] = [
        {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
    ]
    body["usage"] = usage
    return dumps(body)


class StreamEvents:
    """The SSE events of one streamed completion, built from a pre-encoded prefix."""

    __slots__ = ("_flavor", "_head", "_prefix", "_suffix")

    def __init__(
        self, flavor: Flavor, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self._flavor = flavor
        self._head = _head(flavor, completion_id, created, model, "chat.completion.chunk")
        self._prefix = b"data: " + dumps(self._head)[:-1] + b',"choices":[{"index":0,"delta":'
        self._suffix = b"]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return (
            self._prefix + dumps(delta) + b',"logprobs":null,"finish_reason":'
            + dumps(finish_reason) + b"}" + self._suffix
        )

    def content(self, text: str) -> bytes:
        return (
            self._prefix + b'{"content":' + dumps(text) + b'},"logprobs":null,"finish_reason":null}'
            + self._suffix
        )

    def usage(self, usage: dict[str, Any]) -> bytes:
        return b"data: " + dumps({**self._head, "choices": [], "usage": usage}) + b"\n\n"

    def reply(self, reply: Reply) -> list[bytes]:
        """The role chunk, the content or tool-call chunks, and the finishing chunk."""
        if not reply.tool_calls:
            events = [self.delta({"role": "assistant", "content": "", "refusal": None})]
            events.extend(self.content(word) for word in reply.words)
        else:
            events = [self.delta({"role": "assistant", "content": None, "refusal": None})]
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
