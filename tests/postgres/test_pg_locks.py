"""``aiolocks.postgres`` in one process: the lock rules against a real PostgreSQL server.

Tasks of one ``PostgresLocks`` each get their own server session, so the server's queue and
deadlock detector are exercised here too; a second ``PostgresLocks`` stands for another process
(it shares nothing local).  Cross-process, fault and race tests are in the sibling files.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aiolocks import DeadlockError, LockLostError
from aiolocks.postgres import PgLockInfo, PostgresLocks

pytestmark = pytest.mark.anyio


@pytest.fixture
async def other(pg_locks: PostgresLocks, pg_dsn: str) -> AsyncIterator[PostgresLocks]:
    """Another lock space on the same namespace: another process, as far as locks go."""
    pg = PostgresLocks(pg_dsn, namespace=pg_locks.namespace, heartbeat=0.2)
    try:
        yield pg
    finally:
        await pg.aclose()


async def wait_until(
    pg: PostgresLocks, predicate: Callable[[list[PgLockInfo]], bool]
) -> list[PgLockInfo]:
    """Poll the server's view until ``predicate(snapshot)`` holds (server state has no event)."""
    with anyio.fail_after(5):
        while True:
            snap = await pg.snapshot()
            if predicate(snap):
                return snap
            await anyio.sleep(0.005)


def waiters_of(snap: list[PgLockInfo], name: str) -> int:
    return sum(len(info.waiters) for info in snap if info.name == name)


def _waiting(name: str, count: int) -> Callable[[list[PgLockInfo]], bool]:
    return lambda snap: waiters_of(snap, name) == count


def holders_of(snap: list[PgLockInfo], name: str) -> int:
    return sum(len(info.holders) for info in snap if info.name == name)


