"""Behaviour every lock-like object shares, run over every lock factory.

The idea is trio's ``test_generic_lock_*``: one suite, parametrised over the ways of making a
lock. To cover a new primitive, add a :class:`LockFactory` to :data:`FACTORIES`; tests that only
make sense for an exclusive lock (mutual exclusion, FIFO, owner, contention through the same
view) run for the entries marked ``exclusive=True``; the rest run for every entry. A
``Condition`` is lock-like through the lock it wraps; tests read the anyio-shaped lock
statistics through :func:`_stats`, which looks through a condition to its lock's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import inspect
import random
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import sniffio
import trio

import aiolocks
import aiolocks.threadsafe
from aiolocks._introspect import check_invariants

pytestmark = pytest.mark.anyio


class Made(NamedTuple):
    """A freshly made lock-like object and the invariant check of the state behind it."""

    lock: Any
    check_invariants: Callable[[], None]


class LockFactory(NamedTuple):
    """One way of making a lock-like object for the generic suite."""

    id: str
    make: Callable[[], Made]
    #: True when holding it excludes every other task that acquires it through the same object.
    exclusive: bool
    #: True when the lock was made with ``fast_acquire=True`` (see API.md, "Common lock shape").
    fast_acquire: bool = False


def _lock(**kwargs: Any) -> Made:
    lock = aiolocks.Lock(**kwargs)
    return Made(lock, partial(check_invariants, lock))


def _rw_writer(**kwargs: Any) -> Made:
    rw = aiolocks.RWLock(**kwargs)
    return Made(rw.writer, partial(check_invariants, rw))


def _rw_reader(**kwargs: Any) -> Made:
    rw = aiolocks.RWLock(**kwargs)
    return Made(rw.reader, partial(check_invariants, rw))


def _condition() -> Made:
    cond = aiolocks.Condition()
    return Made(cond, partial(check_invariants, cond.lock))


def _condition_writer() -> Made:
    rw = aiolocks.RWLock()
    return Made(aiolocks.Condition(rw.writer), partial(check_invariants, rw))


def _ts_lock(**kwargs: Any) -> Made:
    lock = aiolocks.threadsafe.Lock(**kwargs)
    return Made(lock, partial(check_invariants, lock))


def _ts_rw_writer(**kwargs: Any) -> Made:
    rw = aiolocks.threadsafe.RWLock(**kwargs)
    return Made(rw.writer, partial(check_invariants, rw))


def _ts_rw_reader(**kwargs: Any) -> Made:
    rw = aiolocks.threadsafe.RWLock(**kwargs)
    return Made(rw.reader, partial(check_invariants, rw))


def _ts_condition() -> Made:
    cond = aiolocks.threadsafe.Condition()
    return Made(cond, partial(check_invariants, cond._prim))


def _ts_condition_writer() -> Made:
    rw = aiolocks.threadsafe.RWLock()
    return Made(aiolocks.threadsafe.Condition(rw.writer), partial(check_invariants, rw))


FACTORIES: list[LockFactory] = [
    LockFactory("Lock", _lock, exclusive=True),
    LockFactory("Lock-fast", lambda: _lock(fast_acquire=True), exclusive=True, fast_acquire=True),
    LockFactory("RWLock.writer", _rw_writer, exclusive=True),
    LockFactory(
        "RWLock-fast.writer",
        lambda: _rw_writer(fast_acquire=True),
        exclusive=True,
        fast_acquire=True,
    ),
    LockFactory("RWLock.reader", _rw_reader, exclusive=False),
    LockFactory("Condition", _condition, exclusive=True),
    LockFactory("Condition(RWLock.writer)", _condition_writer, exclusive=True),
    LockFactory("threadsafe.Lock", _ts_lock, exclusive=True),
    LockFactory(
        "threadsafe.Lock-fast",
        lambda: _ts_lock(fast_acquire=True),
        exclusive=True,
        fast_acquire=True,
    ),
    LockFactory("threadsafe.RWLock.writer", _ts_rw_writer, exclusive=True),
    LockFactory(
        "threadsafe.RWLock-fast.writer",
        lambda: _ts_rw_writer(fast_acquire=True),
        exclusive=True,
        fast_acquire=True,
    ),
    LockFactory("threadsafe.RWLock.reader", _ts_rw_reader, exclusive=False),
    LockFactory(
        "threadsafe.RWLock-fast.reader",
        lambda: _ts_rw_reader(fast_acquire=True),
        exclusive=False,
        fast_acquire=True,
    ),
    LockFactory("threadsafe.Condition", _ts_condition, exclusive=True),
    LockFactory("threadsafe.Condition(RWLock.writer)", _ts_condition_writer, exclusive=True),
]


def _stats(lock: Any) -> Any:
    """The lock's anyio-shaped statistics (locked, owner, tasks_waiting).

    A Condition's own ``statistics()`` counts the tasks in ``wait()``; the statistics of the
    lock it delegates to are in its ``lock_statistics`` field.
    """
    stats = lock.statistics()
    return getattr(stats, "lock_statistics", stats)


def _params(predicate: Callable[[LockFactory], bool]) -> list[Any]:
    return [pytest.param(f, id=f.id) for f in FACTORIES if predicate(f)]


@pytest.fixture(params=_params(lambda f: True))
def factory(request: pytest.FixtureRequest) -> LockFactory:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=_params(lambda f: f.exclusive))
def exclusive_factory(request: pytest.FixtureRequest) -> LockFactory:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=_params(lambda f: not f.exclusive))
def shared_factory(request: pytest.FixtureRequest) -> LockFactory:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=_params(lambda f: not f.fast_acquire))
def default_factory(request: pytest.FixtureRequest) -> LockFactory:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=_params(lambda f: f.fast_acquire))
def fast_factory(request: pytest.FixtureRequest) -> LockFactory:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=_params(lambda f: f.exclusive and not f.fast_acquire))
def default_exclusive_factory(request: pytest.FixtureRequest) -> LockFactory:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=_params(lambda f: f.exclusive and f.fast_acquire))
def fast_exclusive_factory(request: pytest.FixtureRequest) -> LockFactory:
    return request.param  # type: ignore[no-any-return]


# Made at import time, outside any event loop, as a web app's module-level globals are. Every
# backend's run of the test below uses the same objects from a new event loop.
_MODULE_LEVEL: dict[str, Made] = {f.id: f.make() for f in FACTORIES}


async def _hold(
    lock: Any,
    release: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[anyio.TaskInfo] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Hold ``lock`` until ``release`` is set; report the holder's TaskInfo when it holds."""
    async with lock:
        task_status.started(anyio.get_current_task())
        await release.wait()


