"""aiolocks.telemetry over aiolocks.postgres: acquisitions, holds, and holds that were lost."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from _metrics import HOLD, WAIT
from aiolocks import DeadlockError, LockLostError
from aiolocks.postgres import PostgresLocks

from .test_pg_locks import server

pytestmark = pytest.mark.anyio


async def test_postgres_locks_are_measured_by_name_and_mode(
    pg_locks: PostgresLocks, metrics: Any
) -> None:
    lock, rw = pg_locks.lock("orders"), pg_locks.rwlock("catalog")
    with anyio.fail_after(10):
        for _ in range(3):
            async with lock:
                with pytest.raises(DeadlockError):
                    await lock.acquire()  # not re-entrant
        async with rw.reader:
            pass
        await rw.writer.acquire()
        rw.writer.release()
    assert metrics.count("orders", "exclusive", "acquired", kind="PostgresLock") == 3
    assert metrics.count("orders", "exclusive", "deadlock", kind="PostgresLock") == 3
    assert metrics.count("catalog", "read", "acquired", kind="PostgresRWLock") == 1
    assert metrics.count("catalog", "write", "acquired", kind="PostgresRWLock") == 1
    assert metrics.histogram(HOLD, "orders", "exclusive").count == 3
    assert metrics.histogram(WAIT, "orders", "exclusive").count == 6
    assert metrics.histogram(HOLD, "catalog", "write").count == 1
    assert set(metrics.waiting().values()) == {0}


async def test_a_lost_hold_is_counted_as_lost(
    pg_locks: PostgresLocks, pg_dsn: str, metrics: Any
) -> None:
    rw = pg_locks.rwlock("lost")
    with anyio.fail_after(10):
        await rw.writer.acquire()
        (info,) = await pg_locks.snapshot()
        await server(pg_dsn, "SELECT pg_terminate_backend(%s, 5000)", info.holders[0].pid)
        with pytest.raises(LockLostError):
            await rw.reader.acquire()  # re-entrant on a lost hold: refused
        with pytest.raises(LockLostError):
            rw.writer.release()  # the loss reported at release
    assert metrics.count("lost", "read", "lost") == 1
    assert metrics.count("lost", "write", "acquired") == 1
    assert metrics.count("lost", "write", "lost") == 1
    assert metrics.histogram(HOLD, "lost", "write").count == 1


async def test_a_waiter_timing_out_on_another_process_is_counted_as_cancelled(
    pg_locks: PostgresLocks, pg_dsn: str, metrics: Any
) -> None:
    other = PostgresLocks(pg_dsn, namespace=pg_locks.namespace)  # another process, in effect
    async with other:
        with anyio.fail_after(10):
            await other.lock("busy").acquire()
            try:
                for _ in range(2):
                    with anyio.move_on_after(0.2):
                        await pg_locks.lock("busy").acquire()
                        pytest.fail("acquired a lock held by another process")
                assert metrics.waiting() == {"busy": 0}
            finally:
                other.lock("busy").release()
            async with pg_locks.lock("busy"):
                pass
    assert metrics.count("busy", "exclusive", "cancelled", kind="PostgresLock") == 2
    assert metrics.count("busy", "exclusive", "acquired", kind="PostgresLock") == 2
    wait = metrics.histogram(WAIT, "busy", "exclusive")
    assert wait.count == 4
    assert wait.max >= 0.2  # the timed-out waits are in


async def test_a_hold_lost_in_its_body_is_counted_as_lost_once(
    pg_locks: PostgresLocks, pg_dsn: str, metrics: Any
) -> None:
    lock = pg_locks.lock("lost-body")
    with anyio.fail_after(10):
        with pytest.raises(LockLostError):  # noqa: PT012
            async with lock:
                (info,) = await pg_locks.snapshot()
                await server(pg_dsn, "SELECT pg_terminate_backend(%s, 5000)", info.holders[0].pid)
                await anyio.sleep_forever()  # the heartbeat cancels this
    assert metrics.count("lost-body", "exclusive", "acquired") == 1
    assert metrics.count("lost-body", "exclusive", "lost") == 1
    assert metrics.histogram(HOLD, "lost-body", "exclusive").count == 1
    assert metrics.waiting() == {"lost-body": 0}
