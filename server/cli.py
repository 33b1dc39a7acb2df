"""The ``mcp-backend`` command: ``serve``, ``check-config``, ``simulator``.

``serve`` runs the app on uvicorn and owns the shutdown sequence. On SIGINT/SIGTERM it stops
accepting connections, lets running turns finish within ``server.shutdown_timeout`` (then cancels
them, each with its ``error`` envelope), closes the sockets with 1001, and only then lets uvicorn
run the lifespan shutdown (history persisted, MCP servers and the simulator stopped). Exit code 0
after a clean shutdown; 1 when the configuration or the start-up fails. A second signal skips the
drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import math
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import uvicorn
from pydantic import ValidationError

from actors.llm import LedgerUnavailable, check_ledger, describe_validation_error, redact
from runtime.gc_tuning import collector_paused, tune_gc
from server._http_protocol import http_protocol
from server._logging import LOG_FORMAT_ENV, LOG_FORMATS, configure_logging
from server._ws_protocol import ws_protocol
from server.config import AppConfig, ConfigError, load_config
from server.simulated import wants_simulator

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["StartupRefused", "check_bind", "check_storage", "is_loopback", "main"]

logger = logging.getLogger("server")

DEFAULT_CONFIG = "config.yaml"
#: Seconds the thread holding the GIL keeps it while another waits (CPython's default: 0.005).
SWITCH_INTERVAL = 0.0005
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


class StartupRefused(RuntimeError):
    """The configuration is valid but unsafe or impossible to serve (the message says why)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only accepts connections from this machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(config: AppConfig) -> None:
    """Raise :class:`StartupRefused` for a non-loopback bind without an auth token."""
    server = config.server
    if not is_loopback(server.host) and server.read_auth_token() is None:
        variable = server.auth_token_env or "the variable named by server.auth_token_env"
        raise StartupRefused(
            f"refusing to listen on {server.host}, which is not a loopback address, without an"
            f" auth token: set {variable} (or server.auth_token) or bind to 127.0.0.1"
        )


def check_storage(config: AppConfig) -> None:
    """Raise :class:`StartupRefused` if a database file cannot be opened or created.

    Checked before serving, so that a mistyped ``chat.history_db`` or ``llm.cost.db_path`` is one
    clear line and exit code 1, not a traceback from the middle of the start-up. The ledger's is
    the ledger's own check (``actors.llm.check_ledger``: the file is opened as a ledger).
    """
    history_db = config.chat.history_db
    problem = _storage_problem(Path(history_db)) if history_db != ":memory:" else None
    if problem is not None:
        raise StartupRefused(f"chat.history_db: cannot use {history_db}: {problem}")
    try:
        check_ledger(config.llm.cost)
    except LedgerUnavailable as exc:
        raise StartupRefused(f"llm.cost.db_path: {exc}") from None


def _storage_problem(path: Path) -> str | None:
    if path.exists():
        if path.is_dir():
            return "it is a directory"
        if not os.access(path, os.R_OK | os.W_OK):
            return "it is not readable and writable"
        return None
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create it: {ancestor} is not writable"
    return None


