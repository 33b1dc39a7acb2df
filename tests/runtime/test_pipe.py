"""Child tasks (``ActorContext.pipe``): their outcomes answer the request through ``then``.

An idle actor completes an outcome at once in the child's task; a busy one in its loop, after
what it is doing; either way one writer, in mailbox order. An awaitable ``then`` is awaited in
the loop; a cancelled outcome still reaches ``then``. Each test runs with the piping message
handled in the loop and as an immediate message (``handle_now`` delegating to the child).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from runtime import (
    Actor,
    ActorCrashed,
    ActorSystem,
    Ask,
    ChildSpec,
    DeadlineExceeded,
    Outcome,
    SupervisorSpec,
)


class Fail(Exception):
    pass


class Fatal(Exception):
    pass


@dataclass(frozen=True)
class Job(Ask[int]):
    """Piped to a child that waits for ``gate`` (when given) and returns ``value``."""

    value: int
    then: str = "sync"  # sync, async, fail, fatal, delegate
    gate: anyio.Event | None = None
    raise_after_pipe: bool = False


@dataclass(frozen=True)
class Hold(Ask[str]):
    """Handled in the loop, which waits for ``release``: the actor is busy meanwhile."""

    release: anyio.Event


class Worker(Actor[Any]):
    def __init__(self, log: list[tuple[str, object]], immediate: bool) -> None:
        self.log = log
        self.immediate = immediate

    def immediate_messages(self) -> tuple[type, ...]:
        return (Job,) if self.immediate else ()

    def handle_now(self, message: Job) -> None:
        self.log.append(("now", message.value))
        self._start(message)

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Hold):
            self.log.append(("hold", "start"))
            await message.release.wait()
            self.log.append(("hold", "end"))
            return "held"
        assert isinstance(message, Job)
        self._start(message)
        return None

    def _start(self, message: Job) -> None:
        self.context.pipe(self._work, message, reply_to=self.context.request,
                          then=lambda outcome: self._then(message, outcome))
        if message.raise_after_pipe:
            raise Fail("after the pipe")

    async def _work(self, job: Job) -> int:
        self.log.append(("task", anyio.get_current_task().id))
        if job.gate is not None:
            try:
                await job.gate.wait()
            except anyio.get_cancelled_exc_class():
                self.log.append(("work", "cancelled"))
                raise
        return job.value

    def _then(self, job: Job, outcome: Outcome) -> Any:
        self.log.append(("then", "cancelled" if outcome.cancelled else outcome.value))
        if job.then == "fail":
            raise Fail("refused")
        if job.then == "fatal":
            raise Fatal("broken")
        if job.then == "delegate":
            self.context.pipe(self._work, Job(job.value * 10), reply_to=self.context.request)
            return None
        if job.then == "async":
            return self._later(outcome.unwrap())
        return outcome.unwrap() * 2

    async def _later(self, value: int) -> int:
        self.log.append(("later", "start"))
        status = self.context.actor_status(self.context.name)
        self.log.append(("in flight", status.in_flight if status is not None else -1))
        await anyio.lowlevel.checkpoint()
        if value < 0:
            raise Fatal("late")
        self.log.append(("later", "end"))
        return value * 3


@pytest.fixture(params=[False, True], ids=["loop", "immediate"])
def immediate(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


def system_of(log: list[tuple[str, object]], immediate: bool) -> ActorSystem:
    spec = ChildSpec("w", lambda: Worker(log, immediate), crash_on=(Fatal,))
    return ActorSystem(SupervisorSpec("root", [spec]))


async def test_outcomes_answer_through_then_sync_async_and_delegated(immediate: bool) -> None:
    log: list[tuple[str, object]] = []
    async with system_of(log, immediate) as system:
        ref = system.ref("w")
        await anyio.wait_all_tasks_blocked()  # idle
        assert await ref.ask(Job(1), timeout=5) == 2
        assert await ref.ask(Job(2, then="async"), timeout=5) == 6
        assert await ref.ask(Job(3, then="delegate"), timeout=5) == 30
        assert system.status()["w"].in_flight == 0
    assert [entry for entry in log if entry[0] not in ("now", "task")] == [
        ("then", 1), ("then", 2), ("later", "start"), ("in flight", 0), ("later", "end"),
        ("then", 3)]
    assert [entry for entry in log if entry[0] == "now"] == (
        [("now", 1), ("now", 2), ("now", 3)] if immediate else [])


async def test_a_busy_actor_completes_an_outcome_after_what_it_is_doing(immediate: bool) -> None:
    log: list[tuple[str, object]] = []
    async with system_of(log, immediate) as system:
        ref = system.ref("w")
        await anyio.wait_all_tasks_blocked()  # idle
        gate, release = anyio.Event(), anyio.Event()
        results: list[object] = []

        async def job() -> None:
            results.append(await ref.ask(Job(4, gate=gate), timeout=5))

        async def hold() -> None:
            results.append(await ref.ask(Hold(release), timeout=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(job)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(hold)
            await anyio.wait_all_tasks_blocked()
            gate.set()  # the child ends while the actor is in Hold's handler
            await anyio.wait_all_tasks_blocked()
            assert log[-1] == ("hold", "start")
            release.set()
        assert sorted(map(str, results)) == ["8", "held"]
    assert [entry for entry in log if entry[0] not in ("now", "task")] == [
        ("hold", "start"), ("hold", "end"), ("then", 4)]


async def test_errors_of_then_answer_the_caller_and_crash_on_crashes_the_instance(
        immediate: bool) -> None:
    log: list[tuple[str, object]] = []
    async with system_of(log, immediate) as system:
        ref = system.ref("w")
        await anyio.wait_all_tasks_blocked()  # idle
        with pytest.raises(Fail, match="refused"):
            await ref.ask(Job(5, then="fail"), timeout=5)
        assert system.status()["w"].restart_count == 0
        with pytest.raises(Fatal, match="broken"):
            await ref.ask(Job(6, then="fatal"), timeout=5)
        with anyio.fail_after(5):
            while system.status()["w"].restart_count != 1:
                await anyio.sleep(0.01)
        with pytest.raises(Fatal, match="late"):  # raised by the awaited part, in the loop
            await ref.ask(Job(-1, then="async"), timeout=5)
        with anyio.fail_after(5):
            while system.status()["w"].restart_count != 2:
                await anyio.sleep(0.01)
        assert await ref.ask(Job(7), timeout=5) == 14
    assert [entry for entry in log if entry[0] not in ("now", "task")] == [
        ("then", 5), ("then", 6), ("then", -1), ("later", "start"), ("in flight", 0),
        ("then", 7)]


async def test_an_abandoned_request_still_reaches_then_with_a_cancelled_outcome(
        immediate: bool) -> None:
    log: list[tuple[str, object]] = []
    async with system_of(log, immediate) as system:
        ref = system.ref("w")
        await anyio.wait_all_tasks_blocked()  # idle
        with pytest.raises(DeadlineExceeded):
            await ref.ask(Job(8, gate=anyio.Event()), timeout=0.05)
        with anyio.fail_after(5):
            while not any(entry[0] == "then" for entry in log):
                await anyio.sleep(0.01)
        assert system.status()["w"].in_flight == 0
    assert [entry for entry in log if entry[0] not in ("now", "task")] == [
        ("work", "cancelled"), ("then", "cancelled")]


async def test_an_immediate_asks_work_runs_in_the_asking_task(immediate: bool) -> None:
    # Handled at once, the work piped for an ask runs in the asker's own task (it only waits for
    # it); handled in the loop, in a child task of the actor.
    log: list[tuple[str, object]] = []
    async with system_of(log, immediate) as system:
        ref = system.ref("w")
        await anyio.wait_all_tasks_blocked()  # idle
        asker = anyio.get_current_task().id
        assert await ref.ask(Job(1), timeout=5) == 2
        ref.tell(Job(2))  # a tell's work is a child task either way
        with anyio.fail_after(5):
            while ("then", 2) not in log:
                await anyio.sleep(0.01)
    tasks = [task for kind, task in log if kind == "task"]
    assert len(tasks) == 2
    assert (tasks[0] == asker) is immediate
    assert tasks[1] != asker


async def test_the_instance_ending_cancels_the_work_of_its_asks(immediate: bool) -> None:
    log: list[tuple[str, object]] = []
    async with system_of(log, immediate) as system:
        ref = system.ref("w")
        await anyio.wait_all_tasks_blocked()  # idle
        errors: list[BaseException] = []

        async def waiting() -> None:
            try:
                await ref.ask(Job(1, gate=anyio.Event()), timeout=5)
            except ActorCrashed as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(Fatal, match="broken"):
                await ref.ask(Job(2, then="fatal"), timeout=5)
        assert [type(error) for error in errors] == [ActorCrashed]
        with anyio.fail_after(5):
            while system.status()["w"].restart_count != 1:
                await anyio.sleep(0.01)
        assert system.status()["w"].in_flight == 0
        assert await ref.ask(Job(3), timeout=5) == 6
    # The first job's outcome belongs to the crashed instance: its then never runs.
    assert [entry for entry in log if entry[0] not in ("now", "task")] == [
        ("then", 2), ("work", "cancelled"), ("then", 3)]


async def test_work_piped_before_the_handler_failed_still_runs(immediate: bool) -> None:
    log: list[tuple[str, object]] = []
    async with system_of(log, immediate) as system:
        ref = system.ref("w")
        await anyio.wait_all_tasks_blocked()  # idle
        with pytest.raises(Fail, match="after the pipe"):
            await ref.ask(Job(4, raise_after_pipe=True), timeout=5)
        with anyio.fail_after(5):
            while ("then", 4) not in log:
                await anyio.sleep(0.01)
        assert system.status()["w"].in_flight == 0
        assert system.status()["w"].restart_count == 0
