"""``aiolocks.Lock``-specific behaviour; what every lock shares is in test_generic.py."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
import trio.testing

import aiolocks
from aiolocks._introspect import check_invariants

pytestmark = pytest.mark.anyio

_ASYNCIO_ONLY = pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param("asyncio", id="asyncio")]
    + (
        [pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop")]
        if importlib.util.find_spec("uvloop") is not None
        else []
    ),
)
_TRIO_ONLY = pytest.mark.parametrize("anyio_backend", [pytest.param("trio", id="trio")])


@pytest.fixture(params=[False, True], ids=["default", "fast"])
def lock(request: pytest.FixtureRequest) -> aiolocks.Lock:
    return aiolocks.Lock(fast_acquire=request.param)


def _state(lock: aiolocks.Lock) -> tuple[Any, ...]:
    stats = lock.statistics()
    return (lock.locked(), stats.locked, stats.owner, stats.tasks_waiting)


# --- re-acquire by the holder ----------------------------------------------------------------


async def test_reacquire_by_holder_raises_deadlockerror_at_once(lock: aiolocks.Lock) -> None:
    assert issubclass(aiolocks.DeadlockError, RuntimeError)
    with anyio.fail_after(5):
        await lock.acquire()
        before = _state(lock)
        with pytest.raises(aiolocks.DeadlockError):
            await lock.acquire()
        assert _state(lock) == before
        check_invariants(lock)
        with pytest.raises(aiolocks.DeadlockError):
            lock.acquire_nowait()
        assert _state(lock) == before
        check_invariants(lock)
        # One release frees it: the failed attempts left no extra level behind.
        lock.release()
    assert _state(lock) == (False, False, None, 0)
    check_invariants(lock)


async def test_reacquire_by_holder_with_waiters_queued_raises_instead_of_queueing(
    lock: aiolocks.Lock,
) -> None:
    order: list[str] = []

    async def waiter() -> None:
        async with lock:
            order.append("waiter")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            before = _state(lock)
            with pytest.raises(aiolocks.DeadlockError):
                await lock.acquire()
            with pytest.raises(aiolocks.DeadlockError):
                lock.acquire_nowait()
            assert _state(lock) == before
            check_invariants(lock)
            lock.release()
    assert order == ["waiter"]
    check_invariants(lock)


# --- hand-off ----------------------------------------------------------------------------------


async def test_release_hands_ownership_to_next_waiter_before_it_runs(lock: aiolocks.Lock) -> None:
    waiter_info: list[anyio.TaskInfo] = []

    async def waiter() -> None:
        waiter_info.append(anyio.get_current_task())
        async with lock:
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            lock.release()
            # The waiter has not run yet, but it already owns the lock: nobody can barge in.
            assert lock.locked()
            stats = lock.statistics()
            assert stats.owner == waiter_info[0]
            assert stats.tasks_waiting == 0
            with pytest.raises(anyio.WouldBlock):
                lock.acquire_nowait()
            check_invariants(lock)
    assert not lock.locked()


async def test_releaser_that_reacquires_queues_behind_existing_waiters(
    lock: aiolocks.Lock,
) -> None:
    order: list[str] = []

    async def waiter(name: str) -> None:
        async with lock:
            order.append(name)
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            for name in ("a", "b"):
                tg.start_soon(waiter, name)
                await anyio.wait_all_tasks_blocked()
            lock.release()
            async with lock:
                order.append("releaser")
    assert order == ["a", "b", "releaser"]
    check_invariants(lock)


async def test_each_release_hands_to_exactly_one_waiter(lock: aiolocks.Lock) -> None:
    inside = 0
    peak = 0

    async def waiter() -> None:
        nonlocal inside, peak
        async with lock:
            inside += 1
            peak = max(peak, inside)
            await anyio.lowlevel.checkpoint()
            inside -= 1

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            for _ in range(5):
                tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert lock.statistics().tasks_waiting == 5
            lock.release()
            assert lock.statistics().tasks_waiting == 4
            check_invariants(lock)
    assert peak == 1
    assert _state(lock) == (False, False, None, 0)


# --- statistics and repr ------------------------------------------------------------------------


async def test_statistics_is_a_frozen_dataclass_of_anyio_shape(lock: aiolocks.Lock) -> None:
    stats = lock.statistics()
    assert isinstance(stats, aiolocks.LockStatistics)
    assert dataclasses.is_dataclass(stats)
    assert [f.name for f in dataclasses.fields(stats)] == ["locked", "owner", "tasks_waiting"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.locked = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.tasks_waiting = 1  # type: ignore[misc]
    async with lock:
        held = lock.statistics()
    # A snapshot: it does not follow the lock's later state.
    assert held.locked is True
    assert held.owner == anyio.get_current_task()
    assert lock.statistics() != held


async def test_statistics_match_anyio_lock_for_the_same_steps(lock: aiolocks.Lock) -> None:
    reference = anyio.Lock()

    def same() -> None:
        ours, theirs = lock.statistics(), reference.statistics()
        assert (ours.locked, ours.owner, ours.tasks_waiting) == (
            theirs.locked,
            theirs.owner,
            theirs.tasks_waiting,
        )

    same()
    async with lock, reference:
        same()
    same()


def test_name_is_shown_in_repr() -> None:
    assert "db-pool" in repr(aiolocks.Lock(name="db-pool"))
    assert "db-pool" in repr(aiolocks.Lock(name="db-pool", fast_acquire=True))


# --- backend-native cancellation ---------------------------------------------------------------


@_ASYNCIO_ONLY
async def test_asyncio_task_cancel_removes_parked_waiter(lock: aiolocks.Lock) -> None:
    async def acquire_and_release() -> None:
        await lock.acquire()
        lock.release()  # pragma: no cover - cancelled while parked

    with anyio.fail_after(5):
        await lock.acquire()
        task = asyncio.get_running_loop().create_task(acquire_and_release())
        await anyio.wait_all_tasks_blocked()
        assert lock.statistics().tasks_waiting == 1
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled()
        assert lock.statistics().tasks_waiting == 0
        assert lock.statistics().owner == anyio.get_current_task()
        check_invariants(lock)
        lock.release()
    assert _state(lock) == (False, False, None, 0)
    check_invariants(lock)


@_ASYNCIO_ONLY
async def test_asyncio_task_cancel_after_grant_passes_lock_to_next_waiter(
    lock: aiolocks.Lock,
) -> None:
    order: list[str] = []

    async def waiter(name: str) -> None:
        async with lock:
            order.append(name)

    with anyio.fail_after(5):
        loop = asyncio.get_running_loop()
        await lock.acquire()
        first = loop.create_task(waiter("first"))
        await anyio.wait_all_tasks_blocked()
        second = loop.create_task(waiter("second"))
        await anyio.wait_all_tasks_blocked()
        lock.release()  # granted to `first` ...
        first.cancel()  # ... which is cancelled before it runs
        await asyncio.wait([first, second])
    assert first.cancelled()
    assert order == ["second"]
    assert _state(lock) == (False, False, None, 0)
    check_invariants(lock)


@_ASYNCIO_ONLY
async def test_asyncio_task_cancel_just_before_release_skips_that_waiter(
    lock: aiolocks.Lock,
) -> None:
    order: list[str] = []

    async def waiter(name: str) -> None:
        async with lock:
            order.append(name)

    with anyio.fail_after(5):
        loop = asyncio.get_running_loop()
        await lock.acquire()
        first = loop.create_task(waiter("first"))
        await anyio.wait_all_tasks_blocked()
        second = loop.create_task(waiter("second"))
        await anyio.wait_all_tasks_blocked()
        first.cancel()  # cancelled while parked, but has not run to see it yet ...
        lock.release()  # ... when the release looks for the next owner
        assert lock.locked()
        await asyncio.wait([first, second])
    assert first.cancelled()
    assert order == ["second"]
    assert _state(lock) == (False, False, None, 0)
    check_invariants(lock)


@_ASYNCIO_ONLY
async def test_asyncio_wait_for_timeout_on_contended_acquire_leaves_no_waiter(
    lock: aiolocks.Lock,
) -> None:
    async def hold(held: anyio.Event, done: anyio.Event) -> None:
        async with lock:
            held.set()
            await done.wait()

    held, done = anyio.Event(), anyio.Event()
    with anyio.fail_after(5):
        holder = asyncio.get_running_loop().create_task(hold(held, done))
        await held.wait()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lock.acquire(), timeout=0.01)
        assert lock.statistics().tasks_waiting == 0
        check_invariants(lock)
        done.set()
        await holder
    assert _state(lock) == (False, False, None, 0)
    # Nothing was left queued: this task takes it at once.
    lock.acquire_nowait()
    lock.release()


@_TRIO_ONLY
async def test_trio_cancel_scope_removes_parked_waiter(lock: aiolocks.Lock) -> None:
    scope = trio.CancelScope()

    async def waiter() -> None:
        with scope:
            await lock.acquire()
            lock.release()  # pragma: no cover - cancelled while parked

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await lock.acquire()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert lock.statistics().tasks_waiting == 1
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert scope.cancelled_caught
            assert lock.statistics().tasks_waiting == 0
            check_invariants(lock)
            lock.release()
    assert _state(lock) == (False, False, None, 0)
    check_invariants(lock)


@_TRIO_ONLY
async def test_trio_move_on_after_contended_acquire_then_lock_goes_to_next_waiter(
    lock: aiolocks.Lock,
) -> None:
    order: list[str] = []
    gave_up = trio.Event()

    async def impatient() -> None:
        with trio.move_on_after(0.01):
            async with lock:
                order.append("impatient")  # pragma: no cover - times out first
        gave_up.set()

    async def patient() -> None:
        async with lock:
            order.append("patient")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await lock.acquire()
            nursery.start_soon(impatient)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(patient)
            await trio.testing.wait_all_tasks_blocked()
            assert lock.statistics().tasks_waiting == 2
            await gave_up.wait()
            assert lock.statistics().tasks_waiting == 1
            check_invariants(lock)
            lock.release()
    assert order == ["patient"]
    check_invariants(lock)
