"""The grant-then-cancel race: a cancelled acquire must never leave the lock held on the server.

A waiter queued on the server in ``pg_advisory_lock`` is cancelled (by a cancel-scope deadline,
by ``scope.cancel()`` when an event fires, or on asyncio by ``task.cancel()`` as
``asyncio.timeout()`` does it) at the very moment its holder releases. The
server may grant the lock a moment before the cancellation reaches it: a client that then
reports the cancellation without undoing the grant leaves a lock that nobody will ever release
(until its session closes). Each trial jitters the cancellation around the release, so across
the trials it lands before, during and after the grant; after every cancelled trial a third
session checks on the server that nobody holds the lock.

The control runs the same harness with a naive acquire (``SELECT pg_advisory_lock`` over a bare
libpq session, cancelled the same way, no unlock protocol) and must see leaks: proof that the
harness detects them. (aiolocks with its post-failure unlock patched out leaks about as often.)
Trials run concurrently in batches over several lock names; a leak found is counted, then
freed so that the next trials can run. Run with ``-s`` or ``-rA`` to see the counts;
``AIOLOCKS_PG_RACE_TRIALS`` raises the number of trials for a soak run.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest

psycopg = pytest.importorskip("psycopg")
from psycopg import pq  # noqa: E402

pytestmark = pytest.mark.anyio

#: Trials per backend for aiolocks; the issue asks for >= 1000 (raise it for a soak run).
TRIALS = int(os.environ.get("AIOLOCKS_PG_RACE_TRIALS", "1000"))
#: Trials per backend for the naive control (it leaks in a good share of them).
CONTROL_TRIALS = 200
#: Lock names raced on concurrently in one batch.
LANES = 25
#: Application name of the bare sessions (the hygiene check looks at "aiolocks:%" only).
RAW_APP = "aiolocks-race-tests"


# ----------------------------------------------------------------------------- bare sessions


async def _wait_readable(fd: int) -> None:
    if hasattr(anyio, "wait_readable"):  # anyio >= 4.7
        await anyio.wait_readable(fd)
    else:  # pragma: no cover - older anyio
        import socket

        with socket.socket(fileno=os.dup(fd)) as sock:
            await anyio.wait_socket_readable(sock)


async def _wait_writable(fd: int) -> None:
    if hasattr(anyio, "wait_writable"):
        await anyio.wait_writable(fd)
    else:  # pragma: no cover - older anyio
        import socket

        with socket.socket(fileno=os.dup(fd)) as sock:
            await anyio.wait_socket_writable(sock)


class PgError(Exception):
    def __init__(self, sqlstate: str | None, message: str) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate


class RawSession:
    """A bare libpq session (``psycopg.pq``) driven by anyio: the naive client and the checker.

    On cancellation it does what drivers do: send a cancel request, wait for the statement to
    end (shielded), re-raise. It does not undo a lock the server granted meanwhile.
    """

    def __init__(self, pgconn: Any) -> None:
        self.pgconn = pgconn
        self.pid: int = pgconn.backend_pid

    @classmethod
    async def connect(cls, dsn: str, app: str = RAW_APP) -> RawSession:
        conninfo = psycopg.conninfo.make_conninfo(dsn, application_name=app)
        pgconn = await anyio.to_thread.run_sync(pq.PGconn.connect, conninfo.encode())
        if pgconn.status != pq.ConnStatus.OK:
            msg = pgconn.get_error_message() if hasattr(pgconn, "get_error_message") else ""
            pgconn.finish()
            raise ConnectionError(f"cannot connect: {msg!r}")
        pgconn.nonblocking = 1
        return cls(pgconn)

    def close(self) -> None:
        self.pgconn.finish()

    async def execute(self, sql: str, *params: int) -> list[tuple[str | None, ...]]:
        """Run one statement; return its rows as text."""
        self.pgconn.send_query_params(sql.encode(), [str(p).encode() for p in params])
        while self.pgconn.flush():
            await _wait_writable(self.pgconn.socket)
        try:
            return await self._results()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.pgconn.get_cancel().cancel)
                try:
                    await self._results()
                except PgError:
                    pass  # 57014 canceling statement due to user request
            raise

    async def _results(self) -> list[tuple[str | None, ...]]:
        rows: list[tuple[str | None, ...]] = []
        error: PgError | None = None
        while True:
            while self.pgconn.is_busy():
                await _wait_readable(self.pgconn.socket)
                self.pgconn.consume_input()
            res = self.pgconn.get_result()
            if res is None:
                break
            if res.status == pq.ExecStatus.TUPLES_OK:
                for r in range(res.ntuples):
                    rows.append(
                        tuple(
                            None if v is None else v.decode()
                            for v in (res.get_value(r, c) for c in range(res.nfields))
                        )
                    )
            elif res.status != pq.ExecStatus.COMMAND_OK:
                state = res.error_field(pq.DiagnosticField.SQLSTATE)
                message = res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b""
                error = PgError(state.decode() if state else None, message.decode())
        if error is not None:
            raise error
        return rows

    async def scalar(self, sql: str, *params: int) -> str | None:
        return (await self.execute(sql, *params))[0][0]


def raw_key(name: str) -> int:
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"race-ctl").digest()
    return int(struct.unpack(">q", digest)[0])


#: Granted advisory locks on one 64-bit key (any session).
_GRANTED_SQL = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((classid::bigint << 32) | objid::bigint) = $1
"""
#: End the sessions holding one 64-bit key.
_TERMINATE_SQL = """
    SELECT pg_terminate_backend(pid) FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND ((classid::bigint << 32) | objid::bigint) = $1
"""
#: Advisory lock requests waiting on the server (this test's sessions are the only lockers).
_WAITING_SQL = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"


