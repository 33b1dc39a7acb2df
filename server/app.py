"""The Starlette application: ``create_app(config)``, its routes and its metrics.

Its lifespan runs the backend (server/_backend.py: the simulator in demo mode, the actor system
with the LLM runtime, the MCP servers and the conversations). Routes:

- ``GET /``: the chat page (its vendored scripts under ``/static``); ``GET /health``: overall, per
  provider and per MCP server state, and which tools are offered; ``GET /metrics``: Prometheus
  text; ``GET /api/models``: the configured models and the default; ``WS /ws/chat``: the chat
  protocol (server/protocol.py).

Authentication: when a token is configured (``server.auth_token`` or the variable named by
``server.auth_token_env``), a WebSocket must present it as ``Authorization: Bearer`` or
``?token=`` (compared in constant time) or is closed with 1008; ``/metrics`` and ``/api/models``
need it too, and
``/health`` then shows details only to authorized callers. Binding a non-loopback address without
a token is refused before the app is built (``server.cli.check_bind``). Every route answers only
an allowed ``Host`` and browsers may open a socket only from loopback pages or
``server.allowed_origins`` (server/guard.py: the DNS-rebinding defence). Every HTTP response
carries the page's security headers (a Content-Security-Policy among them: server/guard.py).
At most ``server.max_connections`` chat sockets are open at once; another is closed with 1013
(try again later) right after its handshake. A ``/metrics`` body is reused for a while after it
was rendered (:class:`_MetricsBody`), so however often it is polled its renders take a small
share of the event loop.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from actors.mcp import mcp_status
from runtime import Clock
from server._backend import Backend, _lifespan
from server.cluster import ClusterCollector, ClusterNode
from server.config import AppConfig
from server.conversations import owner_of_token
from server.guard import HostAllowlist, HostGuard, SecurityHeaders, origin_allowed
from server.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    ChatConnection,
    ChatHub,
    ConnectionLimits,
)

__all__ = ["Backend", "create_app"]

STATIC = Path(__file__).parent / "static"


# -- routes -------------------------------------------------------------------------------------


def _presented_token(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return connection.query_params.get("token") or None


def _authorized(connection: HTTPConnection, token: SecretStr | None) -> bool:
    if token is None:
        return True
    presented = _presented_token(connection)
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), token.get_secret_value().encode())


class _ServerCollector(Collector):
    """Server-side metrics: sockets, turns by outcome, rejected frames."""

    def __init__(self, hub: ChatHub, app: Starlette) -> None:
        self._hub = hub
        self._app = app

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        yield GaugeMetricFamily(
            "mcp_backend_websockets_open", "Open chat WebSocket connections",
            value=len(hub.connections),
        )
        yield CounterMetricFamily(
            "mcp_backend_websockets", "Chat WebSocket connections accepted",
            value=hub.connections_total,
        )
        yield CounterMetricFamily(
            "mcp_backend_websockets_refused",
            "Chat WebSocket connections refused: server.max_connections were open",
            value=hub.connections_refused,
        )
        yield GaugeMetricFamily(
            "mcp_backend_turns_in_flight", "Chat turns running", value=hub.turns_in_flight
        )
        turns = CounterMetricFamily(
            "mcp_backend_turns", "Chat turns ended, by outcome", labels=["outcome"]
        )
        for outcome, count in sorted(hub.turns_total.items()):
            turns.add_metric([outcome], count)
        yield turns
        rejected = CounterMetricFamily(
            "mcp_backend_frames_rejected", "WebSocket frames rejected, by reason", labels=["reason"]
        )
        for reason, count in sorted(hub.frames_rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        backend: Backend | None = getattr(self._app.state, "backend", None)
        yield GaugeMetricFamily(
            "mcp_backend_conversations", "Conversations with a live session actor",
            value=len(backend.conversations) if backend is not None else 0,
        )


class _MetricsBody:
    """The ``/metrics`` body, rendered again only once the last one is older than
    :attr:`REUSE` times what rendering it took.

    Rendering runs on the event loop and grows with the series: ~40 ms for the 32 model names an
    upstream may choose (actors/metrics), and loopback callers need no token, so a few
    connections polling in a loop held every chat turn for as long as they polled. Reused this
    way, renders take at most ~1/REUSE of the loop, and a cheap body (~1 ms) is never more than
    a few tens of milliseconds old, and none more than :attr:`MAX_AGE`. What a render took is
    this thread's CPU time (a process descheduled mid-render does not stretch the window); the
    age is real time (``perf_counter``), whatever clock the actors run on.
    """

    REUSE = 20.0
    MAX_AGE = 2.0

    def __init__(self, render: Callable[[], bytes]) -> None:
        self._render = render
        self._body = b""
        self._fresh_until = float("-inf")

    def get(self) -> bytes:
        """The current body (rendered now, or reused)."""
        if time.perf_counter() < self._fresh_until:
            return self._body
        cpu = time.thread_time()
        self._body = self._render()
        cost = time.thread_time() - cpu
        self._fresh_until = time.perf_counter() + min(cost * self.REUSE, self.MAX_AGE)
        return self._body


def create_app(
    config: AppConfig, *, simulator_url: str | None = None, clock: Clock | None = None
) -> Starlette:
    """The application for ``config``; the backend starts in its lifespan.

    ``simulator_url``: in demo mode, use this running simulator (shared by the workers of
    ``serve --workers``) instead of starting one. ``clock``: the one clock of the actor system,
    session sweeps and per-connection rate limits (default: the real one).
    """
    hub = ChatHub(max_connections=config.server.max_connections)
    limits = ConnectionLimits(
        max_message_bytes=config.server.max_message_bytes,
        max_messages_per_minute=config.server.max_messages_per_minute,
        max_concurrent_turns=config.server.max_concurrent_turns,
        max_conversations_per_socket=config.server.max_conversations_per_socket,
        max_turns_in_flight=config.server.max_turns_in_flight,
        # Every hop may use the whole LLM budget and every tool round its timeout; beyond that
        # a turn is stuck, and the client gets a typed timeout instead of silence.
        turn_timeout=(config.chat.max_tool_hops + 1) * config.llm.request_timeout
        + config.chat.max_tool_hops * config.chat.tool_timeout + 30.0,
    )
    token = config.server.read_auth_token()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def health(request: Request) -> Response:
        backend: Backend = request.app.state.backend
        history = await anyio.to_thread.run_sync(backend.history.health)
        body = _health(backend, hub, token is not None, request.app.state, history)
        if not _authorized(request, token):
            body = {k: body[k] for k in ("status", "simulated", "auth_required")}
        return JSONResponse(body, status_code=503 if body["status"] == "failing" else 200)

    async def metrics(request: Request) -> Response:
        if not _authorized(request, token):
            return Response("unauthorized\n", status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
        return Response(metrics_body.get(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(request: Request) -> Response:
        if not _authorized(request, token):
            return Response("unauthorized\n", status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
        backend: Backend = request.app.state.backend
        return JSONResponse({"models": backend.models, "default": backend.default_model})

    async def chat(websocket: WebSocket) -> None:
        if not origin_allowed(websocket.headers.get("origin"), config.server.allowed_origins):
            await _refuse(websocket, CLOSE_POLICY_VIOLATION, "origin not allowed")
            return
        if not _authorized(websocket, token):
            await _refuse(websocket, CLOSE_POLICY_VIOLATION, "unauthorized")
            return
        if hub.draining:
            await _refuse(websocket, CLOSE_GOING_AWAY, "server shutting down")
            return
        if not hub.admit():
            await _refuse(websocket, CLOSE_TRY_AGAIN_LATER,
                          f"more than {hub.max_connections} connections; try again later")
            return
        try:
            backend: Backend = websocket.app.state.backend
            await websocket.accept()
            connection = ChatConnection(
                websocket,
                hub=hub,
                conversations=backend.conversations,
                owners=backend.owners,
                owner=owner_of_token(token),
                limits=limits,
                models=[entry["model"] for entry in backend.models],
                clock=backend.runtime.system.clock,
            )
            await connection.run()
        finally:
            hub.left()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/api/models", models),
            WebSocketRoute("/ws/chat", chat),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=_lifespan(config, hub, simulator_url, clock),
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                HostGuard,
                allowlist=HostAllowlist([config.server.host, *config.server.allowed_hosts]),
            ),
        ],
    )
    app.state.hub = hub
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_ServerCollector(hub, app))
    registry.register(ClusterCollector(app))

    def render_metrics() -> bytes:
        backend: Backend = app.state.backend
        return backend.runtime.prometheus_text() + generate_latest(registry)

    metrics_body = _MetricsBody(render_metrics)
    return app


async def _refuse(websocket: WebSocket, code: int, reason: str) -> None:
    # Accept first: a close before the handshake becomes a bare HTTP 403, and the client could
    # not tell a bad token (1008: ask the user) from a server going away (1001: retry).
    await websocket.accept()
    await websocket.close(code, reason)


def _health(backend: Backend, hub: ChatHub, auth_required: bool,
            app_state: Any, history: dict[str, Any]) -> dict[str, Any]:
    runtime_health = backend.runtime.health()
    mcp = mcp_status(backend.runtime.system)
    status = runtime_health["status"]  # "failing" already when the ledger is down
    if history["state"] != "ok":
        status = "failing"  # no turn can be saved, so none completes
    if status == "ok" and any(server.get("state") != "ready" for server in mcp.values()):
        status = "degraded"
    if hub.draining:
        status = "degraded" if status == "ok" else status
    cluster: ClusterNode | None = getattr(app_state, "cluster", None)
    extra: dict[str, Any] = {}
    if cluster is not None:
        extra["cluster"] = cluster.health()
        if not extra["cluster"]["redis"]["ok"]:
            status = "failing"  # budgets and rate limits fail closed: no request can be served
    return {
        "status": status,
        "simulated": backend.simulated,
        "auth_required": auth_required,
        "draining": hub.draining,
        "uptime_seconds": round(time.monotonic() - backend.started_at, 1),
        "providers": runtime_health["providers"],
        "ledger": runtime_health["ledger"],
        "history": history,
        "mcp_servers": mcp,
        "tools": backend.tools.limits.as_dict(),
        "connections": {
            "websockets": len(hub.connections),
            "turns_in_flight": hub.turns_in_flight,
            "conversations": len(backend.conversations),
        },
        **extra,
    }