async def server(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own (in a thread: works on every backend)."""

    def run() -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    return await anyio.to_thread.run_sync(run)


async def advisory_locks(dsn: str, pg: PostgresLocks) -> list[tuple[Any, ...]]:
    """Advisory locks held or awaited by the sessions of this process (server's view)."""
    from aiolocks.postgres import owner_prefix

    return await server(
        dsn,
        "SELECT a.application_name, l.mode, l.granted FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND a.application_name LIKE %s",
        owner_prefix() + "%",
    )


# --- mutual exclusion, sharing, fairness --------------------------------------------------------


async def test_lock_excludes_every_other_task(pg_locks: PostgresLocks) -> None:
    lock = pg_locks.lock("counter")
    counter = 0
    inside = 0

    async def worker() -> None:
        nonlocal counter, inside
        for _ in range(8):
            async with lock:
                inside += 1
                assert inside == 1
                value = counter
                await anyio.lowlevel.checkpoint()
                counter = value + 1
                inside -= 1

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(worker)
    assert counter == 48
    assert not lock.locked()


async def test_readers_hold_the_lock_together(pg_locks: PostgresLocks) -> None:
    rw = pg_locks.rwlock("shared")
    all_in = anyio.Event()
    count = 0

    async def reader() -> None:
        nonlocal count
        async with rw.reader:
            count += 1
            if count == 4:
                all_in.set()
            await all_in.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(reader)
    assert count == 4


async def test_waiting_writer_holds_back_a_new_reader(
    pg_locks: PostgresLocks, other: PostgresLocks
) -> None:
    rw = pg_locks.rwlock("prefer-writers")
    order: list[str] = []
    release_first = anyio.Event()

    async def first_reader() -> None:
        async with rw.reader:
            await release_first.wait()

    async def writer() -> None:
        async with rw.writer:
            order.append("writer")

    async def late_reader(view: Any, who: str) -> None:
        async with view:
            order.append(who)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first_reader)
            await wait_until(pg_locks, lambda s: holders_of(s, "prefer-writers") == 1)
            tg.start_soon(writer)
            await wait_until(pg_locks, lambda s: waiters_of(s, "prefer-writers") == 1)
            # a reader of another process queues on the server, behind the writer
            tg.start_soon(late_reader, other.rwlock("prefer-writers").reader, "other process")
            snap = await wait_until(pg_locks, lambda s: waiters_of(s, "prefer-writers") == 2)
            (info,) = snap
            writer_pid = next(w.pid for w in info.waiters if w.mode == "write")
            late = next(w for w in info.waiters if w.mode == "read")
            assert writer_pid in late.blocked_by  # queued behind the writer, not the reader
            # a reader of this process queues locally, behind the writer, costing no session
            tg.start_soon(late_reader, rw.reader, "this process")
            while rw.reader.statistics().readers_waiting < 1:
                await anyio.sleep(0.01)
            stats = rw.reader.statistics()
            assert (stats.readers, stats.readers_waiting, stats.writers_waiting) == (1, 1, 1)
            (info,) = await pg_locks.snapshot()
            assert len(info.waiters) == 2
            release_first.set()
    assert order[0] == "writer"
    assert sorted(order[1:]) == ["other process", "this process"]


async def test_writers_are_served_in_arrival_order(pg_locks: PostgresLocks) -> None:
    lock = pg_locks.lock("fifo")
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with lock:
            order.append(i)

    with anyio.fail_after(5):
        await lock.acquire()
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(waiter, i)
                while lock.statistics().tasks_waiting < i + 1:
                    await anyio.sleep(0.005)
            # the first waits on the server, the others in the process (costing no session)
            await wait_until(pg_locks, _waiting("fifo", 1))
            assert lock.statistics().tasks_waiting == 4
            lock.release()
    assert order == [0, 1, 2, 3]


# --- re-entrancy and DeadlockError ----------------------------------------------------------------


async def test_lock_reacquired_by_its_holder_raises_deadlock_error(pg_locks: PostgresLocks) -> None:
    lock = pg_locks.lock("not-reentrant")
    with anyio.fail_after(5):
        async with lock:
            with pytest.raises(DeadlockError):
                await lock.acquire()
            with pytest.raises(DeadlockError):
                lock.acquire_nowait()
            assert lock.statistics().owner is not None
        assert not lock.locked()


async def test_rwlock_reads_and_writes_are_reentrant_per_task(
    pg_locks: PostgresLocks, pg_dsn: str
) -> None:
    rw = pg_locks.rwlock("reentrant")
    with anyio.fail_after(5):
        async with rw.reader, rw.reader:
            assert rw.reader.statistics().readers == 1
        async with rw.writer, rw.writer, rw.reader:
            assert rw.writer.locked()
            # one server-side lock for all those levels
            held = await advisory_locks(pg_dsn, pg_locks)
            assert [(m, g) for _, m, g in held] == [("ExclusiveLock", True)]
        assert not rw.writer.locked()
        assert not rw.reader.locked()


async def test_releasing_the_write_first_leaves_a_reader(
    pg_locks: PostgresLocks, other: PostgresLocks
) -> None:
    rw = pg_locks.rwlock("downgrade")
    with anyio.fail_after(5):
        await rw.writer.acquire()
        await rw.reader.acquire()
        async with anyio.create_task_group() as tg:
            # a writer of another process queues behind the write hold
            tg.start_soon(other.rwlock("downgrade").writer.acquire)
            await wait_until(pg_locks, lambda s: waiters_of(s, "downgrade") == 1)
            rw.writer.release()  # a reader at once, not queued behind that writer
            assert rw.reader.locked()
            assert not rw.writer.locked()
            (info,) = await pg_locks.snapshot()
            assert [h.mode for h in info.holders] == ["read"]
            assert [w.mode for w in info.waiters] == ["write"]
            assert rw.reader.statistics().readers == 1
            rw.reader.release()  # now the writer goes (its task ends: released for it)
        await wait_until(pg_locks, lambda s: s == [])


async def test_read_to_write_upgrade_raises_and_changes_nothing(pg_locks: PostgresLocks) -> None:
    rw = pg_locks.rwlock("upgrade")
    with anyio.fail_after(5):
        async with rw.reader:
            before = rw.reader.statistics()
            with pytest.raises(DeadlockError):
                await rw.writer.acquire()
            with pytest.raises(DeadlockError):
                rw.writer.acquire_nowait()
            assert rw.reader.statistics() == before
            assert not rw.writer.locked()
        assert rw.reader.statistics().readers == 0


# --- acquire_nowait, timeouts, misuse -------------------------------------------------------------


async def test_acquire_nowait_does_not_jump_a_queued_writer(
    pg_locks: PostgresLocks, other: PostgresLocks
) -> None:
    mine = pg_locks.rwlock("queue")
    theirs = other.rwlock("queue")
    with anyio.fail_after(5):
        await theirs.reader.acquire()
        mine.reader.acquire_nowait()  # readers share: granted at once
        mine.reader.release()
        async with anyio.create_task_group() as tg:
            tg.start_soon(theirs.writer.acquire)  # another task of the other process queues
            await wait_until(pg_locks, lambda s: waiters_of(s, "queue") == 1)
            # This process knows nothing of that writer: the server refuses the try-lock.
            with pytest.raises(anyio.WouldBlock):
                mine.reader.acquire_nowait()
            with pytest.raises(anyio.WouldBlock):
                mine.writer.acquire_nowait()
            assert not mine.reader.locked()
            theirs.reader.release()
        # the writer task ended holding the write lock: it was released for it
        await wait_until(pg_locks, lambda s: holders_of(s, "queue") == 0)
        mine.writer.acquire_nowait()
        assert mine.writer.fencing_token > 0
        mine.writer.release()


async def test_timed_out_acquire_leaves_nothing_on_the_server(
    pg_locks: PostgresLocks, other: PostgresLocks, pg_dsn: str
) -> None:
    lock = pg_locks.lock("timeout")
    with anyio.fail_after(5):
        await other.lock("timeout").acquire()
        with anyio.move_on_after(0.1) as scope:
            await lock.acquire()
        assert scope.cancelled_caught
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.1):
                await lock.acquire()
        assert not lock.locked()
        (info,) = await pg_locks.snapshot()
        assert (len(info.holders), len(info.waiters)) == (1, 0)  # only the other's hold
        other.lock("timeout").release()  # sends the unlock, does not wait for it
        while held := await advisory_locks(pg_dsn, pg_locks):
            assert all(granted for _, _, granted in held)  # nothing is left waiting
            await anyio.sleep(0.01)
        async with lock:
            pass


