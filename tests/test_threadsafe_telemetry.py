"""aiolocks.telemetry over aiolocks.threadsafe: threads, asyncio loops and trio at once.

Read back through the OpenTelemetry SDK's in-memory reader (the ``metrics`` fixture).  The
async tests run on each backend in the test's own thread, beside plain threads; the others
drive an asyncio loop and a trio run in threads of their own (tests/_threads.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider

import aiolocks.threadsafe as ts
from _metrics import ACQ, HOLD, WAIT, Metrics
from _threads import DEADLINE, LoopThread, TrioThread, start_thread, wait_until
from aiolocks import DeadlockError, telemetry
from aiolocks.telemetry import AiolocksInstrumentor


def _queued(lock: Any) -> int:
    return int(lock.statistics().tasks_waiting)


def _no_hold_left() -> None:
    assert telemetry._meters is not None
    with telemetry._meters.guard:
        assert telemetry._meters.holds == {}  # every hold that began has ended


# -- what is measured ----------------------------------------------------------------------------


def test_contended_run_of_threads_asyncio_and_trio_tasks_counts_exactly(
    metrics: Metrics,
) -> None:
    lock = ts.Lock(name="shared")
    bodies: list[float] = []  # body times, appended by the holder of the lock only
    cancelled = threading.Event()
    cancelled_seen: list[str] = []

    def thread_worker() -> None:
        with lock:
            t0 = time.perf_counter()
            time.sleep(0)
            bodies.append(time.perf_counter() - t0)

    async def asyncio_worker(use_acquire: bool) -> None:
        if use_acquire:
            await lock.acquire()
        else:
            await lock.__aenter__()
        t0 = time.perf_counter()
        await asyncio.sleep(0)
        bodies.append(time.perf_counter() - t0)
        lock.release()

    async def trio_worker() -> None:
        async with lock:
            t0 = time.perf_counter()
            await trio.lowlevel.checkpoint()
            bodies.append(time.perf_counter() - t0)

    async def asyncio_given_up() -> None:
        try:
            async with lock:
                raise AssertionError("a cancelled waiter got the lock")
        except asyncio.CancelledError:
            cancelled_seen.append("asyncio")
            cancelled.set()
            raise

    scopes: list[trio.CancelScope] = []

    async def trio_given_up() -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            async with lock:
                raise AssertionError("a cancelled waiter got the lock")
        assert scope.cancelled_caught
        cancelled_seen.append("trio")
        cancelled.set()

    started = time.perf_counter()
    loop, trio_thread = LoopThread(), TrioThread()
    try:
        assert lock.acquire_blocking()  # the test's thread holds; everyone else queues
        t_main = time.perf_counter()
        with pytest.raises(DeadlockError):  # the holder asking again is refused
            lock.acquire_blocking()
        # Blocking waits that give up (with a timeout, and without waiting at all)
        assert (
            start_thread(lambda: lock.acquire_blocking(timeout=0.02))[1].result(DEADLINE) is False
        )
        assert start_thread(lambda: lock.acquire_blocking(timeout=0))[1].result(DEADLINE) is False
        expected = 0
        pending = []
        asyncio_cancel = []
        for i in range(4):  # every kind of waiter, interleaved in the queue
            pending.append(start_thread(thread_worker)[1])
            pending.append(loop.submit(asyncio_worker(i % 2 == 0)))
            pending.append(trio_thread.submit(trio_worker))
            expected += 3
            if i % 2:
                asyncio_cancel.append(loop.submit(asyncio_given_up()))
                trio_thread.submit(trio_given_up)
                expected += 2
            wait_until(lambda n=expected: _queued(lock) == n, f"{expected} waiters queued")
        assert metrics.waiting() == {"shared": expected}
        for fut in asyncio_cancel:
            cancelled.clear()
            fut.cancel()
            assert cancelled.wait(DEADLINE)
        for scope in scopes:
            cancelled.clear()
            trio_thread.token.run_sync_soon(scope.cancel)
            assert cancelled.wait(DEADLINE)
        assert sorted(cancelled_seen) == ["asyncio"] * 2 + ["trio"] * 2
        assert _queued(lock) == 12
        assert metrics.waiting() == {"shared": 12}
        bodies.append(time.perf_counter() - t_main)
        lock.release()
        for fut in pending:
            fut.result(DEADLINE)
    finally:
        loop.close()
        trio_thread.close()
    wall = time.perf_counter() - started

    assert len(bodies) == 13
    assert metrics.count("shared", "exclusive", "acquired", kind="threadsafe.Lock") == 13
    # 2 asyncio and 2 trio tasks cancelled, 2 blocking waits timed out
    assert metrics.count("shared", "exclusive", "cancelled") == 4 + 2
    assert metrics.count("shared", "exclusive", "deadlock") == 1
    assert metrics.waiting() == {"shared": 0}
    wait = metrics.histogram(WAIT, "shared", "exclusive")
    assert wait.count == 13 + 6 + 1
    assert 0 <= wait.sum <= wait.count * wall and wait.max <= wall
    hold = metrics.histogram(HOLD, "shared", "exclusive")
    assert hold.count == 13
    # Holds of one lock never overlap: they fit in the run, and cover the bodies measured
    assert sum(bodies) <= hold.sum <= wall
    _no_hold_left()


@pytest.mark.anyio
async def test_cancelled_async_waiter_is_counted_cancelled(metrics: Metrics) -> None:
    lock = ts.Lock(name="held-by-a-thread")
    holding, leave = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            holding.set()
            leave.wait(DEADLINE)

    thread, done = start_thread(holder)
    try:
        with anyio.fail_after(DEADLINE):
            assert await anyio.to_thread.run_sync(holding.wait, DEADLINE)
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def waiter() -> None:
                    with scope:
                        async with lock:
                            raise AssertionError("a cancelled waiter got the lock")

                tg.start_soon(waiter)
                while _queued(lock) < 1:
                    await anyio.lowlevel.checkpoint()
                assert metrics.waiting() == {"held-by-a-thread": 1}
                scope.cancel()
            assert scope.cancelled_caught
            assert _queued(lock) == 0
            assert metrics.count("held-by-a-thread", "exclusive", "cancelled") == 1
            assert metrics.waiting() == {"held-by-a-thread": 0}
            leave.set()
            await anyio.to_thread.run_sync(done.result, DEADLINE)
            async with lock:  # and now the task gets it; asking again is refused
                with pytest.raises(DeadlockError):
                    await lock.acquire()
    finally:
        leave.set()
        thread.join(DEADLINE)
    assert metrics.count("held-by-a-thread", "exclusive", "acquired") == 2
    assert metrics.count("held-by-a-thread", "exclusive", "deadlock") == 1
    assert metrics.histogram(WAIT, "held-by-a-thread", "exclusive").count == 4
    assert metrics.histogram(HOLD, "held-by-a-thread", "exclusive").count == 2
    _no_hold_left()


def test_blocking_timeout_is_counted_cancelled_with_its_wait(metrics: Metrics) -> None:
    lock = ts.Lock(name="slow")
    lock.acquire_blocking()
    started = time.perf_counter()
    _, fut = start_thread(lambda: lock.acquire_blocking(timeout=0.05))
    assert fut.result(DEADLINE) is False
    wall = time.perf_counter() - started
    lock.release()
    assert metrics.count("slow", "exclusive", "cancelled") == 1
    assert metrics.count("slow", "exclusive", "acquired") == 1
    wait = metrics.histogram(WAIT, "slow", "exclusive")
    assert wait.count == 2
    assert 0.05 * 0.9 <= wait.max <= wall  # the timed-out wait, as long as its timeout
    assert metrics.histogram(HOLD, "slow", "exclusive").count == 1
    assert metrics.waiting() == {"slow": 0}
    _no_hold_left()


def test_thread_exiting_holding_counts_its_waiters_as_broken(metrics: Metrics) -> None:
    lock = ts.Lock(name="broken")
    holding, leave = threading.Event(), threading.Event()

    def hold_and_exit() -> None:
        lock.acquire_blocking()
        holding.set()
        leave.wait(DEADLINE)  # and returns without releasing

    holder, _ = start_thread(hold_and_exit)
    assert holding.wait(DEADLINE)
    waiters = [start_thread(lambda: lock.acquire_blocking(timeout=DEADLINE))[1] for _ in range(3)]
    wait_until(lambda: _queued(lock) == 3, "the waiters queued")
    leave.set()
    holder.join(DEADLINE)
    for fut in waiters:
        with pytest.raises(anyio.BrokenResourceError):
            fut.result(DEADLINE)
    assert metrics.count("broken", "exclusive", "broken") == 3
    assert metrics.count("broken", "exclusive", "acquired") == 1
    assert metrics.histogram(WAIT, "broken", "exclusive").count == 4
    assert metrics.waiting() == {"broken": 0}


@pytest.mark.anyio
async def test_rwlock_views_report_their_modes_from_tasks_and_threads(metrics: Metrics) -> None:
    rw = ts.RWLock(name="config")

    def from_a_thread() -> None:
        for _ in range(3):
            with rw.reader, rw.reader:  # re-entrant: a second acquisition, a second hold
                pass
        with rw.writer:
            pass
        assert rw.writer.acquire_blocking(timeout=1)
        rw.writer.downgrade()  # the write hold ends, a read hold begins
        rw.reader.release()
        with rw.upgradable:
            assert rw.upgradable.upgrade_blocking()

    with anyio.fail_after(DEADLINE):
        await anyio.to_thread.run_sync(from_a_thread)
        async with rw.reader:
            pass
        await rw.writer.acquire()
        rw.writer.release()
        rw.writer.acquire_nowait()
        rw.writer.release()
        async with rw.upgradable:
            await rw.upgradable.upgrade()
    for mode, acquired, holds in (("read", 7, 8), ("write", 4, 4), ("upgradable", 2, 2)):
        assert metrics.count("config", mode, "acquired", kind="threadsafe.RWLock") == acquired
        assert metrics.histogram(HOLD, "config", mode).count == holds
    assert metrics.histogram(WAIT, "config", "write").count == 3  # acquire_nowait never waits
    assert metrics.waiting() == {"config": 0}
    _no_hold_left()


def test_unnamed_locks_are_aggregated_under_their_kind(metrics: Metrics) -> None:
    def use() -> None:
        for _ in range(5):
            with ts.Lock():
                pass
            with ts.RWLock().writer:
                pass

    async def use_async() -> None:
        for _ in range(5):
            async with ts.Lock():
                pass
            async with ts.RWLock().reader:
                pass

    start_thread(use)[1].result(DEADLINE)
    asyncio.run(use_async())
    assert metrics.count("threadsafe.Lock", "exclusive", "acquired", kind="threadsafe.Lock") == 10
    assert metrics.count("threadsafe.RWLock", "write", "acquired", kind="threadsafe.RWLock") == 5
    assert metrics.count("threadsafe.RWLock", "read", "acquired", kind="threadsafe.RWLock") == 5
    assert len(metrics.points(ACQ)) == 3


@pytest.mark.anyio
async def test_condition_wait_ends_the_hold_on_both_sides(metrics: Metrics) -> None:
    cond = ts.Condition(name="jobs")  # its own lock reports under the condition's name
    items: list[int] = []
    thread_asleep = threading.Event()
    task_asleep = anyio.Event()
    slept: list[float] = []

    def thread_consumer() -> None:
        with cond:
            t0 = time.perf_counter()
            thread_asleep.set()
            assert cond.wait_for_blocking(lambda: items, timeout=DEADLINE)
            slept.append(time.perf_counter() - t0)

    async def task_consumer() -> None:
        async with cond:
            t0 = time.perf_counter()
            task_asleep.set()
            await cond.wait_for(lambda: items)
            slept.append(time.perf_counter() - t0)

    thread, done = start_thread(thread_consumer)
    started = time.perf_counter()
    try:
        with anyio.fail_after(DEADLINE):
            assert await anyio.to_thread.run_sync(thread_asleep.wait, DEADLINE)
            async with anyio.create_task_group() as tg:
                tg.start_soon(task_consumer)
                await task_asleep.wait()
                await anyio.sleep(0.05)  # something to leave out of the hold times
                async with cond:  # both consumers are asleep once this is held
                    items.append(1)
                    cond.notify_all()
            await anyio.to_thread.run_sync(done.result, DEADLINE)
    finally:
        items.append(1)
        thread.join(DEADLINE)
    wall = time.perf_counter() - started
    # two consumers and the producer; notified waiters wake holding the lock (no acquisition)
    assert metrics.count("jobs", "exclusive", "acquired", kind="threadsafe.Lock") == 3
    hold = metrics.histogram(HOLD, "jobs", "exclusive")
    assert hold.count == 2 + 2 + 1  # each consumer's hold before and after its sleep
    assert hold.max < min(slept)  # with a sleep in, a consumer's hold would be longer
    assert hold.sum <= wall
    assert metrics.waiting() == {"jobs": 0}
    _no_hold_left()


class _SlowSeries(telemetry._Series):
    """A series whose updates let other threads run in their midst (the GIL makes such a race
    too rare to see otherwise; without it, it is an everyday one)."""

    __slots__ = ()

    def __init__(self, *args: Any) -> None:
        time.sleep(0)  # another thread may meet the same new series meanwhile
        super().__init__(*args)

    def count(self, outcome: str) -> None:
        n = self.counts.get(outcome, 0)
        time.sleep(0)  # between the read and the write
        self.counts[outcome] = n + 1


def test_counts_stay_exact_when_threads_share_a_series(
    metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each thread has locks of its own: no contention on the locks, all of it on the series
    # they share (same name, or unnamed) and on each new series' creation.
    monkeypatch.setattr(telemetry, "_Series", _SlowSeries)
    threads, rounds, cycles = 8, 30, 10
    barrier = threading.Barrier(threads)

    def worker() -> None:
        rw = ts.RWLock()
        for i in range(rounds):
            lock = ts.Lock(name=f"round-{i}")
            barrier.wait(DEADLINE)  # all of them meet this name's series for the first time
            for _ in range(cycles):
                with lock:
                    pass
                rw.reader.acquire_nowait()
                rw.reader.release()

    futs = [start_thread(worker)[1] for _ in range(threads)]
    for fut in futs:
        fut.result(DEADLINE * 3)
    for i in range(rounds):
        assert metrics.count(f"round-{i}", "exclusive", "acquired") == threads * cycles
        assert metrics.histogram(HOLD, f"round-{i}", "exclusive").count == threads * cycles
        assert metrics.histogram(WAIT, f"round-{i}", "exclusive").count == threads * cycles
    total = threads * rounds * cycles
    assert metrics.count("threadsafe.RWLock", "read", "acquired") == total
    assert metrics.histogram(HOLD, "threadsafe.RWLock", "read").count == total
    assert set(metrics.waiting().values()) == {0}
    _no_hold_left()


# -- the switch ----------------------------------------------------------------------------------

TS_VIEWS = (ts.Lock, ts.ReadLock, ts.WriteLock, ts.UpgradableLock)
TS_PATCHED = [
    (cls, name)
    for cls in TS_VIEWS
    for name in (
        "__aenter__",
        "acquire",
        "acquire_blocking",
        "__enter__",
        "acquire_nowait",
        "release",
        "__aexit__",
        "__exit__",
    )
] + [(ts.WriteLock, "downgrade"), (ts.Condition, "wait"), (ts.Condition, "wait_blocking")]


def test_uninstrument_restores_the_exact_methods_of_the_threadsafe_classes() -> None:
    before = {key: key[0].__dict__.get(key[1]) for key in TS_PATCHED}
    resolved = {key: getattr(*key) for key in TS_PATCHED}
    instrumentor = AiolocksInstrumentor()
    provider = MeterProvider()
    instrumentor.instrument(meter_provider=provider)
    try:
        for cls, name in TS_PATCHED:
            assert getattr(cls, name) is not resolved[cls, name], (cls, name)
            assert cls.__dict__[name].__wrapped__ is resolved[cls, name]
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    after = {key: key[0].__dict__.get(key[1]) for key in TS_PATCHED}
    assert all(after[k] is before[k] for k in before)
    assert all(getattr(*key) is resolved[key] for key in TS_PATCHED)
    # inherited from the views' base before, inherited again (not copied into the class)
    assert all(name not in ts.ReadLock.__dict__ for name in ("__aenter__", "acquire_blocking"))
