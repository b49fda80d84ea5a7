"""aiolocks.threadsafe.Lock across threads, event loops in other threads, and trio.

The single-loop behaviour (FIFO, cancellation, statistics, repr, owner exit of a task) is in the
generic suite (tests/test_generic.py); here: the blocking side, and tasks and threads together.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
import weakref
from typing import Any

import anyio
import pytest
import trio

import aiolocks
import aiolocks.debug
from _threads import DEADLINE, LoopThread, TrioThread, loop_threads, start_thread, wait_until
from aiolocks import DeadlockError
from aiolocks._introspect import check_invariants
from aiolocks.threadsafe import Lock


def _waiting(lock: Any) -> int:
    return int(lock.statistics().tasks_waiting)


def _take_and_release(lock: Lock) -> bool:
    """From a thread: wait for the lock (with a deadline), release it; whether it was had."""
    got = lock.acquire_blocking(timeout=DEADLINE)
    lock.release()
    return got


# --- the blocking side, from plain threads ----------------------------------------------------


def test_threads_exclude_each_other_and_no_update_is_lost() -> None:
    lock = Lock()
    counter = 0
    inside = 0

    def worker() -> None:
        nonlocal counter, inside
        for _ in range(300):
            with lock:
                inside += 1
                assert inside == 1
                value = counter
                counter = value + 1  # a lost update shows if two threads were in here
                inside -= 1

    threads = [start_thread(worker) for _ in range(8)]
    for _, fut in threads:
        fut.result(DEADLINE)
    assert counter == 8 * 300
    assert not lock.locked()
    check_invariants(lock)


def test_acquire_blocking_times_out_holding_nothing() -> None:
    lock = Lock()
    lock.acquire_blocking()
    _, fut = start_thread(lambda: lock.acquire_blocking(timeout=0.02))
    assert fut.result(DEADLINE) is False
    assert _waiting(lock) == 0
    _, fut = start_thread(lambda: lock.acquire_blocking(timeout=0))
    assert fut.result(DEADLINE) is False
    lock.release()
    assert not lock.locked()
    check_invariants(lock)


def test_acquire_blocking_returns_true_when_handed_the_lock() -> None:
    lock = Lock()
    lock.acquire_blocking()
    _, fut = start_thread(lambda: _take_and_release(lock))
    wait_until(lambda: _waiting(lock) == 1, "the thread queued")
    lock.release()
    assert fut.result(DEADLINE) is True
    assert not lock.locked()


def test_thread_reacquiring_its_lock_gets_deadlock_error() -> None:
    lock = Lock()
    with lock:
        with pytest.raises(DeadlockError):
            lock.acquire_blocking()
        with pytest.raises(DeadlockError):
            lock.acquire_nowait()
        assert lock.statistics().owner is not None
    assert not lock.locked()


def test_release_by_another_thread_raises_and_keeps_the_hold() -> None:
    lock = Lock()
    lock.acquire_blocking()
    _, fut = start_thread(lock.release)
    with pytest.raises(RuntimeError, match="holds it"):
        fut.result(DEADLINE)
    assert lock.locked()
    lock.release()


def test_threads_are_served_in_arrival_order() -> None:
    lock = Lock()
    order: list[int] = []
    lock.acquire_blocking()
    futs = []
    for i in range(5):

        def take(i: int = i) -> None:
            with lock:
                order.append(i)

        futs.append(start_thread(take)[1])
        wait_until(lambda i=i: _waiting(lock) == i + 1, "the thread queued")
    lock.release()
    for fut in futs:
        fut.result(DEADLINE)
    assert order == list(range(5))


def test_timed_out_thread_leaves_the_queue_and_the_next_is_served() -> None:
    lock = Lock()
    lock.acquire_blocking()
    _, first = start_thread(lambda: lock.acquire_blocking(timeout=0.05))
    wait_until(lambda: _waiting(lock) == 1, "the first thread queued")

    def second() -> bool:
        got = lock.acquire_blocking(timeout=DEADLINE)
        lock.release()
        return got

    _, fut = start_thread(second)
    assert first.result(DEADLINE) is False
    wait_until(lambda: _waiting(lock) == 1, "only the second thread queued")
    lock.release()
    assert fut.result(DEADLINE) is True
    assert not lock.locked()
    check_invariants(lock)


def test_thread_exiting_while_holding_breaks_the_lock() -> None:
    lock = Lock()
    thread, fut = start_thread(lock.acquire_blocking)  # returns still holding: a bug to report
    assert fut.result(DEADLINE) is True
    thread.join(DEADLINE)
    gc.collect()
    with pytest.raises(anyio.BrokenResourceError, match="exited without releasing"):
        lock.acquire_blocking(timeout=DEADLINE)
    with pytest.raises(anyio.WouldBlock):
        lock.acquire_nowait()
    check_invariants(lock)


def test_thread_exiting_while_holding_fails_threads_already_waiting() -> None:
    lock = Lock()
    leave = threading.Event()

    def hold_and_exit() -> None:
        lock.acquire_blocking()
        leave.wait(DEADLINE)

    holder, _ = start_thread(hold_and_exit)
    wait_until(lock.locked, "the holder took the lock")
    waiters = [start_thread(lambda: lock.acquire_blocking(timeout=DEADLINE))[1] for _ in range(3)]
    wait_until(lambda: _waiting(lock) == 3, "the waiters queued")
    leave.set()
    holder.join(DEADLINE)
    for fut in waiters:
        with pytest.raises(anyio.BrokenResourceError):
            fut.result(DEADLINE)
    assert _waiting(lock) == 0
    check_invariants(lock)


def test_lock_is_not_kept_alive_by_a_thread_that_held_it() -> None:
    lock = Lock()
    ref = weakref.ref(lock)

    def use(lock: Lock) -> None:
        with lock:
            pass

    start_thread(functools.partial(use, lock))[1].result(DEADLINE)
    del lock
    gc.collect()
    assert ref() is None


# --- a blocking acquire where an event loop runs ------------------------------------------------


@pytest.mark.anyio
async def test_blocking_acquire_in_a_running_loop_is_refused(anyio_backend: Any) -> None:
    lock = Lock()
    with pytest.raises(RuntimeError, match="async with"), lock:
        pass  # pragma: no cover - refused before entering
    with pytest.raises(RuntimeError, match="async with"):
        lock.acquire_blocking(timeout=0)
    assert not lock.locked()
    async with lock:  # the async side works
        pass


def test_async_acquire_outside_any_task_says_to_use_with() -> None:
    lock = Lock()
    coro = lock.acquire()
    with pytest.raises(RuntimeError, match="acquire_blocking"):
        coro.send(None)
    assert not lock.locked()


# --- tasks and threads together ----------------------------------------------------------------


@pytest.mark.anyio
async def test_thread_and_task_hand_off_in_arrival_order(anyio_backend: Any) -> None:
    lock = Lock()
    order: list[str] = []
    with anyio.fail_after(DEADLINE):
        await lock.acquire()

        def thread_a() -> None:
            with lock:
                order.append("thread a")

        def thread_c() -> None:
            with lock:
                order.append("thread c")

        async def task_b() -> None:
            async with lock:
                order.append("task b")

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, thread_a)
            while _waiting(lock) < 1:
                await anyio.sleep(0.001)
            tg.start_soon(task_b)
            await anyio.wait_all_tasks_blocked()
            assert _waiting(lock) == 2
            tg.start_soon(anyio.to_thread.run_sync, thread_c)
            while _waiting(lock) < 3:
                await anyio.sleep(0.001)
            lock.release()
    assert order == ["thread a", "task b", "thread c"]
    assert not lock.locked()
    check_invariants(lock)


@pytest.mark.anyio
async def test_task_waiting_is_woken_when_a_thread_releases(anyio_backend: Any) -> None:
    lock = Lock()
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            release.wait(DEADLINE)

    thread, _ = start_thread(holder)
    assert held.wait(DEADLINE)
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                async with lock:
                    assert lock.statistics().owner == anyio.get_current_task()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert _waiting(lock) == 1
            release.set()
    thread.join(DEADLINE)
    assert not lock.locked()


@pytest.mark.anyio
async def test_task_waiting_behind_a_thread_that_exits_holding_gets_broken(
    anyio_backend: Any,
) -> None:
    lock = Lock()
    thread, fut = start_thread(lock.acquire_blocking)
    assert fut.result(DEADLINE)
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                with pytest.raises(anyio.BrokenResourceError):
                    await lock.acquire()

            tg.start_soon(waiter)
            await anyio.to_thread.run_sync(thread.join, DEADLINE)
            await anyio.to_thread.run_sync(gc.collect)
    check_invariants(lock)


def test_thread_waiting_behind_a_task_that_exits_holding_gets_broken() -> None:
    lock = Lock()
    with LoopThread() as loop:
        leave = asyncio.Event()  # binds to the loop that first waits on it

        async def hold_and_exit() -> None:
            await lock.acquire()
            await leave.wait()

        fut = loop.submit(hold_and_exit())
        wait_until(lock.locked, "the task took the lock")
        _, waiter = start_thread(lambda: lock.acquire_blocking(timeout=DEADLINE))
        wait_until(lambda: _waiting(lock) == 1, "the thread queued")
        loop.loop.call_soon_threadsafe(leave.set)
        fut.result(DEADLINE)
        with pytest.raises(anyio.BrokenResourceError):
            waiter.result(DEADLINE)
    check_invariants(lock)


def test_task_on_a_stopped_loop_keeps_its_hold_until_the_loop_runs_again() -> None:
    # A loop that is stopped but not closed may run again (run_until_complete() called later,
    # as here): its task has not exited, so the lock is not broken and its hold lasts.
    lock = Lock()
    loop = asyncio.new_event_loop()
    try:
        leave = asyncio.Event()

        async def hold() -> None:
            async with lock:
                await leave.wait()

        task = loop.create_task(hold())
        loop.run_until_complete(asyncio.sleep(0))  # the task takes the lock; the loop stops
        assert lock.locked()
        _, impatient = start_thread(lambda: lock.acquire_blocking(timeout=0.05))
        assert impatient.result(DEADLINE) is False  # timed out behind the hold, not broken
        _, patient = start_thread(lambda: _take_and_release(lock))
        wait_until(lambda: _waiting(lock) == 1, "the thread queued behind the stopped task")
        leave.set()
        loop.run_until_complete(task)  # the loop runs again: the task releases, hands over
        assert patient.result(DEADLINE) is True
    finally:
        loop.close()
    assert not lock.locked()
    check_invariants(lock)


def test_tasks_of_four_loops_and_threads_count_exactly() -> None:
    lock = Lock()
    counter = 0
    rounds = 200

    async def task_worker() -> None:
        nonlocal counter
        for _ in range(rounds):
            async with lock:
                value = counter
                await asyncio.sleep(0)
                counter = value + 1

    async def trio_worker() -> None:
        nonlocal counter
        for _ in range(rounds):
            async with lock:
                value = counter
                await trio.lowlevel.checkpoint()
                counter = value + 1

    def thread_worker() -> None:
        nonlocal counter
        for _ in range(rounds):
            with lock:
                value = counter
                counter = value + 1

    trio_thread = TrioThread()
    with loop_threads(4, uvloop_first=True) as loops:
        futs = [lt.submit(task_worker()) for lt in loops for _ in range(3)]
        futs += [trio_thread.submit(trio_worker) for _ in range(3)]
        futs += [start_thread(thread_worker)[1] for _ in range(4)]
        for fut in futs:
            fut.result(DEADLINE * 3)
    trio_thread.close()
    assert counter == rounds * (12 + 3 + 4)
    assert not lock.locked()
    check_invariants(lock)


def test_cancelled_cross_loop_waiters_never_keep_the_lock() -> None:
    lock = Lock()
    acquired = 0

    async def nervous(i: int) -> None:
        nonlocal acquired
        for j in range(100):
            with anyio.move_on_after(0.0001 * ((i + j) % 5)):
                async with lock:
                    acquired += 1
                    await asyncio.sleep(0)

    async def nervous_trio(i: int) -> None:
        nonlocal acquired
        for j in range(100):
            with trio.move_on_after(0.0001 * ((i + j) % 5)):
                async with lock:
                    acquired += 1
                    await trio.lowlevel.checkpoint()

    trio_thread = TrioThread()
    with loop_threads(2) as loops:
        futs = [lt.submit(nervous(i)) for i, lt in enumerate(loops * 3)]
        futs += [trio_thread.submit(lambda i=i: nervous_trio(i)) for i in range(3)]
        for fut in futs:
            fut.result(DEADLINE * 3)
    trio_thread.close()
    assert acquired > 0
    assert not lock.locked()
    assert _waiting(lock) == 0
    check_invariants(lock)


# --- with the rest of aiolocks -----------------------------------------------------------------


@pytest.mark.anyio
async def test_lock_collection_takes_threadsafe_locks_and_refuses_duplicates(
    anyio_backend: Any,
) -> None:
    from aiolocks import LockCollection, TaskKey
    from aiolocks.threadsafe import RWLock

    lock, rw = Lock(), RWLock()
    collection = LockCollection(lock, rw.writer, aiolocks.Lock())
    with anyio.fail_after(DEADLINE):
        async with collection.lock(TaskKey.get()):
            assert lock.locked()
            assert rw.writer.locked()
            assert await anyio.to_thread.run_sync(lambda: lock.acquire_blocking(0)) is False
    assert not lock.locked()
    assert not rw.writer.locked()
    with pytest.raises(ValueError, match="name the same lock"):
        LockCollection(rw.reader, rw.writer)
    LockCollection(rw.reader, rw.reader)  # read views only: allowed


@pytest.mark.anyio
async def test_debug_snapshot_lists_threadsafe_locks_with_holders_and_waiters(
    anyio_backend: Any,
) -> None:
    lock = Lock(name="shared-by-threads")
    lock.acquire_nowait()
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:

            def take_and_release() -> None:
                with lock:
                    pass

            tg.start_soon(anyio.to_thread.run_sync, take_and_release)
            while _waiting(lock) < 1:
                await anyio.sleep(0.001)
            (info,) = [p for p in aiolocks.debug.snapshot() if p.name == "shared-by-threads"]
            assert info.kind == "threadsafe.Lock"
            assert [h.task for h in info.holders] == [anyio.get_current_task().name]
            assert len(info.waiters) == 1
            assert info.waiters[0].task.startswith("thread ")
            assert 0 <= info.waiters[0].waited < DEADLINE
            lock.release()
    assert not lock.locked()
