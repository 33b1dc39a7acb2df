"""Run a real ``mcp-backend serve`` (and a real simulator) as child processes, talk to them.

Everything binds to 127.0.0.1 on a port the OS picks (``--port 0``); the port is read from the
process's own "listening on" line, so there is no race for a "free" port. Every wait is bounded.

- :class:`SimulatorChild`: ``python -m simulator`` (``simulator.process``), started at once.
- :class:`ServerChild`: ``python -m server serve --config FILE``, stopped with SIGTERM.
- :func:`write_config`: a ``config.yaml`` for tests (simulator provider, demo MCP server).
- :func:`connect`, :func:`chat`, :func:`receive`: a WebSocket client built on ``websockets``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import yaml
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from simulator.process import SyncSimulatorProcess

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
TURN_TIMEOUT = 20.0

Envelope = dict[str, Any]


class _Child:
    """A child process whose output lines are collected by a thread (so its pipe never fills)."""

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str] | None = None,
                 banner: re.Pattern[str], cwd: Path | None = None) -> None:
        self.command = list(command)
        self.lines: list[str] = []
        self._banner = banner
        self._found = threading.Event()
        self.url = ""
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd or ROOT,
            # Its own process group: what it starts (a simulator, MCP servers) goes with it when
            # it is killed (see kill).
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            match = self._banner.search(line)
            if match is not None and not self._found.is_set():
                self.url = match.group(1)
                self._found.set()

    def wait_banner(self, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while not self._found.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"{self.command[:4]} did not start (exit {self.process.returncode}):\n"
                    + self.output
                )
        return self.url

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait for the exit code (killed after ``timeout``: then it raises)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"did not exit within {timeout} s:\n{self.output}") from None
        self._release()
        return self.process.returncode

    def kill(self) -> None:
        """Kill the child and every process it started: a child killed without its own children
        leaves them holding its output pipe open, and the reader (and a close) waiting for ever."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._release()

    def _release(self) -> None:
        self._reader.join(5)
        # A reader still reading holds the pipe's lock: closing it would wait as long.
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()


class SimulatorChild(SyncSimulatorProcess):
    """The simulator on 127.0.0.1, started at once (``stop()`` ends it); its config file is
    written in ``directory``."""

    def __init__(self, config: Mapping[str, Any] | None = None, *, directory: Path) -> None:
        super().__init__(config, config_dir=directory, startup_timeout=START_TIMEOUT)
        self.start()


class ServerChild(_Child):
    """``mcp-backend serve`` on 127.0.0.1 (or ``host``), ready once ``/health`` answers."""

    def __init__(self, config_path: Path, *, host: str | None = None,
                 env: Mapping[str, str] | None = None, wait_healthy: bool = True) -> None:
        command = [sys.executable, "-m", "server", "serve", "--config", str(config_path),
                   "--port", "0"]
        if host is not None:
            command += ["--host", host]
        super().__init__(command, env=server_env(env),
                         banner=re.compile(r"mcp-backend listening on (http://\S+)"))
        self.wait_banner()
        self.port = int(self.url.rsplit(":", 1)[1])
        # Whatever address it bound, tests connect through loopback.
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws/chat"
        if wait_healthy:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
            time.sleep(0.05)

    def health(self, token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        result: dict[str, Any] = http_json(self.url + "/health", headers=headers,
                                           accept_error=True)
        return result


@contextlib.contextmanager
def offline_server(directory: Path, **server: Any) -> Iterator[ServerChild]:
    """A server with no upstream it can reach and no MCP server (``server``: its ``server:``
    settings), for tests of the HTTP and WebSocket layers; stopped cleanly at the end."""
    child = ServerChild(write_config(directory, simulator_url="http://127.0.0.1:9",
                                     mcp_servers={}, server=server or None))
    yield child
    assert child.stop() == 0, child.output


def raw_exchange(server: ServerChild, data: bytes) -> bytes:
    """Send ``data`` on a new TCP connection to ``server``; everything it answers until it
    closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    return received


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a server child: no real API keys, no token unless given."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "MCP_BACKEND_TOKEN")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def http_json(url: str, *, method: str = "GET", body: Any = None,
              headers: Mapping[str, str] | None = None, accept_error: bool = False) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        if not accept_error:
            raise
        return json.loads(exc.read() or b"null")


def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """``(status, content type, body)`` of a GET."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read(
            ).decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