async def test_release_by_a_task_that_does_not_hold_it_raises(pg_locks: PostgresLocks) -> None:
    lock = pg_locks.lock("owned")
    rw = pg_locks.rwlock("owned")
    with pytest.raises(RuntimeError):
        lock.release()
    with pytest.raises(RuntimeError):
        rw.reader.release()
    with anyio.fail_after(5):
        async with lock:
            failed = []

            async def intruder() -> None:
                try:
                    lock.release()
                except RuntimeError:
                    failed.append(True)

            async with anyio.create_task_group() as tg:
                tg.start_soon(intruder)
            assert failed == [True]
            assert lock.locked()
            with pytest.raises(RuntimeError):
                rw.writer.release()


async def test_bad_names_are_refused_at_once(pg_locks: PostgresLocks) -> None:
    for bad in (None, 3, b"bytes"):
        with pytest.raises(TypeError):
            pg_locks.lock(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            pg_locks.rwlock(bad)  # type: ignore[arg-type]
    for bad_text, why in (("", "non-empty"), ("nul\x00byte", "NUL"), ("a \udc80", "surrogate")):
        with pytest.raises(ValueError, match=why):
            pg_locks.lock(bad_text)
    with pytest.raises(ValueError, match="non-empty"):
        PostgresLocks("postgresql://unused", namespace="")
    with pytest.raises(TypeError, match="async with"), pg_locks.lock("sync-with"):
        pass


async def test_lock_and_rwlock_of_one_name_are_different_locks(pg_locks: PostgresLocks) -> None:
    with anyio.fail_after(5):
        async with pg_locks.lock("same"):
            pg_locks.rwlock("same").writer.acquire_nowait()
            pg_locks.rwlock("same").writer.release()
    assert pg_locks.lock("same").key != pg_locks.rwlock("same").writer.key


async def test_fencing_tokens_strictly_increase_across_lock_spaces(
    pg_locks: PostgresLocks, other: PostgresLocks
) -> None:
    tokens = []
    with anyio.fail_after(5):
        for i in range(6):
            pg = pg_locks if i % 2 else other
            async with pg.lock("fenced"):
                tokens.append(pg.lock("fenced").fencing_token)
            async with pg.rwlock("fenced").writer:
                tokens.append(pg.rwlock("fenced").writer.fencing_token)
    assert tokens == sorted(set(tokens))
    with pytest.raises(RuntimeError):
        pg_locks.lock("fenced").fencing_token  # noqa: B018


# --- server-detected deadlocks, snapshot ---------------------------------------------------------


async def test_deadlock_between_sessions_raises_deadlock_error_naming_the_locks(
    pg_locks: PostgresLocks,
) -> None:
    a, b = pg_locks.lock("alpha"), pg_locks.lock("beta")
    both_hold = anyio.Event()
    held = 0
    errors: list[DeadlockError] = []

    async def take(first: Any, second: Any) -> None:
        nonlocal held
        async with first:
            held += 1
            if held == 2:
                both_hold.set()
            await both_hold.wait()
            try:
                async with second:
                    pass
            except DeadlockError as exc:
                errors.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, a, b)
            tg.start_soon(take, b, a)
    assert len(errors) == 1
    message = str(errors[0])
    assert "'alpha'" in message
    assert "'beta'" in message


