"""Faults: what happens to a held or awaited ``aiolocks.postgres`` lock when things break.

- the holder's server session is terminated (``pg_terminate_backend``): the holder's body is
  cancelled and it gets ``LockLostError``; a waiter gets the lock;
- the holder PROCESS is killed (SIGKILL): a waiter in another process gets the lock within
  100 ms (the server notices the closed socket at once);
- the holder process is frozen (SIGSTOP): the lock stays held (the kernel keeps its socket
  alive; only the holder's own release or the session's death frees it) -- documented here;
- a waiting process is killed: it leaves the server's queue and the next waiter is served;
- the server restarts while a lock is held: the holder gets ``LockLostError`` at the latest
  when it releases; new acquisitions work afterwards (on a server of this module's own).

Worker processes are this file run as a script. The conftest checks after every test that no
aiolocks session holds anything and none is left open.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from typing import Any


async def _worker(config: dict[str, Any]) -> None:
    import anyio

    from aiolocks import LockLostError
    from aiolocks.postgres import PostgresLocks

    async def command() -> str:
        return (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()

    lease = config.get("lease")
    async with PostgresLocks(config["dsn"], namespace=config["namespace"], lease=lease) as pg:
        lock = pg.lock(config["name"])
        if config["role"] == "wait":
            print("waiting", flush=True)
        await lock.acquire()
        print(f"granted {time.monotonic()!r}", flush=True)
        try:
            await command()  # "release", or EOF
        except BaseException:
            lock.release()
            raise
        try:
            lock.release()
        except LockLostError:
            print("lost", flush=True)
            return
        print("released", flush=True)


if __name__ == "__main__":
    import anyio

    _config = json.loads(sys.argv[1])
    anyio.run(_worker, _config, backend=_config["backend"])
    sys.exit(0)


# ----------------------------------------------------------------------------- the tests

import anyio  # noqa: E402
import anyio.abc  # noqa: E402
import pytest  # noqa: E402
from anyio.streams.buffered import BufferedByteReceiveStream  # noqa: E402

psycopg = pytest.importorskip("psycopg")

from aiolocks import LockLostError  # noqa: E402

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[pytest.param(("asyncio", {}), id="asyncio"), pytest.param(("trio", {}), id="trio")]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Asyncio and trio (the holder and waiter behaviour do not depend on the loop flavour)."""
    return request.param


def _backend_name(anyio_backend: Any) -> str:
    return str(anyio_backend[0])


