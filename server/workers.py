"""``mcp-backend serve --workers N``: N worker processes on one host:port, supervised.

The parent binds one listening socket per worker, all on one port with ``SO_REUSEPORT``, and
starts N workers (``python -m server.launch``), worker ``i`` inheriting socket ``i``: the kernel
spreads new connections evenly over the sockets by a hash of their addresses. (One socket shared
by every worker split bursts unevenly: an event loop accepts every queued connection per wake-up,
so whichever worker woke first took most of a burst.) The parent keeps the sockets open, so the
connections that reach a worker's socket while it restarts wait in its backlog and are served by
its successor. Where ``SO_REUSEPORT`` does not exist, the workers share one socket. The parent
serves nothing itself; it

* refuses N > 1 without ``cluster.redis_url`` (exit 1): each worker would count rate limits and
  money alone, so the limits would be N times the configured ones;
* in demo mode runs the one simulator every worker uses;
* restarts a worker that exits on its own, after a backoff (0.5 s doubling to 10 s, reset after
  a minute up), at most :data:`MAX_RESTARTS` times in :data:`RESTART_PERIOD` seconds of its
  running time (the backoff not counted), beyond which it stops every worker and exits 1;
* on SIGINT/SIGTERM sends SIGTERM to every worker once (each drains its turns within
  ``server.shutdown_timeout``), waits for them all and exits 0.

Workers run in their own session, so a terminal's Ctrl-C reaches only the parent (one drain
signal per worker, not two, which would skip the drain), and exit by themselves when the parent
is gone. Worker ``i`` keeps its own ledger file (``<db_path stem>.w<i><suffix>``: one process
per SQLite ledger, its durable journal); the history database is shared by the workers.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from anyio.abc import Process

from runtime import Clock, MonotonicClock
from server.config import AppConfig

__all__ = ["MAX_RESTARTS", "RESTART_PERIOD", "check_workers", "listen", "main",
           "serve_workers", "worker_config"]

logger = logging.getLogger("server.workers")

MAX_RESTARTS = 10
RESTART_PERIOD = 60.0
_BACKOFF_INITIAL = 0.5
_BACKOFF_MAX = 10.0
_STOP_MARGIN = 10.0


class WorkersRefused(RuntimeError):
    """``--workers N`` cannot be served with this configuration (the message says why)."""


def check_workers(config: AppConfig, workers: int) -> None:
    """Raise :class:`WorkersRefused` for N > 1 workers without a shared Redis."""
    if workers > 1 and not config.cluster.enabled:
        raise WorkersRefused(
            f"refusing to start {workers} workers without cluster.redis_url: each worker would"
            " enforce the rate limits, the daily cost limit and the conversations' order on its"
            " own, so together they would allow "
            f"{workers} times the configured limits; set cluster.redis_url (see the README) or"
            " run one worker")


def worker_config(config: AppConfig, index: int) -> AppConfig:
    """``config`` for worker ``index``: its own ledger file (one process per SQLite ledger)."""
    db = Path(config.llm.cost.db_path)
    cost = config.llm.cost.model_copy(
        update={"db_path": str(db.with_name(f"{db.stem}.w{index}{db.suffix}"))})
    llm = config.llm.model_copy(update={"cost": cost})
    return config.model_copy(update={"llm": llm})


def serve_workers(config: AppConfig, config_path: str | None, workers: int,
                  log_level: str) -> int:
    """Run the parent (module docstring); returns the exit code."""
    try:
        check_workers(config, workers)
    except WorkersRefused as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        listeners = listen(config.server.host, config.server.port, workers)
    except OSError as exc:
        print(f"cannot listen on {config.server.host}:{config.server.port}: {exc}",
              file=sys.stderr)
        return 1
    host, port = listeners[0].getsockname()[:2]
    try:
        return anyio.run(_Parent(config, config_path, workers, log_level, listeners,
                                 f"{socket.gethostname()}:{port}").run)
    finally:
        for listener in listeners:
            listener.close()
        logger.info("mcp-backend on %s:%d stopped", host, port)


def listen(host: str, port: int, workers: int) -> list[socket.socket]:
    """The inheritable listening socket of each worker: ``workers`` sockets on one port with
    ``SO_REUSEPORT``, or one socket for all where the platform has no ``SO_REUSEPORT``.

    The port is first bound without ``SO_REUSEPORT`` (which also picks it when ``port`` is 0):
    a port another process listens on fails with "address in use", as with one socket. Without
    this check the sockets would join the group of another instance started with the same
    user on that port (a second ``serve`` started by mistake), and the two would silently
    share its connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuse_port = getattr(socket, "SO_REUSEPORT", None)
    if reuse_port is not None:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            port = probe.getsockname()[1]
    listeners: list[socket.socket] = []
    try:
        for _ in range(workers if reuse_port is not None else 1):
            listener = socket.socket(family, socket.SOCK_STREAM)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port is not None:
                listener.setsockopt(socket.SOL_SOCKET, reuse_port, 1)
            listener.bind((host, port))
            listener.listen(2048)
            listener.set_inheritable(True)
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    return listeners * (workers // len(listeners))


class _Parent:
    def __init__(self, config: AppConfig, config_path: str | None, workers: int,
                 log_level: str, listeners: list[socket.socket], instance: str,
                 clock: Clock | None = None) -> None:
        """``clock``: what the restart policy (backoff, restarts per period) counts on."""
        self._clock = clock or MonotonicClock()
        self.config = config
        self.config_path = config_path
        self.workers = workers
        self.log_level = log_level
        self.listeners = listeners
        self.instance = instance
        self.stopping = False
        self.failed = False
        self.processes: dict[int, Process] = {}
        self.simulator_url: str | None = None
        self.all_stopped = anyio.Event()

    async def run(self) -> int:
        from server.simulated import run_simulator, wants_simulator

        async with AsyncExitStack() as stack:
            if wants_simulator(self.config):
                self.simulator_url = await stack.enter_async_context(
                    run_simulator(self.config.simulator.port))
            host, port = self.listeners[0].getsockname()[:2]
            logger.info("mcp-backend listening on http://%s:%d (%d workers)", host, port,
                        self.workers)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with anyio.create_task_group() as group:
                    for index in range(self.workers):
                        group.start_soon(self._keep_running, index, group.cancel_scope)
                    async for signum in signals:
                        if not self.stopping:
                            logger.info("%s: stopping %d workers",
                                        signal.Signals(signum).name, len(self.processes))
                            self.stopping = True
                            group.start_soon(self._stop_all, group.cancel_scope)
        return 1 if self.failed else 0

    async def _keep_running(self, index: int, scope: anyio.CancelScope) -> None:
        # The exits, on a clock that stops during our backoff: the restart period counts the
        # worker's own time. Counted in wall time, the backoff alone (65.5 s over ten restarts)
        # would spread a worker that dies at once beyond RESTART_PERIOD, never escalated.
        restarts: deque[float] = deque()
        backoff = _BACKOFF_INITIAL
        backed_off = 0.0
        while not self.stopping:
            started = self._clock.now()
            code = await self._run_worker(index)
            if self.stopping:
                return
            ended = self._clock.now()
            if ended - started > RESTART_PERIOD:
                backoff = _BACKOFF_INITIAL
            now = ended - backed_off
            while restarts and now - restarts[0] > RESTART_PERIOD:
                restarts.popleft()
            if len(restarts) >= MAX_RESTARTS:
                logger.error("worker %d exited %d times in %.0f s of running: stopping the"
                             " service", index, MAX_RESTARTS + 1, RESTART_PERIOD)
                self.failed = self.stopping = True
                await self._stop_all(scope)
                return
            restarts.append(now)
            logger.warning("worker %d exited with %s; restarting it in %.1f s", index, code,
                           backoff)
            await self._clock.sleep(backoff)
            backed_off += self._clock.now() - ended
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _run_worker(self, index: int) -> int | None:
        listener = self.listeners[index]
        # The worker reads the file again: the host and port the parent bound (--host and
        # --port included) go along, or its Host allowlist would be the file's.
        command = [sys.executable, "-m", "server.launch", "--fd", str(listener.fileno()),
                   "--worker", str(index), "--log-level", self.log_level,
                   "--host", self.config.server.host, "--port", str(self.config.server.port)]
        if self.config_path is not None:
            command += ["--config", self.config_path]
        if self.simulator_url is not None:
            command += ["--simulator-url", self.simulator_url]
        env = {**os.environ, "MCP_BACKEND_INSTANCE": self.instance,
               "MCP_BACKEND_WORKER": str(index)}
        process = await anyio.open_process(
            command, stdin=subprocess.DEVNULL, stdout=None, stderr=None, env=env,
            pass_fds=(listener.fileno(),), start_new_session=True)
        self.processes[index] = process
        logger.info("worker %d started (pid %d)", index, process.pid)
        try:
            return await process.wait()
        finally:
            self.processes.pop(index, None)
            if self.stopping and not self.processes:
                self.all_stopped.set()
            await process.aclose()

    async def _stop_all(self, scope: anyio.CancelScope) -> None:
        for process in list(self.processes.values()):
            if process.returncode is None:
                process.terminate()
        limit = self.config.server.shutdown_timeout + _STOP_MARGIN
        with anyio.move_on_after(limit):
            if self.processes:
                await self.all_stopped.wait()
        for process in list(self.processes.values()):
            if process.returncode is None:
                logger.warning("worker pid %d did not stop within %.0f s: killing it",
                               process.pid, limit)
                process.kill()
        scope.cancel()


# -- the worker process -------------------------------------------------------------------------


def _exit_with_parent(parent: int) -> None:
    """Drain and exit when the parent is gone (it was killed: nobody else will stop us)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """One worker: serve the inherited socket until SIGTERM (``python -m server.launch``)."""
    parser = argparse.ArgumentParser(prog="python -m server.launch")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--config")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--simulator-url")
    parser.add_argument("--log-level", default="info")
    options = parser.parse_args(argv)

    import uvicorn

    from server._logging import configure_logging
    from server.app import create_app
    from server.cli import _GracefulServer, _load, uvicorn_settings

    configure_logging(options.log_level)
    config = worker_config(_load(options.config, options.host, options.port), options.worker)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    app = create_app(config, simulator_url=options.simulator_url)
    listener = socket.socket(fileno=options.fd)
    server = _GracefulServer(uvicorn.Config(app, **uvicorn_settings(config, options.log_level)),
                             app=app, app_config=config)
    server.run(sockets=[listener])
    return 0 if server.started else 1