async def test_snapshot_lists_holders_and_waiters_of_the_namespace(
    pg_locks: PostgresLocks, other: PostgresLocks
) -> None:
    rw = pg_locks.rwlock("inspected")
    with anyio.fail_after(5):
        assert await pg_locks.snapshot() == []
        async with rw.reader, anyio.create_task_group() as tg:
            tg.start_soon(other.rwlock("inspected").writer.acquire, name="snap-writer")
            snap = await wait_until(pg_locks, lambda s: waiters_of(s, "inspected") == 1)
            (info,) = snap
            assert (info.name, info.kind, info.key) == ("inspected", "rwlock", rw.reader.key)
            (holder,) = info.holders
            assert holder.mode == "read"
            assert holder.owner.endswith((anyio.get_current_task().name or "")[-20:])
            (waiter,) = info.waiters
            assert waiter.mode == "write"
            assert "snap-writer" in waiter.owner
            assert waiter.blocked_by == (holder.pid,)
            assert waiter.waited is not None and waiter.waited >= 0
            rw.reader.release()
            await rw.reader.acquire()  # queues behind the writer, which then runs and ends
        await wait_until(other, lambda s: s == [])


# --- loss -----------------------------------------------------------------------------------------


async def test_terminated_session_cancels_the_body_and_raises_lock_lost(
    pg_locks: PostgresLocks, pg_dsn: str
) -> None:
    lock = pg_locks.lock("lost")
    with anyio.fail_after(5):
        with pytest.raises(LockLostError):  # noqa: PT012
            async with lock:
                (info,) = await pg_locks.snapshot()
                await server(pg_dsn, "SELECT pg_terminate_backend(%s, 5000)", info.holders[0].pid)
                await anyio.sleep_forever()  # the heartbeat cancels this
        assert not lock.locked()
        # a new acquisition reconnects transparently
        async with lock:
            assert lock.fencing_token > 0


async def test_lost_hold_raises_at_release(pg_locks: PostgresLocks, pg_dsn: str) -> None:
    rw = pg_locks.rwlock("lost-release")
    with anyio.fail_after(5):
        await rw.writer.acquire()
        (info,) = await pg_locks.snapshot()
        await server(pg_dsn, "SELECT pg_terminate_backend(%s, 5000)", info.holders[0].pid)
        with pytest.raises(LockLostError):
            await rw.reader.acquire()  # re-entrant on a lost hold: refused
        # known lost (by the refused acquire): held by nobody here, its token unusable
        assert not rw.writer.locked()
        assert rw.writer.statistics().owner is None
        with pytest.raises(LockLostError, match="must not be used"):
            rw.writer.fencing_token  # noqa: B018
        with pytest.raises(LockLostError):
            rw.writer.release()
        assert not rw.writer.locked()
        with pytest.raises(RuntimeError):
            rw.writer.release()
        async with rw.writer:
            pass


