"""One actor per configured MCP server: it owns the server's session and serves its tools.

The ``mcp`` SDK session lives in one child task of the actor (an anyio cancel-scope rule: it must
be opened and closed in the same task). Tool calls are forwarded to that task through a memory
stream, run there concurrently, and answered through ``pipe``, so the actor's loop never waits on
a tool. If the caller abandons a call, the call is cancelled in the session task too.

Lifecycle, as :class:`McpStatus` reports it::

    starting ──► ready ──(process died / connection lost)──► restarting ──► ready ...
        │                                                        │
        └──(start-up failed)──► failed ──(retry after backoff)───┘

- A **lost session** (the process died, the connection closed) crashes the instance with
  :class:`McpSessionLost`: its supervisor restarts it with backoff, calls in flight end with
  ``ActorCrashed`` (cause ``McpSessionLost``) or ``McpServerError``, queued messages are served by
  the next instance.
- A **start-up failure** does not crash anything: the instance stays up, reports ``failed`` with
  the reason, answers ``ListTools`` with no tools and ``CallTool`` with ``McpServerError`` at once,
  and retries with its own backoff. A permanently broken server therefore costs one process spawn
  every ``_START_BACKOFF.maximum`` seconds and can never reach the supervisor's restart intensity.
- Crashes can only follow a successful start, and the ``mcp`` supervisor's intensity is derived
  from its backoff (:func:`mcp_supervisor_spec`) so that servers crashing as fast as the backoff
  allows still never make it escalate: a flaky MCP server degrades the service, never stops it.

The health of each server is durable state of its actor (:class:`McpServerHealth`), readable
without an ask through ``system.durable("mcp:<name>")`` or :func:`mcp_status`.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, assert_never

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runtime import Actor, Backoff, Outcome, Overloaded

from ._config import McpServerConfig
from ._errors import McpError, McpServerError, McpSessionLost, McpToolError, McpToolTimeout
from ._health import McpServerHealth
from ._messages import CallTool, GetMcpStatus, ListTools, McpMessage
from ._redact import redact_server_text
from ._session import McpSession, open_mcp_session
from ._tool_types import ToolResult

__all__ = ["McpServerActor"]

# Between start-up attempts of a server that fails to start (inside one instance).
_START_BACKOFF: Final = Backoff(
    initial=1.0, maximum=30.0, multiplier=2.0, jitter=0.2, reset_after=math.inf
)
# How often the session task checks that a stdio server's process is still alive. The SDK only
# notices a dead process when a request fails; polling makes /health right between calls.
_LIVENESS_INTERVAL: Final = 0.5
_MAX_QUEUED_CALLS: Final = 256


# -- the actor ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _PendingCall:
    """A call on its way from the actor to the session task; its answer comes back on a
    one-slot memory stream (the first answer wins; an abandoned call's answer is dropped)."""

    tool: str
    arguments: dict[str, Any]
    timeout: float | None
    scope: anyio.CancelScope | None = None

    def __post_init__(self) -> None:
        self._answers, self._answer = anyio.create_memory_object_stream[ToolResult | McpError](1)

    @property
    def abandoned(self) -> bool:
        """The caller stopped waiting: the call need not run."""
        return self._answers.statistics().open_receive_streams == 0

    def answer(self, outcome: ToolResult | McpError) -> None:
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError,
                                 anyio.ClosedResourceError):
            self._answers.send_nowait(outcome)
        self._answers.close()

    def discard(self) -> None:
        """The call never left the actor."""
        self._answers.close()
        self._answer.close()

    async def result(self) -> ToolResult:
        """Wait for the answer. Cancelled, the call is abandoned and cancelled where it runs."""
        with self._answer, self._answers:
            try:
                outcome = await self._answer.receive()
            except anyio.get_cancelled_exc_class():
                if self.scope is not None:
                    self.scope.cancel()
                raise
        if isinstance(outcome, McpError):
            raise outcome
        return outcome


