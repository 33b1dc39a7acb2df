"""actors.chat._tool_steps against a real catalog and the demo MCP server over stdio."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from actors.chat import ToolCallFinished, ToolCallStarted
from actors.chat._tool_steps import run_tool_calls
from actors.llm import ToolCall
from actors.mcp import McpServerConfig, McpServerHealth, ToolCatalog, mcp_supervisor_spec
from runtime import ActorSystem, SupervisorSpec

ROOT = Path(__file__).resolve().parents[2]
DEMO = McpServerConfig(
    command=sys.executable, args=["-m", "server.demo_mcp_server"], cwd=str(ROOT), call_timeout=10
)


async def test_calls_of_one_step_beyond_the_limit_are_answered_without_running() -> None:
    # Only the model's output limit bounded a step's calls: hundreds ran at once on the
    # servers and all their results joined the next request.
    async with ActorSystem(SupervisorSpec("root", [mcp_supervisor_spec({"demo": DEMO})])) as system:
        with anyio.fail_after(15):
            while not (isinstance(h := system.durable("mcp:demo"), McpServerHealth)
                       and h.state == "ready"):
                await anyio.sleep(0.02)
        offered = await ToolCatalog(system, ["demo"]).refresh()
        calls = [ToolCall(id=f"c{i}", name="echo", arguments=f'{{"text": "{i}"}}')
                 for i in range(40)]
        events: list[ToolCallStarted | ToolCallFinished] = []

        async def send(event: ToolCallStarted | ToolCallFinished) -> None:
            events.append(event)

        messages = await run_tool_calls(
            calls, tools=offered, timeout=10, max_result_chars=1000, send=send
        )
    not_run = (
        "Error: Not run: at most 32 tool calls run in one step. Call the others in your next"
        " step if you still need them."
    )
    assert messages == [
        {"role": "tool", "tool_call_id": f"c{i}", "content": str(i) if i < 32 else not_run}
        for i in range(40)
    ]
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [e.call_id for e in started] == [f"c{i}" for i in range(40)]
    assert sorted(e.call_id for e in finished) == sorted(f"c{i}" for i in range(40))
    assert {e.call_id for e in finished if e.is_error} == {f"c{i}" for i in range(32, 40)}
