"""One step of the tool loop: run the model's tool calls in parallel and make their tool messages.

Every call yields a tool message, whatever happens to it (unknown tool, invalid arguments, error,
timeout, server down: ``actors.mcp.ToolCatalog`` turns each into a result), capped at
``max_result_chars`` with a note to the model. Events reach the caller through ``send``:
every :class:`ToolCallStarted` first, then one :class:`ToolCallFinished` per call as it ends.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio

from actors.llm import ToolCall
from actors.mcp import ToolCatalog

from ._messages import ToolCallFinished, ToolCallStarted

__all__ = ["run_tool_calls"]

Message = dict[str, Any]

_PREVIEW_CHARS: Final = 200


async def run_tool_calls(
    calls: list[ToolCall],
    *,
    tools: ToolCatalog,
    timeout: float,
    max_result_chars: int,
    send: Callable[[ToolCallStarted | ToolCallFinished], Awaitable[None]],
) -> list[Message]:
    """Run ``calls`` in parallel, each within ``timeout``; their tool messages, in call order.

    Cancellation cancels every call still running.
    """
    results: list[Message] = [{} for _ in calls]
    started: list[ToolCallStarted] = []
    for call in calls:
        spec = tools.lookup(call.name)
        event = ToolCallStarted(
            call_id=call.id,
            server=spec.server if spec is not None else "",
            tool=spec.name if spec is not None else call.name,
            arguments=_arguments_of(call.arguments),
        )
        started.append(event)
        await send(event)

    async def run(index: int, call: ToolCall) -> None:
        begun = anyio.current_time()
        _, result = await tools.call(call.name, call.arguments, timeout)
        content = _capped(result.as_tool_message_content(), max_result_chars)
        if result.is_error and not content.startswith("Error"):
            content = f"Error: {content}"
        results[index] = {"role": "tool", "tool_call_id": call.id, "content": content}
        event = started[index]
        await send(
            ToolCallFinished(
                call_id=call.id,
                server=event.server,
                tool=event.tool,
                is_error=result.is_error,
                result_preview=result.preview(_PREVIEW_CHARS),
                duration_ms=round((anyio.current_time() - begun) * 1000.0, 1),
            )
        )

    async with anyio.create_task_group() as task_group:
        for index, call in enumerate(calls):
            task_group.start_soon(run, index, call)
    return results


def _capped(content: str, limit: int) -> str:
    """``content`` cut to ``limit`` characters, with a note saying so to the model."""
    if len(content) <= limit:
        return content
    return (
        content[:limit]
        + f"\n\n[Tool result truncated: it had {len(content)} characters; only the first"
        f" {limit} are shown. Ask the tool for less, or for a part, if you need more.]"
    )


def _arguments_of(arguments: str) -> Any:
    """The parsed JSON object of a call's arguments, or the model's text when it is not one."""
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except (json.JSONDecodeError, RecursionError):
        return arguments
    return parsed if isinstance(parsed, dict) else arguments
