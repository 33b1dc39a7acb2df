"""The connections to the shared Redis, with every failure translated in one place."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._config import ClusterConfig, redact_url
from ._errors import ClusterUnavailable
from ._pipeline import Pipeline

# redis-py is imported by the first RedisLink, not here: ~6 MB that a server without
# cluster.redis_url does not hold.
if TYPE_CHECKING:
    import redis.asyncio as redis

__all__ = ["ClusterHealth", "LuaScript", "RedisLink"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Connections of :attr:`RedisLink.client` (diagnostic reads and tests; the scripts, ``PING`` and
#: ``TIME`` use the link's own connections).
_CLIENT_CONNECTIONS = 4
#: A call on a connection that keeps answering (Redis slow, or this process's loop behind under
#: overload) waits up to this many ``connect_timeout + op_timeout`` in all, its wait for a slot
#: included; a stuck connection fails its calls after one.
_PATIENT_CALLS = 4


@functools.cache
def _unavailable() -> dict[type[Exception], str]:
    """redis-py errors that mean "Redis could not answer now", as ``{class: reason}``.

    ``BusyLoading`` is a restarting server reading its dump; ``ReadOnly`` a replica promoted too
    late; ``OutOfMemory`` a server at ``maxmemory`` that evicts nothing (it refuses every script
    that may write). Those two are error replies (``ResponseError``): matched before it.
    """
    import redis.exceptions as redis_errors

    return {
        redis_errors.TimeoutError: "timed out",
        redis_errors.BusyLoadingError: "server loading",
        redis_errors.ReadOnlyError: "server read-only",
        redis_errors.OutOfMemoryError: "server out of memory",
        redis_errors.AuthenticationError: "authentication failed",
        redis_errors.ConnectionError: "connection failed",
        ConnectionError: "connection failed",
        OSError: "network error",
    }


#: Error replies that mean "Redis could not run the command now" and have no redis-py class,
#: by their code (the reply's first word, which the protocol fixes): ``BUSY``, a script running
#: past ``busy-reply-threshold`` (Redis answers nothing else until it ends or is killed).
_REFUSAL_CODES = {"BUSY": "server busy"}


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    """One ``PING``: whether Redis answered and how long the round trip took."""

    ok: bool
    latency_ms: float | None
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The ``/health`` fragment."""
        return {"ok": self.ok, "latency_ms": self.latency_ms, "error": self.error}


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script run by ``EVALSHA`` (``EVAL`` once after a ``NOSCRIPT``: a restarted server)."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


