"""Property: whatever interleaving of asks, crashes and stops, every ask ends exactly once."""

from __future__ import annotations

from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import ActorError, ActorSystem, Backoff, ChildSpec, Strategy, SupervisorSpec
from tests.kernel_actors import Boom, Count, Crash, Recorder, Refused, Slow

operation = st.one_of(
    st.tuples(st.just("ask"), st.sampled_from("ab"), st.integers(0, 3)),
    st.tuples(st.just("slow"), st.sampled_from("ab"), st.integers(0, 20)),
    st.tuples(st.just("crash"), st.sampled_from("ab"), st.just(0)),
    st.tuples(st.just("stream"), st.sampled_from("ab"), st.integers(0, 30)),
    st.tuples(st.just("timeout"), st.sampled_from("ab"), st.integers(1, 10)),
    st.tuples(st.just("pause"), st.just("a"), st.integers(0, 5)),
    st.tuples(st.just("stop"), st.just("a"), st.just(0)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=1, max_size=25),
       strategy=st.sampled_from(list(Strategy)))
def test_every_ask_ends_exactly_once(ops: list[tuple[str, str, int]], strategy: Strategy) -> None:
    anyio.run(_scenario, ops, strategy)


async def _scenario(ops: list[tuple[str, str, int]], strategy: Strategy) -> None:
    spec = SupervisorSpec(
        "root",
        [ChildSpec(name, Recorder, crash_on=(Boom,), mailbox_size=8) for name in "ab"],
        strategy=strategy,
        max_restarts=1000,
        backoff=Backoff(initial=0.001, maximum=0.005, jitter=0.5),
    )
    endings: list[list[Any]] = []

    async def call(kind: str, name: str, arg: int, system: ActorSystem, slot: list[Any]) -> None:
        ref = system.ref(name)
        try:
            if kind == "ask":
                slot.append(await ref.ask(arg))
            elif kind == "slow":
                slot.append(await ref.ask(Slow(arg / 1000, arg)))
            elif kind == "crash":
                slot.append(await ref.ask(Crash()))
            elif kind == "timeout":
                slot.append(await ref.ask(Slow(0.05, arg), timeout=arg / 1000))
            else:
                async with ref.ask_stream(Count(arg), buffer=2) as items:
                    slot.append([item async for item in items])
        except (ActorError, Boom, Refused) as exc:
            slot.append(exc)

    with anyio.fail_after(10):
        async with ActorSystem(spec, seed=1) as system, anyio.create_task_group() as tg:
            for kind, name, arg in ops:
                if kind == "pause":
                    await anyio.sleep(arg / 1000)
                elif kind == "stop":
                    tg.start_soon(system.stop)
                else:
                    slot: list[Any] = []
                    endings.append(slot)
                    tg.start_soon(call, kind, name, arg, system, slot)
    assert all(len(slot) == 1 for slot in endings), endings
