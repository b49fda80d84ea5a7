"""Server sessions of ``aiolocks.postgres``: bounded by what is contended, not by tasks.

Tasks of one process that hold nothing queue in the process for a name before one of them
waits on the server, so a name costs a process at most one waiting session, however many
tasks want it; a free lock never waits behind another lock's waiters; a holder (or its child
task) can always take a further lock.  Session counts are read from the server
(``pg_stat_activity``), sampled while the test runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest

from aiolocks.postgres import PostgresLocks, owner_prefix

from .conftest import _query

pytestmark = pytest.mark.anyio


def _own_sessions(dsn: str) -> int:
    """Lock sessions of this process open on the server now."""
    rows = _query(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
        owner_prefix().replace("_", r"\_") + "%",
    )
    return int(rows[0][0])


@contextmanager
def _peak_sessions(dsn: str) -> Iterator[list[int]]:
    """Samples the process's lock sessions every 20 ms in a thread; yields [peak]."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _own_sessions(dsn))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


async def test_a_thousand_tasks_on_one_name_use_at_most_four_sessions(
    pg_dsn: str, pg_locks: PostgresLocks
) -> None:
    lock = pg_locks.lock("hot")
    inside = 0
    done = 0

    async def worker() -> None:
        nonlocal inside, done
        async with lock:
            inside += 1
            assert inside == 1
            await anyio.lowlevel.checkpoint()
            inside -= 1
            done += 1

    with _peak_sessions(pg_dsn) as peak, anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(worker)
            await anyio.wait_all_tasks_blocked()
            assert lock.statistics().tasks_waiting >= 990
    assert done == 1000
    print(f"peak lock sessions of this process, 1000 tasks on one name: {peak[0]}")
    assert 1 <= peak[0] <= 4


async def test_a_free_lock_never_waits_behind_a_hot_locks_waiters(
    pg_dsn: str, pg_locks: PostgresLocks
) -> None:
    pg = PostgresLocks(pg_dsn, namespace=pg_locks.namespace, max_sessions=3)
    hot = pg.lock("hot")
    try:
        async with anyio.create_task_group() as tg:
            await hot.acquire()

            async def waiter() -> None:
                async with hot:
                    pass

            for _ in range(100):
                tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert hot.statistics().tasks_waiting == 100
            with anyio.fail_after(2):  # a round trip or two, not the hot lock's queue
                async with pg.lock("free"):
                    pass
            hot.release()
    finally:
        await pg.aclose()


async def test_a_holders_child_takes_a_second_lock_while_many_wait_for_the_first(
    pg_dsn: str, pg_locks: PostgresLocks
) -> None:
    # one session for the holder, one for the first waiter (on the server, keeping its place
    # in the queue of every process), one for the child; the other 62 wait in the process
    pg = PostgresLocks(pg_dsn, namespace=pg_locks.namespace, max_sessions=3)
    first, second = pg.lock("first"), pg.lock("second")
    order: list[str] = []
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await first.acquire()

                async def waiter() -> None:
                    async with first:
                        order.append("waiter")

                for _ in range(63):
                    tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()

                async def child() -> None:
                    async with second:
                        order.append("child")

                async with anyio.create_task_group() as inner:
                    inner.start_soon(child)
                first.release()
        assert order[0] == "child" and order.count("waiter") == 63
    finally:
        await pg.aclose()


async def test_idle_sessions_close_after_idle_timeout(pg_dsn: str, pg_locks: PostgresLocks) -> None:
    pg = PostgresLocks(pg_dsn, namespace=pg_locks.namespace, idle_timeout=0.3, heartbeat=0.1)
    held = anyio.Event()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(5):  # five holders at once: five sessions

                    async def hold(i: int = i) -> None:
                        async with pg.lock(f"idle-{i}"):
                            await held.wait()

                    tg.start_soon(hold)
                while await anyio.to_thread.run_sync(_own_sessions, pg_dsn) < 5:
                    await anyio.sleep(0.02)
                held.set()
            start = anyio.current_time()
            while await anyio.to_thread.run_sync(_own_sessions, pg_dsn):
                await anyio.sleep(0.05)
            closed_after = anyio.current_time() - start
        print(f"5 idle sessions closed {closed_after:.2f} s after release (idle_timeout 0.3 s)")
        assert closed_after >= 0.2  # pooled first: idle, not closed at once
        async with pg.lock("idle-0"):  # and the space opens new ones on demand
            pass
    finally:
        await pg.aclose()


@pytest.fixture
def limited_dsn(pg_dsn: str) -> Iterator[str]:
    """A database whose role may open 2 connections: the server says "too many
    connections" (SQLSTATE 53300) at the third, as a full server says "too many clients"."""
    import uuid

    import psycopg

    name = f"lim_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT 2")
        conn.execute(f"CREATE DATABASE {name} OWNER {name}")
    info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    info.update(user=name, dbname=name)
    try:
        yield psycopg.conninfo.make_conninfo(**info)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            conn.execute(f"DROP ROLE {name}")


async def test_a_full_server_makes_tasks_wait_for_the_process_sessions_not_fail(
    limited_dsn: str,
) -> None:
    done: list[int] = []
    release = anyio.Event()
    async with PostgresLocks(limited_dsn, namespace="full", max_sessions=10) as pg:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(20):  # 20 distinct names at once: 20 sessions wanted

                    async def hold(i: int = i) -> None:
                        async with pg.lock(f"n{i}"):
                            await release.wait()
                            done.append(i)

                    tg.start_soon(hold)
                await anyio.sleep(0.3)  # the first two hold; the others retry and wait
                release.set()
    assert sorted(done) == list(range(20))