# ----------------------------------------------------------------------------- the harness


@dataclass
class Lane:
    """One lock name raced on: a holder, a waiter, and a checker session of its own."""

    name: str
    key: int
    shared_holder: bool
    shared_waiter: bool
    checker: RawSession


@dataclass
class Counts:
    trials: int = 0
    cancelled: int = 0
    acquired: int = 0
    leaks: int = 0
    leaked: list[str] = field(default_factory=list)
    cancelled_by: dict[str, int] = field(default_factory=dict)

    def line(self, what: str, backend: str) -> str:
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.cancelled_by.items()))
        return (
            f"{what} [{backend}]: {self.trials} trials, {self.cancelled} cancelled ({by}), "
            f"{self.acquired} acquired, {self.leaks} cancelled-but-held"
        )


class Contender:
    """How one side takes and releases a lane's lock; a holder and a waiter each call it."""

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def hold(self, lane: Lane, shared: bool) -> Any:
        """An async context manager holding the lane's lock; its exit waits for the unlock."""
        raise NotImplementedError

    async def acquire(self, lane: Lane, shared: bool) -> Callable[[], Awaitable[None]]:
        """Acquire; return an async release function."""
        raise NotImplementedError

    async def on_leak(self, lane: Lane) -> None:
        """Free a leaked lock (so the next trials can run): end the session holding it."""
        await lane.checker.execute(_TERMINATE_SQL, lane.key)


async def run_trials(
    side: Contender, lanes: Sequence[Lane], trials: int, rng: random.Random
) -> Counts:
    counts = Counts()
    await side.start()
    try:
        while counts.trials < trials:
            batch = lanes[: min(len(lanes), trials - counts.trials)]
            with anyio.fail_after(10):
                await _batch(side, batch, rng, counts)
    finally:
        await side.stop()
    return counts


async def _batch(
    side: Contender, lanes: Sequence[Lane], rng: random.Random, counts: Counts
) -> None:
    release_at: list[float] = []
    asyncio_native = _on_asyncio()
    go = anyio.Event()
    holders_in = 0
    all_held = anyio.Event()
    outcome: dict[str, str] = {}

    async def holder(lane: Lane, releasing: anyio.Event) -> None:
        nonlocal holders_in
        async with side.hold(lane, lane.shared_holder):
            holders_in += 1
            if holders_in == len(lanes):
                all_held.set()
            await go.wait()
            await anyio.sleep_until(release_at[0])
            releasing.set()
        # the unlock has been processed by the server here

    async def waiter(lane: Lane, scope: anyio.CancelScope, native: list[Any]) -> None:
        release: Callable[[], Awaitable[None]] | None = None
        if native:
            native.append(asyncio.current_task())
        try:
            with scope:
                release = await side.acquire(lane, lane.shared_waiter)
        except asyncio.CancelledError:
            if not native or native[0] != "cancelled":
                raise
            # cancelled by task.cancel() (as asyncio.timeout() does it): swallow it here
            task = asyncio.current_task()
            if hasattr(task, "uncancel"):
                task.uncancel()
        if release is not None:
            outcome[lane.name] = "acquired"
            with anyio.CancelScope(shield=True):
                await release()
        else:
            outcome[lane.name] = "cancelled"

    async def canceller(
        scope: anyio.CancelScope, releasing: anyio.Event, spins: int, native: list[Any]
    ) -> None:
        await releasing.wait()
        for _ in range(spins):
            await anyio.lowlevel.checkpoint()
        if native:
            native[1].cancel()
            native[0] = "cancelled"
        else:
            scope.cancel()

    async def trial(lane: Lane) -> None:
        releasing = anyio.Event()
        scope = anyio.CancelScope()
        how = rng.random()
        # on asyncio, a third of the trials cancel the task itself, as asyncio.timeout() does
        native: list[Any] = ["armed"] if how > 0.67 and asyncio_native else []
        async with anyio.create_task_group() as lane_tg:
            lane_tg.start_soon(holder, lane, releasing)
            await all_held.wait()
            lane_tg.start_soon(waiter, lane, scope, native)
            await go.wait()
            mode = "task.cancel()" if native else "scope.cancel()"
            if how < 0.33:
                mode = "deadline"
                # cancel-scope deadline around the release time, before or after it
                scope.deadline = release_at[0] + rng.uniform(-0.0015, 0.0025)
            else:
                # an event: cancel a few scheduling rounds after the holder starts to release
                lane_tg.start_soon(canceller, scope, releasing, rng.randrange(0, 12), native)
        if outcome[lane.name] == "cancelled":
            counts.cancelled += 1
            counts.cancelled_by[mode] = counts.cancelled_by.get(mode, 0) + 1
            if int(await lane.checker.scalar(_GRANTED_SQL, lane.key) or 0):
                counts.leaks += 1
                counts.leaked.append(lane.name)
                await side.on_leak(lane)
        else:
            counts.acquired += 1
        counts.trials += 1

    async with anyio.create_task_group() as tg:
        for lane in lanes:
            tg.start_soon(trial, lane)
        await all_held.wait()
        # every waiter must be queued on the server before the holders release
        checker = lanes[0].checker
        while int(await checker.scalar(_WAITING_SQL) or 0) < len(lanes):
            await anyio.sleep(0.0005)
        release_at.append(anyio.current_time() + 0.002)
        go.set()


