"""LockCollection, TaskKey, KeyedRWLock and KeyedLock: all or nothing, no deadlock, no leaks.

Scripted scenarios use the "actors" of `_actors.py` (tasks that run one call at a time on
request); stress scenarios run many tasks doing random transfers between accounts, which
deadlock at once with naive lock ordering and lose money if exclusion or all-or-nothing fail.
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio

import aiolocks
from _actors import IDLE, actors, assert_idle, settle, snap
from aiolocks import (
    KeyedLock,
    KeyedRWLock,
    Lock,
    LockCollection,
    RWLock,
    TaskKey,
    TaskKeyError,
)
from aiolocks._introspect import check_invariants

pytestmark = pytest.mark.anyio

checkpoint = anyio.lowlevel.checkpoint

STRATEGIES = ["ordered", "retry"]
by_strategy = pytest.mark.parametrize("strategy", STRATEGIES)


# --- helpers -------------------------------------------------------------------------------------


def _is_view(lock: Any) -> bool:
    return isinstance(lock, (aiolocks.ReadLock, aiolocks.WriteLock))


def assert_free(lock: Any) -> None:
    """Nobody holds or waits for `lock` (any kind of collection member)."""
    if _is_view(lock):
        check_invariants(lock._rw)
        assert snap(lock._rw) == IDLE, f"{lock!r} is not idle"
        return
    assert not lock.locked(), f"{lock!r} is held"
    if isinstance(lock, Lock):
        check_invariants(lock)
    if isinstance(lock, asyncio.Lock):
        assert not getattr(lock, "_waiters", None), f"{lock!r} has waiters"
    else:
        assert lock.statistics().tasks_waiting == 0, f"{lock!r} has waiters"


def assert_held_by_other_only(lock: Any) -> None:
    """`lock` (the thing a holder actor took) is held, and nobody waits for it."""
    if _is_view(lock):
        rw = lock._rw
        check_invariants(rw)
        s = rw.statistics()
        assert s.readers_waiting == 0
        assert s.writers_waiting == 0
        assert s.readers or s.writer is not None
        return
    assert lock.locked()
    if isinstance(lock, asyncio.Lock):
        assert not getattr(lock, "_waiters", None), f"{lock!r} has waiters"
    else:
        assert lock.statistics().tasks_waiting == 0, f"{lock!r} has waiters"


def assert_nothing_held(coll: LockCollection, key: TaskKey | None = None) -> None:
    if key is not None:
        assert not key.in_use
    for member in coll.locks:
        assert_free(member)


def native_lock() -> Any:
    """The running backend's own lock: trio.Lock on trio, asyncio.Lock on asyncio."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.Lock()
    return asyncio.Lock()


def make_member(kind: str) -> tuple[Any, Any]:
    """A collection member of `kind`, and what another task must hold to make it block."""
    if kind == "lock":
        lock = Lock()
        return lock, lock
    if kind == "writer":  # blocked by a reader
        rw = RWLock()
        return rw.writer, rw.reader
    if kind == "reader":  # blocked by a writer
        rw = RWLock()
        return rw.reader, rw.writer
    if kind == "anyio":
        alock = anyio.Lock()
        return alock, alock
    assert kind == "native"
    nlock = native_lock()
    return nlock, nlock


MEMBER_KINDS = ["lock", "writer", "reader", "anyio", "native"]


async def _acquire(lock: Any) -> None:
    await lock.acquire()  # any member kind; asyncio.Lock.acquire returns True


async def take(coll: LockCollection, keys: dict[str, TaskKey] | None = None) -> Any:
    """Open `coll.lock(key)` with the calling task's key and keep the guard open."""
    key = TaskKey.get()
    if keys is not None:
        keys["key"] = key
    return await coll.lock(key).__aenter__()


def ids(locks: Any) -> list[int]:
    return [id(lock) for lock in locks]


# --- the classic AB/BA transfer ------------------------------------------------------------------

ACCOUNTS = 8
TRANSFER_TASKS = 50
TRANSFERS = 1000  # per parametrisation; three of them per backend
START_BALANCE = 100


async def _pause(rng: random.Random) -> None:
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        await checkpoint()


