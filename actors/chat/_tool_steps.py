"""One step of the tool loop: run the model's tool calls in parallel and make their tool messages.

Every call yields a tool message, whatever happens to it (unknown tool, invalid arguments, error,
timeout, server down: ``actors.mcp.ToolCatalog`` turns each into a result), capped at
``max_result_chars`` with a note to the model. At most :data:`MAX_CALLS_PER_STEP` calls of one
step run; the others are answered at once with an error asking for them in the next step.
Events reach the caller through ``send``: every :class:`ToolCallStarted` first, then one
:class:`ToolCallFinished` per call as it ends.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio

from actors.llm import ToolCall
from actors.mcp import ToolCatalog, ToolResult

from ._messages import ToolCallFinished, ToolCallStarted

__all__ = ["MAX_CALLS_PER_STEP", "run_tool_calls"]

Message = dict[str, Any]

_PREVIEW_CHARS: Final = 200

#: Calls of one model answer that run. Only the model's output limit bounds how many it asks
#: for: hundreds would all run at once on third-party servers, and their results (each up to
#: ``max_result_chars``) would all join the next request.
MAX_CALLS_PER_STEP: Final = 32

_NOT_RUN: Final = ToolResult(
    text=f"Not run: at most {MAX_CALLS_PER_STEP} tool calls run in one step. Call the others"
    " in your next step if you still need them.",
    structured=None,
    is_error=True,
)


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
        if index < MAX_CALLS_PER_STEP:
            _, result = await tools.call(call.name, call.arguments, timeout)
        else:
            result = _NOT_RUN
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
