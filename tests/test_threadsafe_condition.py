"""aiolocks.threadsafe.Condition: tasks and threads waiting on and notifying each other."""

from __future__ import annotations

import collections
import threading
from typing import Any

import anyio
import pytest

from _threads import DEADLINE, TrioThread, loop_threads, start_thread, wait_until
from aiolocks._introspect import check_invariants
from aiolocks.threadsafe import Condition, Lock, RWLock
from test_threadsafe_stress import fast_switching  # noqa: F401 - the fixture


def _sleepers(cond: Condition) -> int:
    return int(cond.statistics().tasks_waiting)


@pytest.fixture(params=["Lock", "RWLock.writer"])
def cond(request: pytest.FixtureRequest) -> Condition:
    if request.param == "Lock":
        return Condition(Lock())
    return Condition(RWLock().writer)


def test_thread_waits_for_a_task_to_notify(cond: Condition) -> None:
    ready: list[int] = []

    def consumer() -> int:
        with cond:
            return cond.wait_for_blocking(lambda: ready and ready[0], timeout=DEADLINE)

    _, fut = start_thread(consumer)
    wait_until(lambda: _sleepers(cond) == 1, "the thread waits")

    async def producer() -> None:
        async with cond:
            ready.append(7)
            cond.notify()

    with loop_threads(1) as (loop,):
        loop.run(producer())
    assert fut.result(DEADLINE) == 7
    assert not cond.locked()


def test_wait_blocking_times_out_holding_the_lock(cond: Condition) -> None:
    with cond:
        assert cond.wait_blocking(timeout=0.01) is False
        assert cond.locked()
        assert cond.statistics().lock_statistics is not None
        assert _sleepers(cond) == 0
    assert not cond.locked()


def test_notify_without_holding_raises(cond: Condition) -> None:
    with pytest.raises(RuntimeError, match="notify"):
        cond.notify()
    with pytest.raises(RuntimeError, match="wait_blocking"):
        cond.wait_blocking(0)


def test_condition_refuses_a_reader_view() -> None:
    with pytest.raises(TypeError, match="writer"):
        Condition(RWLock().reader)  # type: ignore[arg-type]


def test_reentrant_writer_wait_restores_every_level() -> None:
    rw = RWLock()
    cond = Condition(rw.writer)
    with rw.writer, rw.writer:
        assert cond.wait_blocking(timeout=0.01) is False
        assert rw.writer.locked()
    assert not rw.writer.locked()
    check_invariants(rw)


def _rw_state(rw: RWLock) -> tuple[Any, ...]:
    with rw._cs:
        return (rw._writer, rw._wlevels, dict(rw._readers), rw._upgradable, rw.version)


def test_thread_writer_holding_more_than_wait_can_give_up_is_refused() -> None:
    """Read levels on top of the write hold used to make wait_blocking() wait for ever (for its
    own reader); a write hold from upgrade() kept the upgradable hold, which kept every notifier
    out.  Both are refused, as by aiolocks.Condition, and nothing changes."""
    rw = RWLock()
    cond = Condition(rw.writer)

    def scenario() -> None:
        with rw.writer, rw.reader:
            before = _rw_state(rw)
            with pytest.raises(RuntimeError, match=r"^wait_blocking\(\) on .*read levels"):
                cond.wait_blocking(timeout=0.01)
            assert _rw_state(rw) == before
        with rw.upgradable:
            assert rw.upgradable.upgrade_blocking()
            before = _rw_state(rw)
            with pytest.raises(RuntimeError, match=r"came from upgrade\(\)"):
                cond.wait_blocking(timeout=0.01)
            assert _rw_state(rw) == before

    start_thread(scenario)[1].result(DEADLINE)  # a hang fails here
    assert _sleepers(cond) == 0
    assert _snap_idle(rw)


@pytest.mark.parametrize("where", ["asyncio", "trio"])
def test_task_writer_holding_more_than_wait_can_give_up_is_refused(where: str) -> None:
    rw = RWLock()
    cond = Condition(rw.writer)

    async def scenario() -> None:
        async with rw.writer, rw.reader:
            before = _rw_state(rw)
            with pytest.raises(RuntimeError, match=r"^wait\(\) on .*read levels"):
                await cond.wait()
            assert _rw_state(rw) == before
        async with rw.upgradable:
            await rw.upgradable.upgrade()
            before = _rw_state(rw)
            with pytest.raises(RuntimeError, match=r"came from upgrade\(\)"):
                await cond.wait()
            assert _rw_state(rw) == before

    # In a loop of its own: before the fix the wait hung shielded, and a hang fails here.
    if where == "trio":
        trio_thread = TrioThread()
        trio_thread.run(scenario)
        trio_thread.close()
    else:
        with loop_threads(1) as (loop,):
            loop.run(scenario())
    assert _sleepers(cond) == 0
    assert _snap_idle(rw)