class Sql:
    """A plain psycopg connection of the test's own, used from a worker thread."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True, application_name="aiolocks-fault-tests")

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            return self.conn.execute(sql, params).fetchall()

        return await anyio.to_thread.run_sync(run)

    async def value(self, sql: str, *params: Any) -> Any:
        return (await self.rows(sql, *params))[0][0]

    async def wait_until(self, sql: str, want: Any, *params: Any, timeout: float = 5) -> None:
        with anyio.fail_after(timeout):
            while await self.value(sql, *params) != want:
                await anyio.sleep(0.005)

    def close(self) -> None:
        self.conn.close()


#: Requests waiting on the server for the locks of one namespace (names from the names table).
WAITING = """
    SELECT count(*) FROM pg_locks l
    JOIN aiolocks_names n ON n.key = ((l.classid::bigint << 32) | l.objid::bigint)
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND NOT l.granted AND n.namespace = %s
"""
#: ... of one name (append to WAITING or HOLDERS).
NAMED = " AND n.name = %s"
#: Backend pids of the sessions holding locks of one namespace.
HOLDERS = """
    SELECT l.pid FROM pg_locks l
    JOIN aiolocks_names n ON n.key = ((l.classid::bigint << 32) | l.objid::bigint)
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted AND n.namespace = %s
"""


@pytest.fixture
async def sql(pg_dsn: str, anyio_backend: Any) -> Any:
    s = Sql(pg_dsn)
    try:
        yield s
    finally:
        s.close()


class Worker:
    """A worker process holding or waiting for one lock; it reports on its stdout."""

    def __init__(self, proc: anyio.abc.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self.out = BufferedByteReceiveStream(proc.stdout)

    @classmethod
    async def start(
        cls, dsn: str, namespace: str, name: str, role: str, backend: str, **more: Any
    ) -> Worker:
        config = {"dsn": dsn, "namespace": namespace, "name": name, "role": role}
        config.update(backend=backend, **more)
        proc = await anyio.open_process([sys.executable, __file__, json.dumps(config)], stderr=None)
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def line(self) -> str:
        return (await self.out.receive_until(b"\n", 10_000)).decode()

    async def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send(text.encode() + b"\n")

    async def finish(self) -> None:
        with anyio.CancelScope(shield=True):
            if self.proc.returncode is None:
                try:
                    self.proc.kill()
                except ProcessLookupError:
                    pass
            await self.proc.wait()
            await self.proc.aclose()


def _namespace() -> str:
    return f"faults-{uuid.uuid4().hex[:10]}"


# ----------------------------------------------------------------------------- terminate


@pytest.mark.parametrize("holder_is", ["in its body", "waiting for a second lock"])
async def test_terminated_holder_session_loses_the_lock_within_200ms_and_a_waiter_gets_it(
    pg_dsn: str, sql: Sql, anyio_backend: Any, holder_is: str
) -> None:
    """The holder's session is watched (its socket, not a poll): with a heartbeat of 30 s,
    the server's message still cancels the body at once, also while the holder waits on the
    same session for another lock."""
    from aiolocks.postgres import PostgresLocks

    namespace = _namespace()
    held = anyio.Event()
    outcome: dict[str, Any] = {}
    pg = PostgresLocks(pg_dsn, namespace=namespace, heartbeat=30)
    other = PostgresLocks(pg_dsn, namespace=namespace)
    async with pg, other:

        async def holder() -> None:
            try:
                async with pg.lock("victim"):
                    held.set()
                    if holder_is == "in its body":
                        await anyio.sleep_forever()
                    async with pg.lock("second"):  # held by the other process
                        pass
            except LockLostError as exc:
                outcome["lost"] = time.monotonic()
                outcome["error"] = exc

        async def waiter() -> None:
            async with other.lock("victim"):
                outcome["granted"] = time.monotonic()

        with anyio.fail_after(10):
            await other.lock("second").acquire()
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await held.wait()
                tg.start_soon(waiter)
                await sql.wait_until(WAITING, 1 if holder_is == "in its body" else 2, namespace)
                (pid,) = [r[0] for r in await sql.rows(HOLDERS + NAMED, namespace, "victim")]
                killed = time.monotonic()
                assert await sql.value("SELECT pg_terminate_backend(%s)", pid)
            other.lock("second").release()
    lost_ms = (outcome["lost"] - killed) * 1e3
    grant_ms = (outcome["granted"] - killed) * 1e3
    print(
        f"\nterminate [{_backend_name(anyio_backend)}, holder {holder_is}]: waiter granted "
        f"after {grant_ms:.1f} ms, holder's body cancelled with LockLostError after "
        f"{lost_ms:.1f} ms (heartbeat 30 s)"
    )
    assert isinstance(outcome["error"], LockLostError)
    assert grant_ms < 1000
    assert lost_ms < 200


async def test_acquire_reconnects_when_its_idle_pooled_session_was_terminated(
    pg_dsn: str, sql: Sql, anyio_backend: Any
) -> None:
    """A pooled session that died while idle (terminated, server restarted) is not reused.

    Regression test for a bug found in review: the next acquire picked the dead session from
    the pool and failed with ``SessionLost`` instead of reconnecting transparently.
    """
    from aiolocks.postgres import PostgresLocks

    namespace = _namespace()
    async with PostgresLocks(pg_dsn, namespace=namespace) as pg:
        async with pg.lock("idle"):
            (pid,) = [r[0] for r in await sql.rows(HOLDERS, namespace)]
        # the session is back in the pool, idle: end it from the server side
        assert await sql.value("SELECT pg_terminate_backend(%s)", pid)
        await sql.wait_until("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", 0, pid)
        with anyio.fail_after(5):
            async with pg.lock("idle"):
                pass


# ----------------------------------------------------------------------------- SIGKILL / SIGSTOP


async def test_sigkill_of_holder_process_hands_the_lock_to_a_waiter_within_100ms(
    pg_dsn: str, sql: Sql, anyio_backend: Any
) -> None:
    from aiolocks.postgres import PostgresLocks

    namespace = _namespace()
    backend = _backend_name(anyio_backend)
    holder = await Worker.start(pg_dsn, namespace, "k", "hold", backend)
    try:
        with anyio.fail_after(10):
            assert (await holder.line()).startswith("granted")
        async with PostgresLocks(pg_dsn, namespace=namespace) as pg:
            granted: list[float] = []

            async def waiter() -> None:
                async with pg.lock("k"):
                    granted.append(time.monotonic())

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter)
                    await sql.wait_until(WAITING, 1, namespace)
                    killed = time.monotonic()
                    os.kill(holder.pid, signal.SIGKILL)
    finally:
        await holder.finish()
    ms = (granted[0] - killed) * 1e3
    print(f"\nSIGKILL [{backend}]: the waiter got the lock {ms:.1f} ms after the kill")
    assert ms < 100


async def test_sigstopped_holder_process_keeps_the_lock_until_it_continues(
    pg_dsn: str, sql: Sql, anyio_backend: Any
) -> None:
    """Documents a limit: a frozen holder is not dead; its lock stays held while it is frozen."""
    from aiolocks.postgres import PostgresLocks

    namespace = _namespace()
    backend = _backend_name(anyio_backend)
    holder = await Worker.start(pg_dsn, namespace, "s", "hold", backend)
    try:
        with anyio.fail_after(10):
            assert (await holder.line()).startswith("granted")
        async with PostgresLocks(pg_dsn, namespace=namespace) as pg:
            got = anyio.Event()

            async def waiter() -> None:
                async with pg.lock("s"):
                    got.set()

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter)
                    await sql.wait_until(WAITING, 1, namespace)
                    os.kill(holder.pid, signal.SIGSTOP)
                    try:
                        with anyio.move_on_after(1.0):
                            await got.wait()
                        assert not got.is_set(), "a frozen holder's lock was handed over"
                    finally:
                        os.kill(holder.pid, signal.SIGCONT)
                    await holder.send("release")
                    await got.wait()
            with anyio.fail_after(5):
                assert await holder.line() == "released"
    finally:
        await holder.finish()


async def test_sigstopped_holder_with_a_lease_loses_the_lock_within_the_lease(
    pg_dsn: str, sql: Sql, anyio_backend: Any
) -> None:
    """``lease=``: the server ends the frozen holder's idle session after the lease, so a
    waiter gets the lock; the holder, continued, is told (LockLostError at its release)."""
    from aiolocks.postgres import PostgresLocks

    namespace = _namespace()
    backend = _backend_name(anyio_backend)
    lease = 1.5
    holder = await Worker.start(pg_dsn, namespace, "leased", "hold", backend, lease=lease)
    try:
        with anyio.fail_after(10):
            assert (await holder.line()).startswith("granted")
        async with PostgresLocks(pg_dsn, namespace=namespace) as pg:
            with anyio.fail_after(10):
                os.kill(holder.pid, signal.SIGSTOP)
                frozen = time.monotonic()
                try:
                    async with pg.lock("leased"):
                        granted_after = time.monotonic() - frozen
                finally:
                    os.kill(holder.pid, signal.SIGCONT)
            await holder.send("release")
            with anyio.fail_after(5):
                told = await holder.line()
            print(
                f"\nlease {lease} s [{backend}]: frozen holder's lock granted to a waiter "
                f"after {granted_after:.2f} s; the holder, continued, was told: {told!r}"
            )
            assert lease * 0.9 <= granted_after <= lease + 1.0
            assert told == "lost"
    finally:
        await holder.finish()


async def _two_queued_waiters(
    pg_dsn: str, namespace: str, sql: Sql, backend: str, workers: list[Worker]
) -> tuple[Worker, Worker]:
    """Start two waiter processes, queued on the server in this order."""
    for expect in (1, 2):
        w = await Worker.start(pg_dsn, namespace, "q", "wait", backend)
        workers.append(w)
        assert await w.line() == "waiting"
        await sql.wait_until(WAITING, expect, namespace)
    return workers[0], workers[1]


@pytest.mark.parametrize("anyio_backend", [("asyncio", {})], ids=["asyncio"])
async def test_killed_waiter_process_leaves_the_servers_queue(
    pg_dsn: str, sql: Sql, anyio_backend: Any
) -> None:
    """The server drops a dead waiter within ``client_connection_check_interval`` (1 s).

    (Only the server is at work here, so one backend is enough.)
    """
    from aiolocks.postgres import PostgresLocks

    namespace = _namespace()
    workers: list[Worker] = []
    try:
        async with PostgresLocks(pg_dsn, namespace=namespace) as pg:
            lock = pg.lock("q")
            with anyio.fail_after(20):
                async with lock:
                    victim, nxt = await _two_queued_waiters(
                        pg_dsn, namespace, sql, "asyncio", workers
                    )
                    killed = time.monotonic()
                    os.kill(victim.pid, signal.SIGKILL)
                    await sql.wait_until(WAITING, 1, namespace, timeout=10)
                    left_s = time.monotonic() - killed
                    assert left_s < 3, "a dead waiter stayed queued (check interval is 1 s)"
                assert (await nxt.line()).startswith("granted")
                await nxt.send("release")
                assert await nxt.line() == "released"
    finally:
        for w in workers:
            await w.finish()
    print(f"\nkilled waiter: left the server's queue {left_s:.2f} s after the kill")


async def test_next_waiter_is_served_when_the_waiter_ahead_of_it_was_killed(
    pg_dsn: str, sql: Sql, anyio_backend: Any
) -> None:
    from aiolocks.postgres import PostgresLocks

    namespace = _namespace()
    backend = _backend_name(anyio_backend)
    workers: list[Worker] = []
    try:
        async with PostgresLocks(pg_dsn, namespace=namespace) as pg:
            lock = pg.lock("q")
            with anyio.fail_after(15):
                async with lock:
                    victim, nxt = await _two_queued_waiters(
                        pg_dsn, namespace, sql, backend, workers
                    )
                    os.kill(victim.pid, signal.SIGKILL)
                    await victim.proc.wait()
                    released = time.monotonic()
                # the dead waiter is still queued ahead (see the test above): the server
                # grants it the lock, finds its client gone, and passes the lock on
                line = await nxt.line()
                assert line.startswith("granted")
                grant_ms = (float(line.split()[1]) - released) * 1e3
                await nxt.send("release")
                assert await nxt.line() == "released"
                async with lock:  # and the lock is free again
                    pass
    finally:
        for w in workers:
            await w.finish()
    print(
        f"\nkilled waiter [{backend}]: the next waiter got the lock {grant_ms:.1f} ms after "
        "the holder released"
    )
    assert grant_ms < 1000


# ----------------------------------------------------------------------------- server restart


@pytest.fixture(scope="module")
def own_server() -> Any:
    """A server of this module's own: restarting the shared one would disturb other tests."""
    from aiolocks.postgres.testing import PostgresServer

    try:
        server = PostgresServer.start(fast=True)
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests, but no server could start: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        yield server
    finally:
        server.stop()


