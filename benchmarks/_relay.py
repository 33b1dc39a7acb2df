"""The floor of ``benchmarks/streams.py``: a bare Starlette WebSocket relay, no actors.

For each chat frame it streams the upstream through the openai SDK's plain-data path
(``client.post(..., cast_to=object, stream=True, stream_cls=openai.AsyncStream[object])``) on the
product's own HTTP client (``actors.llm._http_pool.provider_http_client``, on the transport
``--transport`` names: httpx2's pool or the SDK's aiohttp one) and forwards each text delta as one
``chunk`` envelope of the chat protocol (``processing`` first, ``complete`` last). Served by
uvicorn with the product's options (its WebSocket protocol, no per-message deflate). What the
product adds on top of this is its own cost.

Run: ``python -m benchmarks._relay --upstream http://127.0.0.1:PORT/v1 --model M
[--transport aiohttp]``; it prints ``relay listening on http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from actors.llm._http_pool import Transport, provider_http_client
from server._ws_protocol import WS_PROTOCOL


def _app(upstream: str, model: str, connections: int, transport: Transport) -> Starlette:
    http = provider_http_client(
        limits=httpx2.Limits(max_connections=connections,
                             max_keepalive_connections=connections, keepalive_expiry=30),
        timeout=httpx2.Timeout(60, connect=10), transport=transport)
    client = openai.AsyncOpenAI(base_url=upstream, api_key="no-key-required", http_client=http,
                                max_retries=0)

    async def turn(ws: WebSocket, frame: dict[str, Any]) -> None:
        request_id = frame.get("request_id", "")
        text = frame.get("payload", {}).get("text", "")
        await ws.send_text(json.dumps({"request_id": request_id, "status": "processing",
                                       "chunk": {"metadata": {"user_message": text}}}))
        stream = await client.post(
            "/chat/completions",
            body={"model": model, "messages": [{"role": "user", "content": text}],
                  "stream": True, "stream_options": {"include_usage": True}},
            cast_to=object, stream=True, stream_cls=openai.AsyncStream[object])
        usage: Any = None
        async with stream:
            async for chunk in stream:
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        await ws.send_text(json.dumps({
                            "request_id": request_id, "status": "chunk",
                            "chunk": {"type": "text", "data": delta, "metadata": {}}}))
        await ws.send_text(json.dumps({"request_id": request_id, "status": "complete",
                                       "chunk": {"metadata": {"usage": usage}}}))

    async def chat(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                frame = json.loads(await ws.receive_text())
                await turn(ws, frame)
        except WebSocketDisconnect:
            return

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.close()

    return Starlette(routes=[WebSocketRoute("/ws/chat", chat)], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--connections", type=int, default=512)
    parser.add_argument("--transport", choices=("httpx2", "aiohttp"), default="httpx2")
    parser.add_argument("--ws", default=WS_PROTOCOL,
                        help="uvicorn's WebSocket protocol (default: the product's)")
    options = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)  # before the banner: a client may connect as soon as it reads it
    config = uvicorn.Config(_app(options.upstream, options.model, options.connections,
                                 options.transport),
                            log_config=None, log_level="warning", ws_per_message_deflate=False,
                            ws=options.ws, lifespan="on", server_header=False)
    print(f"relay listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
