"""Immediate messages: an idle actor handles them in the sender's task, in mailbox order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from runtime import (
    Actor,
    ActorStopped,
    ActorSystem,
    ChildSpec,
    DeadlineExceeded,
    SupervisorSpec,
)


@dataclass(frozen=True)
class Now:
    """Handled by handle_now when the actor is idle."""

    value: int


@dataclass(frozen=True)
class Queued:
    """Always through the mailbox; ``hold`` makes the handler wait (the actor is busy)."""

    value: int
    hold: bool = False


class Fail(Exception):
    pass


class Fatal(Exception):
    pass


@dataclass(frozen=True)
class Raise:
    error: type[Exception]


@dataclass(frozen=True)
class Echo:
    """Handled now; tells the actor itself a Now (which must then be queued, not nested)."""

    value: int


class Mixed(Actor[Any]):
    def __init__(self, log: list[tuple[str, object]], release: anyio.Event) -> None:
        self.log = log
        self.release = release

    def immediate_messages(self) -> tuple[type, ...]:
        return (Now, Raise, Echo)

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Queued) and message.hold:
            await self.release.wait()
        self.log.append(("receive", message))
        if isinstance(message, (Now, Raise, Echo)):
            return self.handle_now(message)
        return message

    def handle_now(self, message: Any) -> Any:
        self.log.append(("now", message))
        if isinstance(message, Raise):
            raise message.error("refused")
        if isinstance(message, Echo):
            self.context.self_ref.tell(Now(message.value))
        return message


def system_of(log: list[tuple[str, object]], release: anyio.Event) -> ActorSystem:
    spec = ChildSpec("a", lambda: Mixed(log, release), crash_on=(Fatal,))
    return ActorSystem(SupervisorSpec("root", [spec]))


async def test_an_idle_actor_answers_an_immediate_ask_without_its_mailbox() -> None:
    log: list[tuple[str, object]] = []
    async with system_of(log, anyio.Event()) as system:
        ref = system.ref("a")
        await anyio.wait_all_tasks_blocked()
        assert await ref.ask(Now(1), timeout=5) == Now(1)
        ref.tell(Now(2))
        assert ref.try_tell(Now(3)) is True
        assert await ref.ask(Queued(4), timeout=5) == Queued(4)
    assert log == [("now", Now(1)), ("now", Now(2)), ("now", Now(3)),
                   ("receive", Queued(4))]


async def test_a_busy_actor_queues_immediate_messages_in_order() -> None:
    log: list[tuple[str, object]] = []
    release = anyio.Event()
    async with system_of(log, release) as system:
        ref = system.ref("a")
        await anyio.wait_all_tasks_blocked()
        ref.tell(Queued(1, hold=True))
        ref.tell(Now(2))  # behind Queued(1): not handled now
        assert system.status()["a"].mailbox_depth == 2
        await anyio.wait_all_tasks_blocked()
        ref.tell(Now(3))  # the actor is in a handler: queued too
        release.set()
        assert await ref.ask(Queued(4), timeout=5) == Queued(4)
        await anyio.wait_all_tasks_blocked()
        assert await ref.ask(Now(5), timeout=5) == Now(5)  # idle again
    assert log == [("receive", Queued(1, hold=True)), ("receive", Now(2)), ("now", Now(2)),
                   ("receive", Now(3)), ("now", Now(3)), ("receive", Queued(4)),
                   ("now", Now(5))]


async def test_a_message_sent_from_handle_now_to_the_same_actor_is_queued() -> None:
    log: list[tuple[str, object]] = []
    async with system_of(log, anyio.Event()) as system:
        ref = system.ref("a")
        await anyio.wait_all_tasks_blocked()
        assert await ref.ask(Echo(1), timeout=5) == Echo(1)
        assert await ref.ask(Queued(2), timeout=5) == Queued(2)
    assert log == [("now", Echo(1)), ("receive", Now(1)), ("now", Now(1)),
                   ("receive", Queued(2))]


async def test_errors_answer_the_caller_and_crash_on_crashes_the_instance() -> None:
    log: list[tuple[str, object]] = []
    async with system_of(log, anyio.Event()) as system:
        ref = system.ref("a")
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(Fail, match="refused"):
            await ref.ask(Raise(Fail), timeout=5)
        ref.tell(Raise(Fail))  # a tell's error is logged, not raised in the sender
        assert system.status()["a"].restart_count == 0
        with pytest.raises(Fatal, match="refused"):
            await ref.ask(Raise(Fatal), timeout=5)
        with anyio.fail_after(5):
            while system.status()["a"].restart_count == 0:  # bounded by the fail_after
                await anyio.sleep(0.01)
        assert await ref.ask(Now(7), timeout=5) == Now(7)


async def test_an_expired_deadline_or_a_stopped_actor_is_refused() -> None:
    log: list[tuple[str, object]] = []
    async with system_of(log, anyio.Event()) as system:
        ref = system.ref("a")
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(DeadlineExceeded):
            await ref.ask(Now(1), deadline=anyio.current_time() - 1)
    with pytest.raises(ActorStopped):
        ref.tell(Now(2))
    assert log == []
