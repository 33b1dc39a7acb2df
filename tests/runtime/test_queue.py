"""``runtime.Queue``: order, endings, and a consumer's wait cancelled and taken up again.

On asyncio the consumer reuses one event across waits (``runtime/_queue.py``); these tests hold
that a cancelled wait, a wake without an item and a wait right after a wake behave as with a new
event each time, on asyncio and trio (``conftest.py``).
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from runtime import Queue

pytestmark = pytest.mark.anyio


async def test_items_come_out_in_order_across_waits() -> None:
    queue: Queue[int] = Queue()
    got: list[int] = []

    async def consume() -> None:
        for _ in range(50):
            got.append(await queue.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for i in range(50):
                await anyio.lowlevel.checkpoint()  # the consumer waits for every other item
                if i % 2:
                    await anyio.lowlevel.checkpoint()
                queue.put(i)
    assert got == list(range(50))


async def test_a_cancelled_wait_leaves_the_queue_usable_for_the_next_one() -> None:
    queue: Queue[str] = Queue()
    with anyio.fail_after(5):
        for _ in range(3):
            with anyio.move_on_after(0.01) as scope:
                await queue.get()
            assert scope.cancelled_caught
        assert queue.consumer_waiting  # as before: the cancelled wait's event is still noted
        async with anyio.create_task_group() as tg:
            result: list[str] = []

            async def consume() -> None:
                result.append(await queue.get())

            tg.start_soon(consume)
            await anyio.sleep(0.01)
            queue.put("after the cancelled waits")
    assert result == ["after the cancelled waits"]
    assert not queue.consumer_waiting


async def test_a_wake_without_an_item_ends_wait_and_the_next_wait_waits_again() -> None:
    queue: Queue[int] = Queue()
    woken: list[str] = []

    async def waiter() -> None:
        await queue.wait()
        woken.append("first")
        await queue.wait()  # the wake above must not end this one
        woken.append("second")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.01)
            queue.wake()
            await anyio.sleep(0.05)
            assert woken == ["first"]
            queue.put(1)
    assert woken == ["first", "second"]
    assert queue.get_nowait() == 1


async def test_close_drains_then_ends_and_break_refuses_producers() -> None:
    queue: Queue[int] = Queue(capacity=2)
    queue.put(1)
    queue.put(2)
    with pytest.raises(anyio.WouldBlock):
        queue.put(3)
    queue.close()
    assert [await queue.get(), await queue.get()] == [1, 2]
    with pytest.raises(anyio.EndOfStream):
        await queue.get()

    broken: Queue[int] = Queue(capacity=1)
    broken.put(1)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            outcome: list[type[BaseException]] = []

            async def produce() -> None:
                try:
                    await broken.send(2)  # full: waits for room
                except anyio.BrokenResourceError as exc:
                    outcome.append(type(exc))

            tg.start_soon(produce)
            await anyio.sleep(0.01)
            broken.break_()
    assert outcome == [anyio.BrokenResourceError]
    with pytest.raises(anyio.ClosedResourceError):
        broken.get_nowait()


async def test_a_consumer_waiting_when_the_queue_closes_gets_the_end() -> None:
    queue: Queue[int] = Queue()
    ends: list[type[BaseException]] = []

    async def consume() -> None:
        try:
            await queue.get()
        except anyio.EndOfStream as exc:
            ends.append(type(exc))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.01)
            queue.close()
    assert ends == [anyio.EndOfStream]


async def test_a_rendezvous_send_returns_once_its_item_is_taken() -> None:
    queue: Queue[str] = Queue(capacity=0)
    sent: list[str] = []

    async def produce() -> None:
        await queue.send("x")
        sent.append("returned")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await anyio.sleep(0.02)
            assert sent == []
            assert await queue.get() == "x"
    assert sent == ["returned"]
