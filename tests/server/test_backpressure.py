"""End to end: a client that stops reading, through the deltas' shortcut to the writer.

The deltas of a streaming turn go from the provider's reading task straight into the
connection's bounded outbox (``ChatRequest.deltas``), skipping the router's and the session's
streams. Here: the text that queued up while the client did not read arrives whole and joined,
and a closed socket stops the upstream stream. That a sink which does not take the next delta
holds the upstream read is proven in ``tests/llm/test_delta_sink.py`` (over a real socket the
kernel's autotuned buffers, up to 32 MB here, absorb a whole answer before the outbox fills).
A real server, a real simulator, a real WebSocket client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat_frame,
    connect,
    receive,
    send,
    until_end,
    write_config,
)

MODEL = "gpt-4o-mini"
WORDS = 60_000  # ~12 MB of SSE upstream, ~4 MB of frames: more than the socket buffers hold
PAUSE_SECONDS = 3.0


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorChild]:
    sim = SimulatorChild({"models": {MODEL: {"context_window": 128_000, "reply_words": WORDS}}},
                         directory=tmp_path_factory.mktemp("sim"))
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           simulator: SimulatorChild) -> Iterator[ServerChild]:
    directory: Path = tmp_path_factory.mktemp("server")
    path = write_config(directory, simulator_url=simulator.url, model=MODEL)
    config = yaml.safe_load(path.read_text())
    # A fresh upstream connection per turn: a reused one has grown its socket buffers.
    config["llm"]["providers"]["sim"].update(max_tokens=WORDS + 1000, keepalive_expiry=0)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    child = ServerChild(path)
    yield child
    assert child.stop() == 0, child.output


def _streams(simulator: SimulatorChild) -> dict[str, Any]:
    streams: dict[str, Any] = simulator.stats()["streams"]
    return streams


async def _until(simulator: SimulatorChild, key: str, at_least: int) -> None:
    with anyio.fail_after(10):
        # Polling another process's counter: there is no event to wait on.
        while _streams(simulator)[key] < at_least:
            await anyio.sleep(0.05)


async def until_end_of(ws: Any, frame: dict[str, Any]) -> str:
    """Send ``frame`` and return the text of its answer."""
    await send(ws, frame)
    envelopes = await until_end(ws, frame["request_id"], timeout=60)
    assert envelopes[-1]["status"] == "complete"
    return "".join(e["chunk"]["data"] for e in envelopes if e["status"] == "chunk")


async def test_a_client_that_pauses_gets_the_whole_answer_joined(
    server: ServerChild, simulator: SimulatorChild
) -> None:
    before = _streams(simulator)
    async with await connect(server.ws_url, max_size=2**24) as ws:
        frame = chat_frame("hold on")
        await send(ws, frame)
        assert (await receive(ws))["status"] == "processing"
        first = await receive(ws)
        assert first["status"] == "chunk"
        await anyio.sleep(PAUSE_SECONDS)  # not reading: the deltas queue up
        envelopes = await until_end(ws, frame["request_id"], timeout=60)
    async with await connect(server.ws_url, max_size=2**24) as ws:  # a new conversation
        whole = await until_end_of(ws, chat_frame("hold on", streaming=False))
    assert envelopes[-1]["status"] == "complete"
    texts = [e["chunk"]["data"] for e in envelopes if e["status"] == "chunk"]
    # The same answer as the one sent whole (the first piece was read before the stall) ...
    assert first["chunk"]["data"] + "".join(texts) == whole
    # ... and what queued up while the client was not reading went out joined, not a frame a
    # word (the simulator streams one word a chunk).
    completion_tokens = envelopes[-1]["chunk"]["usage"]["completion_tokens"]
    assert len(texts) < completion_tokens - 1
    await _until(simulator, "completed", before["completed"] + 1)


async def test_closing_a_socket_that_stopped_reading_stops_the_upstream_stream(
    server: ServerChild, simulator: SimulatorChild
) -> None:
    simulator.configure(faults={"chunk_delay": 0.002})  # 60,000 words: two minutes
    before = _streams(simulator)
    ws = await connect(server.ws_url, max_size=2**24)
    await send(ws, chat_frame("hold on"))
    assert (await receive(ws))["status"] == "processing"
    assert (await receive(ws))["status"] == "chunk"
    await anyio.sleep(1.0)  # not reading
    assert _streams(simulator)["open"] == before["open"] + 1
    await ws.close()
    simulator.configure(faults={"chunk_delay": 0.0})
    await _until(simulator, "aborted_by_client", before["aborted_by_client"] + 1)
    after = _streams(simulator)
    assert after["open"] == before["open"]
    assert after["completed"] == before["completed"]