async def _exercise(made: Made, exclusive: bool) -> None:
    """Uncontended and (for exclusive locks) contended use, within the current event loop."""
    lock = made.lock
    with anyio.fail_after(5):
        await lock.acquire()
        made.check_invariants()
        lock.release()
        async with lock:
            made.check_invariants()
        lock.acquire_nowait()
        lock.release()
        if exclusive:
            order: list[str] = []

            async def waiter() -> None:
                async with lock:
                    order.append("waiter")

            async with anyio.create_task_group() as tg:
                await lock.acquire()
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert _stats(lock).tasks_waiting == 1
                made.check_invariants()
                lock.release()
            assert order == ["waiter"]
            assert not lock.locked()
        made.check_invariants()


# --- mutual exclusion and order ---------------------------------------------------------------


async def test_exclusive_lock_admits_one_task_at_a_time(exclusive_factory: LockFactory) -> None:
    made = exclusive_factory.make()
    lock = made.lock
    inside = 0
    max_inside = 0
    entries = 0

    async def worker() -> None:
        nonlocal inside, max_inside, entries
        for _ in range(25):
            async with lock:
                inside += 1
                entries += 1
                max_inside = max(max_inside, inside)
                made.check_invariants()
                await anyio.lowlevel.checkpoint()
                assert inside == 1
                inside -= 1
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(worker)
    assert max_inside == 1
    assert entries == 30 * 25
    assert not lock.locked()
    assert _stats(lock).tasks_waiting == 0
    made.check_invariants()


