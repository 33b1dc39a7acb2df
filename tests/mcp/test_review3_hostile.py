"""What a hostile (or broken) MCP server sends that the SDK's own servers never do: raw JSON-RPC
lines from ``tests/mcp/raw_server.py``, through the real actors, catalog and session."""

from __future__ import annotations

import json
import re
import sys
import tracemalloc
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from actors.mcp import (
    McpServerConfig,
    McpServerHealth,
    ToolCatalog,
    ToolLimits,
    ToolResult,
    mcp_supervisor_spec,
)
from actors.mcp._errors import McpServerError
from actors.mcp._redact import redact_server_text
from actors.mcp._session import open_mcp_session
from runtime import ActorSystem, SupervisorSpec

ROOT = Path(__file__).resolve().parents[2]


def raw_server(mode: str, size: int = 0) -> McpServerConfig:
    return McpServerConfig(
        command=sys.executable, args=["-m", "tests.mcp.raw_server", mode, str(size)],
        cwd=str(ROOT), call_timeout=10,
    )


@asynccontextmanager
async def mcp_system(servers: Mapping[str, McpServerConfig]) -> AsyncIterator[ActorSystem]:
    async with ActorSystem(SupervisorSpec("root", [mcp_supervisor_spec(servers)])) as system:
        yield system


def health(system: ActorSystem, server: str) -> McpServerHealth:
    state = system.durable(f"mcp:{server}")
    assert isinstance(state, McpServerHealth)
    return state


async def wait_ready(system: ActorSystem, server: str) -> None:
    with anyio.fail_after(15):
        while health(system, server).state != "ready":
            await anyio.sleep(0.02)


async def test_a_result_that_breaks_the_protocol_is_a_tool_error_and_the_server_keeps_serving(
) -> None:
    # The SDK raised its pydantic ValidationError from call_tool, untranslated: it ended the
    # session task, so one malformed answer restarted the server and failed every call in flight.
    async with mcp_system({"raw": raw_server("malformed")}) as system:
        await wait_ready(system, "raw")
        pid = health(system, "raw").pid
        catalog = ToolCatalog(system, ["raw"])
        offered = await catalog.refresh()
        for _ in range(2):
            _, result = await offered.call("get", "{}", 5)
            assert result == ToolResult(
                text="Tool 'get' returned a result that breaks the MCP protocol"
                " (content: Input should be a valid list).",
                structured=None,
                is_error=True,
            )
        await anyio.sleep(0.6)  # past a liveness poll
        after = health(system, "raw")
        assert (after.state, after.pid, after.restarts) == ("ready", pid, 0)
        assert system.status()["mcp:raw"].restart_count == 0


async def test_a_tool_list_that_breaks_the_protocol_fails_the_start_with_its_reason() -> None:
    # It crashed the actor ("session task ended unexpectedly" and pydantic's whole report, with
    # the server's values, in /health), a supervisor restart loop instead of a failed start.
    async with mcp_system({"raw": raw_server("scalar")}) as system:
        with anyio.fail_after(15):
            while health(system, "raw").state != "failed":
                await anyio.sleep(0.02)
        error = health(system, "raw").error
        assert error is not None
        assert re.fullmatch(
            r"MCP server 'raw' failed to initialize: its answer breaks the MCP protocol"
            r" \(tools\.1\.inputSchema\.type: Input should be 'object'\); retrying in [0-9.]+ s",
            error,
        ), error
        assert system.status()["mcp:raw"].restart_count == 0