class McpServerActor(Actor["McpMessage"]):
    """Owns the session with one MCP server; see the module docstring for its lifecycle."""

    def __init__(
        self,
        name: str,
        config: McpServerConfig,
        *,
        start_backoff: Backoff = _START_BACKOFF,
        rng: random.Random | None = None,
    ) -> None:
        self._name = name
        self._config = config
        self._start_backoff = start_backoff
        self._rng = rng or random.Random()
        self._calls_send: MemoryObjectSendStream[_PendingCall] | None = None
        self._calls_receive: MemoryObjectReceiveStream[_PendingCall] | None = None

    @property
    def _health(self) -> McpServerHealth:
        health: McpServerHealth = self.context.durable
        return health

    async def on_start(self) -> None:
        self._calls_send, self._calls_receive = anyio.create_memory_object_stream[_PendingCall](
            _MAX_QUEUED_CALLS
        )
        self._health._starting()
        self.context.pipe(self._own_session, reply_to=None, then=self._session_ended)

    async def on_stop(self) -> None:
        if self._calls_send is not None and self._calls_receive is not None:
            self._calls_send.close()
            self._fail_queued(McpServerError(self._name, "is stopping"))
            self._calls_receive.close()

    async def receive(self, message: McpMessage) -> Any:
        match message:
            case CallTool():
                return self._forward(message)
            case ListTools():
                return list(self._health.tools) if self._health.state == "ready" else []
            case GetMcpStatus():
                return self._health.snapshot()
            case _:
                assert_never(message)

    def _forward(self, message: CallTool) -> None:
        health = self._health
        if health.state == "failed":
            raise McpServerError(self._name, f"is unavailable: {health.error}")
        call = _PendingCall(message.tool, dict(message.arguments), message.timeout)
        assert self._calls_send is not None
        try:
            self._calls_send.send_nowait(call)
        except anyio.WouldBlock:
            call.discard()
            raise Overloaded(self.context.name, _MAX_QUEUED_CALLS) from None
        self.context.pipe(call.result, reply_to=self.context.request)

    # -- the session task -----------------------------------------------------------------------

    async def _own_session(self) -> None:
        """Open the session (retrying start-up failures with backoff) and serve it until lost."""
        health = self._health
        attempt = 0
        while True:
            try:
                async with open_mcp_session(self._name, self._config) as session:
                    health._ready(session)
                    await self._serve(session)
            except McpSessionLost:
                raise
            except McpServerError as exc:
                attempt += 1
                delay = self._start_backoff.delay(attempt, self._rng)
                failure = self._redacted(exc)
                health._down("failed", f"{failure}; retrying in {delay:.1f} s")
                self._fail_queued(failure)
                await self.context.clock.sleep(delay)
                health.restarts += 1
                health._starting()

    async def _serve(self, session: McpSession) -> None:
        """Run forwarded calls until the session is lost; raises :class:`McpSessionLost`."""
        assert self._calls_receive is not None
        health = self._health
        lost: list[McpSessionLost] = []
        async with anyio.create_task_group() as task_group:

            def on_lost(error: McpSessionLost) -> None:
                if not lost:
                    error = McpSessionLost(self._name, self._redact(error.reason))
                    lost.append(error)
                    # Say so now: closing the dead session takes a moment.
                    health._down("restarting", error.reason)
                task_group.cancel_scope.cancel()

            task_group.start_soon(_watch_process, self._name, session, on_lost)
            # At most max_concurrent_calls run; the others wait in the bounded call queue (past
            # it a caller is told Overloaded at once), so a flood of turns never floods the server.
            running = anyio.Semaphore(self._config.max_concurrent_calls)
            async for call in self._calls_receive:
                await running.acquire()
                task_group.start_soon(self._execute, session, call, on_lost, running)
        raise lost[0] if lost else McpSessionLost(self._name, "call queue closed")

    async def _execute(
        self, session: McpSession, call: _PendingCall, on_lost: Callable[[McpSessionLost], None],
        running: anyio.Semaphore,
    ) -> None:
        try:
            if call.abandoned:
                call.discard()
                return
            outcome: ToolResult | McpError = McpServerError(
                self._name, "session ended before the call finished"
            )
            try:
                with anyio.CancelScope() as call.scope:
                    try:
                        outcome = await session.call_tool(call.tool, call.arguments,
                                                          call.timeout)
                    except McpServerError as exc:
                        outcome = self._redacted(exc)
                        on_lost(McpSessionLost(self._name, exc.reason))
                    except McpToolError as exc:
                        outcome = self._redacted(exc)
            finally:
                call.answer(outcome)
        finally:
            running.release()

    def _session_ended(self, outcome: Outcome) -> None:
        if outcome.cancelled:
            return  # the instance is stopping
        error = outcome.error
        if isinstance(error, McpServerError):
            reason = self._redact(error.reason)
        else:
            reason = self._redact(f"session task ended unexpectedly: {error!r}")
        self._health._down("restarting", reason)
        self._health.restarts += 1
        if isinstance(error, McpSessionLost):
            raise error
        raise McpSessionLost(self._name, reason) from error

    def _redact(self, text: str) -> str:
        return redact_server_text(text, self._config)

    def _redacted(self, error: McpError) -> McpError:
        """``error`` with what the server said (stderr tail, messages) redacted: it is shown to
        the model, the client (tool results) and ``/health``."""
        if isinstance(error, McpToolTimeout):
            return error  # our own words only
        if isinstance(error, McpSessionLost):
            return McpSessionLost(self._name, self._redact(error.reason))
        if isinstance(error, McpServerError):
            return McpServerError(self._name, self._redact(error.reason))
        if isinstance(error, McpToolError):
            return McpToolError(self._redact(str(error)), server=error.server, tool=error.tool)
        return error

    def _fail_queued(self, error: McpError) -> None:
        if self._calls_receive is None:
            return
        while True:
            try:
                call = self._calls_receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            call.answer(error)

    def __repr__(self) -> str:
        return f"<McpServerActor {self._name!r} [{self._config.transport}]>"


async def _watch_process(
    server: str, session: McpSession, on_lost: Callable[[McpSessionLost], None]
) -> None:
    """Report the session lost once its stdio server's process exits, or its output ends while
    it runs on (it stayed ``ready`` until a call failed on it)."""
    pid = session.pid
    if pid is None:
        return  # streamable HTTP: a lost connection surfaces on the next call
    while True:
        # Polling, not the injected clock: this watches the operating system, not our logic.
        await anyio.sleep(_LIVENESS_INTERVAL)
        if not _process_alive(pid):
            on_lost(McpSessionLost(server, f"process {pid} exited"))
            return
        if session.connection_ended:
            on_lost(McpSessionLost(server, f"process {pid} closed its output"))
            return


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[-1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in (b"Z", b"X")