async def test_waiters_are_served_in_arrival_order(exclusive_factory: LockFactory) -> None:
    made = exclusive_factory.make()
    lock = made.lock
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with lock:
            order.append(i)
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            for i in range(8):
                tg.start_soon(waiter, i)
                await anyio.wait_all_tasks_blocked()
            assert _stats(lock).tasks_waiting == 8
            made.check_invariants()
            lock.release()
    assert order == list(range(8))
    made.check_invariants()


async def test_cancelled_middle_waiter_is_skipped_and_order_kept(
    exclusive_factory: LockFactory,
) -> None:
    made = exclusive_factory.make()
    lock = made.lock
    order: list[int] = []
    scopes: dict[int, anyio.CancelScope] = {}

    async def waiter(i: int) -> None:
        with anyio.CancelScope() as scope:
            scopes[i] = scope
            async with lock:
                order.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            for i in range(3):
                tg.start_soon(waiter, i)
                await anyio.wait_all_tasks_blocked()
            scopes[1].cancel()
            await anyio.wait_all_tasks_blocked()
            assert _stats(lock).tasks_waiting == 2
            made.check_invariants()
            lock.release()
    assert order == [0, 2]
    assert not lock.locked()
    made.check_invariants()


async def test_mutual_exclusion_survives_random_cancellation(
    exclusive_factory: LockFactory,
) -> None:
    made = exclusive_factory.make()
    lock = made.lock
    rng = random.Random(1234)
    inside = 0
    entries = 0
    cancelled = 0
    scopes: dict[int, anyio.CancelScope] = {}
    finished = anyio.Event()
    running = 0

    async def worker(n: int) -> None:
        nonlocal inside, entries, cancelled, running
        running += 1
        for _ in range(20):
            with anyio.CancelScope() as scope:
                scopes[n] = scope
                async with lock:
                    inside += 1
                    try:
                        entries += 1
                        assert inside == 1
                        made.check_invariants()
                        await anyio.lowlevel.checkpoint()
                    finally:
                        inside -= 1
            if scope.cancelled_caught:
                cancelled += 1
            del scopes[n]
            made.check_invariants()
            await anyio.lowlevel.checkpoint()
        running -= 1
        if not running:
            finished.set()

    async def chaos() -> None:
        while not finished.is_set():
            if scopes:
                scopes[rng.choice(sorted(scopes))].cancel()
            for _ in range(rng.randrange(1, 4)):
                await anyio.lowlevel.checkpoint()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(worker, n)
            tg.start_soon(chaos)
    assert cancelled > 0
    assert entries > 0
    assert not lock.locked()
    assert _stats(lock).tasks_waiting == 0
    made.check_invariants()


async def test_acquire_cancelled_at_its_checkpoint_hands_lock_to_task_queued_meanwhile(
    default_exclusive_factory: LockFactory,
) -> None:
    made = default_exclusive_factory.make()
    lock = made.lock
    reached = False
    got: list[str] = []

    async def cancelled_acquirer() -> None:
        nonlocal reached
        with anyio.CancelScope() as scope:
            scope.cancel()
            await lock.acquire()
            reached = True  # pragma: no cover - the checkpoint must raise
            lock.release()  # pragma: no cover

    async def second() -> None:
        async with lock:
            got.append("second")
            made.check_invariants()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancelled_acquirer)
            tg.start_soon(second)
    assert not reached
    assert got == ["second"]
    assert not lock.locked()
    made.check_invariants()


# --- acquire_nowait / release / locked / statistics -------------------------------------------