async def test_a_tool_whose_input_schema_is_too_big_is_not_offered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Descriptions were cut, but the input schema (descriptions of its own included) went out
    # whole with every request of every conversation: one server's 1 MB schema put every turn
    # over the model's context window (the router's count includes the tools).
    async with mcp_system({"raw": raw_server("bloated", 1_000_000)}) as system:
        await wait_ready(system, "raw")
        catalog = ToolCatalog(system, ["raw"])
        offered = await catalog.refresh()
        assert [tool["function"]["name"] for tool in offered.openai_tools()] == ["get"]
        assert offered.limits == ToolLimits(
            offered=1, omitted=(), descriptions_cut=(), schemas_refused=("bloated",)
        )
        assert offered.limits.as_dict()["schemas_refused"] == ["bloated"]
        assert [r.getMessage() for r in caplog.records if r.name == "actors.mcp._tools"] == [
            "MCP tools: offering 1 of 2 (at most 128 per request); left out: none;"
            " descriptions cut to 1024 characters: none;"
            " input schemas over 16384 characters, left out: bloated"
        ]
        spec, result = await offered.call("bloated", "{}", 5)
        assert spec is None
        assert result == ToolResult(
            text="Unknown tool 'bloated'. Available tools: get.", structured=None, is_error=True
        )
        _, result = await offered.call("get", "{}", 5)
        assert result == ToolResult(text="ok", structured=None, is_error=False)


async def test_an_input_schema_at_the_limit_is_offered() -> None:
    async with mcp_system({"raw": raw_server("bloated", 100)}) as system:
        await wait_ready(system, "raw")
        schema = health(system, "raw").tools[1].input_schema
        size = len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")))
        offered = await ToolCatalog(system, ["raw"], max_schema_chars=size).refresh()
        assert sorted(offered.exposed) == ["bloated", "get"]
        offered = await ToolCatalog(system, ["raw"], max_schema_chars=size - 1).refresh()
        assert sorted(offered.exposed) == ["get"]


async def test_a_message_over_max_message_bytes_ends_the_session_and_the_server_restarts(
) -> None:
    # The SDK's reader re-joined the unfinished line with every 64 KiB read: O(n²) CPU on the
    # event loop (a 16 MB result: 4.4 s; 64 MB: over a minute) and memory without bound (a
    # server writing without a newline grew it forever).
    async with mcp_system({"raw": raw_server("huge", 17_000_000)}) as system:
        await wait_ready(system, "raw")
        pid = health(system, "raw").pid
        offered = await ToolCatalog(system, ["raw"]).refresh()
        started = anyio.current_time()
        _, result = await offered.call("get", "{}", 10)
        assert result == ToolResult(
            text="Tool 'get' could not run: its MCP server 'raw' is unavailable (wrote a message"
            " longer than max_message_bytes (16777216 bytes)). Try again later or answer"
            " without it.",
            structured=None,
            is_error=True,
        )
        assert anyio.current_time() - started < 5
        with anyio.fail_after(15):
            while health(system, "raw").state != "ready" or health(system, "raw").pid == pid:
                await anyio.sleep(0.02)
        assert health(system, "raw").restarts == 1


async def test_a_message_of_max_message_bytes_is_read_and_one_byte_more_is_not() -> None:
    fits = raw_server("line", 4096).model_copy(update={"max_message_bytes": 4096})
    async with open_mcp_session("raw", fits) as session:
        result = await session.call_tool("get", {})
        assert result.text == "x" * (4096 - 100)  # the line less its 100-byte JSON-RPC frame
    over = raw_server("line", 4097).model_copy(update={"max_message_bytes": 4096})
    async with open_mcp_session("raw", over) as session:
        with pytest.raises(McpServerError, match=(
            r"^MCP server 'raw' wrote a message longer than max_message_bytes \(4096 bytes\)$"
        )):
            await session.call_tool("get", {})


async def test_a_line_over_max_message_bytes_at_start_up_is_the_start_up_failure() -> None:
    code = "import time; print('x' * 2000, flush=True); time.sleep(30)"
    config = McpServerConfig(
        command=sys.executable, args=["-c", code], max_message_bytes=1024, startup_timeout=10
    )
    started = anyio.current_time()
    with pytest.raises(McpServerError, match=(
        r"^MCP server 'raw' wrote a message longer than max_message_bytes \(1024 bytes\)$"
    )):
        async with open_mcp_session("raw", config):
            pytest.fail("the session must not open")
    assert anyio.current_time() - started < 8  # not the start-up timeout


