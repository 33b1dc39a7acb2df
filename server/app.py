"""The Starlette application: ``create_app(config)`` and the lifespan that runs the backend.

The lifespan starts, in order: the simulator child process (demo mode only), then one actor
system holding the LLM runtime (metrics, ledger, providers, router), the MCP servers
(``mcp``) and the conversations (``sessions``, one temporary SessionActor per conversation). It
stops them in reverse order. Routes:

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
``server.allowed_origins`` (server/guard.py: the DNS-rebinding defence).
"""

from __future__ import annotations

import hmac
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
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

from actors.chat import HistoryStore, session_child_spec
from actors.llm import (
    LedgerUnavailable,
    LLMConfig,
    LLMRuntime,
    build_catalog,
    open_runtime,
)
from actors.mcp import McpServerConfig, ToolCatalog, mcp_status, mcp_supervisor_spec
from runtime import ChildSpec, Clock, SupervisorSpec
from server.cluster import ClusterCollector, ClusterNode, open_cluster
from server.config import AppConfig
from server.conversations import ConversationOwners, SessionDirectory, owner_of_token
from server.guard import HostAllowlist, HostGuard, origin_allowed
from server.simulated import run_simulator, simulated_llm_config, wants_simulator
from server.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    ChatConnection,
    ChatHub,
    ConnectionLimits,
)

__all__ = ["Backend", "create_app"]

logger = logging.getLogger("server")

STATIC = Path(__file__).parent / "static"
_STARTUP_POLL = 0.05


# -- the running backend ------------------------------------------------------------------------


@dataclass
class Backend:
    """What the lifespan started, for the routes to read."""

    runtime: LLMRuntime
    llm: LLMConfig
    simulated: bool
    conversations: SessionDirectory
    owners: ConversationOwners
    tools: ToolCatalog
    history: HistoryStore
    started_at: float = field(default_factory=time.monotonic)

    @property
    def models(self) -> list[dict[str, str]]:
        """Every configured model (``model`` and ``fallback_models``), per provider in the order
        they are tried, each once."""
        models: dict[str, str] = {}
        for name in self.llm.candidate_order():
            provider = self.llm.providers[name]
            for model in (provider.model, *provider.fallback_models):
                models.setdefault(model, name)
        return [{"provider": name, "model": model} for model, name in models.items()]

    @property
    def default_model(self) -> str:
        """The model a turn uses when it names none."""
        return self.llm.providers[self.llm.candidate_order()[0]].model


def _lifespan(config: AppConfig, hub: ChatHub, simulator_url: str | None,
              clock: Clock | None) -> Callable[[Starlette], Any]:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            llm = config.llm
            simulated = wants_simulator(config)
            if simulated:
                url = simulator_url if simulator_url is not None else (
                    await stack.enter_async_context(run_simulator(config.simulator.port)))
                llm = simulated_llm_config(config.llm, url)
                logger.warning(
                    "DEMO MODE: no provider has an API key (or simulator.enabled is 'always'):"
                    " answers come from the built-in simulator at %s, NOT a real model", url
                )
            elif not config.llm.providers_with_credentials():
                logger.warning("no provider has an API key and simulator.enabled is 'never':"
                               " every chat request will fail")
            servers = _mcp_servers(config)
            history = HistoryStore(config.chat.history_db)
            stack.callback(history.close)  # after the sessions stopped: they write to it
            owners = ConversationOwners(config.chat.history_db)
            stack.callback(owners.close)
            sessions = SupervisorSpec("sessions", [], max_restarts=1_000_000, max_seconds=1.0)
            cluster = await stack.enter_async_context(open_cluster(
                config.cluster, journal=llm.cost.db_path, lease_timeout=llm.request_timeout))
            app.state.cluster = cluster
            try:
                runtime = await stack.enter_async_context(open_runtime(
                    llm, extra_children=[mcp_supervisor_spec(servers), sessions],
                    shared=cluster.shared if cluster is not None else None, clock=clock))
            except LedgerUnavailable as exc:
                # ``serve`` prints this after uvicorn gave up, as the reason of exit code 1.
                app.state.startup_refused = str(exc)
                logger.error("cannot start: %s", exc)
                raise
            await _mcp_started(runtime, servers)
            tools = ToolCatalog(runtime.system, list(servers))
            await tools.refresh()  # logs, and shows in /health, tools beyond what is offered
            catalog = build_catalog(llm)
            # Trimming counts with the model a turn gets when it names none: one encoding.
            default_model = llm.providers[llm.candidate_order()[0]].model

            def spec_for(conversation_id: str) -> ChildSpec:
                return session_child_spec(
                    conversation_id,
                    router=runtime.router,
                    tools=tools,
                    history=history,
                    chat=config.chat,
                    catalog=catalog,
                    leases=cluster.leases if cluster is not None else None,
                    count_model=default_model,
                )

            conversations = SessionDirectory(
                runtime.system, spec_for, max_conversations=config.server.max_conversations,
                clock=runtime.system.clock,
            )
            app.state.backend = Backend(runtime, llm, simulated, conversations, owners, tools,
                                        history)
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(conversations.sweep)
                if cluster is not None:  # heartbeats from a worker that can serve
                    await cluster.beat()
                    task_group.start_soon(cluster.run)
                try:
                    yield
                finally:
                    task_group.cancel_scope.cancel()
                    # Normally the signal handler has drained already; a lifespan ended some
                    # other way still ends every turn properly before the actors stop.
                    with anyio.CancelScope(shield=True):
                        await hub.drain(config.server.shutdown_timeout)

    return lifespan


