"""LockCollection over aiolocks.postgres locks: one request, ascending key order, all or none."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from aiolocks import Lock, LockCollection, TaskKey
from aiolocks.postgres import PostgresLocks

pytestmark = pytest.mark.anyio


@pytest.fixture
async def other(pg_locks: PostgresLocks, pg_dsn: str) -> AsyncIterator[PostgresLocks]:
    """Another lock space on the same namespace: another process, as far as locks go."""
    pg = PostgresLocks(pg_dsn, namespace=pg_locks.namespace, heartbeat=0.2)
    try:
        yield pg
    finally:
        await pg.aclose()


async def test_collection_takes_every_member_and_releases_them(
    pg_locks: PostgresLocks, other: PostgresLocks
) -> None:
    a, b, c = pg_locks.lock("c-a"), pg_locks.rwlock("c-b").writer, pg_locks.rwlock("c-c").reader
    coll = LockCollection(a, b, c)
    with anyio.fail_after(5):
        async with coll.lock(TaskKey.get()):
            assert a.locked() and b.locked() and c.locked()
            for name in ("c-a",):
                with pytest.raises(anyio.WouldBlock):
                    other.lock(name).acquire_nowait()
            with pytest.raises(anyio.WouldBlock):
                other.rwlock("c-b").reader.acquire_nowait()
            other.rwlock("c-c").reader.acquire_nowait()  # shared with our read hold
            other.rwlock("c-c").reader.release()
        assert not (a.locked() or b.locked() or c.locked())
        await other.lock("c-a").acquire()  # released on the server too (release() only sends)
        other.lock("c-a").release()


async def test_collection_waits_all_or_nothing_and_a_timeout_leaves_nothing(
    pg_locks: PostgresLocks, other: PostgresLocks
) -> None:
    a, b = pg_locks.lock("w-a"), pg_locks.lock("w-b")
    coll = LockCollection(a, b)
    with anyio.fail_after(5):
        await other.lock("w-b").acquire()
        with anyio.move_on_after(0.2) as scope:
            async with coll.lock(TaskKey.get()):
                pass
        assert scope.cancelled_caught
        assert not a.locked()
        other.lock("w-a").acquire_nowait()  # 'w-a' was not kept while waiting for 'w-b'
        other.lock("w-a").release()
        other.lock("w-b").release()
        async with coll.lock(TaskKey.get()):
            assert a.locked() and b.locked()


async def test_opposite_member_orders_never_deadlock(pg_locks: PostgresLocks) -> None:
    a, b = pg_locks.lock("o-a"), pg_locks.lock("o-b")
    counts = [0, 0]

    async def worker(i: int, coll: LockCollection) -> None:
        for _ in range(10):
            async with coll.lock(TaskKey.get()):
                counts[i] += 1
                await anyio.lowlevel.checkpoint()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, 0, LockCollection(a, b))
            tg.start_soon(worker, 1, LockCollection(b, a))
    assert counts == [10, 10]


async def test_bad_collections_are_refused_at_construction(
    pg_locks: PostgresLocks, other: PostgresLocks
) -> None:
    with pytest.raises(ValueError, match="same PostgresLocks"):
        LockCollection(pg_locks.lock("x"), Lock())
    with pytest.raises(ValueError, match="same PostgresLocks"):
        LockCollection(pg_locks.lock("x"), other.lock("y"))
    rw = pg_locks.rwlock("dup")
    with pytest.raises(ValueError, match="same lock"):
        LockCollection(rw.reader, rw.writer)