async def test_stdout_garbage_is_logged_once_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The SDK logged every line that is not JSON-RPC with logger.exception: a traceback and
    # pydantic's report quoting the line (a server printing its token to stdout put it in our
    # logs), kilobytes of log per line of garbage.
    code = (
        "import runpy\n"
        "for _ in range(200): print('token=sk-live-abcdef123456 is not JSON', flush=True)\n"
        "runpy.run_module('server.demo_mcp_server', run_name='__main__')\n"
    )
    config = McpServerConfig(command=sys.executable, args=["-c", code], cwd=str(ROOT))
    caplog.set_level("DEBUG")
    async with open_mcp_session("noisy", config) as session:
        assert (await session.call_tool("add", {"a": 1, "b": 2})).text == "3.0"
    assert "sk-live" not in caplog.text
    assert [
        (r.levelname, r.getMessage()) for r in caplog.records if "JSON-RPC" in r.getMessage()
    ] == [(
        "WARNING",
        "MCP server 'noisy' wrote a line that is not a JSON-RPC message to stdout (38 bytes,"
        " not shown); this session's later ones are dropped without a word",
    )]


async def test_stderr_lines_logged_at_debug_are_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    code = (
        "import runpy, sys\n"
        "print('using s3cr3t-entry-value and sk-live1234567890', file=sys.stderr, flush=True)\n"
        "runpy.run_module('server.demo_mcp_server', run_name='__main__')\n"
    )
    config = McpServerConfig(
        command=sys.executable, args=["-c", code], cwd=str(ROOT),
        env={"UPSTREAM_SECRET": "s3cr3t-entry-value"},
    )
    caplog.set_level("DEBUG", logger="actors.mcp._stderr")
    async with open_mcp_session("chatty", config) as session:
        assert (await session.call_tool("add", {"a": 1, "b": 2})).text == "3.0"
    assert "s3cr3t" not in caplog.text and "sk-live" not in caplog.text
    assert "MCP server 'chatty' stderr: using [REDACTED] and [REDACTED]" in [
        r.getMessage() for r in caplog.records
    ]


async def test_a_schema_with_a_dangling_ref_lets_the_server_judge_the_arguments() -> None:
    # jsonschema raised its reference error out of the catalog's call: the tool step's task
    # group failed and the turn ended in an internal error instead of a tool result.
    async with mcp_system({"raw": raw_server("dangling-ref")}) as system:
        await wait_ready(system, "raw")
        offered = await ToolCatalog(system, ["raw"]).refresh()
        _, result = await offered.call("get", '{"a": 1}', 5)
        assert result == ToolResult(text="ok", structured=None, is_error=False)


async def test_pattern_properties_never_block_the_loop() -> None:
    # jsonschema matches patternProperties with ``re``, which holds the GIL and has no time
    # limit: a model-made key froze every task of the process (the ``pattern`` keyword was
    # already matched without the GIL and under a deadline).
    async with mcp_system({"raw": raw_server("pattern-keys")}) as system:
        await wait_ready(system, "raw")
        offered = await ToolCatalog(system, ["raw"]).refresh()
        gaps: list[float] = []

        async def tick() -> None:
            for _ in range(1000):
                before = anyio.current_time()
                await anyio.sleep(0.01)
                gaps.append(anyio.current_time() - before)

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            _, result = await offered.call("get", json.dumps({"a" * 38 + "b": 1}), 5)
            tg.cancel_scope.cancel()
        assert result == ToolResult(text="ok", structured=None, is_error=False)
        assert anyio.current_time() - started < 3
        assert max(gaps, default=0.0) < 1


