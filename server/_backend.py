"""The running backend: what the lifespan of :func:`server.app.create_app` starts, and stops.

The lifespan starts, in order: the simulator child process (demo mode only), then one actor
system holding the LLM runtime (metrics, ledger, providers, router), the MCP servers
(``mcp``) and the conversations (``sessions``, one temporary SessionActor per conversation). It
stops them in reverse order. :class:`Backend` is what it started, for the routes to read.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette

from actors.chat import GroupCommit, HistoryStore, session_child_spec
from actors.llm import (
    LedgerUnavailable,
    LLMConfig,
    LLMRuntime,
    build_catalog,
    open_runtime,
)
from actors.mcp import McpServerConfig, ToolCatalog, mcp_status, mcp_supervisor_spec
from runtime import ChildSpec, Clock, SupervisorSpec
from server.cluster import open_cluster
from server.config import AppConfig
from server.conversations import ConversationOwners, SessionDirectory, retention_sweep
from server.simulated import run_simulator, simulated_llm_config, wants_simulator
from server.websocket import ChatHub

__all__ = ["Backend", "_lifespan"]

logger = logging.getLogger("server")

_STARTUP_POLL = 0.05


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
            history = HistoryStore(config.chat.history_db, config.chat.max_stored_messages)
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

            appends = GroupCommit(history)  # every conversation's appends, committed together

            def spec_for(conversation_id: str, new: bool) -> ChildSpec:
                return session_child_spec(
                    conversation_id,
                    router=runtime.router,
                    tools=tools,
                    history=history,
                    chat=config.chat,
                    catalog=catalog,
                    leases=cluster.leases if cluster is not None else None,
                    count_model=default_model,
                    appends=appends,
                    new=new,
                )

            conversations = SessionDirectory(
                runtime.system, spec_for, max_conversations=config.server.max_conversations,
                clock=runtime.system.clock,
            )
            app.state.backend = Backend(runtime, llm, simulated, conversations, owners, tools,
                                        history)
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(conversations.sweep)
                if config.chat.retention_days is not None:
                    task_group.start_soon(
                        retention_sweep, history, owners,
                        lambda: conversations.live() | hub.conversations_on(),
                        config.chat.retention_days * 86400)
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
