"""The HTTP client a provider owns: the SDK's aiohttp transport (the default), or an ``httpx2``
client whose idle-connection probe is cheap (below).

Before every request httpcore2's pool asks each *idle* connection whether the server closed it
(``get_extra_info("is_readable")``). Its anyio stream answers by building anyio's whole
``extra_attributes`` mapping, which calls ``getpeername()``, for one ``poll()``: about 20 us per
idle connection per request. Behind an actor, requests leave connections idle between calls more
often than a bare client does, so this probe was a fifth of a request's CPU in
``benchmarks/runtime.py``. Here the raw socket is looked up once per connection and the probe is
the ``poll()`` alone. Everything else is httpx2's own pool, unchanged; if httpx2's internals
change shape, the client is simply left as httpx2 built it.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import httpcore2
import httpx2
import openai
from httpcore2._utils import is_socket_readable

from ._response_bounds import IDENTITY

__all__ = ["DEFAULT_TRANSPORT", "Transport", "aiohttp_available", "provider_http_client"]

Transport = Literal["httpx2", "aiohttp"]
"""The HTTP transport under the SDK: httpx2's own pool, or the SDK's aiohttp one."""


def aiohttp_available() -> bool:
    """Whether the SDK's aiohttp transport is installed (``openai[aiohttp]``)."""
    return importlib.util.find_spec("aiohttp") is not None


DEFAULT_TRANSPORT: Transport = "aiohttp"
"""What providers use unless their config names one (``transport:``). Chosen by measurement
(``benchmarks/streams.py``, README "Streams per process"): with the same pool limits, a paced
stream costs the server about a quarter less CPU per delta on the SDK's aiohttp transport than
on httpx2's pool, behind the whole product and behind a bare relay alike."""


class _ProbedStream(httpcore2.AsyncNetworkStream):
    """A network stream that remembers its socket for the readability probe."""

    def __init__(self, stream: httpcore2.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket: socket.socket | None = stream.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore2.AsyncNetworkStream:
        return _ProbedStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:
            return is_socket_readable(self._socket)
        return self._stream.get_extra_info(info)


class _ProbedBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, inner: httpcore2.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return _ProbedStream(await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address,
            socket_options=socket_options))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return _ProbedStream(await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def provider_http_client(
    limits: httpx2.Limits,
    timeout: httpx2.Timeout,
    event_hooks: Mapping[str, Sequence[Any]] | None = None,
    transport: Transport = "httpx2",
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` with these pool limits and timeouts (see the module docstring),
    asking for bodies uncompressed (:data:`~actors.llm._response_bounds.IDENTITY`).

    ``transport="aiohttp"`` is the SDK's ``DefaultAioHttpClient`` (an ``httpx2.AsyncClient`` whose
    transport is aiohttp, mapping aiohttp's errors to httpx2's; it takes the same limits and
    timeouts). Raises ``RuntimeError`` when ``openai[aiohttp]`` is not installed.
    """
    hooks = {k: list(v) for k, v in (event_hooks or {}).items()}
    if transport == "aiohttp":
        aio: httpx2.AsyncClient = openai.DefaultAioHttpClient(
            limits=limits, timeout=timeout, event_hooks=hooks, follow_redirects=False,
            headers=IDENTITY)
        return aio
    client = httpx2.AsyncClient(limits=limits, timeout=timeout, event_hooks=hooks,
                                headers=IDENTITY)
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore2.AsyncNetworkBackend):
        pool._network_backend = _ProbedBackend(backend)  # type: ignore[union-attr]
    return client
