"""A stand-in server for the chat page's browser tests: the page, its static files, and scripted
answers on ``/ws/chat`` and ``/api/models`` in the server's wire contract.

``python -m tests.chat_page_app`` prints ``chat page app listening on http://127.0.0.1:PORT``
and serves until SIGTERM. What a message asks for decides the answer:

- ``markdown``: a table, a fenced code block, a list and a link, in small deltas;
- ``inject``: raw ``<img onerror>`` and ``<script>`` markup and a ``javascript:`` link;
- ``reason``: reasoning deltas, then a pause until ``POST /_test/release`` (at most 10 s), then
  text, more reasoning, more text;
- anything else: ``Echo: <text>``.

``GET /_test/payloads`` lists the chat payloads received, in order.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

STATIC = Path(__file__).resolve().parents[2] / "server" / "static"
MODELS = {
    "models": [
        {"provider": "openai", "model": "gpt-4o-mini"},
        {"provider": "openai", "model": "o4-mini"},
        {"provider": "openrouter", "model": "deepseek/deepseek-r1"},
    ],
    "default": "gpt-4o-mini",
}
MARKDOWN = (
    "Here is a table:\n\n| name | value |\n|------|-------|\n| alpha | 1 |\n| beta | 2 |\n\n"
    "And code:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
    "- first item\n- second item\n\nSee [the docs](https://example.com/docs)."
)
INJECTION = (
    'Look: <img src="x" onerror="window.__pwned = \'img\'"> and '
    "<script>window.__pwned = 'script'</script> and "
    "[click me](javascript:window.__pwned='link') done."
)
RELEASE_TIMEOUT = 10.0


def _pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class Script:
    """The scripted conversation state shared by the routes."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.release = anyio.Event()

    async def answer(self, websocket: WebSocket, request_id: str, payload: dict[str, Any]) -> None:
        async def send(status: str, chunk: dict[str, Any]) -> None:
            await websocket.send_json({"request_id": request_id, "status": status,
                                       "chunk": chunk})

        async def text(data: str) -> None:
            for piece in _pieces(data):
                await send("chunk", {"type": "text", "data": piece})

        async def reasoning(data: str) -> None:
            for piece in _pieces(data):
                await send("chunk", {"type": "reasoning", "data": piece})

        message = str(payload.get("text", ""))
        await send("processing", {"metadata": {"user_message": message}})
        usage: dict[str, Any] = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        if message == "markdown":
            await text(MARKDOWN)
        elif message == "inject":
            await text(INJECTION)
        elif message == "reason":
            await reasoning("First I consider the question.")
            with anyio.move_on_after(RELEASE_TIMEOUT):
                await self.release.wait()
            self.release = anyio.Event()
            await text("The **answer** is 42.")
            await reasoning("Then I double-check it.")
            await text(" Checked.")
            usage["reasoning_tokens"] = 9
        else:
            await text(f"Echo: {message}")
        await send("complete", {"model": payload.get("model", MODELS["default"]),
                                "provider": "test", "usage": usage})


def create_app() -> Starlette:
    script = Script()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "simulated": False, "auth_required": False})

    async def models(request: Request) -> Response:
        return JSONResponse(MODELS)

    async def payloads(request: Request) -> Response:
        return JSONResponse(script.payloads)

    async def release(request: Request) -> Response:
        script.release.set()
        return JSONResponse({"ok": True})

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                frame = await websocket.receive_json()
                if frame.get("action") != "chat":
                    continue
                payload = frame.get("payload") or {}
                script.payloads.append(payload)
                await script.answer(websocket, str(frame.get("request_id")), payload)
        except WebSocketDisconnect:
            return

    return Starlette(routes=[
        Route("/", index),
        Route("/health", health),
        Route("/api/models", models),
        Route("/_test/payloads", payloads),
        Route("/_test/release", release, methods=["POST"]),
        WebSocketRoute("/ws/chat", chat),
        Mount("/static", StaticFiles(directory=STATIC)),
    ])


def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until uvicorn serves the socket
    port = sock.getsockname()[1]
    print(f"chat page app listening on http://127.0.0.1:{port}", flush=True)
    config = uvicorn.Config(create_app(), log_level="warning", ws="websockets")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
