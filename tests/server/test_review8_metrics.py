"""Review 8: ``/metrics`` against a hostile upstream and an unauthenticated poll flood.

An upstream may answer every request with a fresh ``model`` name: the labels are the models we
asked for (review 9), here 33 configured ones, which makes the body ~350 kB, ~40 ms of the event
loop per render. Polled in a loop by a few keep-alive connections (no token is needed on
loopback), those renders held every chat turn for as long as the flood lasted.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest
import yaml

from actors.metrics._store import MAX_MODEL_LABELS
from tests.chaos.upstream import GarbageUpstream, Reply, sse
from tests.server.test_monitoring import Scrape
from tests.server_harness import (
    ServerChild,
    chat,
    chat_frame,
    connect,
    http_get,
    send,
    until_end,
    write_config,
)

FLOOD_CONNECTIONS = 8
FLOOD_SECONDS = 3.0
MAX_TURNS = 1000
MODELS = ["gpt-4o-mini", *(f"m-{i:032x}" for i in range(MAX_MODEL_LABELS))]
"""The configured models a turn may choose: one label each (as long as the names of old)."""


def _answer(model: str) -> Reply:
    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
        return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    usage = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model,
             "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                                      "total_tokens": 6}}
    return Reply(content_type="text/event-stream", chunked_stream=True,
                 body=sse([chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop"),
                           usage]))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _poll(port: int, until: float) -> int:
    """GET /metrics on one keep-alive connection as fast as answered until ``until``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    polls = 0
    try:
        while time.monotonic() < until:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            assert head.startswith("http/1.1 200")
            length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
            await reader.readexactly(length)
            polls += 1
    finally:
        writer.close()
    return polls


@pytest.mark.anyio
async def test_a_metrics_poll_flood_does_not_hold_chat_turns_up(tmp_path: Path) -> None:
    async with GarbageUpstream() as upstream:
        path = write_config(
            tmp_path, simulator_url=upstream.base_url.removesuffix("/v1"), mcp_servers={},
            # 80 turns, then as many as fit in the flood: more than the socket's default 120
            # messages a minute, whose refusal is not what this test is about.
            server={"max_messages_per_minute": MAX_TURNS})
        config = yaml.safe_load(path.read_text())
        config["llm"]["providers"]["sim"].update(
            fallback_models=MODELS[1:],
            prices={model: {"input": 0.15, "output": 0.6} for model in MODELS[1:]})
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        server = ServerChild(path)
        try:
            async with await connect(server.ws_url) as ws:
                sizes = []
                for rounds in (40, 40):
                    for turn in range(rounds):
                        upstream.stream_reply = _answer(f"m-{uuid.uuid4().hex}")
                        frame = chat_frame("hello")
                        frame["payload"]["model"] = MODELS[turn % len(MODELS)]
                        await send(ws, frame)
                        frames = await until_end(ws, frame["request_id"])
                        assert frames[-1]["status"] == "complete", frames[-1]
                    status, _, body = http_get(server.url + "/metrics")
                    assert status == 200
                    sizes.append(len(body))
                # A fresh name in every answer: the labels are the models asked for.
                models = {labels["model"] for labels in
                          Scrape(body).labels_of("mcp_backend_llm_requests_total")}
                assert models == set(MODELS)
                assert sizes[1] - sizes[0] < 200, sizes

                cpu = _cpu_seconds(server.pid)
                until = time.monotonic() + FLOOD_SECONDS
                flood = [asyncio.ensure_future(_poll(server.port, until))
                         for _ in range(FLOOD_CONNECTIONS)]
                await asyncio.sleep(0.5)
                turns: list[float] = []
                while time.monotonic() < until - 0.5 and len(turns) < MAX_TURNS - 80:
                    upstream.stream_reply = _answer("m-flood")
                    started = time.monotonic()
                    frames = await chat(ws, "hello")
                    assert frames[-1]["status"] == "complete", frames
                    turns.append(time.monotonic() - started)
                polls = sum(await asyncio.gather(*flood))
                cpu = _cpu_seconds(server.pid) - cpu
        finally:
            assert server.stop() == 0, server.output
    # Every poll is answered, and the renders are bounded to a small share of the loop: each
    # poll costs the server a few milliseconds on average, not a render of ~40 ms.
    assert polls >= 50, polls
    assert cpu / polls < 0.010, (cpu, polls)
    # Turns ran during the flood, none held for long.
    assert len(turns) >= 3, turns
    assert max(turns) < 1.0, turns