async def test_task_exiting_while_holding_releases_its_locks(
    pg_locks: PostgresLocks, other: PostgresLocks
) -> None:
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pg_locks.lock("abandoned").acquire)
        await other.lock("abandoned").acquire()  # would hang if the lock were still held
        other.lock("abandoned").release()


# --- event loops, LockCollection hooks -----------------------------------------------------------


def test_lock_space_moves_to_a_new_event_loop_when_idle(pg_dsn: str) -> None:
    pg = PostgresLocks(pg_dsn, namespace="rebinding")

    async def use() -> None:
        with anyio.fail_after(5):
            async with pg.rwlock("x").writer:
                pass

    anyio.run(use, backend="asyncio")
    anyio.run(use, backend="trio")
    anyio.run(use, backend="asyncio")

    async def close() -> None:
        await pg.aclose()

    anyio.run(close, backend="asyncio")


async def test_acquire_batch_takes_all_or_nothing(
    pg_locks: PostgresLocks, other: PostgresLocks
) -> None:
    a, rw = pg_locks.lock("many-a"), pg_locks.rwlock("many-b")
    with anyio.fail_after(5):
        await pg_locks._acquire_batch([(a, False), (rw.reader, True)])
        assert a.locked() and rw.reader.locked()
        assert a.fencing_token > 0
        with pytest.raises(anyio.WouldBlock):
            other.lock("many-a").acquire_nowait()
        rw.reader.release()
        a.release()
        assert not a.locked() and not rw.reader.locked()

        await other.rwlock("many-b").writer.acquire()
        with anyio.move_on_after(0.2):
            await pg_locks._acquire_batch([(a, False), (rw.reader, True)])
        assert not a.locked()
        # nothing was kept on the server: the other process gets 'many-a' at once
        other.lock("many-a").acquire_nowait()
        other.lock("many-a").release()
        other.rwlock("many-b").writer.release()


async def test_body_keeps_running_without_cancel_on_loss(
    pg_dsn: str, pg_locks: PostgresLocks
) -> None:
    pg = PostgresLocks(pg_dsn, namespace=pg_locks.namespace, heartbeat=0.05, cancel_on_loss=False)
    lock = pg.lock("not-cancelled")
    finished = False
    try:
        with anyio.fail_after(5):
            with pytest.raises(LockLostError):  # noqa: PT012
                async with lock:
                    (info,) = await pg.snapshot()
                    await server(
                        pg_dsn, "SELECT pg_terminate_backend(%s, 5000)", info.holders[0].pid
                    )
                    await anyio.sleep(0.2)  # several heartbeats: found lost, not cancelled
                    finished = True
    finally:
        await pg.aclose()
    assert finished


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_unresponsive_server_is_found_by_the_heartbeat(
    pg_server: Any, pg_dsn: str, pg_locks: PostgresLocks
) -> None:
    if not hasattr(pg_server, "kill"):
        pytest.skip("needs a local server")  # pragma: no cover
    pg = PostgresLocks(pg_dsn, namespace=pg_locks.namespace, heartbeat=0.05)
    lock = pg.lock("frozen")
    try:
        with anyio.fail_after(5):
            with pytest.raises(LockLostError):  # noqa: PT012
                async with lock:
                    (info,) = await pg.snapshot()
                    pid = info.holders[0].pid
                    try:
                        os.kill(pid, signal.SIGSTOP)  # the backend stops answering: a cut link
                    except PermissionError:  # pragma: no cover - server of another user
                        pytest.skip("cannot signal the server's processes")
                    try:
                        await anyio.sleep_forever()  # the heartbeat's ping times out
                    finally:
                        os.kill(pid, signal.SIGCONT)
    finally:
        await pg.aclose()