class NaiveClient(Contender):
    """``SELECT pg_advisory_lock`` over a bare session per task, cancelled like drivers do."""

    def __init__(self, dsn: str, lanes: Sequence[Lane]) -> None:
        self.dsn = dsn
        self.lanes = lanes
        self.holders: dict[str, RawSession] = {}
        self.waiters: dict[str, RawSession] = {}

    async def start(self) -> None:
        async def connect(lane: Lane) -> None:
            self.holders[lane.name] = await RawSession.connect(self.dsn)
            self.waiters[lane.name] = await RawSession.connect(self.dsn)

        async with anyio.create_task_group() as tg:
            for lane in self.lanes:
                tg.start_soon(connect, lane)

    async def stop(self) -> None:
        for s in [*self.holders.values(), *self.waiters.values()]:
            s.close()

    @staticmethod
    def _fn(shared: bool, unlock: bool = False) -> str:
        return f"pg_advisory_{'un' if unlock else ''}lock{'_shared' if shared else ''}"

    def hold(self, lane: Lane, shared: bool) -> Any:
        session = self.holders[lane.name]
        fn = self._fn(shared)
        unlock = self._fn(shared, unlock=True)

        class Hold:
            async def __aenter__(self) -> None:
                await session.execute(f"SELECT {fn}($1)", lane.key)

            async def __aexit__(self, *exc: object) -> None:
                with anyio.CancelScope(shield=True):
                    await session.execute(f"SELECT {unlock}($1)", lane.key)

        return Hold()

    async def acquire(self, lane: Lane, shared: bool) -> Callable[[], Awaitable[None]]:
        session = self.waiters[lane.name]
        await session.execute(f"SELECT {self._fn(shared)}($1)", lane.key)
        return partial(session.execute, f"SELECT {self._fn(shared, unlock=True)}($1)", lane.key)

    async def on_leak(self, lane: Lane) -> None:
        await self.waiters[lane.name].execute("SELECT pg_advisory_unlock_all()")


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _modes(i: int, exclusive_only: bool) -> tuple[bool, bool]:
    """(holder shared?, waiter shared?): never both shared (they would not conflict)."""
    if exclusive_only:
        return (False, False)
    return [(False, False), (False, True), (True, False)][i % 3]


async def _checkers(dsn: str, n: int) -> list[RawSession]:
    sessions: list[RawSession] = []

    async def one() -> None:
        sessions.append(await RawSession.connect(dsn))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return sessions


def _backend_id(anyio_backend: Any) -> str:
    name, options = anyio_backend
    return "asyncio+uvloop" if options.get("use_uvloop") else name


async def test_naive_acquire_control_leaks_cancelled_locks(pg_dsn: str, anyio_backend: Any) -> None:
    """The harness can fail: a naive acquire leaves cancelled-but-held locks behind."""
    checkers = await _checkers(pg_dsn, LANES)
    try:
        lanes = [
            Lane(f"ctl-{i}", raw_key(f"ctl-{os.getpid()}-{i}"), *_modes(i, False), checkers[i])
            for i in range(LANES)
        ]
        counts = await run_trials(
            NaiveClient(pg_dsn, lanes), lanes, CONTROL_TRIALS, random.Random(10)
        )
    finally:
        for c in checkers:
            c.close()
    print("\n" + counts.line("naive control", _backend_id(anyio_backend)))
    assert counts.trials == CONTROL_TRIALS
    assert counts.leaks > 0, "the harness saw no leak of the naive client: it cannot fail"