def _snap_idle(rw: RWLock) -> bool:
    check_invariants(rw)
    s = rw.statistics()
    return (s.readers, s.writer, s.readers_waiting, s.writers_waiting) == (0, None, 0, 0)


@pytest.mark.anyio
async def test_cancelled_waiter_returns_holding_and_passes_the_notification_on(
    anyio_backend: Any, cond: Condition
) -> None:
    woken: list[str] = []
    scope = anyio.CancelScope()

    async def first() -> None:
        with scope:
            async with cond:
                try:
                    await cond.wait()
                finally:
                    assert cond.locked()  # held again, also when cancelled
                    woken.append("first")

    async def second() -> None:
        async with cond:
            await cond.wait()
            woken.append("second")

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            assert _sleepers(cond) == 2
            async with cond:
                cond.notify()  # goes to `first` ...
                scope.cancel()  # ... which is cancelled before it can act: `second` gets it
    assert sorted(woken) == ["first", "second"]
    assert not cond.locked()
    assert _sleepers(cond) == 0


@pytest.mark.anyio
async def test_waiters_fail_when_the_lock_breaks(anyio_backend: Any) -> None:
    lock = Lock()
    cond = Condition(lock)
    outcome: list[str] = []

    async def sleeper() -> None:
        try:
            async with cond:
                await cond.wait()
        except anyio.BrokenResourceError:  # raised without the lock; leaving is quiet
            outcome.append("broken")

    def hold_and_exit() -> None:
        lock.acquire_blocking()

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            await anyio.wait_all_tasks_blocked()
            thread, fut = start_thread(hold_and_exit)
            await anyio.to_thread.run_sync(fut.result, DEADLINE)
            await anyio.to_thread.run_sync(thread.join, DEADLINE)

            async def waiter() -> None:  # someone must wait on the lock for the exit to show
                with pytest.raises(anyio.BrokenResourceError):
                    await lock.acquire()

            tg.start_soon(waiter)
    assert outcome == ["broken"]


@pytest.mark.usefixtures("fast_switching")
def test_producers_and_consumers_across_loops_trio_and_threads_lose_no_wakeup() -> None:
    cond = Condition()
    items: collections.deque[int] = collections.deque()
    consumed: list[int] = []
    guard = threading.Lock()
    per_producer = 100

    async def produce(base: int) -> None:
        for i in range(per_producer):
            async with cond:
                items.append(base + i)
                cond.notify()

    def produce_blocking(base: int) -> None:
        for i in range(per_producer):
            with cond:
                items.append(base + i)
                cond.notify()

    async def consume(count: int) -> None:
        for _ in range(count):
            async with cond:
                await cond.wait_for(lambda: items)
                with guard:
                    consumed.append(items.popleft())

    def consume_blocking(count: int) -> None:
        for _ in range(count):
            with cond:
                assert cond.wait_for_blocking(lambda: items, timeout=DEADLINE)
                with guard:
                    consumed.append(items.popleft())

    trio_thread = TrioThread()
    with loop_threads(2, uvloop_first=True) as loops:
        # 4 producers x 100 items; consumers: 2 loops x 50, trio 100, 2 threads x 100.
        futs = [loops[0].submit(consume(50)), loops[1].submit(consume(50))]
        futs.append(trio_thread.submit(lambda: consume(100)))
        futs += [start_thread(lambda: consume_blocking(100))[1] for _ in range(2)]
        futs.append(loops[0].submit(produce(0)))
        futs.append(trio_thread.submit(lambda: produce(1000)))
        futs += [start_thread(lambda b=b: produce_blocking(b))[1] for b in (2000, 3000)]
        for fut in futs:
            fut.result(DEADLINE * 3)
    trio_thread.close()
    assert sorted(consumed) == sorted(b + i for b in (0, 1000, 2000, 3000) for i in range(100))
    assert not items
    assert _sleepers(cond) == 0
    assert not cond.locked()