def run() -> NoReturn:
    """The ``mcp-backend`` command (and ``python -m server``): :func:`main`, then
    :func:`exit_now` with its exit code."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` without tearing the interpreter down.

    Everything the server owns (sockets, SQLite, MCP processes, the simulator) is closed by the
    time its command returns; what remains is the teardown of the loaded modules (the SDKs,
    pydantic), over a second of CPU per exit, paid by every stop and restart of a worker.
    """
    for stream in (sys.stdout, sys.stderr):
        # Closed or a broken pipe: nothing more can be written anyway.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["simulator"]:
        # Everything after the word belongs to the simulator's own parser (its --help included).
        import simulator

        return simulator.main(args[1:])
    parser = _parser()
    options = parser.parse_args(args)
    if options.command is None:
        parser.print_help()
        return 2
    log_format = getattr(options, "log_format", None)
    if log_format is not None:
        os.environ[LOG_FORMAT_ENV] = log_format  # worker processes inherit it
    try:
        configure_logging(getattr(options, "log_level", "info"))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if options.command == "check-config":
        return _check_config(options.path)
    return _serve(options)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-backend",
        description="Chat with tool-using LLMs over WebSocket: MCP tools, a supervised actor"
        " runtime, an OpenAI-compatible simulator for demos without an API key.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the server (WebSocket /ws/chat, /health, /)")
    serve.add_argument(
        "--config",
        metavar="PATH",
        help=f"configuration file (default: ./{DEFAULT_CONFIG} if present, else built-in defaults)",
    )
    serve.add_argument("--host", help="address to bind (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to bind, 0 for any (overrides server.port)")
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    serve.add_argument("--log-format", choices=LOG_FORMATS,
                       help=f"text (default) or json: one JSON object a line (also:"
                       f" {LOG_FORMAT_ENV})")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="worker processes on one port (overrides server.workers; more than"
                       " 1 needs cluster.redis_url)")
    check = commands.add_parser(
        "check-config", help="validate a configuration file without serving; exit 1 if invalid"
    )
    check.add_argument(
        "path", nargs="?", metavar="PATH", help=f"default: ./{DEFAULT_CONFIG} if present"
    )
    commands.add_parser(
        "simulator",
        help="run the OpenAI-compatible simulator (see: mcp-backend simulator --help)",
        add_help=False,
    )
    return parser


def _config_path(given: str | None) -> str | None:
    if given is not None:
        return given
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def _load(path: str | None, host: str | None = None, port: int | None = None) -> AppConfig:
    config = load_config(_config_path(path))
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if overrides:
        try:
            server = config.server.model_validate({**config.server.model_dump(), **overrides})
        except ValidationError as exc:  # only the overrides can be wrong: the file was valid
            raise ConfigError(
                "\n".join(f"--{problem}" for problem in describe_validation_error(exc))
            ) from None
        config = config.model_copy(update={"server": server})
    return config


def _check_config(path: str | None) -> int:
    label = _config_path(path) or "(built-in defaults)"
    try:
        config = _load(path)
        check_bind(config)
        check_storage(config)
    except (ConfigError, StartupRefused) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"OK: {label}")
    print(_summary(config))
    return 0


def _summary(config: AppConfig) -> str:
    """What the configuration will do, with no secret in it."""
    llm = config.llm
    lines = [f"llm: active {llm.active}, fallback order {' -> '.join(llm.candidate_order())}"]
    for name, provider in llm.providers.items():
        key = "key available" if provider.has_api_key() else "NO KEY"
        if not provider.requires_api_key:
            key = "no key needed"
        lines.append(f"  provider {name}: {provider.kind} {redact(provider.base_url)}"
                     f" model {provider.model} ({key})")
    if wants_simulator(config):
        lines.append(f"  simulator: will be used (simulator.enabled: {config.simulator.enabled})")
    server = config.server
    token = "bearer token configured" if server.read_auth_token() else "no auth token"
    lines.append(f"server: {server.host}:{server.port}, {token}")
    for name, entry in config.mcp_servers.items():
        where = " ".join([entry.command or "", *entry.args]) if entry.url is None else entry.url
        state = "" if entry.enabled else " (disabled)"
        lines.append(f"mcp server {name}: {entry.transport} {redact(where)}{state}")
    lines.append(f"chat: history {config.chat.history_db}, max_tool_hops"
                 f" {config.chat.max_tool_hops}")
    return "\n".join(lines)