@pytest.mark.parametrize(
    ("kind", "strategy"),
    [("rwlock", "ordered"), ("rwlock-fast", "retry"), ("lock", "mixed")],
)
async def test_random_transfers_conserve_the_total_and_never_deadlock(
    kind: str, strategy: str
) -> None:
    seed = {"ordered": 1, "retry": 2, "mixed": 3}[strategy]
    rwlocks = kind.startswith("rwlock")
    fast = kind.endswith("fast")
    table: Any = KeyedRWLock(fast_acquire=fast) if rwlocks else KeyedLock()

    def writer(i: int) -> Any:
        return table[i].writer if rwlocks else table[i]

    def reader(i: int) -> Any:
        return table[i].reader if rwlocks else table[i]

    balances = [START_BALANCE] * ACCOUNTS
    total = START_BALANCE * ACCOUNTS
    inside: set[int] = set()  # accounts being changed right now, as the tasks saw it
    pending: list[anyio.CancelScope] = []  # transfers waiting for their locks
    stats = {"done": 0, "cancelled": 0, "audits": 0, "most_waiting": 0}
    workers_done = anyio.Event()

    async def transfer(rng: random.Random, key: TaskKey) -> None:
        src, dst = rng.sample(range(ACCOUNTS), 2)
        strat = rng.choice(STRATEGIES) if strategy == "mixed" else strategy
        coll = LockCollection(writer(src), writer(dst), strategy=strat)
        with anyio.CancelScope() as scope:
            pending.append(scope)
            stats["most_waiting"] = max(stats["most_waiting"], len(pending))
            async with coll.lock(key) as guard:
                pending.remove(scope)
                # The body must stay atomic even if the chaos task cancelled us just now.
                with anyio.CancelScope(shield=True):
                    assert key.in_use
                    assert sorted(ids(guard.locks)) == sorted(ids(coll.locks))
                    assert not inside & {src, dst}, "two tasks inside one account"
                    inside.update((src, dst))
                    amount = rng.randint(0, balances[src])
                    balances[src] -= amount
                    await _pause(rng)
                    balances[dst] += amount
                    await _pause(rng)
                    inside.difference_update((src, dst))
            stats["done"] += 1
        if scope.cancelled_caught:
            pending.remove(scope)
            stats["cancelled"] += 1
        assert not key.in_use

    async def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        key = TaskKey.get()
        for _ in range(TRANSFERS // TRANSFER_TASKS):
            await transfer(rng, key)
            await _pause(rng)

    async def auditor(n: int) -> None:
        rng = random.Random(seed * 1000 - n)
        key = TaskKey.get()
        everything = LockCollection(*(reader(i) for i in range(ACCOUNTS)))
        assert everything.read_only == rwlocks
        while not workers_done.is_set():
            async with everything.lock(key):
                assert not inside, "an audit saw a transfer in progress"
                before = sum(balances)
                await _pause(rng)
                assert sum(balances) == before == total
                stats["audits"] += 1
            await _pause(rng)

    async def chaos() -> None:
        rng = random.Random(seed)
        while not workers_done.is_set():
            if pending and rng.random() < 0.2:
                rng.choice(pending).cancel()
            await checkpoint()

    async def workers() -> None:
        async with anyio.create_task_group() as tg:
            for n in range(TRANSFER_TASKS):
                tg.start_soon(worker, n)
        workers_done.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(workers)
            tg.start_soon(chaos)
            for n in range(3):
                tg.start_soon(auditor, n)

    assert sum(balances) == total
    assert all(balance >= 0 for balance in balances)
    assert stats["done"] + stats["cancelled"] == TRANSFERS
    assert stats["done"] > TRANSFERS // 2
    assert stats["cancelled"] > 0
    assert stats["audits"] > 0
    assert stats["most_waiting"] >= TRANSFER_TASKS // 2, "the transfers hardly contended"
    assert not pending
    for i in range(ACCOUNTS):
        assert_free(writer(i))
    gc.collect()
    assert len(table) == 0


# --- global order --------------------------------------------------------------------------------


@by_strategy
@pytest.mark.parametrize("held", ["first", "second"])
async def test_ab_and_ba_collections_never_deadlock_each_other(strategy: str, held: str) -> None:
    # Naive argument order deadlocks here: t1 waits for a, t2 takes b then waits for a; when a
    # is freed t1 takes it and waits for b.
    a, b = Lock(name="a"), Lock(name="b")
    ab = LockCollection(a, b, strategy=strategy)
    ba = LockCollection(b, a, strategy=strategy)
    blocker = a if held == "first" else b
    async with actors("holder", "t1", "t2") as (holder, t1, t2):
        await holder.run(blocker.acquire)
        first = t1.start(lambda: take(ab))
        await settle()
        second = t2.start(lambda: take(ba))
        await settle()
        assert not first.finished
        assert not second.finished
        await holder.run(blocker.release)
        await settle()
        assert first.ok != second.ok, "exactly one collection must be held"
        winner, loser = (first, second) if first.ok else (second, first)
        assert not loser.finished
        winner_order = ids(winner.result.locks)
        assert sorted(winner_order) == sorted(ids([a, b]))
        await winner.actor.run(winner.result.release)
        await settle()
        assert loser.ok
        if strategy == "ordered":
            assert ids(loser.result.locks) == winner_order
        await loser.actor.run(loser.result.release)
    assert_free(a)
    assert_free(b)


async def test_ordered_collections_take_locks_in_one_global_order() -> None:
    rw = RWLock()
    a, b, c = Lock(), rw.writer, anyio.Lock()
    key = TaskKey.get()
    orders = []
    for members in ([a, b], [b, a], [a, b, c], [c, b, a], [b, c, a], [c, a], [a, c]):
        for how in ("lock", "nowait"):
            coll = LockCollection(*members)
            assert coll.locks == tuple(members)
            if how == "lock":
                async with coll.lock(key) as guard:
                    order = guard.locks
            else:
                with coll.lock_nowait(key) as guard:
                    order = guard.locks
            assert sorted(ids(order)) == sorted(ids(members))
            orders.append(order)
    full = next(order for order in orders if len(order) == 3)
    rank = {id(lock): i for i, lock in enumerate(full)}
    for order in orders:
        assert [rank[id(lock)] for lock in order] == sorted(rank[id(lock)] for lock in order)
    for lock in (a, b, c):
        assert_free(lock)


@by_strategy
async def test_many_tasks_locking_overlapping_collections_in_every_order_never_deadlock(
    strategy: str,
) -> None:
    rw = RWLock()
    a, b, c = Lock(name="a"), rw.writer, Lock(name="c")
    orders = [(a, b), (b, a), (b, c), (c, b), (c, a), (a, c), (a, b, c), (c, b, a), (b, a, c)]
    collections = [LockCollection(*members, strategy=strategy) for members in orders]
    inside: set[int] = set()
    seen: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
    rounds = 0

    async def worker(n: int) -> None:
        nonlocal rounds
        rng = random.Random(n)
        key = TaskKey.get()
        for _ in range(20):
            coll = rng.choice(collections)
            async with coll.lock(key) as guard:
                mine = set(ids(coll.locks))
                assert not inside & mine, "two tasks hold one lock"
                inside.update(mine)
                seen.setdefault(tuple(sorted(mine)), set()).add(tuple(ids(guard.locks)))
                await _pause(rng)
                inside.difference_update(mine)
                rounds += 1
            await _pause(rng)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for n in range(60):
                tg.start_soon(worker, n)
    assert rounds == 60 * 20
    if strategy == "ordered":
        for members, acquisition_orders in seen.items():
            assert len(acquisition_orders) == 1, f"{members}: {acquisition_orders}"
    for lock in (a, b, c):
        assert_free(lock)


# --- all or nothing ------------------------------------------------------------------------------


@by_strategy
@pytest.mark.parametrize("kind", MEMBER_KINDS)
async def test_cancelled_while_waiting_for_second_member_holds_nothing(
    strategy: str, kind: str
) -> None:
    key = TaskKey.get()
    # The blocked member must be the second one taken.  The global order goes by identity, and
    # the allocator may keep handing out one type's free slots below the other's, so keep every
    # lock made alive (new ones then come from fresh memory) and pair the lowest Lock so far
    # with each new member until the order puts that member after it.
    made: list[Any] = []
    first = Lock(name="first")
    for _ in range(20_000):
        lock = Lock(name="first")
        first = min(first, lock, key=id)
        other, blocker = make_member(kind)
        made.append((lock, other))
        coll = LockCollection(first, other, strategy=strategy)
        if strategy == "retry":  # retry goes by the given order
            break
        with coll.lock_nowait(key) as guard:
            if guard.locks[0] is first:
                break
    else:
        pytest.fail("could not make a lock that comes first in the global order")
    keys: dict[str, TaskKey] = {}
    async with actors("holder", "taker") as (holder, taker):
        await holder.run(lambda: _acquire(blocker))
        op = taker.start(lambda: take(coll, keys))
        await settle()
        assert not op.finished, op.exc
        assert keys["key"].in_use
        if strategy == "ordered":
            assert first.statistics().owner == taker.info, "ordered waits holding the first"
        else:
            assert_free(first)  # retry never waits while holding anything
        op.cancel()
        await settle()
        assert op.cancelled
        assert not keys["key"].in_use
        assert_free(first)
        assert_held_by_other_only(blocker)
        await holder.run(blocker.release)
        assert_nothing_held(coll)
        guard = await taker.run(lambda: take(coll, keys))
        assert keys["key"].in_use
        await taker.run(guard.release)
    assert_nothing_held(coll, keys["key"])


@by_strategy
async def test_deadline_while_waiting_for_a_member_leaves_nothing_held(strategy: str) -> None:
    rw1, rw2 = RWLock(), RWLock()
    a = Lock()
    coll = LockCollection(rw1.writer, a, rw2.reader, strategy=strategy)
    key = TaskKey.get()
    async with actors("holder") as (holder,):
        for blocker in (a, rw2.writer):
            await holder.run(blocker.acquire)
            with anyio.fail_after(5):
                with anyio.move_on_after(0.02) as scope:
                    async with coll.lock(key):
                        pytest.fail("locked a collection with a member held elsewhere")
            assert scope.cancelled_caught
            assert not key.in_use
            assert_held_by_other_only(blocker)
            await holder.run(blocker.release)
            assert_nothing_held(coll, key)


@pytest.mark.parametrize("kind", MEMBER_KINDS)
@pytest.mark.parametrize("position", [0, 1, 2])
async def test_lock_nowait_with_one_member_held_raises_wouldblock_and_holds_nothing(
    kind: str, position: int
) -> None:
    rw = RWLock()
    member, blocker = make_member(kind)
    members: list[Any] = [Lock(), rw.writer]
    members.insert(position, member)
    coll = LockCollection(*members)
    key = TaskKey.get()
    async with actors("holder") as (holder,):
        await holder.run(lambda: _acquire(blocker))
        with pytest.raises(anyio.WouldBlock):
            coll.lock_nowait(key)
        assert not key.in_use
        for other in members:
            if other is not member:
                assert_free(other)
        assert_held_by_other_only(blocker)
        await holder.run(blocker.release)
    with anyio.fail_after(5):
        async with coll.lock(key) as guard:  # nothing was left queued
            assert sorted(ids(guard.locks)) == sorted(ids(members))
    guard = coll.lock_nowait(key)
    guard.release()
    assert_nothing_held(coll, key)


async def test_lock_nowait_guard_works_with_async_with_with_and_release() -> None:
    rw = RWLock()
    a = Lock()
    coll = LockCollection(a, rw.writer)
    key = TaskKey.get()

    def check_held(guard: Any) -> None:
        assert key.in_use
        assert a.locked()
        assert rw.writer.locked()
        assert sorted(ids(guard.locks)) == sorted(ids(coll.locks))

    guard = coll.lock_nowait(key)
    async with guard:
        check_held(guard)
    assert_nothing_held(coll, key)
    with pytest.raises(RuntimeError):
        guard.release()

    guard = coll.lock_nowait(key)
    with guard:
        check_held(guard)
    assert_nothing_held(coll, key)
    with pytest.raises(RuntimeError):
        guard.release()

    guard = coll.lock_nowait(key)
    check_held(guard)
    guard.release()
    assert_nothing_held(coll, key)
    with pytest.raises(RuntimeError):
        guard.release()
    assert_nothing_held(coll, key)


async def test_leaving_async_with_by_an_exception_releases_everything() -> None:
    coll = LockCollection(Lock(), RWLock().writer, RWLock().reader)
    key = TaskKey.get()

    async def fail_inside() -> None:
        async with coll.lock(key) as guard:
            assert len(guard.locks) == 3
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_inside()
    assert_nothing_held(coll, key)


async def test_release_inside_async_with_is_not_repeated_on_exit() -> None:
    coll = LockCollection(Lock(), RWLock().writer)
    key = TaskKey.get()
    async with coll.lock(key) as guard:
        guard.release()
        assert_nothing_held(coll, key)
        with pytest.raises(RuntimeError):
            guard.release()
    assert_nothing_held(coll, key)


@by_strategy
async def test_member_broken_while_waiting_raises_and_holds_nothing(strategy: str) -> None:
    a, b = Lock(name="a"), Lock(name="b")
    coll = LockCollection(a, b, strategy=strategy)
    keys: dict[str, TaskKey] = {}
    async with actors("holder", "taker") as (holder, taker):
        await holder.run(b.acquire)
        op = taker.start(lambda: take(coll, keys))
        await settle()
        assert not op.finished
        await holder.exit()  # exits holding b
        await settle()
        assert op.finished
        assert isinstance(op.exc, anyio.BrokenResourceError)
        assert not keys["key"].in_use
        assert_free(a)
        with pytest.raises(anyio.BrokenResourceError):  # later waits fail at once, too
            await taker.run(lambda: take(coll, keys))
        assert not keys["key"].in_use
        assert_free(a)
        with pytest.raises(anyio.WouldBlock):
            await taker.run(lambda: coll.lock_nowait(keys["key"]))
        assert not keys["key"].in_use
        assert_free(a)


@by_strategy
async def test_member_raising_deadlockerror_leaves_nothing_held(strategy: str) -> None:
    rw = RWLock()
    a = Lock()
    coll = LockCollection(a, rw.writer, strategy=strategy)
    key = TaskKey.get()
    async with rw.reader:  # read -> write through the collection could never succeed
        with anyio.fail_after(5), pytest.raises(aiolocks.DeadlockError):
            async with coll.lock(key):
                pytest.fail("took write while holding read")
        assert not key.in_use
        assert_free(a)
        assert snap(rw) == (1, None, 0, 0)
    assert_nothing_held(coll, key)


# --- cancellation at every await point -----------------------------------------------------------


@by_strategy
@pytest.mark.parametrize("release_order", ["forward", "backward"])
@pytest.mark.parametrize("cancel_mode", ["scope", "native"])
async def test_cancellation_at_every_step_of_a_contended_lock_leaves_nothing_held(
    strategy: str, release_order: str, cancel_mode: str
) -> None:
    if cancel_mode == "native" and sniffio.current_async_library() == "trio":
        pytest.skip("native cancellation is asyncio's task.cancel()")
    steps = [(0, 0)] + [(released, yields) for released in (1, 2, 3) for yields in range(6)]
    for released, yields in steps:
        await _cancel_scenario(strategy, release_order, cancel_mode, released, yields)


async def _cancel_scenario(
    strategy: str, release_order: str, cancel_mode: str, released: int, yields: int
) -> None:
    where = f"released={released} yields={yields}"
    rw1, rw2 = RWLock(name="rw1"), RWLock(name="rw2")
    a = Lock(name="a")
    members = [a, rw1.writer, rw2.reader]
    blockers = [a, rw1.reader, rw2.writer]
    coll = LockCollection(*members, strategy=strategy)
    order = [0, 1, 2] if release_order == "forward" else [2, 1, 0]
    keys: dict[str, TaskKey] = {}
    async with actors("h0", "h1", "h2", "taker") as (*holders, taker):
        for holder, blocker in zip(holders, blockers, strict=False):
            await holder.run(blocker.acquire)
        op = taker.start(lambda: take(coll, keys))
        await settle()
        assert not op.finished, where
        for i in order[: max(released - 1, 0)]:
            await holders[i].run(blockers[i].release)
        if released:
            last = order[released - 1]
            holders[last].start(blockers[last].release)
            for _ in range(yields):
                await checkpoint()
        if not op.finished:  # a native cancel would hit the actor's own loop
            op.cancel(cancel_mode)
        await settle()
        assert op.finished, where
        assert op.exc is None, f"{where}: {op.exc!r}"
        if op.ok:  # it had everything before the cancellation arrived
            assert released == 3, where
            assert keys["key"].in_use, where
            await taker.run(op.result.release)
        assert not keys["key"].in_use, where
        still_held = order[released:]
        for i, (member, blocker) in enumerate(zip(members, blockers, strict=False)):
            if i in still_held:
                assert_held_by_other_only(blocker)
            else:
                assert_free(member)
        for i in still_held:
            await holders[i].run(blockers[i].release)
        assert_nothing_held(coll)
        guard = await taker.run(lambda: take(coll, keys))  # the key and every member work
        await taker.run(guard.release)
    assert_nothing_held(coll, keys["key"])


# --- TaskKey -------------------------------------------------------------------------------------


async def test_task_key_is_stable_within_a_task_and_distinct_across_tasks() -> None:
    mine = TaskKey.get()
    assert TaskKey.get() is mine
    assert not mine.in_use
    keys: list[TaskKey] = []

    async def child(depth: int) -> None:
        key = TaskKey.get()
        await checkpoint()
        assert TaskKey.get() is key
        keys.append(key)
        if depth:
            async with anyio.create_task_group() as tg:
                tg.start_soon(child, depth - 1)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(child, 1)
    assert len(keys) == 8
    assert len({id(key) for key in [*keys, mine]}) == 9
    assert TaskKey.get() is mine


async def test_task_key_repr_names_the_task() -> None:
    reprs: list[str] = []

    async def child() -> None:
        reprs.append(repr(TaskKey.get()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(child, name="the-key-owner")
    assert "the-key-owner" in reprs[0]


def test_task_key_outside_a_task_raises_runtimeerror() -> None:
    with pytest.raises(RuntimeError):
        TaskKey.get()


async def test_key_of_another_task_raises_taskkeyerror_and_takes_nothing() -> None:
    coll = LockCollection(Lock(), RWLock().writer)
    key = TaskKey.get()
    errors: list[BaseException] = []

    async def intruder() -> None:
        with pytest.raises(TaskKeyError) as first:
            async with coll.lock(key):
                pytest.fail("locked with another task's key")
        errors.append(first.value)
        with pytest.raises(TaskKeyError) as second:
            coll.lock_nowait(key)
        errors.append(second.value)
        assert_nothing_held(coll, key)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(intruder)
    assert len(errors) == 2
    assert isinstance(errors[0], RuntimeError)

    async def keep_key() -> None:
        keys.append(TaskKey.get())

    keys: list[TaskKey] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(keep_key)
    with pytest.raises(TaskKeyError):  # the key of a task that has ended
        coll.lock_nowait(keys[0])
    with pytest.raises(TaskKeyError):
        async with coll.lock(keys[0]):
            pytest.fail("locked with another task's key")
    assert_nothing_held(coll, key)
    async with coll.lock(key):  # the owner can still use it
        assert key.in_use
    assert_nothing_held(coll, key)


async def test_nested_use_of_a_key_raises_at_once_and_takes_nothing() -> None:
    rw = RWLock()
    a, b = Lock(name="a"), rw.writer
    c, d = Lock(name="c"), RWLock().reader
    outer = LockCollection(a, b)
    other = LockCollection(c, d)
    overlapping = LockCollection(b, c, strategy="retry")
    key = TaskKey.get()
    async with actors("holder") as (holder,):
        await holder.run(c.acquire)  # so that any real attempt on `other` would have to wait
        with anyio.fail_after(1):
            async with outer.lock(key) as guard:
                held = ids(guard.locks)
                for coll in (outer, other, overlapping):
                    with pytest.raises(TaskKeyError):
                        async with coll.lock(key):
                            pytest.fail("nested lock with a key in use")
                    with pytest.raises(TaskKeyError):
                        coll.lock_nowait(key)
                    assert key.in_use, "a refused nested attempt must not free the key"
                    assert ids(guard.locks) == held
                    assert a.statistics().owner == anyio.get_current_task()
                    assert rw.writer.statistics().owner == anyio.get_current_task()
                    assert_held_by_other_only(c)
                    assert_free(d)
        assert_nothing_held(outer, key)
        await holder.run(c.release)
    with anyio.fail_after(5):
        async with other.lock(key):  # after the guard closes the key works again
            assert key.in_use
        async with overlapping.lock(key):
            pass
        outer.lock_nowait(key).release()
    for coll in (outer, other, overlapping):
        assert_nothing_held(coll, key)


# --- construction errors -------------------------------------------------------------------------


def _duplicates() -> Iterator[Any]:
    lock, rw = Lock(), RWLock()
    yield pytest.param(lambda: (lock, lock), id="same-lock-twice")
    yield pytest.param(lambda: (rw.reader, rw.writer), id="reader-and-writer")
    yield pytest.param(lambda: (rw.writer, rw.reader), id="writer-and-reader")
    yield pytest.param(lambda: (rw.writer, rw.writer), id="writer-twice")
    yield pytest.param(lambda: (lock, rw.writer, lock), id="same-lock-apart")
    yield pytest.param(lambda: (rw.reader, rw.reader, lock), id="reader-twice-not-read-only")
    alock = anyio.Lock()
    yield pytest.param(lambda: (alock, Lock(), alock), id="anyio-lock-twice")


@pytest.mark.parametrize("members", list(_duplicates()))
def test_duplicate_members_raise_valueerror(members: Callable[[], tuple[Any, ...]]) -> None:
    for strategy in STRATEGIES:
        with pytest.raises(ValueError):  # noqa: PT011
            LockCollection(*members(), strategy=strategy)


@by_strategy
async def test_read_only_collection_may_name_one_reader_twice(strategy: str) -> None:
    rw, other = RWLock(), RWLock()
    coll = LockCollection(rw.reader, other.reader, rw.reader, strategy=strategy)
    assert coll.read_only
    assert not LockCollection(rw.reader, other.writer).read_only
    key = TaskKey.get()
    with anyio.fail_after(5):
        async with coll.lock(key) as guard:
            assert len(guard.locks) == 3
            assert rw.statistics().readers == 1
            assert other.statistics().readers == 1
            assert not rw.writer.locked()
        assert_idle(rw)
        assert_idle(other)
        coll.lock_nowait(key).release()
        assert_idle(rw)
        async with actors("writer") as (w,):
            await w.run(rw.writer.acquire)
            with pytest.raises(anyio.WouldBlock):
                coll.lock_nowait(key)
            assert not key.in_use
            assert snap(rw) == (0, w.info, 0, 0)
            assert_idle(other)
            await w.run(rw.writer.release)
        async with coll.lock(key):
            pass
    assert_idle(rw)
    assert_idle(other)


@by_strategy
async def test_read_only_collection_with_one_reader_twice_queues_behind_a_writer(
    strategy: str,
) -> None:
    rw = RWLock()
    coll = LockCollection(rw.reader, rw.reader, strategy=strategy)
    keys: dict[str, TaskKey] = {}
    async with actors("reader", "writer", "taker") as (reader, writer, taker):
        await reader.run(rw.reader.acquire)
        writing = writer.start(rw.writer.acquire)
        await settle()
        with pytest.raises(anyio.WouldBlock):  # never jumps the queue
            await taker.run(lambda: coll.lock_nowait(TaskKey.get()))
        op = taker.start(lambda: take(coll, keys))
        await settle()
        assert not op.finished
        assert snap(rw) == (1, None, 1, 1)
        await reader.run(rw.reader.release)
        assert writing.ok
        assert not op.finished
        await writer.run(rw.writer.release)
        assert op.ok, "the second read of one reader must be re-entrant, not queued"
        assert snap(rw) == (1, None, 0, 0)
        await taker.run(op.result.release)
    assert_idle(rw)
    assert not keys["key"].in_use


def _not_locks() -> Iterator[Any]:
    yield pytest.param(object, id="object")
    yield pytest.param(lambda: "lock", id="str")
    yield pytest.param(lambda: None, id="None")
    yield pytest.param(RWLock, id="RWLock-itself")
    yield pytest.param(lambda: RWLock().upgradable, id="upgradable")
    yield pytest.param(aiolocks.Condition, id="Condition")
    yield pytest.param(lambda: anyio.Semaphore(1), id="anyio-Semaphore")
    yield pytest.param(threading.Lock, id="threading-Lock")


@pytest.mark.parametrize("make", list(_not_locks()))
def test_non_lock_members_raise_typeerror_naming_the_type(make: Callable[[], Any]) -> None:
    bad = make()
    with pytest.raises(TypeError) as info:
        LockCollection(Lock(), bad)
    assert type(bad).__name__ in str(info.value)
    with pytest.raises(TypeError):
        LockCollection(bad)


def test_empty_collection_raises_valueerror() -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        LockCollection()
    with pytest.raises(ValueError):  # noqa: PT011
        LockCollection(strategy="retry")


@pytest.mark.parametrize("strategy", ["random", "Ordered", "", None, 0])
def test_unknown_strategy_raises_valueerror(strategy: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        LockCollection(Lock(), strategy=strategy)


# --- foreign members -----------------------------------------------------------------------------


@by_strategy
@pytest.mark.parametrize("kind", ["anyio", "native"])
async def test_foreign_member_all_or_nothing(strategy: str, kind: str) -> None:
    foreign, _ = make_member(kind)
    rw = RWLock()
    a = Lock()
    coll = LockCollection(a, foreign, rw.writer, strategy=strategy)
    key = TaskKey.get()
    async with actors("holder", "rival") as (holder, rival):
        await holder.run(lambda: _acquire(foreign))
        with pytest.raises(anyio.WouldBlock):
            coll.lock_nowait(key)
        assert_free(a)
        assert_free(rw.writer)
        assert_held_by_other_only(foreign)
        with anyio.fail_after(5), anyio.move_on_after(0.02) as scope:
            async with coll.lock(key):
                pytest.fail("locked a collection whose foreign member is held elsewhere")
        assert scope.cancelled_caught
        assert not key.in_use
        assert_free(a)
        assert_free(rw.writer)
        assert_held_by_other_only(foreign)
        await holder.run(foreign.release)
        assert_nothing_held(coll, key)

        with anyio.fail_after(5):
            async with coll.lock(key) as guard:
                assert sorted(ids(guard.locks)) == sorted(ids(coll.locks))
                assert foreign.locked()
                blocked = rival.start(lambda: _acquire(foreign))
                await settle()
                assert not blocked.finished, "the foreign lock was not really held"
            await settle()
            assert blocked.ok
            await rival.run(foreign.release)
    assert_nothing_held(coll, key)
    guard = coll.lock_nowait(key)
    assert foreign.locked()
    guard.release()
    assert_nothing_held(coll, key)


async def test_asyncio_lock_member_nowait_does_not_barge_past_a_woken_waiter() -> None:
    if sniffio.current_async_library() != "asyncio":
        pytest.skip("asyncio.Lock only")
    foreign = asyncio.Lock()
    coll = LockCollection(Lock(), foreign)
    key = TaskKey.get()
    async with actors("holder", "waiter") as (holder, waiter):
        await holder.run(foreign.acquire)
        queued = waiter.start(foreign.acquire)
        await settle()
        assert not queued.finished
        foreign.release()  # from this task: asyncio.Lock has no owner
        # The waiter has been woken but has not run yet: a newcomer must not take the lock.
        with pytest.raises(anyio.WouldBlock):
            coll.lock_nowait(key)
        assert not key.in_use
        await settle()
        assert queued.ok
        assert foreign.locked()
        await waiter.run(foreign.release)
    assert_nothing_held(coll, key)


# --- KeyedRWLock / KeyedLock ---------------------------------------------------------------------

keyed_tables = pytest.mark.parametrize("factory", [KeyedRWLock, KeyedLock])


def _held_side(factory: Any, table: Any, k: Any) -> Any:
    return table[k].writer if factory is KeyedRWLock else table[k]


@keyed_tables
async def test_keyed_table_gives_one_lock_per_key_while_referenced(factory: Any) -> None:
    table = factory()
    first = table["a"]
    assert isinstance(first, RWLock if factory is KeyedRWLock else Lock)
    assert table["a"] is first
    assert table["b"] is not first
    assert table[("a", 1)] is not first
    gc.collect()
    assert table["a"] is first
    assert "a" in table
    assert "a" in list(table)
    assert len(table) >= 1
    async with _held_side(factory, table, "a"):
        assert table["a"] is first
        assert first.writer.locked() if factory is KeyedRWLock else first.locked()
    del first
    gc.collect()
    assert len(table) == 0
    assert "a" not in table
    assert list(table) == []


@keyed_tables
async def test_keyed_table_memory_returns_to_empty_after_many_keys(factory: Any) -> None:
    table = factory()
    key = TaskKey.get()
    with anyio.fail_after(10):
        for start in range(0, 10_000, 4):
            if start % 8:
                async with LockCollection(
                    *(_held_side(factory, table, k) for k in range(start, start + 4))
                ).lock(key):
                    pass
            else:
                async with _held_side(factory, table, start):
                    pass
    gc.collect()
    assert len(table) == 0
    assert list(table) == []


@keyed_tables
async def test_keyed_entry_held_by_a_task_survives_gc_while_held(factory: Any) -> None:
    table = factory()
    async with actors("holder", "waiter") as (holder, waiter):
        await holder.run(lambda: _held_side(factory, table, "x").acquire())
        gc.collect()
        assert "x" in table
        assert len(table) == 1
        lock = _held_side(factory, table, "x")
        assert lock.statistics().owner == holder.info, "a held entry was dropped and remade"
        del lock
        # A second task waits; the holder's release must reach the lock the waiter is on.
        queued = waiter.start(lambda: _held_side(factory, table, "x").acquire())
        await settle()
        gc.collect()
        assert not queued.finished
        await holder.run(lambda: _held_side(factory, table, "x").release())
        assert queued.ok
        gc.collect()
        assert len(table) == 1
        await waiter.run(lambda: _held_side(factory, table, "x").release())
    gc.collect()
    assert len(table) == 0


async def test_keyed_rwlock_entry_read_held_by_a_task_survives_gc_while_held() -> None:
    table = KeyedRWLock()
    async with actors("reader") as (reader,):
        await reader.run(lambda: table["r"].reader.acquire())
        gc.collect()
        assert "r" in table
        assert table["r"].statistics().readers == 1, "a read-held entry was dropped and remade"
        await reader.run(lambda: table["r"].reader.release())
    gc.collect()
    assert len(table) == 0


@keyed_tables
@pytest.mark.parametrize(
    "bad", [[1], {}, {1}, bytearray(b"k")], ids=["list", "dict", "set", "bytearray"]
)
def test_keyed_table_unhashable_key_raises_typeerror(factory: Any, bad: Any) -> None:
    table = factory()
    with pytest.raises(TypeError):
        table[bad]
    assert len(table) == 0


@keyed_tables
async def test_keyed_entry_held_by_a_task_excludes_other_tasks_without_references(
    factory: Any,
) -> None:
    # Nobody keeps a reference to the lock: only its holder's hold keeps it in the table.
    table = factory()
    async with actors("holder", "rival") as (holder, rival):
        await holder.run(lambda: _held_side(factory, table, "x").acquire())
        gc.collect()
        with pytest.raises(anyio.WouldBlock):
            await rival.run(lambda: _held_side(factory, table, "x").acquire_nowait())
        await holder.run(lambda: _held_side(factory, table, "x").release())
    gc.collect()
    assert len(table) == 0
