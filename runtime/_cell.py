"""The cell that runs an actor's instances over a mailbox that outlives them.

An :class:`ActorCell` owns the mailbox (so queued messages survive a restart) and the durable
state, and runs one instance at a time; child outcomes come back through the mailbox, or at once
in the child's task when the actor is idle (see :meth:`ActorCell._complete_now`).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from runtime._actor import Actor, ActorState, ActorStatus, unwrap_group
from runtime._cell_items import _STOP, _ChildDone, _Crash, _Resume
from runtime._cell_tasks import CellTasks
from runtime._context import ActorContext
from runtime._errors import ActorCrashed, ActorStopped, DeadlineExceeded, Overloaded
from runtime._queue import Queue
from runtime._ref import ActorRef
from runtime._request import Delegated, Request, RequestKind

if TYPE_CHECKING:
    from runtime._supervisor import ChildSpec, Registry

__all__ = ["ActorCell"]

logger = logging.getLogger("runtime")

#: Messages an actor handles in a row, when its mailbox is never empty, before it yields once to
#: the other tasks (a mailbox that has items answers without a checkpoint: see
#: :class:`~runtime._queue.Queue`).
_BURST = 64


class ActorCell(CellTasks):
    """Runs the instances of one actor over a mailbox that outlives them."""

    def __init__(self, spec: ChildSpec, registry: Registry) -> None:
        self.spec = spec
        self.name = spec.name
        self.registry = registry
        self.ref = ActorRef(self)
        self.durable: Any = spec.durable() if spec.durable is not None else None
        self.state = ActorState.STARTING
        self.restart_count = 0
        self.dropped = 0
        self._capacity = spec.mailbox_size
        self._depth = 0
        self._accepting = True
        # Unbounded underneath: the bound is enforced for outside senders in enqueue(), so that
        # child outcomes and the stop marker can always be delivered.
        self._mailbox: Queue[Any] = Queue()
        self.in_flight: set[Request] = set()
        """Requests answered later by piped work (see :meth:`ActorContext.pipe`)."""
        self._current: Request | None = None
        self._generation = 0
        self._stopping = False
        self._instance_scope: anyio.CancelScope | None = None
        self.parked: Actor[Any] | None = None
        """The instance while its loop waits on an empty mailbox (see ``handle_now``)."""
        self.immediate: frozenset[type] = frozenset()

    # -- senders ------------------------------------------------------------------------------

    def enqueue(self, request: Request) -> None:
        if not self._accepting:
            raise ActorStopped(self.name)
        if self._depth >= self._capacity:
            raise Overloaded(self.name, self._capacity)
        self._depth += 1
        self._mailbox.put(request)

    def can_handle_now(self, message: object) -> bool:
        """Whether :meth:`handle_now` may take ``message``: the actor is idle and declares it."""
        return (self.parked is not None and type(message) in self.immediate
                and not self._mailbox.items)

    def handle_now(self, message: object, deadline: float, tell: bool) -> Any:
        """Handle ``message`` in the caller's task (checked by :meth:`can_handle_now`)."""
        if not self._accepting:
            raise ActorStopped(self.name)
        if deadline != math.inf and anyio.current_time() >= deadline:
            raise DeadlineExceeded(self.name)
        instance = self.parked
        assert instance is not None
        request = Request(message, deadline=deadline)
        if not tell:
            request.kind = RequestKind.ASK
        context = instance.context
        # Not idle while it handles this: a message it sends that comes back is queued.
        self.parked = None
        context.request = self._current = request
        if not tell:
            context.asker_waits = request  # work it pipes for this runs in the asker's task
        try:
            result = instance.handle_now(message)
        except Exception as exc:
            request.fail(exc)  # answered: a child it started answers nobody
            inline, request.inline = request.inline, None
            if inline is not None:  # still runs, as a child task
                context._task_group.start_soon(self.run_child, inline.scope, request,
                                               inline.work, inline.args, inline.then,
                                               inline.generation)
            if isinstance(exc, self.spec.crash_on):
                self._mailbox.put(_Crash(exc))  # the loop raises it: the instance crashes
            if not tell:
                raise
            logger.warning("actor %s: %s while handling a message", self.name,
                           type(exc).__name__)
            return None
        finally:
            context.request = self._current = context.asker_waits = None
            if self._mailbox.consumer_waiting and not self._mailbox.items:
                self.parked = instance
        if request.delegations and not tell:
            return Delegated(request)  # a child answers it: the sender waits for that
        return result

    def status(self) -> ActorStatus:
        return ActorStatus(
            name=self.name,
            state=self.state,
            restart_count=self.restart_count,
            mailbox_depth=self._depth,
            mailbox_capacity=self._capacity,
            in_flight=len(self.in_flight),
            dropped=self.dropped,
            restart=self.spec.restart,
        )

    # -- lifecycle (called by the supervisor) ---------------------------------------------------

    async def run_instance(self, on_ready: Callable[[], None]) -> None:
        """Run one instance until it stops (return) or crashes (raise its error)."""
        self._generation += 1
        generation = self._generation
        self._stopping = False
        instance = self.spec.factory()
        crashed: BaseException | None = None
        try:
            with anyio.CancelScope() as self._instance_scope:
                async with anyio.create_task_group() as task_group:
                    instance.context = ActorContext(self, task_group, generation)
                    await instance.on_start()
                    self.immediate = frozenset(instance.immediate_messages())
                    self.state = ActorState.RUNNING
                    on_ready()
                    await self._serve(instance, generation)
                    task_group.cancel_scope.cancel()
        except Exception as exc:
            crashed = unwrap_group(exc)
            raise crashed from None
        finally:
            self._instance_scope = None
            self.parked = None
            self.immediate = frozenset()
            self.state = ActorState.STOPPED if self._stopping else ActorState.RESTARTING
            ended: BaseException = (
                ActorStopped(self.name, "stopped before replying")
                if crashed is None and not self._accepting
                else ActorCrashed(self.name, crashed)
            )
            if self._current is not None:
                self._current.fail(ended)
                self._current = None
            for request in list(self.in_flight):
                request.fail(ended)
                if request._scope is not None:
                    request._scope.cancel()  # work running in its asker's task ends too
            self.in_flight.clear()
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.spec.shutdown_timeout):
                try:
                    await instance.on_stop()
                except Exception:
                    logger.exception("actor %s: on_stop failed", self.name)

    def terminate(self) -> None:
        """Cancel the running instance now (its queued messages stay for the next one)."""
        if self._instance_scope is not None:
            self._instance_scope.cancel()

    def begin_shutdown(self) -> None:
        """Stop accepting messages; the instance drains the queue, then stops."""
        self._accepting = False
        self.state = ActorState.STOPPING
        self._mailbox.put(_STOP)

    def close(self, reason: str = "actor is stopped") -> None:
        """Stop for good: fail everything still queued with :class:`ActorStopped`."""
        self._accepting = False
        self.state = ActorState.STOPPED
        while batch := self._mailbox.take_all():  # what failing them queues too
            for item in batch:
                if isinstance(item, Request):
                    self._depth -= 1
                    item.fail(ActorStopped(self.name, reason))
                elif type(item) is _Resume:
                    item.drop()
        self._mailbox.break_()

    # -- the loop -------------------------------------------------------------------------------

    async def _serve(self, instance: Actor[Any], generation: int) -> None:
        mailbox = self._mailbox
        receive = mailbox.get
        context = instance.context
        crash_on = self.spec.crash_on
        burst = 0
        item: Any = None
        request: Request | None = None
        while True:
            # The last message is not held while the loop waits for the next one (an abandoned
            # ask's notice holds its whole request).
            item = request = None
            if not mailbox.items:
                burst = 0
                self.parked = instance
                try:
                    item = await receive()
                finally:
                    self.parked = None
            else:
                if burst >= _BURST:
                    burst = 0
                    await anyio.lowlevel.checkpoint()  # a long queue does not starve the others
                else:
                    # A terminated instance leaves its queued messages to the next one.
                    await anyio.lowlevel.checkpoint_if_cancelled()
                item = await receive()
            burst += 1
            if type(item) is _Crash:
                raise item.error
            if type(item) is _ChildDone:
                if item.generation == generation:
                    resume = self._complete(instance, item, crash_on)
                    if resume is not None:
                        await self._resume(instance, resume, crash_on)
                if self._stopping and not self.in_flight:
                    return
                continue
            if type(item) is _Resume:
                if item.generation == generation:
                    await self._resume(instance, item, crash_on)
                else:
                    item.drop()
                if self._stopping and not self.in_flight:
                    return
                continue
            if item is _STOP:
                self._stopping = True
                if not self.in_flight:
                    return
                continue
            request, item = item, None
            self._depth -= 1
            if request.done:
                continue
            if request.expired:
                request.fail(DeadlineExceeded(self.name, "deadline passed while queued"))
                continue
            context.request = self._current = request
            try:
                result = await instance.receive(request.message)
            except Exception as exc:
                self._answer_error(request, exc, crash_on)
            else:
                if not request.delegations:
                    request.reply(result)
            finally:
                context.request = None
                # Cancelled mid-handler, it stays current: answered when the instance ends.
                if request.done or request.delegations:
                    self._current = None

    def _complete(
        self, instance: Actor[Any], done: _ChildDone, crash_on: tuple[type[BaseException], ...]
    ) -> _Resume | None:
        """Answer a child's request with its outcome, or run its ``then``; an awaitable that
        ``then`` returned comes back to be awaited in the actor's loop."""
        request = done.request
        if request is not None:
            self.in_flight.discard(request)
        if done.then is None:
            if done.outcome.error is not None:
                self._answer_error(request, done.outcome.error, crash_on)
            elif request is not None:
                request.reply(done.outcome.value)
            return None
        context = instance.context
        context.request = request
        delegations = request.delegations if request is not None else 0
        try:
            result = done.then(done.outcome)
        except Exception as exc:
            self._answer_error(request, exc, crash_on)
            return None
        finally:
            context.request = None
        if inspect.isawaitable(result):
            if request is not None:
                self.in_flight.add(request)  # until the loop has awaited it
            return _Resume(request, result, delegations, done.generation)
        if request is not None and request.delegations == delegations:
            request.reply(result)
        return None

    async def _resume(
        self, instance: Actor[Any], resume: _Resume, crash_on: tuple[type[BaseException], ...]
    ) -> None:
        request = resume.request
        if request is not None:
            self.in_flight.discard(request)
        context = instance.context
        context.request = request
        try:
            result = await resume.awaitable
        except Exception as exc:
            self._answer_error(request, exc, crash_on)
        else:
            if request is not None and request.delegations == resume.delegations:
                request.reply(result)
        finally:
            context.request = None

    def _complete_now(self, done: _ChildDone) -> bool:
        """Complete a child's outcome in its own task when the actor is idle, as
        :meth:`handle_now` does a message: the same order and single writer as through the
        mailbox, without the round trip. Not a cancelled outcome, nor while stopping: those go
        through the loop."""
        instance = self.parked
        if (instance is None or done.outcome.cancelled or self._stopping or self._mailbox.items
                or done.generation != self._generation):
            return False
        self.parked = None  # a message it sends that comes back is queued
        try:
            resume = self._complete(instance, done, self.spec.crash_on)
        except Exception as exc:  # matches crash_on: the loop raises it
            self._mailbox.put(_Crash(exc))
            return True
        finally:
            if self._mailbox.consumer_waiting and not self._mailbox.items:
                self.parked = instance
        if resume is not None:
            self._mailbox.put(resume)
        return True

    def _answer_error(
        self,
        request: Request | None,
        error: Exception,
        crash_on: tuple[type[BaseException], ...],
    ) -> None:
        if request is not None:
            request.fail(error)
        if isinstance(error, crash_on):
            raise error
        if request is None or request.kind is RequestKind.TELL:
            logger.warning("actor %s: %s while handling a message", self.name,
                           type(error).__name__)

    def __repr__(self) -> str:
        return (
            f"<ActorCell {self.name} [{self.state.value} | mailbox {self._depth}/"
            f"{self._capacity} | {len(self.in_flight)} in flight | restarts {self.restart_count}]>"
        )