class _GracefulServer(uvicorn.Server):
    """uvicorn, with our drain between the signal and uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, *, app: Starlette, app_config: AppConfig) -> None:
        super().__init__(config)
        self._app = app
        self._app_config = app_config
        self._draining: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            # What start-up loaded lives as long as the process: out of the collector's sight,
            # and the young generation's passes rarer (runtime/gc_tuning.py has the figures).
            tune_gc()
            # The loop's thread holds the GIL for CPython's 5 ms switch interval before a worker
            # thread (a history or ledger write, a large token count) may run a step: at 200
            # streams, a turn's history write waited ~1 ms x its GIL hand-offs x 5. A shorter
            # interval costs nothing while no other thread asks (README, benchmarks).
            sys.setswitchinterval(SWITCH_INTERVAL)
            logger.info("garbage collector tuned: %d start-up objects frozen, young threshold %d;"
                        " thread switch interval %g ms", gc.get_freeze_count(),
                        gc.get_threshold()[0], sys.getswitchinterval() * 1000)
            for server in self.servers:
                for bound in server.sockets:
                    host, port = bound.getsockname()[:2]
                    logger.info("mcp-backend listening on http://%s:%d", host, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's own handler records the signal and raises it again after shutdown, which
        # would end the process by SIGTERM rather than with exit code 0.
        if self.should_exit or self._draining is not None or not self.started:
            self.force_exit = self.should_exit or self._draining is not None
            self.should_exit = True
            return
        logger.info("shutting down: draining connections (at most %.0f s)",
                    self._app_config.server.shutdown_timeout)
        loop = asyncio.get_running_loop()
        loop.call_soon_threadsafe(self._start_drain, loop)

    def _start_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self._draining = loop.create_task(self._drain())

    async def _drain(self) -> None:
        for server in self.servers:
            server.close()  # stop accepting; uvicorn closes them again harmlessly
        hub = self._app.state.hub
        try:
            await hub.drain(self._app_config.server.shutdown_timeout)
        finally:
            self.should_exit = True


def _serve(options: argparse.Namespace) -> int:
    try:
        config = _load(options.config, options.host, options.port)
        check_bind(config)
        check_storage(config)
    except (ConfigError, StartupRefused) as exc:
        print(exc, file=sys.stderr)
        return 1
    workers = options.workers if options.workers is not None else config.server.workers
    if workers != 1:
        from server.workers import serve_workers

        if workers < 1:
            print("--workers must be at least 1", file=sys.stderr)
            return 1
        return serve_workers(config, _config_path(options.config), workers, options.log_level)
    _limit_malloc_arenas()
    # Imported here: the app pulls in the whole runtime, which --help and check-config need not.
    with collector_paused():
        from server.app import create_app

    app = create_app(config)
    uvicorn_config = uvicorn.Config(
        app, host=config.server.host, port=config.server.port,
        **uvicorn_settings(config, options.log_level))
    server = _GracefulServer(uvicorn_config, app=app, app_config=config)
    try:
        server.run()
        failed = not server.started
    except SystemExit:  # uvicorn's own exit code 3 for a failed start-up; ours is 1
        failed = True
    refused = getattr(app.state, "startup_refused", None)
    if refused is not None:
        print(refused, file=sys.stderr)  # the reason, last, after uvicorn's own report
    return 1 if failed else 0


#: glibc's ``mallopt`` parameter for the number of malloc arenas.
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    """At most :data:`MALLOC_ARENAS` glibc malloc arenas, unless ``MALLOC_ARENA_MAX`` says.

    glibc gives each thread that allocates its own arena (up to 8 per core), and an arena keeps
    what it once held: the worker thread that loads a token encoding left ~3 MiB behind. Set
    before the first worker thread starts; no effect on other C libraries.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    libc = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc), "mallopt", None) if libc else None
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def uvicorn_settings(config: AppConfig, log_level: str) -> dict[str, Any]:
    """uvicorn's settings for ``config`` (besides where to listen)."""
    return {
        "log_config": None,
        "log_level": log_level,
        "ws_max_size": config.server.max_message_bytes,
        # websockets-sansio that stops reading a peer whose writes are backed up (a ping flood
        # from a client that never reads its pongs), or that it or the process is over its read
        # budget: server/_ws_protocol.py.
        "ws": ws_protocol(config.server.max_read_bytes_per_second),
        # httptools with a deadline for reading each request (slowloris) and a bound on open
        # connections (a connection flood): server/_http_protocol.py.
        "http": http_protocol(config.server.request_read_timeout,
                              config.server.max_open_connections),
        # Envelopes are small deltas: deflating each one costs more CPU than it saves bytes.
        "ws_per_message_deflate": False,
        "timeout_graceful_shutdown": math.ceil(config.server.shutdown_timeout),
        "lifespan": "on",
        "server_header": False,
    }
