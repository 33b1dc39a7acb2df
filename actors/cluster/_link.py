"""One connection pool to the shared Redis, with every failure translated in one place."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._config import ClusterConfig, redact_url
from ._errors import ClusterUnavailable

# redis-py is imported by the first RedisLink, not here: ~6 MB that a server without
# cluster.redis_url does not hold.
if TYPE_CHECKING:
    import redis.asyncio as redis
    from redis.commands.core import AsyncScript

__all__ = ["ClusterHealth", "RedisLink"]

T = TypeVar("T")

@functools.cache
def _unavailable() -> dict[type[Exception], str]:
    """redis-py errors that mean "Redis could not answer now", as ``{class: reason}``.

    ``BusyLoading`` is a restarting server reading its dump; ``ReadOnly`` a replica promoted too
    late.
    """
    import redis.exceptions as redis_errors

    return {
        redis_errors.TimeoutError: "timed out",
        redis_errors.BusyLoadingError: "server loading",
        redis_errors.ReadOnlyError: "server read-only",
        redis_errors.AuthenticationError: "authentication failed",
        redis_errors.ConnectionError: "connection failed",
        ConnectionError: "connection failed",
        OSError: "network error",
    }


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    """One ``PING``: whether Redis answered and how long the round trip took."""

    ok: bool
    latency_ms: float | None
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The ``/health`` fragment."""
        return {"ok": self.ok, "latency_ms": self.latency_ms, "error": self.error}


class RedisLink:
    """The shared Redis: a pool, the key namespace and a fail-fast call wrapper.

    Every call runs under ``op_timeout`` (connect under ``connect_timeout``), retried at once only
    after a broken connection, and raises :class:`ClusterUnavailable` on any transport failure:
    callers fail closed at once and the next call simply tries again (recovery needs no action).
    Scripts are registered once and run by ``EVALSHA``, reloaded by redis-py after a ``NOSCRIPT``
    (a restarted server). Use ``async with RedisLink(config) as link`` or call :meth:`aclose`.
    """

    def __init__(self, config: ClusterConfig) -> None:
        if config.redis_url is None:
            raise ValueError("cluster.redis_url is not set")
        import redis.asyncio as redis
        import redis.exceptions as redis_errors
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.config = config
        self.prefix = config.key_prefix
        self._response_error = redis_errors.ResponseError
        self._unavailable = tuple(_unavailable())
        # A blocking pool: a burst larger than the pool waits for a connection (within the
        # call's timeout) instead of failing with "too many connections". One immediate retry on
        # a connection error only: after a Redis restart every pooled connection is stale and
        # would otherwise fail one call each. A timeout is never retried (fail fast). A script
        # that ran before its connection broke may run twice: each is idempotent per permit,
        # request or token, except a lease ticket, whose orphan leaves the queue in 5 s.
        pool = redis.BlockingConnectionPool.from_url(
            config.redis_url,
            socket_connect_timeout=config.connect_timeout,
            socket_timeout=config.op_timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
            max_connections=config.max_connections,
            timeout=config.connect_timeout + config.op_timeout,
            decode_responses=False,
        )
        self._client: redis.Redis = redis.Redis(connection_pool=pool)
        self._closed = False

    def key(self, *parts: str) -> str:
        """``prefix:part:part``; the first part in braces makes one Redis Cluster hash slot."""
        head, *rest = parts
        return ":".join([self.prefix + ":{" + head + "}", *rest])

    def script(self, source: str) -> AsyncScript:
        """Register a Lua script (loaded lazily, run by EVALSHA with a NOSCRIPT fallback)."""
        return self._client.register_script(source)

    async def run(self, script: AsyncScript, operation: str, keys: list[str],
                  args: list[Any]) -> Any:
        """Run ``script`` fail-fast (see the class docstring)."""
        return await self.call(operation, lambda: script(keys=keys, args=args))

    async def call(self, operation: str, make: Callable[[], Awaitable[T]]) -> T:
        """Await ``make()`` under the operation timeout, translating Redis failures.

        Raises :class:`anyio.ClosedResourceError` after :meth:`aclose`.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        # The outer bound covers connect + send + reply; one op_timeout per phase at most.
        limit = self.config.connect_timeout + self.config.op_timeout
        try:
            with anyio.fail_after(limit):
                return await make()
        except TimeoutError:
            raise ClusterUnavailable(operation, "timed out") from None
        except self._response_error:
            raise  # a script bug or a wrong argument: not an outage
        except self._unavailable as exc:
            raise ClusterUnavailable(operation, _reason(exc)) from None

    async def ping(self) -> ClusterHealth:
        """``PING`` Redis for ``/health``; never raises for an outage."""
        started = time.perf_counter()
        try:
            await self.call("ping", self._client.ping)
        except ClusterUnavailable as exc:
            return ClusterHealth(False, None, exc.reason)
        return ClusterHealth(True, round((time.perf_counter() - started) * 1000, 3))

    async def server_time(self) -> float:
        """Redis's own clock, in seconds since the epoch (what every script decides by)."""
        seconds, micros = await self.call("time", self._client.time)
        return int(seconds) + int(micros) / 1_000_000

    @property
    def client(self) -> redis.Redis:
        """The redis-py client, for reads wrapped in :meth:`call` (tests, diagnostics)."""
        return self._client

    async def aclose(self) -> None:
        """Close the pool. Idempotent."""
        self._closed = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.op_timeout):
            await self._client.aclose(close_connection_pool=True)

    async def __aenter__(self) -> RedisLink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        url = redact_url(self.config.redis_url or "")
        return f"<RedisLink {url} prefix={self.prefix!r}>"


def _reason(exc: BaseException) -> str:
    for cls, reason in _unavailable().items():
        if isinstance(exc, cls):
            return reason
    return "error"  # pragma: no cover - every caught class is listed
