"""ActorRef semantics: ask, tell, ask_stream, overload, deadlines, cancellation."""

from __future__ import annotations

import anyio
import pytest

from runtime import (
    ActorCrashed,
    ActorStopped,
    ActorSystem,
    ChildSpec,
    DeadlineExceeded,
    Overloaded,
    SupervisorSpec,
)
from tests.kernel_actors import Boom, Count, Crash, Recorder, Refuse, Refused, Slow


def one(actor: Recorder | None = None, **spec: object) -> SupervisorSpec:
    instance = actor or Recorder()
    return SupervisorSpec("root", [ChildSpec("a", lambda: instance, **spec)])  # type: ignore[arg-type]


async def test_ask_round_trip_returns_the_reply() -> None:
    async with ActorSystem(one()) as system:
        assert await system.ref("a").ask("hello") == "hello"


async def test_tell_is_delivered_in_order() -> None:
    actor = Recorder()
    async with ActorSystem(one(actor)) as system:
        ref = system.ref("a")
        for i in range(100):
            ref.tell(i)
        assert await ref.ask("last") == "last"
    assert actor.log == [*range(100), "last"]


async def test_full_mailbox_raises_overloaded_and_counts_drops() -> None:
    actor = Recorder()
    async with ActorSystem(one(actor, mailbox_size=2)) as system:
        ref = system.ref("a")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.ask, "block")
            await anyio.wait_all_tasks_blocked()
            ref.tell(1)
            ref.tell(2)
            full = r"^actor 'a' is overloaded: mailbox full \(2 messages\)$"
            with pytest.raises(Overloaded, match=full):
                ref.tell(3)
            assert ref.try_tell(4) is False
            assert system.status()["a"].dropped == 1
            assert system.status()["a"].mailbox_depth == 2
            actor.blocker.set()
    assert actor.log == [1, 2]


async def test_handler_error_is_raised_in_caller_and_actor_keeps_serving() -> None:
    async with ActorSystem(one(crash_on=(Boom,))) as system:
        ref = system.ref("a")
        with pytest.raises(Refused, match=r"^no$"):
            await ref.ask(Refuse())
        assert await ref.ask("still here") == "still here"
        assert system.status()["a"].restart_count == 0


async def test_ask_timeout_raises_deadline_exceeded_and_cancels_child_work() -> None:
    actor = Recorder()
    async with ActorSystem(one(actor)) as system:
        ref = system.ref("a")
        with pytest.raises(DeadlineExceeded, match=r"^actor 'a': no reply before the deadline$"):
            await ref.ask(Slow(30), timeout=0.05)
        # The abandoned child was cancelled and its outcome reached the actor's own loop.
        await anyio.wait_all_tasks_blocked()
        assert await ref.ask("state") == 1
        assert actor.cancelled == ["slow"]
        assert system.status()["a"].in_flight == 0


async def test_expired_message_in_queue_is_skipped() -> None:
    actor = Recorder()
    async with ActorSystem(one(actor)) as system:
        ref = system.ref("a")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.ask, "block")
            await anyio.wait_all_tasks_blocked()
            expired = anyio.current_time() - 1
            with pytest.raises(DeadlineExceeded):
                await ref.ask("late", deadline=expired)
            actor.blocker.set()
        assert await ref.ask("on time") == "on time"
    assert actor.log == ["on time"]


async def test_cancelling_the_caller_cancels_the_child_task() -> None:
    actor = Recorder()
    async with ActorSystem(one(actor)) as system:
        ref = system.ref("a")
        with anyio.move_on_after(0.05) as scope:
            await ref.ask(Slow(30))
        assert scope.cancelled_caught
        await anyio.wait_all_tasks_blocked()
        assert await ref.ask("state") == 1
        assert actor.cancelled == ["slow"]


async def test_many_concurrent_asks_are_served_by_child_tasks() -> None:
    actor = Recorder()
    results: list[int] = []
    async with ActorSystem(one(actor)) as system:
        ref = system.ref("a")

        async def call(i: int) -> None:
            results.append(await ref.ask(Slow(0.2, i), timeout=5))

        with anyio.fail_after(2):  # 200 sequential sleeps would take 40 s
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(call, i)
    assert sorted(results) == list(range(200))
    assert actor.state == 200


async def test_ask_stream_yields_every_item_then_ends() -> None:
    async with ActorSystem(one()) as system:
        stream = system.ref("a").ask_stream(Count(50), buffer=2)
        async with stream as items:
            assert [item async for item in items] == list(range(50))


async def test_ask_stream_backpressure_holds_the_producer() -> None:
    async with ActorSystem(one()) as system:
        async with system.ref("a").ask_stream(Count(1000), buffer=4) as items:
            iterator = aiter(items)
            assert await anext(iterator) == 0
            await anyio.wait_all_tasks_blocked()
        # Left early: the producer was cancelled, the actor still serves.
        await anyio.wait_all_tasks_blocked()
        assert await system.ref("a").ask("x") == "x"
        assert system.status()["a"].in_flight == 0


async def test_crash_fails_in_flight_asks_with_actor_crashed() -> None:
    async with ActorSystem(one(crash_on=(Boom,))) as system:
        ref = system.ref("a")
        outcomes: list[BaseException] = []

        async def slow() -> None:
            try:
                await ref.ask(Slow(30), timeout=5)
            except ActorCrashed as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(Boom):
                await ref.ask(Crash())
        assert len(outcomes) == 1
        assert outcomes[0].retryable
        assert str(outcomes[0]) == "actor 'a' crashed before replying: Boom"


async def test_ask_after_stop_raises_actor_stopped() -> None:
    async with ActorSystem(one()) as system:
        ref = system.ref("a")
    with pytest.raises(ActorStopped, match=r"^actor 'a': "):
        await ref.ask("x")


async def test_stop_drains_queued_asks_before_stopping() -> None:
    actor = Recorder()
    results: list[object] = []
    async with ActorSystem(one(actor)) as system:
        ref = system.ref("a")

        async def ask(i: int) -> None:
            results.append(await ref.ask(i))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.ask, "block")
            await anyio.wait_all_tasks_blocked()
            for i in range(5):
                tg.start_soon(ask, i)
            await anyio.wait_all_tasks_blocked()
            actor.blocker.set()
    assert sorted(results) == [0, 1, 2, 3, 4]  # type: ignore[type-var]


async def test_repr_shows_state_and_mailbox() -> None:
    async with ActorSystem(one()) as system:
        assert repr(system) == "<ActorSystem root [1 running]>"
        assert repr(system.ref("a")) == "<ActorRef a>"
        assert system.status()["a"].mailbox_capacity == 1000