class RedisLink:
    """The shared Redis: its connections, the key namespace and a fail-fast call wrapper.

    Calls share one pipelined connection (at most ``max_connections`` in flight). A connection
    that does not answer for ``connect_timeout + op_timeout`` is stuck: its calls fail and it is
    replaced; a call on one that keeps answering waits up to :data:`_PATIENT_CALLS` times that in
    all (the wait for a slot included). A call is retried at once only after a broken connection,
    and raises :class:`ClusterUnavailable` on any transport failure: callers fail closed at once
    and the next call simply tries again (recovery needs no action). Use ``async with
    RedisLink(config) as link`` or call :meth:`aclose`. asyncio only (redis-py's asyncio client).
    """

    def __init__(self, config: ClusterConfig) -> None:
        if config.redis_url is None:
            raise ValueError("cluster.redis_url is not set")
        import hiredis
        import redis.asyncio as redis
        import redis.exceptions as redis_errors

        self.config = config
        self.prefix = config.key_prefix
        self._response_error = redis_errors.ResponseError
        self._no_script = redis_errors.NoScriptError
        self._connection_error = redis_errors.ConnectionError
        self._unavailable = tuple(_unavailable())
        options = {"socket_connect_timeout": config.connect_timeout, "decode_responses": False}
        self._client: redis.Redis = redis.Redis(connection_pool=(
            redis.BlockingConnectionPool.from_url(
                config.redis_url, socket_timeout=config.op_timeout,
                max_connections=_CLIENT_CONNECTIONS,
                timeout=config.connect_timeout + config.op_timeout, **options)))
        # The link's own connection, pipelined (see _pipeline): no socket timeout, each call's
        # single deadline bounds its phases.
        pool = redis.ConnectionPool.from_url(config.redis_url, socket_timeout=None, **options)
        self._pipeline = Pipeline(
            functools.partial(pool.connection_class, **pool.connection_kwargs),
            hiredis.pack_command, redis_errors.ConnectionError, redis_errors.ResponseError,
            patience=config.connect_timeout + config.op_timeout)
        # At most max_connections calls in flight; the others wait in order (fast: no
        # checkpoint when a slot is free).
        self._slots = anyio.Semaphore(config.max_connections, fast_acquire=True)
        self._longest_call = _PATIENT_CALLS * (config.connect_timeout + config.op_timeout)
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self._closing: list[Callable[[], None]] = []
        #: Script calls made, by operation (measurements: round trips per request).
        self.calls: Counter[str] = Counter()

    def key(self, *parts: str) -> str:
        """``prefix:part:part``; the first part in braces makes one Redis Cluster hash slot."""
        head, *rest = parts
        return ":".join([self.prefix + ":{" + head + "}", *rest])

    def script(self, source: str) -> LuaScript:
        """A Lua script for :meth:`run` (loaded into Redis by its first run)."""
        return LuaScript(source)

    async def run(self, script: LuaScript, operation: str, keys: list[str],
                  args: list[Any]) -> Any:
        """Run ``script`` fail-fast (see the class docstring).

        A script that ran before its connection broke may run twice (the immediate retry):
        each is idempotent per permit, request, token or lease ticket. Raises
        :class:`anyio.ClosedResourceError` after :meth:`aclose`.
        """
        self.calls[operation] += 1
        try:
            return await self._command(operation, "EVALSHA", script.sha, len(keys), *keys, *args)
        except self._no_script:
            return await self._command(operation, "EVAL", script.source, len(keys), *keys, *args)

    def run_soon(self, script: LuaScript, operation: str, keys: list[str],
                 args: list[Any]) -> None:
        """Run ``script`` in the background: the caller does not wait for it.

        For writes whose failure the caller would drop anyway (a rate stamp: an unstamped
        permit counts as sent at its in-flight deadline). Failures are logged, not raised;
        :meth:`aclose` waits for the calls still running. Nothing runs after :meth:`aclose`.
        """
        if self._closed:
            return
        # An asyncio task, not one of a task group: the link is asyncio's (redis-py) and owns
        # these calls (each bounded by its deadline) until aclose waits for them.
        task = asyncio.get_running_loop().create_task(
            self._run_quietly(script, operation, keys, args))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def keep(self, task: asyncio.Task[None]) -> None:
        """Own a background ``task`` of this link's calls: :meth:`aclose` waits for it."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_quietly(self, script: LuaScript, operation: str, keys: list[str],
                           args: list[Any]) -> None:
        try:
            await self.run(script, operation, keys, args)
        except ClusterUnavailable as exc:
            logger.debug("cluster: %s dropped: %s", operation, exc.reason)
        except anyio.ClosedResourceError:
            pass
        except self._response_error as exc:
            logger.error("cluster: %s failed: %r", operation, exc)

    async def _command(self, operation: str, *command: Any) -> Any:
        if self._closed:
            raise anyio.ClosedResourceError
        # A stuck connection (no reply for connect + op timeout) fails its calls at once (the
        # pipeline's watchdog); one that keeps answering is waited for, up to
        # _PATIENT_CALLS deadlines in all (the call's phases included; asyncio's timeout: half
        # of anyio's cost, and no task per write as with redis-py's socket_timeout).
        try:
            async with asyncio.timeout(self._longest_call), self._slots:
                try:
                    return await self._pipeline.exchange(command)
                except self._connection_error:
                    # The connection broke since the command was written (a Redis restart):
                    # once more on a new one.
                    return await self._pipeline.exchange(command)
        except Exception as exc:
            outage = self._outage(operation, exc)
            if outage is None:
                raise  # a script bug or a wrong argument: not an outage
            raise outage from None

    async def call(self, operation: str, make: Callable[[], Awaitable[T]]) -> T:
        """Await ``make()`` (calls of :attr:`client`) under the operation timeout, translating
        Redis failures. Raises :class:`anyio.ClosedResourceError` after :meth:`aclose`.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        limit = self.config.connect_timeout + self.config.op_timeout
        try:
            with anyio.fail_after(limit):
                return await make()
        except Exception as exc:
            outage = self._outage(operation, exc)
            if outage is None:
                raise  # a script bug or a wrong argument: not an outage
            raise outage from None

    def _outage(self, operation: str, exc: Exception) -> ClusterUnavailable | None:
        """``exc`` as the outage it means for ``operation`` (Redis could not answer now: timed
        out, unreachable, loading, read-only, out of memory, busy), else ``None``."""
        if isinstance(exc, TimeoutError):
            return ClusterUnavailable(operation, "timed out")
        if isinstance(exc, self._unavailable):
            return ClusterUnavailable(operation, _reason(exc))
        if isinstance(exc, self._response_error) and (reason := _refusal(exc)) is not None:
            return ClusterUnavailable(operation, reason)
        return None

    async def ping(self) -> ClusterHealth:
        """``PING`` Redis for ``/health``; never raises for an outage."""
        started = time.perf_counter()
        try:
            await self._command("ping", "PING")
        except ClusterUnavailable as exc:
            return ClusterHealth(False, None, exc.reason)
        return ClusterHealth(True, round((time.perf_counter() - started) * 1000, 3))

    async def server_time(self) -> float:
        """Redis's own clock, in seconds since the epoch (what every script decides by)."""
        seconds, micros = await self._command("time", "TIME")
        return int(seconds) + int(micros) / 1_000_000

    @property
    def client(self) -> redis.Redis:
        """The redis-py client, for reads wrapped in :meth:`call` (tests, diagnostics)."""
        return self._client

    def on_close(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when :meth:`aclose` starts (it may still :meth:`run_soon`: e.g. give
        back leased permits)."""
        self._closing.append(hook)

    async def aclose(self) -> None:
        """Run the :meth:`on_close` hooks, wait for the background calls (each within its
        deadline), close the connections. Idempotent."""
        hooks, self._closing = self._closing, []
        for hook in hooks:
            try:
                hook()
            except Exception:  # one hook's bug must not leave the connections open
                logger.exception("cluster: a close hook failed")
        with anyio.CancelScope(shield=True):
            while self._background:  # a call that ends may start another (a refund)
                await asyncio.wait(set(self._background))
            self._closed = True
            await self._pipeline.aclose()
            with anyio.move_on_after(self.config.op_timeout):
                await self._client.aclose(close_connection_pool=True)

    async def __aenter__(self) -> RedisLink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        url = redact_url(self.config.redis_url or "")
        return f"<RedisLink {url} prefix={self.prefix!r}>"


def _refusal(exc: Exception) -> str | None:
    """The reason of an error reply of a server refusing now (:data:`_REFUSAL_CODES`), else
    ``None``."""
    return _REFUSAL_CODES.get(str(exc).partition(" ")[0])


def _reason(exc: BaseException) -> str:
    for cls, reason in _unavailable().items():
        if isinstance(exc, cls):
            return reason
    return "error"  # pragma: no cover - every caught class is listed