async def test_max_held_keys_is_refused_before_the_server_runs_out(
    pg_dsn: str, pg_locks: PostgresLocks
) -> None:
    pg = PostgresLocks(pg_dsn, namespace=pg_locks.namespace, max_held_keys=2)
    try:
        with anyio.fail_after(5):
            async with pg.lock("k1"), pg.rwlock("k2").reader, pg.rwlock("k2").reader:
                with pytest.raises(RuntimeError, match="max_held_keys"):
                    await pg.lock("k3").acquire()
                with pytest.raises(RuntimeError, match="max_held_keys"):
                    pg.lock("k3").acquire_nowait()
            async with pg.lock("k3"):
                pass
    finally:
        await pg.aclose()


async def test_task_waiting_for_a_free_session_holds_nothing(
    pg_dsn: str, pg_locks: PostgresLocks
) -> None:
    pg = PostgresLocks(pg_dsn, namespace=pg_locks.namespace, max_sessions=1)
    got_y = anyio.Event()
    refused: list[bool] = []

    async def take_y() -> None:
        async with pg.lock("y"):
            got_y.set()

    async def try_z() -> None:
        try:
            pg.lock("z").acquire_nowait()
        except anyio.WouldBlock:
            refused.append(True)  # no free session to try on

    try:
        with anyio.fail_after(5):
            await pg.lock("x").acquire()
            async with anyio.create_task_group() as tg:
                tg.start_soon(take_y)
                tg.start_soon(try_z)
                await anyio.wait_all_tasks_blocked()
                assert pg.lock("y").statistics().tasks_waiting == 1  # waiting for a session
                assert refused == [True]
                tg.cancel_scope.cancel()  # a cancelled session waiter leaves cleanly
            assert pg.lock("y").statistics().tasks_waiting == 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(take_y)
                await anyio.wait_all_tasks_blocked()
                assert not got_y.is_set()
                pg.lock("x").release()  # the session goes to the waiting task
                await got_y.wait()
    finally:
        await pg.aclose()


async def test_key_collision_is_a_loud_error_holding_nothing(
    pg_locks: PostgresLocks, pg_dsn: str
) -> None:
    victim = pg_locks.lock("victim")
    with anyio.fail_after(5):
        async with pg_locks.lock("first"):  # creates the names table
            pass
        # pretend another name of the namespace already has this 64-bit key
        await server(
            pg_dsn,
            "INSERT INTO aiolocks_names VALUES (%s, %s, 'lock', 'impostor')",
            victim.key,
            pg_locks.namespace,
        )
        with pytest.raises(RuntimeError, match=r"collision.*'victim'.*'impostor'"):
            await victim.acquire()
        assert not victim.locked()
        assert await advisory_locks(pg_dsn, pg_locks) == []


async def test_aclose_wakes_a_waiting_acquire_and_loses_holds(
    pg_dsn: str, pg_locks: PostgresLocks, other: PostgresLocks
) -> None:
    pg = PostgresLocks(pg_dsn, namespace=pg_locks.namespace)
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await pg.lock("closing").acquire()
        except anyio.ClosedResourceError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        await other.lock("closing").acquire()
        await pg.rwlock("held").reader.acquire()
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_until(other, lambda s: waiters_of(s, "closing") == 1)
            await pg.aclose()
        assert len(errors) == 1
        with pytest.raises(LockLostError):
            pg.rwlock("held").reader.release()
        with pytest.raises(anyio.ClosedResourceError):
            await pg.lock("closing").acquire()
        other.lock("closing").release()


async def test_a_lost_token_sequence_is_set_up_again(pg_locks: PostgresLocks, pg_dsn: str) -> None:
    """A restore or a failover can lose the namespace's sequence while sessions idle in the
    pool: one acquisition fails with the server's error (holding nothing), the next sets it
    up again."""
    lock = pg_locks.lock("setup-again")
    with anyio.fail_after(10):
        async with lock:
            pass
        await server(pg_dsn, f"DROP SEQUENCE {pg_locks._sequence}")
        with pytest.raises(Exception, match="does not exist"):
            await lock.acquire()
        assert not lock.locked()
        async with lock:
            assert lock.fencing_token >= 1