async def test_unique_items_are_checked_in_linear_time() -> None:
    # jsonschema compares objects (or mixed types) pairwise: 50 KB of model-made arguments took
    # 45 s of a worker thread, beyond any timeout (a tool call's bounds only its server's part).
    async with mcp_system({"raw": raw_server("unique")}) as system:
        await wait_ready(system, "raw")
        offered = await ToolCatalog(system, ["raw"]).refresh()
        items: list[object] = [{"k": i} for i in range(4000)]
        started = anyio.current_time()
        _, result = await offered.call("get", json.dumps({"a": items}), 5)
        assert result == ToolResult(text="ok", structured=None, is_error=False)
        assert anyio.current_time() - started < 3
        for same in ([{"k": 1, "j": [1]}, {"j": [1.0], "k": 1}], [1, "1", 1.0]):
            _, result = await offered.call("get", json.dumps({"a": same}), 5)
            assert result == ToolResult(
                text="Invalid arguments for tool 'get': 'a': has non-unique elements.",
                structured=None,
                is_error=True,
            )
        _, result = await offered.call("get", json.dumps({"a": [[True], [1], 0, False]}), 5)
        assert result == ToolResult(text="ok", structured=None, is_error=False)


async def test_a_check_that_would_outlast_its_deadline_fails_the_arguments_at_the_deadline(
) -> None:
    async with mcp_system({"raw": raw_server("exponential")}) as system:
        await wait_ready(system, "raw")
        offered = await ToolCatalog(system, ["raw"], validation_seconds=1.0).refresh()
        _, result = await offered.call("get", json.dumps({"a": [[[]]]}), 5)
        assert result == ToolResult(text="ok", structured=None, is_error=False)
        started = anyio.current_time()
        deep = "[" * 18 + "]" * 18  # 2**18 checks: about 16 s
        _, result = await offered.call("get", f'{{"a": {deep}}}', 5)
        assert result == ToolResult(
            text="Invalid arguments for tool 'get': they could not be checked in time. Send"
            " smaller or simpler arguments.",
            structured=None,
            is_error=True,
        )
        assert anyio.current_time() - started < 3


def test_a_preview_of_a_big_result_reads_only_its_beginning() -> None:
    # preview() split the whole result into words to keep 200 characters: a 15 MB result of
    # short words took 360 MB and 0.7 s of the event loop (the tool step makes one per call).
    result = ToolResult(text="ab\n\t " * 3_000_000, structured=None, is_error=False)
    tracemalloc.start()
    try:
        preview = result.preview(200)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert preview == "ab " * 66 + "a…"
    assert peak < 100_000
    assert ToolResult(text=" a  b\u2003c\x1fd ", structured=None, is_error=False).preview(7) == (
        "a b c d"
    )
    assert ToolResult(text="a b c d e", structured=None, is_error=False).preview(8) == "a b c d…"
    assert ToolResult(text="", structured={"k": "v  w"}, is_error=False).preview() == (
        '{"k": "v w"}'
    )


async def test_many_tools_of_one_name_are_named_in_linear_time() -> None:
    # Each duplicate tried every suffix taken before it: quadratic, on the event loop (a server
    # listing 8000 tools named x froze the process for 20 s at the first refresh).
    async with mcp_system({"raw": raw_server("same-name", 10_000)}) as system:
        await wait_ready(system, "raw")
        started = anyio.current_time()
        offered = await ToolCatalog(system, ["raw"]).refresh()
        assert anyio.current_time() - started < 3
        assert list(offered.exposed) == ["get", "x", *(f"x_{n}" for n in range(2, 128))]
        assert offered.limits.omitted == tuple(f"x_{n}" for n in range(128, 10_001))


async def test_a_long_error_message_is_redacted_in_linear_time() -> None:
    # The secret-name pattern could start at every word boundary and scan the whole run of name
    # characters from each: quadratic, on the event loop (20 KB of 'a.a.a.' took 26 s; a server
    # may send megabytes).
    async with mcp_system({"raw": raw_server("error", 20_000)}) as system:
        await wait_ready(system, "raw")
        offered = await ToolCatalog(system, ["raw"]).refresh()
        started = anyio.current_time()
        _, result = await offered.call("get", "{}", 5)
        assert result == ToolResult(
            text="Tool 'get' was rejected by the server: " + "a." * 10_000,
            structured=None,
            is_error=True,
        )
        assert anyio.current_time() - started < 2


