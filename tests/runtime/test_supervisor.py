"""Supervision: restarts, strategies, restart types, intensity, backoff, ordering."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from runtime import (
    ActorState,
    ActorStopped,
    ActorSystem,
    Backoff,
    ChildSpec,
    Restart,
    Strategy,
    SupervisorSpec,
    SystemFailure,
)
from runtime.testing import FakeClock
from tests.kernel_actors import Boom, Crash, Recorder

NO_JITTER = Backoff(initial=1.0, maximum=8.0, multiplier=2.0, jitter=0.0, reset_after=100.0)
FLAT = Backoff(initial=1.0, multiplier=1.0, jitter=0.0)


def child(name: str, events: list[str] | None = None, **kw: Any) -> ChildSpec:
    return ChildSpec(name, lambda: Recorder(events=events), crash_on=(Boom,), **kw)


async def crash(system: ActorSystem, name: str) -> None:
    with pytest.raises(Boom):
        await system.ref(name).ask(Crash())
    await anyio.wait_all_tasks_blocked()


async def test_crashed_actor_restarts_after_backoff_and_serves_queued_messages() -> None:
    clock = FakeClock()
    spec = SupervisorSpec("root", [child("a")], backoff=NO_JITTER)
    async with ActorSystem(spec, clock=clock) as system:
        ref = system.ref("a")
        await crash(system, "a")
        assert system.status()["a"].state is ActorState.RESTARTING
        replies: list[Any] = []

        async def ask(i: int) -> None:
            replies.append(await ref.ask(i))

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(ask, i)
            await anyio.wait_all_tasks_blocked()
            assert system.status()["a"].mailbox_depth == 3
            assert replies == []
            await clock.advance(0.99)
            assert system.status()["a"].state is ActorState.RESTARTING
            await clock.advance(0.01)
        assert sorted(replies) == [0, 1, 2]  # the callers' order is the backend's (trio shuffles)
        assert system.status()["a"].state is ActorState.RUNNING
        assert system.status()["a"].restart_count == 1


async def test_backoff_doubles_up_to_the_maximum_then_resets_after_a_quiet_period() -> None:
    clock = FakeClock()
    spec = SupervisorSpec("root", [child("a")], backoff=NO_JITTER, max_restarts=100,
                          max_seconds=1.0)
    async with ActorSystem(spec, clock=clock) as system:
        for expected in [1.0, 2.0, 4.0, 8.0, 8.0]:
            await crash(system, "a")
            await clock.advance(expected - 0.001)
            assert system.status()["a"].state is ActorState.RESTARTING, expected
            await clock.advance(0.001)
            assert system.status()["a"].state is ActorState.RUNNING, expected
        await clock.advance(100.0)
        await crash(system, "a")
        await clock.advance(1.0)
        assert system.status()["a"].state is ActorState.RUNNING


def test_backoff_jitter_stays_within_its_band() -> None:
    import random

    backoff = Backoff(initial=1.0, multiplier=2.0, maximum=30.0, jitter=0.2)
    rng = random.Random(7)
    delays = [backoff.delay(3, rng) for _ in range(200)]
    assert all(3.2 <= d <= 4.8 for d in delays)
    assert max(delays) - min(delays) > 1.0


async def test_one_for_one_restarts_only_the_crashed_child() -> None:
    clock = FakeClock()
    events: list[str] = []
    spec = SupervisorSpec("root", [child("a", events), child("b", events), child("c", events)],
                          backoff=NO_JITTER)
    async with ActorSystem(spec, clock=clock) as system:
        assert events == ["start a", "start b", "start c"]
        events.clear()
        await crash(system, "b")
        await clock.advance(1.0)
        assert events == ["stop b", "start b"]
        events.clear()
    assert events == ["stop c", "stop b", "stop a"]


async def test_one_for_all_restarts_every_child_in_order() -> None:
    clock = FakeClock()
    events: list[str] = []
    spec = SupervisorSpec("root", [child("a", events), child("b", events), child("c", events)],
                          strategy=Strategy.ONE_FOR_ALL, backoff=NO_JITTER)
    async with ActorSystem(spec, clock=clock) as system:
        events.clear()
        await crash(system, "b")
        assert events == ["stop b", "stop c", "stop a"]
        await clock.advance(1.0)
        assert events[3:] == ["start a", "start b", "start c"]
        assert [system.status()[n].restart_count for n in "abc"] == [1, 1, 1]


async def test_rest_for_one_restarts_the_crashed_child_and_those_after_it() -> None:
    clock = FakeClock()
    events: list[str] = []
    spec = SupervisorSpec("root", [child("a", events), child("b", events), child("c", events)],
                          strategy=Strategy.REST_FOR_ONE, backoff=NO_JITTER)
    async with ActorSystem(spec, clock=clock) as system:
        events.clear()
        await crash(system, "b")
        await clock.advance(1.0)
        assert events == ["stop b", "stop c", "start b", "start c"]


async def test_rest_for_one_still_restarts_the_first_child_when_a_later_one_crashed_too() -> None:
    # Both crash before the supervisor handles either exit: b's own restart replaces the one
    # pending for [a, b], and must not leave a unstarted (it used to, and asks to a hung).
    clock = FakeClock()
    events: list[str] = []
    spec = SupervisorSpec("root", [child("a", events), child("b", events)],
                          strategy=Strategy.REST_FOR_ONE, backoff=NO_JITTER)
    async with ActorSystem(spec, clock=clock) as system:
        events.clear()
        async with anyio.create_task_group() as tg:
            tg.start_soon(crash, system, "a")
            tg.start_soon(crash, system, "b")
        assert system.status()["a"].state is ActorState.RESTARTING
        assert system.status()["b"].state is ActorState.RESTARTING
        await clock.advance(1.0)
        assert sorted(events[:2]) == ["stop a", "stop b"]  # they crashed concurrently
        assert events[2:] == ["start a", "start b"]
        assert await system.ref("a").ask("back") == "back"
        assert await system.ref("b").ask("back") == "back"


async def test_transient_child_is_restarted_after_a_crash_only() -> None:
    clock = FakeClock()
    spec = SupervisorSpec("root", [child("t", restart=Restart.TRANSIENT)], backoff=NO_JITTER)
    async with ActorSystem(spec, clock=clock) as system:
        await crash(system, "t")
        await clock.advance(1.0)
        assert system.status()["t"].state is ActorState.RUNNING
        await system.stop_actor("t")
        assert "t" not in system.status()


async def test_temporary_child_is_never_restarted() -> None:
    clock = FakeClock()
    spec = SupervisorSpec("root", [child("tmp", restart=Restart.TEMPORARY), child("p")],
                          backoff=NO_JITTER)
    async with ActorSystem(spec, clock=clock) as system:
        ref = system.ref("tmp")
        await crash(system, "tmp")
        await clock.advance(10.0)
        assert "tmp" not in system.status()
        with pytest.raises(ActorStopped):
            await ref.ask("x")
        assert await system.ref("p").ask("y") == "y"


async def test_exceeding_restart_intensity_escalates_and_stops_the_system() -> None:
    clock = FakeClock()
    spec = SupervisorSpec("root", [child("a")], max_restarts=2, max_seconds=10.0, backoff=FLAT)
    with pytest.raises(SystemFailure, match=r"^actor system stopped: supervisor 'root' gave up: "
                       r"child 'a' needed more than 2 restarts in 10s$"):
        async with ActorSystem(spec, clock=clock) as system:
            ref = system.ref("a")
            for _ in range(2):
                await crash(system, "a")
                await clock.advance(1.0)
            await crash(system, "a")
            await anyio.sleep(5)  # cancelled by the escalation
    with pytest.raises(ActorStopped):
        await ref.ask("x")


async def test_restarts_spread_over_more_than_the_period_do_not_escalate() -> None:
    clock = FakeClock()
    spec = SupervisorSpec("root", [child("a")], max_restarts=2, max_seconds=10.0, backoff=FLAT)
    async with ActorSystem(spec, clock=clock) as system:
        for _ in range(6):
            await crash(system, "a")
            await clock.advance(6.0)
        assert system.status()["a"].restart_count == 6


async def test_nested_supervisor_escalation_is_handled_by_the_parent() -> None:
    clock = FakeClock()
    inner = SupervisorSpec("inner", [child("x")], max_restarts=0, backoff=NO_JITTER)
    spec = SupervisorSpec("root", [inner, child("y")], backoff=NO_JITTER)
    async with ActorSystem(spec, clock=clock) as system:
        await crash(system, "x")
        assert system.status()["x"].state is ActorState.RESTARTING
        await clock.advance(1.0)
        assert await system.ref("x").ask("back") == "back"
        assert await system.ref("y").ask("fine") == "fine"


async def test_failure_in_on_start_is_a_crash_and_is_retried() -> None:
    clock = FakeClock()
    attempts: list[int] = []

    class FlakyStart(Recorder):
        async def on_start(self) -> None:
            attempts.append(1)
            if len(attempts) == 1:
                raise Boom("not yet")

    spec = SupervisorSpec("root", [ChildSpec("f", FlakyStart)], backoff=NO_JITTER)
    async with ActorSystem(spec, clock=clock) as system:
        await anyio.wait_all_tasks_blocked()
        assert system.status()["f"].state is ActorState.RESTARTING
        await clock.advance(1.0)
        assert await system.ref("f").ask("ok") == "ok"
    assert len(attempts) == 2


async def test_durable_state_survives_restart() -> None:
    clock = FakeClock()
    seen: list[int] = []

    class Counter(Recorder):
        async def receive(self, message: Any) -> Any:
            if message == "inc":
                self.context.durable["n"] += 1
                seen.append(self.context.durable["n"])
                return self.context.durable["n"]
            return await super().receive(message)

    spec = SupervisorSpec("root", [ChildSpec("c", Counter, crash_on=(Boom,),
                                             durable=lambda: {"n": 0})], backoff=NO_JITTER)
    async with ActorSystem(spec, clock=clock) as system:
        await system.ref("c").ask("inc")
        await crash(system, "c")
        await clock.advance(1.0)
        assert await system.ref("c").ask("inc") == 2


async def test_shutdown_timeout_cancels_a_stuck_actor() -> None:
    actor = Recorder()
    spec = SupervisorSpec("root", [ChildSpec("s", lambda: actor, shutdown_timeout=0.1)])
    with anyio.fail_after(5):
        async with ActorSystem(spec) as system:
            ref = system.ref("s")
            async with anyio.create_task_group() as tg:

                async def blocked() -> None:
                    with pytest.raises(ActorStopped):
                        await ref.ask("block")

                tg.start_soon(blocked)
                await anyio.wait_all_tasks_blocked()
                await system.stop()


async def test_spawned_actor_is_supervised_and_stopped_with_the_system() -> None:
    events: list[str] = []
    async with ActorSystem(SupervisorSpec("root")) as system:
        ref = await system.spawn(child("dyn", events))
        assert await ref.ask("hi") == "hi"
    assert events == ["start dyn", "stop dyn"]


async def test_spawn_cancelled_while_starting_leaves_no_unserved_actor() -> None:
    started = anyio.Event()

    class SlowStart(Recorder):
        async def on_start(self) -> None:
            started.set()
            await anyio.sleep(30)

    spec = ChildSpec("slow", SlowStart, restart=Restart.TEMPORARY)
    async with ActorSystem(SupervisorSpec("root")) as system:
        async with anyio.create_task_group() as tg:

            async def spawn() -> None:
                await system.spawn(spec)

            tg.start_soon(spawn)
            await started.wait()
            tg.cancel_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert "slow" not in system.status()
        # The name is free again, and a new actor under it is served.
        ref = await system.spawn(child("slow", restart=Restart.TEMPORARY))
        with anyio.fail_after(2):
            assert await ref.ask("hi") == "hi"
