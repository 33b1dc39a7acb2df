"""End to end: a server bound to 0.0.0.0 requires its token (clients connect via loopback)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat,
    connect,
    http_get,
    receive,
    server_env,
    write_config,
)

TOKEN = "test-token-5f1d0c9e7a"


@pytest.fixture(scope="module")
def public_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerChild]:
    directory = tmp_path_factory.mktemp("auth")
    simulator = SimulatorChild(directory=directory)
    config = write_config(directory, simulator_url=simulator.url, mcp_servers={},
                          server={"host": "0.0.0.0"})
    server = ServerChild(config, env={"MCP_BACKEND_TOKEN": TOKEN})
    yield server
    try:
        assert server.stop() == 0, server.output
        assert TOKEN not in server.output  # not even in the access log of ?token= requests
    finally:
        simulator.stop()


def test_non_loopback_bind_without_a_token_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, simulator_url="http://127.0.0.1:9", mcp_servers={},
                          server={"host": "0.0.0.0"})
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=30, env=server_env(),
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "refusing to listen on 0.0.0.0, which is not a loopback address, without an auth token:"
        " set MCP_BACKEND_TOKEN (or server.auth_token) or bind to 127.0.0.1"
    )


async def _closed_code(url: str, **kwargs: object) -> int:
    ws = await connect(url, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConnectionClosed) as closed:
        await receive(ws, timeout=5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_socket_without_a_token_is_closed_with_1008(public_server: ServerChild) -> None:
    assert await _closed_code(public_server.ws_url) == 1008


async def test_socket_with_a_wrong_token_is_closed_with_1008(public_server: ServerChild) -> None:
    assert await _closed_code(public_server.ws_url, token="wrong-token") == 1008
    assert await _closed_code(public_server.ws_url, token=TOKEN[:-1]) == 1008


async def test_bearer_header_and_query_token_are_accepted(public_server: ServerChild) -> None:
    async with await connect(public_server.ws_url, token=TOKEN) as ws:
        assert (await chat(ws, "by header"))[-1]["status"] == "complete"
    async with await connect(public_server.ws_url, token=TOKEN, query_token=True) as ws:
        assert (await chat(ws, "by query"))[-1]["status"] == "complete"


async def test_foreign_origin_is_closed_with_1008_even_with_the_token(
    public_server: ServerChild,
) -> None:
    code = await _closed_code(public_server.ws_url, token=TOKEN, origin="https://evil.example")
    assert code == 1008
    async with await connect(public_server.ws_url, token=TOKEN,
                             origin="http://localhost:3000") as ws:
        assert (await chat(ws, "from a loopback page"))[-1]["status"] == "complete"


async def test_health_hides_details_and_metrics_need_the_token(public_server: ServerChild) -> None:
    assert public_server.health() == {"status": "ok", "simulated": False, "auth_required": True}
    assert "providers" in public_server.health(token=TOKEN)
    status, _, _ = http_get(public_server.url + "/metrics")
    assert status == 401
    status, _, body = http_get(public_server.url + "/metrics",
                               headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert "mcp_backend_websockets_open" in body