def test_server_text_beyond_the_limit_is_cut_before_the_word_the_cut_falls_in() -> None:
    config = McpServerConfig(command="x", env={"UPSTREAM_SECRET": "s3cr3t-entry-value"})
    # The cut falls in the key: the word goes, not a piece too short to look like a key.
    said = "s3cr3t-entry-value " + "word " * 13_100 + "sk-live-abcdef1234567890abcdefghijkl more"
    assert redact_server_text(said, config) == "[REDACTED] " + "word " * 13_100 + "…[cut]"
    assert redact_server_text("x" * 70_000, config) == "…[cut]"
    assert redact_server_text("API_KEY=hunter2hunter2 x.db.password: 'abcd1234'", config) == (
        "API_KEY=[REDACTED] x.db.password: '[REDACTED]'"
    )


async def test_a_server_error_of_code_32000_is_a_tool_error_not_a_dead_server() -> None:
    # -32000 is JSON-RPC's first "server error" code, and the SDK's code for a closed
    # connection: a server answering a call with it was taken for dead and restarted, every
    # call in flight failing with it.
    async with mcp_system({"raw": raw_server("server-error")}) as system:
        await wait_ready(system, "raw")
        pid = health(system, "raw").pid
        offered = await ToolCatalog(system, ["raw"]).refresh()
        for _ in range(2):
            _, result = await offered.call("get", "{}", 5)
            assert result == ToolResult(
                text="Tool 'get' was rejected by the server: database unavailable",
                structured=None,
                is_error=True,
            )
        await anyio.sleep(0.6)  # past a liveness poll
        after = health(system, "raw")
        assert (after.state, after.pid, after.restarts) == ("ready", pid, 0)


async def test_arguments_holding_a_lone_surrogate_fail_the_call_not_the_session() -> None:
    # A model's split \u escape decodes to a lone surrogate: UTF-8 cannot carry it, and writing
    # the request ended the session, failing every call in flight on that server (any
    # conversation's) until it restarted.
    demo = McpServerConfig(command=sys.executable, args=["-m", "server.demo_mcp_server"],
                           cwd=str(ROOT), call_timeout=10)
    async with mcp_system({"demo": demo}) as system:
        await wait_ready(system, "demo")
        pid = health(system, "demo").pid
        offered = await ToolCatalog(system, ["demo"]).refresh()
        with anyio.fail_after(10):
            _, refused = await offered.call("echo", '{"text": "a\\ud800b"}', 5)
            _, echoed = await offered.call("echo", '{"text": "ab"}', 5)
        assert refused.is_error is True
        assert refused.text == ("Invalid arguments for tool 'echo': they hold text that is not"
                                " valid Unicode (a lone surrogate, U+D800). Send the text without"
                                " it.")
        assert (echoed.is_error, echoed.text) == (False, "ab")
        after = health(system, "demo")
        assert (after.state, after.pid, after.restarts) == ("ready", pid, 0)


@pytest.mark.parametrize("limit", [2, 16])
async def test_a_server_runs_at_most_max_concurrent_calls_at_once(limit: int) -> None:
    # The raw server answers what it holds every 0.3 s, saying how many it answered together:
    # never more than the limit reach it at once; the others wait in the actor's queue. (Five
    # calls made together reach it together under a higher limit: what the low one stops.)
    config = raw_server("batches").model_copy(update={"max_concurrent_calls": limit})
    async with mcp_system({"raw": config}) as system:
        await wait_ready(system, "raw")
        offered = await ToolCatalog(system, ["raw"]).refresh()
        texts: list[str] = []

        async def call() -> None:
            texts.append((await offered.call("get", "{}", 10))[1].text)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                for _ in range(5):
                    task_group.start_soon(call)
        counts = [int(text.removeprefix("in flight: ")) for text in texts]
        assert len(counts) == 5
        if limit == 2:
            assert max(counts) <= 2
        else:
            assert max(counts) >= 3
