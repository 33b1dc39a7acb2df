"""McpServerActor and ToolCatalog against real MCP servers over stdio (demo and mcp-server-time)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp.client.stdio import get_default_environment

from actors.mcp import (
    McpServerConfig,
    McpServerHealth,
    McpStatus,
    ToolCatalog,
    ToolResult,
    mcp_status,
    mcp_supervisor_spec,
)
from actors.mcp._errors import McpServerError, McpToolTimeout
from actors.mcp._messages import CallTool, GetMcpStatus, ListTools
from actors.mcp._supervision import INTENSITY_WINDOW, SUPERVISOR_BACKOFF, max_restarts_per_child
from runtime import (
    ActorCrashed,
    ActorSystem,
    Backoff,
    DeadlineExceeded,
    SupervisorSpec,
)
from runtime.testing import FakeClock
from tests.mcp.hostile_server import BOMB

ROOT = Path(__file__).resolve().parents[2]
TIME_SERVER = Path(sys.executable).parent / "mcp-server-time"
DEMO = McpServerConfig(
    command=sys.executable, args=["-m", "server.demo_mcp_server"], cwd=str(ROOT), call_timeout=10
)
BROKEN = McpServerConfig(command="/nonexistent/mcp-server")
DEMO_TOOLS = {"add", "echo", "get_weather", "current_time", "sleep", "fail", "structured_stats",
              "pid"}


@asynccontextmanager
async def mcp_system(servers: Mapping[str, McpServerConfig]) -> AsyncIterator[ActorSystem]:
    async with ActorSystem(SupervisorSpec("root", [mcp_supervisor_spec(servers)])) as system:
        yield system


def health(system: ActorSystem, server: str) -> McpServerHealth:
    state = system.durable(f"mcp:{server}")
    assert isinstance(state, McpServerHealth)
    return state


async def wait_state(
    system: ActorSystem, server: str, state: str, within: float = 15.0
) -> McpStatus:
    with anyio.fail_after(within):
        while health(system, server).state != state:
            await anyio.sleep(0.02)
    return health(system, server).snapshot()


async def test_ready_server_lists_its_tools_and_reports_its_status() -> None:
    async with mcp_system({"demo": DEMO}) as system:
        await wait_state(system, "demo", "ready")
        ref = system.ref("mcp:demo")
        tools = await ref.ask(ListTools(), timeout=5)
        assert {tool.name for tool in tools} == DEMO_TOOLS
        assert all(tool.server == "demo" for tool in tools)
        status = await ref.ask(GetMcpStatus(), timeout=5)
        assert status == health(system, "demo").snapshot()
        assert (status.name, status.state, status.error, status.tools, status.restarts) == (
            "demo", "ready", None, 8, 0,
        )
        assert status.pid is not None
        assert mcp_status(system)["demo"]["state"] == "ready"
        assert set(mcp_status(system)["demo"]["tools"]) == DEMO_TOOLS


async def test_call_tool_answers_the_result_and_an_is_error_result_is_a_result() -> None:
    async with mcp_system({"demo": DEMO}) as system:
        await wait_state(system, "demo", "ready")
        ref = system.ref("mcp:demo")
        added = await ref.ask(CallTool("add", {"a": 2, "b": 3}), timeout=10)
        assert added == ToolResult(text="5.0", structured={"result": 5.0}, is_error=False)
        failed = await ref.ask(CallTool("fail", {"message": "disk on fire"}), timeout=10)
        assert failed.is_error
        assert failed.text.endswith("disk on fire")


async def test_concurrent_calls_run_in_parallel() -> None:
    async with mcp_system({"demo": DEMO}) as system:
        await wait_state(system, "demo", "ready")
        ref = system.ref("mcp:demo")
        results: list[str] = []

        async def nap() -> None:
            result = await ref.ask(CallTool("sleep", {"seconds": 0.5}), timeout=10)
            results.append(result.text)

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(nap)
        assert results == ["slept 0.5 s"] * 5
        assert anyio.current_time() - started < 2.0


async def test_slow_call_times_out_and_the_actor_keeps_serving() -> None:
    async with mcp_system({"demo": DEMO}) as system:
        await wait_state(system, "demo", "ready")
        ref = system.ref("mcp:demo")
        with pytest.raises(McpToolTimeout, match=r"^Tool 'sleep' did not answer within 0\.3 s"):
            await ref.ask(CallTool("sleep", {"seconds": 30}, timeout=0.3), timeout=10)
        assert (await ref.ask(CallTool("echo", {"text": "x"}), timeout=10)).text == "x"
        assert system.status()["mcp:demo"].restart_count == 0


async def test_abandoned_call_is_cancelled_and_leaves_nothing_in_flight() -> None:
    async with mcp_system({"demo": DEMO}) as system:
        await wait_state(system, "demo", "ready")
        ref = system.ref("mcp:demo")
        with pytest.raises(DeadlineExceeded):
            await ref.ask(CallTool("sleep", {"seconds": 30}), timeout=0.3)
        with anyio.fail_after(5):
            while system.status()["mcp:demo"].in_flight:
                await anyio.sleep(0.02)
        assert (await ref.ask(CallTool("echo", {"text": "y"}), timeout=10)).text == "y"


async def test_killed_server_is_restarted_and_serves_again() -> None:
    async with mcp_system({"demo": DEMO}) as system:
        first = await wait_state(system, "demo", "ready")
        assert first.pid is not None
        ref = system.ref("mcp:demo")
        errors: list[BaseException] = []

        async def in_flight() -> None:
            try:
                await ref.ask(CallTool("sleep", {"seconds": 30}), timeout=20)
            except (ActorCrashed, McpServerError) as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(in_flight)
            await anyio.sleep(0.3)
            os.kill(first.pid, signal.SIGKILL)
        assert len(errors) == 1  # the call in flight ended with a typed error, promptly
        second = await wait_state(system, "demo", "ready", within=10)
        assert second.pid not in (None, first.pid)
        assert second.restarts == 1
        assert system.status()["mcp:demo"].restart_count == 1
        result = await ref.ask(CallTool("pid", {}), timeout=10)
        assert result.structured == {"result": second.pid}


async def test_server_killed_between_calls_is_noticed_without_a_call() -> None:
    async with mcp_system({"demo": DEMO}) as system:
        first = await wait_state(system, "demo", "ready")
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        lost = await wait_state(system, "demo", "restarting", within=5)
        assert lost.error == f"process {first.pid} exited"
        assert lost.tools == 0
        second = await wait_state(system, "demo", "ready", within=10)
        assert second.pid != first.pid


async def test_broken_server_is_failed_with_its_reason_and_the_others_keep_serving() -> None:
    async with mcp_system({"broken": BROKEN, "demo": DEMO}) as system:
        failed = await wait_state(system, "broken", "failed")
        assert failed.error is not None
        assert failed.error.startswith(
            "MCP server 'broken' could not start: command not found: '/nonexistent/mcp-server';"
            " retrying in "
        )
        broken = system.ref("mcp:broken")
        assert await broken.ask(ListTools(), timeout=5) == []
        with pytest.raises(McpServerError, match=r"^MCP server 'broken' is unavailable: "):
            await broken.ask(CallTool("add", {"a": 1, "b": 2}), timeout=5)
        await wait_state(system, "demo", "ready")
        catalog = ToolCatalog(system, ["broken", "demo"])
        await catalog.refresh()
        assert set(catalog.exposed) == DEMO_TOOLS
        _, result = await catalog.call("add", '{"a": 1, "b": 1}', timeout=10)
        assert result.text == "2.0"
        assert mcp_status(system)["broken"]["state"] == "failed"
        assert system.failure is None


async def test_broken_server_retries_with_growing_backoff_and_never_escalates() -> None:
    clock = FakeClock()
    root = SupervisorSpec("root", [mcp_supervisor_spec({"broken": BROKEN, "demo": DEMO})])
    async with ActorSystem(root, clock=clock) as system:
        delays: list[float] = []
        for attempt in range(1, 13):
            with anyio.fail_after(10):
                while not (health(system, "broken").state == "failed" and clock.sleepers):
                    await anyio.sleep(0.005)
            error = health(system, "broken").error
            assert error is not None
            match = re.search(r"; retrying in ([0-9.]+) s$", error)
            assert match is not None
            delays.append(float(match.group(1)))
            assert health(system, "broken").restarts == attempt - 1
            await clock.advance(delays[-1] + 0.1)
        assert system.failure is None
        assert system.status()["mcp:broken"].restart_count == 0  # no crash, no supervisor restart
        assert 0.8 <= delays[0] <= 1.2
        assert all(later >= earlier * 0.6 for earlier, later in itertools.pairwise(delays))
        assert 24.0 <= delays[-1] <= 36.0  # capped at 30 s (with jitter)
        status = await wait_state(system, "demo", "ready")
        assert status.state == "ready"


async def test_start_up_failure_is_retried_with_backoff_until_it_works(tmp_path: Path) -> None:
    marker = tmp_path / "second-try"
    code = (
        "import pathlib, runpy, sys\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.touch(); print('first try fails', file=sys.stderr); sys.exit(1)\n"
        "runpy.run_module('server.demo_mcp_server', run_name='__main__')\n"
    )
    flaky = McpServerConfig(command=sys.executable, args=["-c", code], cwd=str(ROOT))
    async with mcp_system({"flaky": flaky}) as system:
        failed = await wait_state(system, "flaky", "failed")
        assert failed.error is not None and "first try fails" in failed.error
        ready = await wait_state(system, "flaky", "ready", within=10)
        assert ready.restarts == 1
        assert system.status()["mcp:flaky"].restart_count == 0  # retried inside, no crash


async def test_supervisor_intensity_covers_the_fastest_possible_crash_loop() -> None:
    assert max_restarts_per_child(SUPERVISOR_BACKOFF, INTENSITY_WINDOW) == 8
    fast = Backoff(initial=1.0, maximum=1.0, multiplier=1.0, jitter=0.0, reset_after=60.0)
    assert max_restarts_per_child(fast, 60.0) == 60
    spec = mcp_supervisor_spec({"a": DEMO, "b": DEMO, "off": DEMO.model_copy(
        update={"enabled": False})})
    assert [child.name for child in spec.children] == ["mcp:a", "mcp:b"]
    assert (spec.max_restarts, spec.max_seconds) == (16, 60.0)


# ---------------------------------------------------------------- the catalog


async def test_clashing_tool_names_are_prefixed_with_their_server() -> None:
    async with mcp_system({"one": DEMO, "two": DEMO}) as system:
        one = await wait_state(system, "one", "ready")
        two = await wait_state(system, "two", "ready")
        catalog = ToolCatalog(system, ["one", "two"])
        await catalog.refresh()
        assert set(catalog.exposed) == {f"{s}__{t}" for s in ("one", "two") for t in DEMO_TOOLS}
        names = [tool["function"]["name"] for tool in catalog.openai_tools()]
        assert names[:2] == ["one__add", "one__echo"]
        spec, result = await catalog.call("two__pid", "{}", timeout=10)
        assert spec is not None and spec.server == "two"
        assert result.structured == {"result": two.pid}
        _, result = await catalog.call("one__pid", "", timeout=10)
        assert result.structured == {"result": one.pid}


async def test_catalog_turns_tool_problems_into_error_results_for_the_model() -> None:
    async with mcp_system({"demo": DEMO}) as system:
        await wait_state(system, "demo", "ready")
        catalog = ToolCatalog(system, ["demo"])
        await catalog.refresh()
        spec, unknown = await catalog.call("nope", "{}", timeout=10)
        assert spec is None and unknown.is_error
        assert unknown.text.startswith("Unknown tool 'nope'. Available tools: add, current_time,")
        _, invalid = await catalog.call("add", '{"a": "two"}', timeout=10)
        assert invalid.is_error
        assert invalid.text == (
            "Invalid arguments for tool 'add': the arguments: 'b' is a required property;"
            " 'a' must be of type number, got string."
        )
        _, not_json = await catalog.call("add", "{a:", timeout=10)
        assert not_json.is_error and "not valid JSON" in not_json.text
        _, slow = await catalog.call("sleep", '{"seconds": 30}', timeout=0.3)
        assert slow == ToolResult(
            text="Tool 'sleep' did not answer within 0.3 s and was cancelled.",
            structured=None,
            is_error=True,
        )
        _, failed = await catalog.call("fail", '{"message": "nope"}', timeout=10)
        assert failed.is_error and failed.text.endswith("nope")


async def test_catalog_reports_a_dead_server_as_an_error_result() -> None:
    async with mcp_system({"demo": DEMO}) as system:
        status = await wait_state(system, "demo", "ready")
        assert status.pid is not None
        catalog = ToolCatalog(system, ["demo"])
        await catalog.refresh()
        offered = catalog.openai_tools()
        offered.clear()  # the caller's list: the catalog's own is untouched
        await catalog.refresh()  # nothing changed: the same tools
        assert len(catalog.openai_tools()) == len(DEMO_TOOLS)
        pid = status.pid

        async def kill_soon() -> None:
            await anyio.sleep(0.3)
            os.kill(pid, signal.SIGKILL)

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_soon)
            _, result = await catalog.call("sleep", '{"seconds": 5}', timeout=10)
        assert result.is_error
        assert result.text.startswith("Tool 'sleep' could not run: its MCP server 'demo' is"
                                      " unavailable (")
        await catalog.refresh()
        assert catalog.openai_tools() == []  # restarting: its tools are absent until ready
        await wait_state(system, "demo", "ready")
        await catalog.refresh()
        assert len(catalog.openai_tools()) == len(DEMO_TOOLS)  # and back once it is


@pytest.mark.anyio
async def test_a_turn_runs_the_tool_it_was_offered_after_another_turn_renamed_it() -> None:
    # notes' "read.file" and shell's "read_file" are both read_file once made valid: a clash,
    # so each is offered prefixed, until a refresh while notes restarts gives read_file to
    # shell. A turn offered the first names must still call notes' tool, and shell's.
    servers = {"notes": hostile("--pid-tool", "read.file"),
               "shell": hostile("--pid-tool", "read_file")}
    async with mcp_system(servers) as system:
        notes = await wait_state(system, "notes", "ready")
        shell = await wait_state(system, "shell", "ready")
        assert notes.pid is not None and shell.pid is not None
        catalog = ToolCatalog(system, ["notes", "shell"])
        offered = await catalog.refresh()  # turn X offers its model these names
        assert {name: (spec.server, spec.name) for name, spec in offered.exposed.items()
                if "read_file" in name} == {
            "notes__read_file": ("notes", "read.file"), "shell__read_file": ("shell", "read_file")}
        os.kill(notes.pid, signal.SIGKILL)
        await wait_state(system, "notes", "restarting")
        later = await catalog.refresh()  # another conversation's turn, while notes restarts
        assert {name: (spec.server, spec.name) for name, spec in later.exposed.items()
                if "read_file" in name} == {"read_file": ("shell", "read_file")}
        spec, result = await offered.call("notes__read_file", "{}", timeout=10)  # X's model
        restarted = health(system, "notes").pid
        assert spec is not None and (spec.server, spec.name) == ("notes", "read.file")
        assert result == ToolResult(
            text=str(restarted), structured={"result": restarted}, is_error=False
        )
        assert restarted not in (notes.pid, shell.pid)
        for turn, name in ((offered, "shell__read_file"), (later, "read_file")):
            _, result = await turn.call(name, "{}", timeout=10)
            assert result == ToolResult(
                text=str(shell.pid), structured={"result": shell.pid}, is_error=False
            )


@pytest.mark.skipif(not TIME_SERVER.exists(), reason="mcp-server-time is not installed")
async def test_third_party_time_server_through_the_catalog() -> None:
    time_server = McpServerConfig(command=str(TIME_SERVER), args=["--local-timezone", "UTC"])
    async with mcp_system({"demo": DEMO, "time": time_server}) as system:
        await wait_state(system, "demo", "ready")
        await wait_state(system, "time", "ready")
        catalog = ToolCatalog(system, ["demo", "time"])
        await catalog.refresh()
        assert {"get_current_time", "convert_time", "current_time"} <= set(catalog.exposed)
        spec, result = await catalog.call(
            "convert_time",
            '{"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}',
            timeout=10,
        )
        assert spec is not None and spec.server == "time"
        assert not result.is_error and "21:00" in result.as_tool_message_content()


def hostile(*args: str, env: dict[str, str] | None = None) -> McpServerConfig:
    return McpServerConfig(
        command=sys.executable, args=["-m", "tests.mcp.hostile_server", *args], cwd=str(ROOT),
        env=env or {}, call_timeout=10,
    )


async def test_stdio_server_gets_the_sdk_default_environment_and_its_own_env_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-parent-secret-never-shared")
    # LC_CTYPE given: Python would add it itself (PEP 538 locale coercion) without a locale.
    own = {"HOSTILE_FLAG": "on", "LC_CTYPE": "C.UTF-8"}
    async with mcp_system({"h": hostile(env=own)}) as system:
        await wait_state(system, "h", "ready")
        result = await system.ref("mcp:h").ask(CallTool("environment", {}), timeout=10)
    assert json.loads(result.text) == {**get_default_environment(), **own}


async def test_stderr_tail_in_health_is_redacted() -> None:
    said = (
        "connecting with s3cr3t-entry-value and s3cr3t-header-value, "
        "key sk-live1234567890 API_KEY=hunter2hunter2"
    )
    config = hostile(
        "--stderr", said, "--exit", env={"UPSTREAM_SECRET": "s3cr3t-entry-value", "N": "1"}
    ).model_copy(update={"headers": {"X-Auth": "s3cr3t-header-value"}})
    async with mcp_system({"h": config}) as system:
        status = await wait_state(system, "h", "failed")
        shown = mcp_status(system)["h"]["error"]
    assert status.error == shown
    assert re.fullmatch(
        r"MCP server 'h' exited during start-up; stderr tail: connecting with \[REDACTED\] and"
        r" \[REDACTED\], key \[REDACTED\] API_KEY=\[REDACTED\]; retrying in \d+\.\d s",
        shown,
    ), shown


async def test_regex_bomb_in_a_schema_fails_the_call_and_never_blocks_the_loop() -> None:
    async with mcp_system({"h": hostile()}) as system:
        await wait_state(system, "h", "ready")
        catalog = ToolCatalog(system, ["h"], validation_seconds=2.0)
        await catalog.refresh()
        assert catalog.exposed["match"].input_schema["properties"]["code"]["pattern"] == BOMB
        order: list[str] = []

        async def bomb() -> None:
            _, result = await catalog.call("match", json.dumps({"code": "a" * 40 + "b"}), 10)
            order.append("bomb")
            assert result == ToolResult(
                text=f"Invalid arguments for tool 'match': 'code': '{'a' * 39}…' could not be"
                " matched against '^(a|aa)+$' in time.",
                structured=None,
                is_error=True,
            )

        async def meanwhile() -> None:
            await anyio.sleep(0.2)  # the bomb is being matched now
            _, result = await catalog.call("big", '{"size": 8}', timeout=10)
            order.append(result.text)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(bomb)
                tg.start_soon(meanwhile)
        assert order == ["xxx<end>", "bomb"]
        _, fine = await catalog.call("match", '{"code": "aaaa"}', timeout=10)
        assert fine == ToolResult(text="aaaa", structured={"result": "aaaa"}, is_error=False)


async def test_arguments_larger_than_the_limit_are_refused_unparsed() -> None:
    async with mcp_system({"h": hostile()}) as system:
        await wait_state(system, "h", "ready")
        catalog = ToolCatalog(system, ["h"], max_argument_bytes=100)
        await catalog.refresh()
        _, result = await catalog.call("match", json.dumps({"code": "a" * 100}), timeout=10)
    assert result == ToolResult(
        text="Invalid arguments for tool 'match': larger than 100 bytes. Send shorter arguments.",
        structured=None,
        is_error=True,
    )


async def test_more_tools_than_openai_accepts_are_capped_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    many = hostile("--tools", "200", "--description-chars", "5000")
    async with mcp_system({"h": many}) as system:
        await wait_state(system, "h", "ready")
        catalog = ToolCatalog(system, ["h"], max_description_chars=100)
        await catalog.refresh()
        tools = catalog.openai_tools()
    names = ["environment", "match", "big", *(f"tool_{i:03d}" for i in range(200))]
    assert [tool["function"]["name"] for tool in tools] == names[:128]
    assert catalog.limits.offered == 128
    assert catalog.limits.omitted == tuple(names[128:])
    assert catalog.limits.descriptions_cut == tuple(names[3:128])
    assert tools[3]["function"]["description"] == "d" * 99 + "…"
    assert catalog.limits.as_dict()["omitted"][:2] == ["tool_125", "tool_126"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "actors.mcp._tools"]
    assert len(warnings) == 1
    assert warnings[0].startswith("MCP tools: offering 128 of 203 (at most 128 per request);")
