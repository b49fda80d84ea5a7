"""aiolocks in a pytest-asyncio test suite, written with plain asyncio APIs as its users write them.

pytest-asyncio runs in strict mode (see pyproject.toml) with a new event loop per test, so the
module-level lock below also proves a lock made outside any loop moves between loops when idle.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import pytest

import aiolocks

SHARED_LOCK = aiolocks.Lock()  # a module-level global, as in a web app


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition()`` holds (e.g. a task has parked on a lock)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), timeout=5)


async def _within(seconds: float, awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, timeout=seconds)


@pytest.mark.asyncio
async def test_lock_serialises_gathered_coroutines() -> None:
    lock = aiolocks.Lock()
    balance = 0

    async def deposit() -> None:
        nonlocal balance
        async with lock:
            current = balance
            await asyncio.sleep(0)  # another coroutine would interleave here without the lock
            balance = current + 1

    await _within(5, asyncio.gather(*(deposit() for _ in range(50))))
    assert balance == 50
    assert not lock.locked()


@pytest.mark.asyncio
@pytest.mark.parametrize("run", [1, 2])
async def test_module_level_lock_works_in_each_tests_loop(run: int) -> None:
    entered = []

    async def take() -> None:
        async with SHARED_LOCK:
            entered.append(run)

    async with SHARED_LOCK:
        assert SHARED_LOCK.locked()
        waiter = asyncio.create_task(take())
        await _until(lambda: SHARED_LOCK.statistics().tasks_waiting == 1)
    await _within(5, waiter)
    assert entered == [run]
    assert not SHARED_LOCK.locked()


async def _hold_until(lock: Any, held: asyncio.Event, done: asyncio.Event) -> None:
    async with lock:
        held.set()
        await done.wait()


@pytest.mark.asyncio
async def test_wait_for_timeout_on_contended_lock_leaves_it_usable() -> None:
    lock = aiolocks.Lock()
    held, done = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(_hold_until(lock, held, done))
    await _within(5, held.wait())
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(lock.acquire(), timeout=0.01)
    assert lock.statistics().tasks_waiting == 0
    done.set()
    await _within(5, holder)
    assert not lock.locked()
    # The timed-out acquire left nothing behind: this task takes the lock at once.
    lock.acquire_nowait()
    lock.release()


@pytest.mark.asyncio
@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
async def test_asyncio_timeout_around_waiting_writer() -> None:
    rw = aiolocks.RWLock()
    held, done = asyncio.Event(), asyncio.Event()
    reader = asyncio.create_task(_hold_until(rw.reader, held, done))
    await _within(5, held.wait())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):  # type: ignore[attr-defined]
            await rw.writer.acquire()
    stats = rw.statistics()
    assert (stats.readers, stats.writer, stats.writers_waiting) == (1, None, 0)
    done.set()
    async with asyncio.timeout(5):  # type: ignore[attr-defined]
        await reader
        async with rw.writer:
            assert rw.writer.locked()


@pytest.mark.asyncio
async def test_cancelling_a_waiting_writer_lets_blocked_readers_in() -> None:
    rw = aiolocks.RWLock()
    order: list[str] = []

    async def write() -> None:
        async with rw.writer:
            order.append("writer")  # pragma: no cover - cancelled while waiting

    async def read(name: str) -> None:
        async with rw.reader:
            order.append(name)

    await rw.reader.acquire()
    writer = asyncio.create_task(write())
    await _until(lambda: rw.statistics().writers_waiting == 1)
    # Writer preference: a reader arriving now queues behind the waiting writer.
    late_reader = asyncio.create_task(read("late reader"))
    await _until(lambda: rw.statistics().readers_waiting == 1)
    writer.cancel()
    await _within(5, asyncio.wait([writer, late_reader]))
    assert writer.cancelled()
    assert order == ["late reader"]
    rw.reader.release()
    assert rw.statistics().readers == 0


@pytest.mark.asyncio
async def test_readers_share_and_writers_exclude_under_gather() -> None:
    rw = aiolocks.RWLock()
    readers_inside = 0
    max_readers = 0
    writer_inside = False
    both_readers_in = asyncio.Event()

    async def reader() -> None:
        nonlocal readers_inside, max_readers
        async with rw.reader:
            assert not writer_inside
            readers_inside += 1
            max_readers = max(max_readers, readers_inside)
            if readers_inside == 2:
                both_readers_in.set()
            await both_readers_in.wait()  # only returns if two readers are in at once
            readers_inside -= 1

    async def writer() -> None:
        nonlocal writer_inside
        async with rw.writer:
            assert readers_inside == 0
            writer_inside = True
            await asyncio.sleep(0)
            writer_inside = False

    await _within(5, asyncio.gather(reader(), reader(), writer(), writer()))
    assert max_readers == 2
    assert rw.statistics().readers == 0
    assert not rw.writer.locked()