async def test_acquire_nowait_raises_wouldblock_when_held_and_changes_nothing(
    exclusive_factory: LockFactory,
) -> None:
    made = exclusive_factory.make()
    lock = made.lock
    release = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            holder = await tg.start(_hold, lock, release)
            before = lock.statistics()
            with pytest.raises(anyio.WouldBlock):
                lock.acquire_nowait()
            assert lock.statistics() == before
            assert _stats(lock).owner == holder
            made.check_invariants()
            release.set()
    lock.acquire_nowait()
    assert _stats(lock).owner == anyio.get_current_task()
    lock.release()
    made.check_invariants()


async def test_release_of_unheld_lock_raises_runtimeerror(factory: LockFactory) -> None:
    made = factory.make()
    lock = made.lock
    before = lock.statistics()
    with pytest.raises(RuntimeError):
        lock.release()
    assert lock.statistics() == before
    assert not lock.locked()
    made.check_invariants()
    # Still fully usable.
    async with lock:
        pass
    made.check_invariants()


async def test_release_by_non_holder_raises_runtimeerror_and_keeps_hold(
    factory: LockFactory,
) -> None:
    made = factory.make()
    lock = made.lock
    release = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(_hold, lock, release)
            before = lock.statistics()
            with pytest.raises(RuntimeError):
                lock.release()
            assert lock.statistics() == before
            assert lock.locked()
            made.check_invariants()
            release.set()
    assert not lock.locked()
    made.check_invariants()


async def test_locked_reports_whether_held(factory: LockFactory) -> None:
    made = factory.make()
    lock = made.lock
    assert lock.locked() is False
    await lock.acquire()
    assert lock.locked() is True
    lock.release()
    assert lock.locked() is False
    made.check_invariants()


async def test_statistics_count_waiters_and_name_the_owner(exclusive_factory: LockFactory) -> None:
    made = exclusive_factory.make()
    lock = made.lock
    stats = _stats(lock)
    assert dataclasses.is_dataclass(stats)
    assert (stats.locked, stats.owner, stats.tasks_waiting) == (False, None, 0)

    async def waiter() -> None:
        async with lock:
            pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            stats = _stats(lock)
            assert (stats.locked, stats.owner, stats.tasks_waiting) == (
                True,
                anyio.get_current_task(),
                0,
            )
            for expected in (1, 2, 3):
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert _stats(lock).tasks_waiting == expected
                assert _stats(lock).owner == anyio.get_current_task()
            made.check_invariants()
            lock.release()
    stats = _stats(lock)
    assert (stats.locked, stats.owner, stats.tasks_waiting) == (False, None, 0)
    made.check_invariants()


async def test_shared_statistics_is_a_frozen_dataclass(shared_factory: LockFactory) -> None:
    lock = shared_factory.make().lock
    stats = lock.statistics()
    assert dataclasses.is_dataclass(stats)
    field = dataclasses.fields(stats)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(stats, field, 0)


# --- shape: async with, weakref, repr, sync release ------------------------------------------


async def test_async_with_holds_inside_and_enter_returns_none(factory: LockFactory) -> None:
    made = factory.make()
    lock = made.lock
    async with lock as entered:
        assert entered is None
        assert lock.locked()
        made.check_invariants()
    assert not lock.locked()
    made.check_invariants()


async def test_async_with_releases_when_body_raises(factory: LockFactory) -> None:
    made = factory.make()
    lock = made.lock
    with pytest.raises(KeyError):
        async with lock:
            raise KeyError("boom")
    assert not lock.locked()
    made.check_invariants()


async def test_lock_is_weak_referenceable_and_not_kept_alive(factory: LockFactory) -> None:
    made = factory.make()
    ref = weakref.ref(made.lock)
    assert ref() is made.lock
    async with made.lock:
        pass
    del made
    gc.collect()
    assert ref() is None


async def test_repr_is_readable_and_changes_with_state(factory: LockFactory) -> None:
    made = factory.make()
    lock = made.lock
    free = repr(lock)
    assert free.startswith("<")
    assert free.endswith(">")
    assert "\n" not in free
    assert "lock" in free.lower()
    async with lock:
        held = repr(lock)
    assert held != free
    assert repr(lock) == free