def write_config(
    directory: Path,
    *,
    simulator_url: str | None,
    model: str = "gpt-4o-mini",
    mcp_servers: Mapping[str, Any] | None = None,
    server: Mapping[str, Any] | None = None,
    chat: Mapping[str, Any] | None = None,
    simulator: str = "never",
    name: str = "config.yaml",
) -> Path:
    """A ``config.yaml`` in ``directory``: one keyless provider at ``simulator_url``.

    ``simulator_url`` ``None`` keeps the built-in providers (demo mode when no key is set).
    """
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, **(server or {})},
        "chat": {"history_db": str(directory / "history.sqlite3"), "tool_timeout": 10,
                 **(chat or {})},
        "mcpServers": dict(mcp_servers) if mcp_servers is not None else {
            "demo": {"command": sys.executable, "args": ["-m", "server.demo_mcp_server"]},
        },
        "simulator": {"enabled": simulator},
    }
    llm: dict[str, Any] = {"cost": {"db_path": str(directory / "ledger.sqlite3"),
                                    "daily_cost_limit": 100.0}}
    if simulator_url is not None:
        llm["providers"] = {"sim": {
            "kind": "openai-compatible",
            "base_url": simulator_url.rstrip("/") + "/v1",
            "requires_api_key": False,
            "model": model,
            "max_connections": 200,
            "max_keepalive_connections": 100,
        }}
    config["llm"] = llm
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# -- WebSocket client ---------------------------------------------------------------------------


async def connect(url: str, *, token: str | None = None, query_token: bool = False,
                  origin: str | None = None, max_size: int | None = 2**22,
                  ping_interval: float | None = 20.0) -> ClientConnection:
    """Open a chat socket (bearer header, or ``?token=`` with ``query_token``).

    ``ping_interval`` ``None`` sends no keepalive pings (a benchmark saturating the machine
    would otherwise close its sockets on a late pong).
    """
    headers: dict[str, str] = {}
    if token is not None and not query_token:
        headers["Authorization"] = f"Bearer {token}"
    if token is not None and query_token:
        url = f"{url}?token={token}"
    with anyio.fail_after(10):
        return await ws_connect(url, additional_headers=headers, max_size=max_size,
                                origin=origin, open_timeout=10,  # type: ignore[arg-type]
                                ping_interval=ping_interval)


async def send(ws: ClientConnection, frame: Any) -> None:
    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))


async def receive(ws: ClientConnection, timeout: float = TURN_TIMEOUT) -> Envelope:
    """The next envelope (raises ``TimeoutError`` after ``timeout``)."""
    with anyio.fail_after(timeout):
        raw = await ws.recv()
    envelope: Envelope = json.loads(raw)
    return envelope


def chat_frame(text: str, *, request_id: str | None = None, streaming: bool = True,
               conversation_id: str | None = None,
               metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"text": text, "streaming": streaming,
                               "metadata": dict(metadata or {})}
    if conversation_id is not None:
        payload["conversation_id"] = conversation_id
    return {"action": "chat", "request_id": request_id or uuid.uuid4().hex, "payload": payload}


async def until_end(ws: ClientConnection, request_id: str,
                    timeout: float = TURN_TIMEOUT) -> list[Envelope]:
    """Envelopes of ``request_id`` up to and including its ``complete`` or ``error``."""
    envelopes: list[Envelope] = []
    with anyio.fail_after(timeout):
        while True:
            envelope = await receive(ws, timeout)
            if envelope.get("request_id") != request_id:
                continue
            envelopes.append(envelope)
            if envelope["status"] in ("complete", "error"):
                return envelopes


async def chat(ws: ClientConnection, text: str, **kwargs: Any) -> list[Envelope]:
    """Send one chat frame and return its envelopes, up to the last."""
    frame = chat_frame(text, **kwargs)
    await send(ws, frame)
    return await until_end(ws, frame["request_id"])


def text_of(envelopes: Sequence[Envelope]) -> str:
    """The answer text: the ``data`` of every text chunk, joined."""
    return "".join(e["chunk"]["data"] for e in envelopes
                   if e["status"] == "chunk" and e["chunk"].get("type") == "text")


def tool_events(envelopes: Sequence[Envelope]) -> list[dict[str, Any]]:
    return [e["chunk"] for e in envelopes
            if e["status"] == "chunk" and e["chunk"].get("type", "").startswith("tool_call")]


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def children_running(pid: int, needle: str) -> list[int]:
    """Direct children of ``pid`` whose command line contains ``needle``."""
    found = []
    for child in child_pids(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in cmdline:
            found.append(child)
    return found


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