def _mcp_servers(config: AppConfig) -> dict[str, McpServerConfig]:
    """The enabled MCP servers; a bare ``python`` or ``python3`` command means this interpreter.

    MCP host configurations say ``python`` by convention, but ``make run`` starts
    ``.venv/bin/mcp-backend`` without activating the virtualenv, where ``python`` on PATH is some
    other interpreter without our packages: the demo server would not start out of the box.
    """
    servers = {}
    for name, entry in config.mcp_servers.items():
        if not entry.enabled:
            continue
        if entry.command in ("python", "python3"):
            entry = entry.model_copy(update={"command": sys.executable})
        servers[name] = entry
    return servers


async def _mcp_started(runtime: LLMRuntime, servers: dict[str, McpServerConfig]) -> None:
    """Wait until no MCP server is still starting (each within its ``startup_timeout``).

    Serving before would offer the first conversations no tools. A server that fails does not
    hold the start-up: it is reported in ``/health`` and keeps being retried.
    """
    if not servers:
        return
    limit = max(server.startup_timeout for server in servers.values())
    with anyio.move_on_after(limit):
        for _ in range(math.ceil(limit / _STARTUP_POLL)):
            states = {s.get("state") for s in mcp_status(runtime.system).values()}
            if "starting" not in states:
                return
            await anyio.sleep(_STARTUP_POLL)
    logger.warning("MCP servers still starting after %.0f s; serving without their tools", limit)


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


def create_app(
    config: AppConfig, *, simulator_url: str | None = None, clock: Clock | None = None
) -> Starlette:
    """The application for ``config``; the backend starts in its lifespan.

    ``simulator_url``: in demo mode, use this running simulator (shared by the workers of
    ``serve --workers``) instead of starting one. ``clock``: the one clock of the actor system,
    session sweeps and per-connection rate limits (default: the real one).
    """
    hub = ChatHub()
    limits = ConnectionLimits(
        max_message_bytes=config.server.max_message_bytes,
        max_messages_per_minute=config.server.max_messages_per_minute,
        max_concurrent_turns=config.server.max_concurrent_turns,
        max_conversations_per_socket=config.server.max_conversations_per_socket,
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
        backend: Backend = request.app.state.backend
        text = backend.runtime.prometheus_text() + generate_latest(registry)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

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
            Middleware(
                HostGuard,
                allowlist=HostAllowlist([config.server.host, *config.server.allowed_hosts]),
            )
        ],
    )
    app.state.hub = hub
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_ServerCollector(hub, app))
    registry.register(ClusterCollector(app))
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