async def test_repr_shows_waiters(exclusive_factory: LockFactory) -> None:
    lock = exclusive_factory.make().lock

    async def waiter() -> None:
        async with lock:
            pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            held = repr(lock)
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            contended = repr(lock)
            lock.release()
    assert contended != held


async def test_release_and_acquire_nowait_are_plain_sync_functions(factory: LockFactory) -> None:
    lock = factory.make().lock
    assert not inspect.iscoroutinefunction(lock.release)
    assert not inspect.iscoroutinefunction(lock.acquire_nowait)
    assert lock.acquire_nowait() is None
    assert lock.release() is None
    assert not lock.locked()


# --- cancellation and checkpoints -------------------------------------------------------------


async def test_timeout_around_contended_acquire_leaves_no_waiter(
    exclusive_factory: LockFactory,
) -> None:
    made = exclusive_factory.make()
    lock = made.lock
    release = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(_hold, lock, release)
            with anyio.move_on_after(0.01) as scope:
                await lock.acquire()
            assert scope.cancelled_caught
            assert _stats(lock).tasks_waiting == 0
            made.check_invariants()
            release.set()
    # The timed-out waiter was not handed the lock on release.
    assert not lock.locked()
    assert _stats(lock).owner is None
    lock.acquire_nowait()
    lock.release()
    made.check_invariants()


async def test_granted_waiter_cancelled_before_running_passes_the_lock_on(
    exclusive_factory: LockFactory,
) -> None:
    made = exclusive_factory.make()
    lock = made.lock
    entered: list[str] = []
    first_scope = anyio.CancelScope()

    async def first() -> None:
        with first_scope:
            async with lock:
                entered.append("first")
                await anyio.lowlevel.checkpoint()

    async def second() -> None:
        async with lock:
            entered.append("second")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            # Hand the lock to `first`, then cancel it before it gets to run.
            lock.release()
            first_scope.cancel()
    # `first` may or may not have got in (trio cannot un-reschedule a woken task), but the
    # hand-off must not be lost: `second` gets the lock and it ends up free.
    assert "second" in entered
    assert not lock.locked()
    assert _stats(lock).tasks_waiting == 0
    made.check_invariants()


async def test_default_acquire_in_cancelled_scope_raises_and_leaves_lock_free(
    default_factory: LockFactory,
) -> None:
    made = default_factory.make()
    lock = made.lock
    reached = False
    with anyio.CancelScope() as scope:
        scope.cancel()
        await lock.acquire()
        reached = True
    assert not reached
    assert scope.cancelled_caught
    assert not lock.locked()
    made.check_invariants()
    lock.acquire_nowait()
    lock.release()


async def test_default_uncontended_acquire_lets_other_tasks_run(
    default_factory: LockFactory,
) -> None:
    made = default_factory.make()
    lock = made.lock
    spins = 0

    async def spinner() -> None:
        nonlocal spins
        while True:
            spins += 1
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(spinner)
            # Nothing but uncontended acquires and sync releases between here and the check.
            for _ in range(5):
                await lock.acquire()
                lock.release()
            seen = spins
            tg.cancel_scope.cancel()
    assert seen > 0
    made.check_invariants()


async def test_fast_uncontended_acquire_does_not_schedule(fast_factory: LockFactory) -> None:
    made = fast_factory.make()
    lock = made.lock
    spins = 0

    async def spinner() -> None:
        nonlocal spins
        while True:
            spins += 1
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(spinner)
            for _ in range(5):
                await lock.acquire()
                lock.release()
            seen = spins
            tg.cancel_scope.cancel()
    assert seen == 0
    made.check_invariants()


