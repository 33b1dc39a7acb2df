"""Run the simulator as a real child process on 127.0.0.1, for tests and chaos tests.

::

    async with SimulatorProcess({"faults": {"rate_500": 0.1}}) as sim:
        client = AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        ...
        assert (await sim.stats())["by_status"]["200"] == 9

The child is always terminated (SIGTERM, then SIGKILL after a grace period) when the block
exits, however it exits. :class:`SyncSimulatorProcess` is the same for code without an event loop.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import httpx2

from ._config import SimulatorConfig

__all__ = ["SimulatorProcess", "SimulatorStartError", "SyncSimulatorProcess"]

_HOST = "127.0.0.1"
_READY_PREFIX = "simulator listening on http://"
_STOP_GRACE = 5.0


class SimulatorStartError(RuntimeError):
    """The simulator process exited or stayed silent instead of announcing its port."""


class _Base:
    def __init__(
        self,
        config: SimulatorConfig | Mapping[str, Any] | None = None,
        *,
        port: int = 0,
        startup_timeout: float = 10.0,
    ) -> None:
        if config is None:
            config = SimulatorConfig()
        elif not isinstance(config, SimulatorConfig):
            config = SimulatorConfig.model_validate(dict(config))
        self.config = config
        self.port = port
        self.startup_timeout = startup_timeout
        self._patches: list[dict[str, Any]] = []
        self._config_path: Path | None = None
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

    def _write_config(self) -> None:
        fd, name = tempfile.mkstemp(prefix="simulator-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(self.config.model_dump_json())
        self._config_path = Path(name)

    def _remove_config(self) -> None:
        if self._config_path is not None:
            self._config_path.unlink(missing_ok=True)
            self._config_path = None

    def _command(self) -> list[str]:
        assert self._config_path is not None
        return [sys.executable, "-m", "simulator", "--host", _HOST, "--port", str(self.port),
                "--config", str(self._config_path)]

    @staticmethod
    def _environment() -> dict[str, str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @staticmethod
    def _port_of(line: bytes) -> int:
        text = line.decode(errors="replace").strip()
        if not text.startswith(_READY_PREFIX):
            raise SimulatorStartError(f"unexpected first line from the simulator: {text!r}")
        return int(text.rsplit(":", 1)[1])


class SimulatorProcess(_Base):
    """An async context manager running ``python -m simulator`` on a free port.

    ``configure`` patches are re-applied by ``restart``, which keeps the port; statistics start
    from zero in each new process.
    """

    def __init__(
        self,
        config: SimulatorConfig | Mapping[str, Any] | None = None,
        *,
        port: int = 0,
        startup_timeout: float = 10.0,
    ) -> None:
        super().__init__(config, port=port, startup_timeout=startup_timeout)
        self._process: anyio.abc.Process | None = None
        self._client: httpx2.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self._write_config()
        try:
            await self._start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop()
            self._remove_config()
            raise
        self._client = httpx2.AsyncClient(base_url=self.url, timeout=10.0)
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

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def _start(self) -> None:
        self._process = await anyio.open_process(
            self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None,
            env=self._environment(),
        )
        stdout = self._process.stdout
        assert stdout is not None
        line = b""
        with anyio.move_on_after(self.startup_timeout):
            while not line.endswith(b"\n"):
                try:
                    line += await stdout.receive()
                except anyio.EndOfStream:
                    break
        if not line.endswith(b"\n"):
            raise SimulatorStartError(
                f"the simulator did not announce its port within {self.startup_timeout} s"
                f" (exit code {self._process.returncode})"
            )
        self.port = self._port_of(line)

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(_STOP_GRACE):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        self.returncode = process.returncode
        await process.aclose()

    def kill(self) -> None:
        """SIGKILL the child at once (it is reaped by ``restart`` or on exit)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def restart(self) -> None:
        """Stop the child (if running) and start a new one on the same port."""
        with anyio.CancelScope(shield=True):
            await self._stop()
        await self._start()
        for patch in self._patches:
            await self._post("/_sim/config", patch)

    async def _post(self, path: str, body: Any) -> dict[str, Any]:
        assert self._client is not None, "use SimulatorProcess in an 'async with' block"
        response = await self._client.post(path, json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def stats(self) -> dict[str, Any]:
        """``GET /_sim/stats``."""
        assert self._client is not None, "use SimulatorProcess in an 'async with' block"
        response = await self._client.get("/_sim/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def configure(self, **patch: Any) -> dict[str, Any]:
        """``POST /_sim/config``; returns the new configuration (keys masked).

        Raises ``httpx2.HTTPStatusError`` (400) if the patch makes the configuration invalid.
        """
        shown = await self._post("/_sim/config", patch)
        self._patches.append(patch)
        return shown

    async def reset(self) -> None:
        """``POST /_sim/reset``: clear the statistics and re-seed the faults."""
        await self._post("/_sim/reset", {})


class SyncSimulatorProcess(_Base):
    """:class:`SimulatorProcess` for code without an event loop (a plain ``with`` block)."""

    def __init__(
        self,
        config: SimulatorConfig | Mapping[str, Any] | None = None,
        *,
        port: int = 0,
        startup_timeout: float = 10.0,
    ) -> None:
        super().__init__(config, port=port, startup_timeout=startup_timeout)
        self._process: subprocess.Popen[bytes] | None = None
        self._client: httpx2.Client | None = None

    def __enter__(self) -> Self:
        self._write_config()
        try:
            self._start()
        except BaseException:
            self._stop()
            self._remove_config()
            raise
        self._client = httpx2.Client(base_url=self.url, timeout=10.0)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._stop()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None
            self._remove_config()

    def _start(self) -> None:
        self._process = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            env=self._environment(),
        )
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while not line.endswith(b"\n") and (left := deadline - time.monotonic()) > 0:
                if selector.select(left):
                    data = os.read(fd, 4096)
                    if not data:
                        break
                    line += data
        if not line.endswith(b"\n"):
            raise SimulatorStartError(
                f"the simulator did not announce its port within {self.startup_timeout} s"
            )
        self.port = self._port_of(line)

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.returncode = process.returncode
        if process.stdout is not None:
            process.stdout.close()

    def kill(self) -> None:
        """SIGKILL the child at once (it is reaped by ``restart`` or on exit)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()

    def restart(self) -> None:
        """Stop the child (if running) and start a new one on the same port."""
        self._stop()
        self._start()
        for patch in self._patches:
            self._post("/_sim/config", patch)

    def _post(self, path: str, body: Any) -> dict[str, Any]:
        assert self._client is not None, "use SyncSimulatorProcess in a 'with' block"
        response = self._client.post(path, json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stats(self) -> dict[str, Any]:
        """``GET /_sim/stats``."""
        assert self._client is not None, "use SyncSimulatorProcess in a 'with' block"
        response = self._client.get("/_sim/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def configure(self, **patch: Any) -> dict[str, Any]:
        """``POST /_sim/config``; returns the new configuration (keys masked)."""
        shown = self._post("/_sim/config", patch)
        self._patches.append(patch)
        return shown

    def reset(self) -> None:
        """``POST /_sim/reset``: clear the statistics and re-seed the faults."""
        self._post("/_sim/reset", {})
