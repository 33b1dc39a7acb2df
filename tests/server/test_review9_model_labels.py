"""Review 9: no upstream chooses the ``model`` label of ``/metrics``.

The label was the model name the upstream answered: one answering every request with a fresh name
took the 32 labels kept for unconfigured models in 32 requests, for the life of the process. A
real server in front of an upstream of our own that does exactly that; then a turn on a second
configured model, answered under a dated name and under a fresh one.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chaos.upstream import GarbageUpstream, Reply, sse
from tests.server.test_monitoring import Scrape
from tests.server_harness import (
    ServerChild,
    chat_frame,
    connect,
    http_get,
    send,
    until_end,
    write_config,
)

HOSTILE_TURNS = 40


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


async def _turn(ws: Any, model: str | None = None) -> None:
    frame = chat_frame("hello")
    if model is not None:
        frame["payload"]["model"] = model
    await send(ws, frame)
    frames = await until_end(ws, frame["request_id"])
    assert frames[-1]["status"] == "complete", frames[-1]


def _requests_by_label(server: ServerChild, total: int) -> dict[tuple[str, str], float]:
    """``mcp_backend_llm_requests_total`` by ``(provider, model)``, once it counts ``total``."""
    deadline = time.monotonic() + 5.0
    while True:
        status, _, body = http_get(server.url + "/metrics")
        assert status == 200
        counts: dict[tuple[str, str], float] = {}
        for sample in Scrape(body).samples:
            if sample.name == "mcp_backend_llm_requests_total":
                key = (sample.labels["provider"], sample.labels["model"])
                counts[key] = counts.get(key, 0.0) + sample.value
        if sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


@pytest.mark.anyio
async def test_an_upstream_answering_fresh_model_names_creates_no_label(tmp_path: Path) -> None:
    path = write_config(tmp_path, simulator_url="http://127.0.0.1:9", mcp_servers={})
    config = yaml.safe_load(path.read_text())
    async with GarbageUpstream() as upstream:
        config["llm"]["providers"]["sim"].update(
            base_url=upstream.base_url, fallback_models=["gpt-4o"])
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        server = ServerChild(path)
        try:
            async with await connect(server.ws_url) as ws:
                for _ in range(HOSTILE_TURNS):
                    upstream.stream_reply = _answer(f"m-{uuid.uuid4().hex}")
                    await _turn(ws)
                # The second configured model, answered under a dated name, then a fresh one.
                upstream.stream_reply = _answer("gpt-4o-2024-08-06")
                await _turn(ws, "gpt-4o")
                upstream.stream_reply = _answer(f"m-{uuid.uuid4().hex}")
                await _turn(ws, "gpt-4o")
                # The configured default answered under its own name.
                upstream.stream_reply = _answer("gpt-4o-mini")
                await _turn(ws)
            counts = _requests_by_label(server, HOSTILE_TURNS + 3)
        finally:
            assert server.stop() == 0, server.output
    assert counts == {("sim", "gpt-4o-mini"): HOSTILE_TURNS + 1, ("sim", "gpt-4o"): 2}
