"""Review 6: over streamable HTTP, the connection pool holds what a server's calls need at once.

Each running call holds one connection (its POST's answer, or the GET resuming it), beside up to
:data:`MAX_ONE_WAY_POSTS` replies and notifications and the session's own requests. httpx's
default pool has 100 connections: with ``max_concurrent_calls`` 110, the calls past the 100th
waited for a connection, and a call that waited past its timeout failed.
"""

from __future__ import annotations

import inspect
import time

import anyio
import httpx2

from actors.mcp import McpServerConfig
from actors.mcp._http import MAX_ONE_WAY_POSTS, SPARE_CONNECTIONS, connection_limits
from actors.mcp._session import open_mcp_session

CALLS = 110
SLEEP = 2.0
"""Each call's tool sleeps this long: a call that waited for another's connection took twice."""
CALL_TIMEOUT = 3.5


def test_the_pool_holds_every_call_the_one_way_posts_and_the_sessions_own_requests() -> None:
    config = McpServerConfig(url="http://127.0.0.1:1/mcp", max_concurrent_calls=CALLS)
    limits = connection_limits(config)
    assert (limits.max_connections, limits.max_keepalive_connections) == (
        CALLS + MAX_ONE_WAY_POSTS + SPARE_CONNECTIONS,) * 2
    assert (SPARE_CONNECTIONS, limits.keepalive_expiry) == (4, 5.0)
    before = inspect.signature(httpx2.AsyncClient).parameters["limits"].default
    assert (before.max_connections, before.max_keepalive_connections) == (100, 20)


async def test_max_concurrent_calls_past_a_hundred_all_run_at_once(demo_http_url: str) -> None:
    config = McpServerConfig(url=demo_http_url, max_concurrent_calls=CALLS,
                             call_timeout=CALL_TIMEOUT)
    ended: list[float] = []
    failed: list[BaseException] = []
    async with open_mcp_session("web", config) as session:

        async def call() -> None:
            try:
                result = await session.call_tool("sleep", {"seconds": SLEEP})
            except Exception as exc:  # counted: the assertion names what failed
                failed.append(exc)
            else:
                assert result.text == f"slept {SLEEP:g} s"
                ended.append(time.monotonic() - started)

        started = time.monotonic()
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                for _ in range(CALLS):
                    group.start_soon(call)
    assert [type(exc).__name__ for exc in failed] == []
    assert len(ended) == CALLS
    print(f"{CALLS} calls: first ended {min(ended):.2f} s, last {max(ended):.2f} s")
    assert max(ended) < CALL_TIMEOUT, max(ended)  # none waited for another's connection