class AiolocksClient(Contender):
    """``aiolocks.postgres``: holder and waiter are tasks of one ``PostgresLocks``."""

    def __init__(self, pg: Any, rwlock: bool) -> None:
        self.pg = pg
        self.rwlock = rwlock

    def view(self, lane: Lane, shared: bool) -> Any:
        if not self.rwlock:
            return self.pg.lock(lane.name)
        rw = self.pg.rwlock(lane.name)
        return rw.reader if shared else rw.writer

    def hold(self, lane: Lane, shared: bool) -> Any:
        return self.view(lane, shared)

    async def acquire(self, lane: Lane, shared: bool) -> Callable[[], Awaitable[None]]:
        view = self.view(lane, shared)
        await view.acquire()

        async def release() -> None:
            view.release()

        return release


class AiolocksBatchClient(AiolocksClient):
    """The waiter takes the lane's lock together with a lock of its own, in one statement
    (``LockCollection``'s path): the grant-then-cancel protocol of a batch."""

    async def acquire(self, lane: Lane, shared: bool) -> Callable[[], Awaitable[None]]:
        view = self.view(lane, shared)
        companion = self.pg.lock(f"{lane.name}-companion")
        await self.pg._acquire_batch([(view, shared), (companion, False)])

        async def release() -> None:
            companion.release()
            view.release()

        return release


async def _aiolocks_lanes(pg: Any, checkers: list[RawSession], rwlock: bool) -> list[Lane]:
    """Lanes over ``pg``'s lock names, with the server keys the library uses for them."""
    lanes = []
    for i, checker in enumerate(checkers):
        name = f"race-{i}"
        view = pg.rwlock(name).writer if rwlock else pg.lock(name)
        async with view:  # registers the name; its key then shows on the server
            rows = await checker.execute(
                "SELECT (l.classid::bigint << 32) | l.objid::bigint FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                " AND a.application_name LIKE 'aiolocks:%'"
            )
        assert len(rows) == 1, rows
        lanes.append(Lane(name, int(rows[0][0] or 0), *_modes(i, not rwlock), checker))
    return lanes


@pytest.mark.parametrize("kind", ["lock", "rwlock"])
async def test_cancelled_acquire_never_leaves_the_lock_held(
    pg_dsn: str, anyio_backend: Any, kind: str
) -> None:
    """>= 1000 racing trials (per backend, lock and rwlock together): zero cancelled-but-held."""
    from aiolocks.postgres import PostgresLocks

    checkers = await _checkers(pg_dsn, LANES)
    try:
        namespace = f"race-{os.getpid()}-{random.randrange(1 << 30)}"
        async with PostgresLocks(pg_dsn, namespace=namespace, max_sessions=2 * LANES + 2) as pg:
            lanes = await _aiolocks_lanes(pg, checkers, kind == "rwlock")
            counts = await run_trials(
                AiolocksClient(pg, kind == "rwlock"), lanes, TRIALS // 2, random.Random(20)
            )
    finally:
        for c in checkers:
            c.close()
    print("\n" + counts.line(f"aiolocks pg.{kind}", _backend_id(anyio_backend)))
    assert counts.trials == TRIALS // 2
    assert counts.leaks == 0, f"cancelled but held on the server: {counts.leaked}"
    # the jitter made the cancellation land on both sides of the grant
    assert counts.cancelled > counts.trials // 10
    assert counts.acquired > counts.trials // 10


@pytest.mark.parametrize("kind", ["lock", "rwlock"])
async def test_cancelled_batch_acquire_never_leaves_a_lock_held(
    pg_dsn: str, anyio_backend: Any, kind: str
) -> None:
    """The same races for a batch of two (a single lock is a batch of one): zero
    cancelled-but-held."""
    from aiolocks.postgres import PostgresLocks

    checkers = await _checkers(pg_dsn, LANES)
    try:
        namespace = f"race-{os.getpid()}-{random.randrange(1 << 30)}"
        async with PostgresLocks(pg_dsn, namespace=namespace, max_sessions=2 * LANES + 2) as pg:
            lanes = await _aiolocks_lanes(pg, checkers, kind == "rwlock")
            counts = await run_trials(
                AiolocksBatchClient(pg, kind == "rwlock"), lanes, TRIALS // 4, random.Random(21)
            )
    finally:
        for c in checkers:
            c.close()
    print("\n" + counts.line(f"aiolocks pg.{kind} batch", _backend_id(anyio_backend)))
    assert counts.trials == TRIALS // 4
    assert counts.leaks == 0, f"cancelled but held on the server: {counts.leaked}"
    assert counts.cancelled > counts.trials // 10
    assert counts.acquired > counts.trials // 10