async def test_fast_uncontended_acquire_is_cancel_point_only_on_trio(
    fast_factory: LockFactory,
) -> None:
    made = fast_factory.make()
    lock = made.lock
    acquired = False
    with anyio.CancelScope() as scope:
        scope.cancel()
        await lock.acquire()
        acquired = True
        lock.release()
    if sniffio.current_async_library() == "trio":
        # trio's convention: every async operation is a cancel point.
        assert not acquired
        assert scope.cancelled_caught
    else:
        # asyncio.Lock's convention: the uncontended path does not look at cancellation.
        assert acquired
    assert not lock.locked()
    made.check_invariants()


async def test_fast_contended_acquire_still_waits_and_is_cancellable(
    fast_exclusive_factory: LockFactory,
) -> None:
    made = fast_exclusive_factory.make()
    lock = made.lock
    release = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            holder = await tg.start(_hold, lock, release)
            with anyio.CancelScope() as scope:
                scope.cancel()
                await lock.acquire()
            assert scope.cancelled_caught
            assert _stats(lock).owner == holder
            assert _stats(lock).tasks_waiting == 0
            made.check_invariants()
            release.set()
    assert not lock.locked()
    made.check_invariants()


# --- where and when the lock is made ----------------------------------------------------------


async def test_lock_made_at_module_level_works_in_each_new_loop(factory: LockFactory) -> None:
    made = _MODULE_LEVEL[factory.id]
    await _exercise(made, factory.exclusive)


def test_lock_made_before_any_loop_works_in_successive_loops(factory: LockFactory) -> None:
    made = factory.make()
    asyncio.run(_exercise(made, factory.exclusive))
    asyncio.run(_exercise(made, factory.exclusive))
    trio.run(_exercise, made, factory.exclusive)
    asyncio.run(_exercise(made, factory.exclusive))
    assert not made.lock.locked()
    made.check_invariants()


# --- owner exits while holding ----------------------------------------------------------------


async def _exit_while_holding(lock: Any, leave: anyio.Event) -> None:
    await lock.acquire()
    await leave.wait()
    # Returns still holding `lock`: a bug in the caller that the lock must report.


async def test_owner_exit_breaks_lock_for_waiters_and_later_acquires(
    exclusive_factory: LockFactory,
) -> None:
    made = exclusive_factory.make()
    lock = made.lock
    leave = anyio.Event()
    outcomes: list[str] = []

    async def waiter() -> None:
        try:
            await lock.acquire()
        except anyio.BrokenResourceError:
            outcomes.append("broken")
        else:  # pragma: no cover - the failure this test exists to catch
            outcomes.append("acquired")
            lock.release()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_exit_while_holding, lock, leave)
            await anyio.wait_all_tasks_blocked()
            assert lock.locked()
            tg.start_soon(waiter)
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert _stats(lock).tasks_waiting == 2
            leave.set()
        assert outcomes == ["broken", "broken"]
        made.check_invariants()

        # The lock stays broken: a request that would have to wait fails at once ...
        with pytest.raises(anyio.BrokenResourceError):
            await lock.acquire()
        # ... and the non-blocking form reports that it would block.
        with pytest.raises(anyio.WouldBlock):
            lock.acquire_nowait()
        assert _stats(lock).tasks_waiting == 0
        made.check_invariants()


async def test_owner_exit_without_waiters_is_reported_to_the_next_acquire(
    exclusive_factory: LockFactory,
) -> None:
    made = exclusive_factory.make()
    lock = made.lock
    leave = anyio.Event()
    leave.set()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_exit_while_holding, lock, leave)
        with pytest.raises(anyio.BrokenResourceError):
            await lock.acquire()
        with pytest.raises(anyio.WouldBlock):
            lock.acquire_nowait()
    made.check_invariants()


async def test_shared_owner_exit_does_not_block_compatible_requests(
    shared_factory: LockFactory,
) -> None:
    made = shared_factory.make()
    lock = made.lock
    leave = anyio.Event()
    leave.set()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_exit_while_holding, lock, leave)
        # Another shared hold does not conflict with the dead owner's, so it still succeeds.
        await lock.acquire()
        lock.release()
        lock.acquire_nowait()
        lock.release()
    made.check_invariants()
