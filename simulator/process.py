"""Run the simulator as a real child process on 127.0.0.1: the one way this project spawns it.

::

    async with SimulatorProcess({"faults": {"rate_500": 0.1}}) as sim:
        client = AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        ...
        assert (await sim.stats())["by_status"]["200"] == 9

Used by the tests, the benchmarks and the server's demo mode (which passes a ``control_token``).
The child's port is read from its "listening on" line; a thread keeps reading its output after
that, so a chatty child never blocks on a full pipe (the last lines are kept in ``output``). The
child is always terminated (SIGTERM, then SIGKILL after a grace period) when the block exits,
however it exits. :class:`SyncSimulatorProcess` is the same for code without an event loop.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import httpx2

from ._config import CONTROL_TOKEN_VARIABLE, SimulatorConfig

__all__ = ["SimulatorProcess", "SimulatorStartError", "SyncSimulatorProcess"]

_HOST = "127.0.0.1"
_READY_PREFIX = b"simulator listening on http://"
_STOP_GRACE = 5.0
_KEPT_LINES = 20


class SimulatorStartError(RuntimeError):
    """The simulator process exited or stayed silent instead of announcing its port."""


class _Base:
    """The child process and its output; the subclasses add the control client."""

    def __init__(
        self,
        config: SimulatorConfig | Mapping[str, Any] | None = None,
        *,
        port: int = 0,
        startup_timeout: float = 10.0,
        control_token: str | None = None,
        config_dir: Path | None = None,
    ) -> None:
        if config is None:
            config = SimulatorConfig()
        elif not isinstance(config, SimulatorConfig):
            config = SimulatorConfig.model_validate(dict(config))
        self.config = config
        self.port = port
        self.startup_timeout = startup_timeout
        self._control_token = control_token
        self._config_dir = config_dir
        self._patches: list[dict[str, Any]] = []
        self._config_path: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=_KEPT_LINES)
        self._announced = False
        self.returncode: int | None = None
        """The exit code of the last child that ended (0 after a clean SIGTERM shutdown)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} [{self.url if self.port else 'not started'}]>"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the root, where ``/_sim/*`` lives."""
        return f"http://{_HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what an OpenAI client takes as ``base_url``."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def output(self) -> str:
        """The child's last lines of output (its stdout; its stderr is the parent's)."""
        return "\n".join(self._lines)

    def _headers(self) -> dict[str, str]:
        token = self._control_token
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    def _write_config(self) -> None:
        fd, name = tempfile.mkstemp(prefix="simulator-", suffix=".json", dir=self._config_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(self.config.model_dump_json())
        self._config_path = Path(name)

    def _remove_config(self) -> None:
        if self._config_path is not None:
            self._config_path.unlink(missing_ok=True)
            self._config_path = None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
        env["PYTHONUNBUFFERED"] = "1"
        if self._control_token is not None:
            env[CONTROL_TOKEN_VARIABLE] = self._control_token
        return env

    def _spawn(self) -> threading.Event:
        """Start the child and the thread reading its output.

        The event is set on the child's banner, or when its output ends before one.
        """
        assert self._config_path is not None
        command = [sys.executable, "-m", "simulator", "--host", _HOST, "--port", str(self.port),
                   "--config", str(self._config_path)]
        self._process = process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=self._environment(),
        )
        self._announced = False
        ready = threading.Event()
        self._reader = threading.Thread(
            target=self._read, args=(process, ready), name="simulator-output", daemon=True)
        self._reader.start()
        return ready

    def _read(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            if not ready.is_set() and raw.startswith(_READY_PREFIX):
                self.port = int(raw.decode().strip().rsplit(":", 1)[1])
                self._announced = True
                ready.set()
            self._lines.append(raw.decode(errors="replace").rstrip("\n"))
        ready.set()

    def _await_banner(self, ready: threading.Event) -> None:
        """Block until the child announced its port; raise if it exits or stays silent."""
        ready.wait(self.startup_timeout)
        if self._announced:
            return
        process = self._process
        code = None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = process.wait(1.0)  # its output ended: it is exiting
        reason = (f"it exited with code {code}" if code is not None
                  else f"no banner within {self.startup_timeout:g} s")
        raise SimulatorStartError(
            f"the simulator did not start: {reason}"
            + (f" (output: {' | '.join(self._lines)})" if self._lines else "")
        )

    def _terminate(self) -> subprocess.Popen[bytes] | None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        """Wait for a terminated child (SIGKILL after the grace period); close its pipe."""
        try:
            process.wait(_STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.returncode = process.returncode
        if self._reader is not None:
            self._reader.join(_STOP_GRACE)
            self._reader = None
        if process.stdout is not None:
            process.stdout.close()

    def kill(self) -> None:
        """SIGKILL the child at once (it is reaped by ``restart`` or on exit)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()


class SimulatorProcess(_Base):
    """An async context manager running ``python -m simulator`` on a free port.

    ``configure`` patches are re-applied by ``restart``, which keeps the port; statistics start
    from zero in each new process. With ``control_token`` the child requires it on ``/_sim/``
    (and this object sends it).
    """

    _client: httpx2.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self._write_config()
        try:
            await self._start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop()
            self._remove_config()
            raise
        self._client = httpx2.AsyncClient(base_url=self.url, timeout=10.0,
                                          headers=self._headers())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self._stop()
            finally:
                if self._client is not None:
                    await self._client.aclose()
                    self._client = None
                self._remove_config()

    async def _start(self) -> None:
        ready = self._spawn()
        await anyio.to_thread.run_sync(self._await_banner, ready, abandon_on_cancel=True)

    async def _stop(self) -> None:
        process = self._terminate()
        if process is not None:
            await anyio.to_thread.run_sync(self._reap, process)

    async def restart(self) -> None:
        """Stop the child (if running) and start a new one on the same port."""
        with anyio.CancelScope(shield=True):
            await self._stop()
        await self._start()
        for patch in self._patches:
            await self._request("POST", "/_sim/config", patch)

    async def _request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        assert self._client is not None, "use SimulatorProcess in an 'async with' block"
        response = await self._client.request(method, path, json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def stats(self) -> dict[str, Any]:
        """``GET /_sim/stats``."""
        return await self._request("GET", "/_sim/stats")

    async def configure(self, **patch: Any) -> dict[str, Any]:
        """``POST /_sim/config``; returns the new configuration (keys masked).

        Raises ``httpx2.HTTPStatusError`` (400) if the patch makes the configuration invalid.
        """
        shown = await self._request("POST", "/_sim/config", patch)
        self._patches.append(patch)
        return shown

    async def reset(self) -> None:
        """``POST /_sim/reset``: clear the statistics and re-seed the faults."""
        await self._request("POST", "/_sim/reset", {})


class SyncSimulatorProcess(_Base):
    """:class:`SimulatorProcess` for code without an event loop: a ``with`` block, or
    ``start()`` and ``stop()``."""

    _client: httpx2.Client | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the child; raises :class:`SimulatorStartError` if it does not come up."""
        self._write_config()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self._client = httpx2.Client(base_url=self.url, timeout=10.0, headers=self._headers())

    def stop(self) -> None:
        """Stop the child (SIGTERM, SIGKILL after a grace period) and release everything."""
        try:
            process = self._terminate()
            if process is not None:
                self._reap(process)
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None
            self._remove_config()

    def _start(self) -> None:
        ready = self._spawn()
        self._await_banner(ready)

    def restart(self) -> None:
        """Stop the child (if running) and start a new one on the same port."""
        process = self._terminate()
        if process is not None:
            self._reap(process)
        self._start()
        for patch in self._patches:
            self._request("POST", "/_sim/config", patch)

    def _request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        assert self._client is not None, "start the SyncSimulatorProcess first"
        response = self._client.request(method, path, json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stats(self) -> dict[str, Any]:
        """``GET /_sim/stats``."""
        return self._request("GET", "/_sim/stats")

    def configure(self, **patch: Any) -> dict[str, Any]:
        """``POST /_sim/config``; returns the new configuration (keys masked)."""
        shown = self._request("POST", "/_sim/config", patch)
        self._patches.append(patch)
        return shown

    def reset(self) -> None:
        """``POST /_sim/reset``: clear the statistics and re-seed the faults."""
        self._request("POST", "/_sim/reset", {})
