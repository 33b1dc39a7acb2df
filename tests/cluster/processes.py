"""Helpers of the cluster tests that run real ``serve --workers`` processes.

Bounded waits on the real clock (process start-up, heartbeats), one turn on a fresh socket, a
burst of concurrent turns, and reads of the shared state with ``redis-cli``.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import anyio

from tests.redis_server import RedisServer
from tests.server_harness import ServerChild, connect, until_end

T = TypeVar("T")

__all__ = ["health_of", "redis_cli", "redis_hash", "turn", "turns", "wait_for"]


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll ``predicate`` every 0.1 s until it returns a true value (raises after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def health_of(child: ServerChild) -> dict[str, Any]:
    """``/health``, or ``{}`` while no worker accepts yet (workers start in parallel, slowly)."""
    try:
        return child.health()
    except OSError:
        return {}


async def turn(url: str, text: str, conversation_id: str | None = None,
               **payload: Any) -> tuple[str, str]:
    """One turn on a new socket: ``("complete", "")`` or ``("error", <error type>)``."""
    ws = await connect(url)
    try:
        request_id = uuid.uuid4().hex
        body: dict[str, Any] = {"text": text, "streaming": True, "metadata": {}, **payload}
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        await ws.send(json.dumps({"action": "chat", "request_id": request_id, "payload": body}))
        envelopes = await until_end(ws, request_id)
    finally:
        await ws.close()
    last = envelopes[-1]
    if last["status"] != "error":
        return last["status"], ""
    return "error", str(last["chunk"].get("error_type", ""))


async def turns(urls: list[str], count: int, prefix: str = "load") -> list[tuple[str, str]]:
    """``count`` concurrent turns, each in a new conversation, spread over ``urls``."""
    results: list[tuple[str, str]] = []

    async def one(index: int) -> None:
        results.append(await turn(urls[index % len(urls)], f"{prefix} {index}"))

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)
    return sorted(results)


def redis_cli(redis_server: RedisServer, *args: str) -> list[str]:
    """The output lines of one ``redis-cli`` command against the test's server."""
    out = subprocess.run(["redis-cli", "-p", str(redis_server.port), *args],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return [line for line in out.splitlines() if line]


def redis_hash(redis_server: RedisServer, key: str) -> Mapping[str, str]:
    """``HGETALL key`` as a dict."""
    lines = redis_cli(redis_server, "HGETALL", key)
    return dict(zip(lines[::2], lines[1::2], strict=True))