async def test_server_restart_mid_hold_raises_lock_lost_and_new_acquisitions_work(
    own_server: Any, anyio_backend: Any
) -> None:
    from aiolocks.postgres import PostgresLocks

    backend = _backend_name(anyio_backend)
    namespace = _namespace()
    restarted = anyio.Event()
    both_held = anyio.Event()
    holding = 0
    times: dict[str, float] = {}
    errors: dict[str, BaseException] = {}

    async def hold(pg: PostgresLocks, name: str) -> None:
        nonlocal holding
        try:
            async with pg.lock(name):
                holding += 1
                if holding == 2:
                    both_held.set()
                await restarted.wait()
        except LockLostError as exc:
            errors[name] = exc
            times[name] = time.monotonic()

    # a heartbeat of 30 s: the session's own socket tells the holder, not a poll
    pg = PostgresLocks(own_server.dsn, namespace=namespace, heartbeat=30)
    quiet = PostgresLocks(own_server.dsn, namespace=namespace, cancel_on_loss=False)
    async with pg, quiet:
        with anyio.fail_after(30):
            for locks in (pg, quiet):  # an idle session in each pool, as in a real app
                async with locks.lock("before"):
                    pass
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold, pg, "cancelled-on-loss")
                tg.start_soon(hold, quiet, "lost-on-release")
                await both_held.wait()
                t0 = time.monotonic()
                await anyio.to_thread.run_sync(own_server.restart)
                times["restarted"] = time.monotonic()
                restarted.set()
            assert set(errors) == {"cancelled-on-loss", "lost-on-release"}
            # new acquisitions reconnect transparently
            for locks in (pg, quiet):
                async with locks.lock("cancelled-on-loss"), locks.rwlock("after").writer:
                    pass
    restart_s = times["restarted"] - t0
    print(
        f"\nserver restart [{backend}]: restart took {restart_s:.2f} s; LockLostError: the "
        f"default holder's body cancelled {times['cancelled-on-loss'] - t0:.2f} s after the "
        f"restart began, the cancel_on_loss=False holder's on release, "
        f"{times['lost-on-release'] - times['restarted']:.3f} s after the restart ended"
    )
    # pg_ctl asks the server for a fast shutdown at once: the server's message to the
    # holder's session comes a few ms after t0 (pg_ctl's start), the restart much later
    assert times["cancelled-on-loss"] - t0 < 0.2 + 0.1
    with psycopg.connect(own_server.dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory'").fetchall()
    assert rows == []


async def test_server_restart_while_idle_then_new_acquisitions_reconnect(
    own_server: Any, anyio_backend: Any
) -> None:
    """Nothing held, sessions idle in the pool, the server restarts: the next acquire works.

    Fails with ``SessionLost`` while pooled sessions that died idle are reused (see
    ``test_acquire_reconnects_when_its_idle_pooled_session_was_terminated``).
    """
    from aiolocks.postgres import PostgresLocks

    async with PostgresLocks(own_server.dsn, namespace=_namespace()) as pg:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:  # two idle sessions in the pool
                for name in ("a", "b"):
                    tg.start_soon(_hold_briefly, pg.lock(name))
            await anyio.to_thread.run_sync(own_server.restart)
            async with pg.lock("a"), pg.rwlock("b").reader:
                pass


async def test_a_waiter_waits_through_a_server_restart_and_gets_the_lock(
    own_server: Any, anyio_backend: Any
) -> None:
    """The server restarts while a task waits for a lock another process holds: the holder
    loses it, and the waiter, instead of failing at once, reconnects (retrying while the
    server starts up) and gets it."""
    from aiolocks.postgres import PostgresLocks

    namespace = _namespace()
    got = anyio.Event()
    async with (
        PostgresLocks(own_server.dsn, namespace=namespace) as pg,
        PostgresLocks(own_server.dsn, namespace=namespace, cancel_on_loss=False) as holder,
    ):
        with anyio.fail_after(30):
            await holder.lock("restart").acquire()

            async def waiter() -> None:
                async with pg.lock("restart"):
                    got.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                with psycopg.connect(own_server.dsn, autocommit=True) as conn:
                    while not conn.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    ).fetchone()[0]:  # type: ignore[index]
                        await anyio.sleep(0.01)
                await anyio.to_thread.run_sync(own_server.restart)
                await got.wait()
            with pytest.raises(LockLostError):
                holder.lock("restart").release()


async def _hold_briefly(lock: Any) -> None:
    async with lock:
        await anyio.sleep(0.01)
