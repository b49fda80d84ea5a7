"""A network cut between a process and the server: no stall of the event loop, bounded returns.

The lock sessions under test reach the server through a loopback TCP proxy (``_netproxy.py``)
that can stop forwarding without closing anything, so the client sees a silent network, as
when a cable is pulled.  What must hold then:

- a waiter whose cancel scope expires returns at most ``_CANCEL_TIMEOUT`` (0.5 s) after it: a
  cancel request is sent with libpq's non-blocking cancel (never ``PQcancel``, which blocks
  holding the GIL, so even from a worker thread it froze the whole process for as long as the
  network was cut); if it cannot be delivered the session is closed, and the server drops the
  request;
- meanwhile a ticker task of the same process never sees a gap over 100 ms;
- ``acquire_nowait()`` gives up within its documented 5 s, connecting included;
- afterwards the server holds nothing for the cut-off session.

Every test that waits has a deadline; the conftest checks that no session is left behind.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

psycopg = pytest.importorskip("psycopg")
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from aiolocks import LockLostError  # noqa: E402
from aiolocks.postgres import PostgresLocks, _session  # noqa: E402

from ._netproxy import TcpProxy  # noqa: E402

pytestmark = pytest.mark.anyio

#: The largest gap a ticker sleeping 10 ms may see while the network is cut.
MAX_STALL = 0.100
#: acquire_nowait()'s documented bound, plus scheduling slack.
NOWAIT_BOUND = 5.0 + 0.5


@pytest.fixture(
    params=[pytest.param(("asyncio", {}), id="asyncio"), pytest.param(("trio", {}), id="trio")]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
def proxy(pg_dsn: str) -> Iterator[TcpProxy]:
    params = conninfo_to_dict(pg_dsn)
    if params.get("host") not in ("127.0.0.1", "localhost") or not params.get("port"):
        pytest.skip("needs a server on 127.0.0.1 (the proxy forwards loopback TCP)")
    with TcpProxy(int(str(params["port"]))) as p:
        yield p


def _through(pg_dsn: str, proxy: TcpProxy) -> str:
    return make_conninfo(pg_dsn, host="127.0.0.1", port=str(proxy.port))


def _namespace() -> str:
    return f"netcut-{uuid.uuid4().hex[:10]}"


#: (pid, granted) of every advisory lock request of one namespace, from pg_locks.
_REQUESTS = """
    SELECT l.pid, l.granted FROM pg_locks l
    JOIN aiolocks_names n ON n.key = ((l.classid::bigint << 32) | l.objid::bigint)
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND n.namespace = %s
"""


async def _requests(pg_dsn: str, namespace: str) -> list[tuple[int, bool]]:
    """Asked over a direct connection (not through the proxy), in a worker thread."""

    def run() -> list[tuple[int, bool]]:
        with psycopg.connect(pg_dsn, autocommit=True, application_name="aiolocks-tests") as c:
            return [(int(pid), bool(g)) for pid, g in c.execute(_REQUESTS, (namespace,))]

    return await anyio.to_thread.run_sync(run)


class Ticker:
    """Sleeps 10 ms in a loop and records the largest gap between wake-ups while armed."""

    def __init__(self) -> None:
        self.armed = False
        self.worst = 0.0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await anyio.sleep(0.01)
            now = time.monotonic()
            if self.armed:
                self.worst = max(self.worst, now - last)
            last = now


@pytest.mark.parametrize("cancel", ["nonblocking", "close"])
async def test_waiter_cut_off_by_the_network_returns_in_time_and_never_stalls_the_loop(
    pg_dsn: str, proxy: TcpProxy, anyio_backend: Any, cancel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``close``: as with libpq < 17, which has only the blocking cancel: the session is
    closed at once instead."""
    if cancel == "close":
        monkeypatch.setattr(_session, "_NONBLOCKING_CANCEL", False)
    elif not _session._NONBLOCKING_CANCEL:
        pytest.skip("libpq < 17: no non-blocking cancel")
    namespace = _namespace()
    ticker = Ticker()
    with anyio.fail_after(30):
        async with (
            PostgresLocks(pg_dsn, namespace=namespace) as near,
            PostgresLocks(_through(pg_dsn, proxy), namespace=namespace) as far,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(ticker.run)
            holder = near.lock("shared")
            await holder.acquire()
            returned = anyio.Event()
            took: list[float] = []

            async def waiter() -> None:
                started = time.monotonic()
                with anyio.move_on_after(2) as scope:
                    await far.lock("shared").acquire()
                took.append(time.monotonic() - started)
                assert scope.cancelled_caught, "the waiter got a lock that is held"
                returned.set()

            tg.start_soon(waiter)
            while not (waiting := [pid for pid, g in await _requests(pg_dsn, namespace) if not g]):
                await anyio.sleep(0.01)
            proxy.cut()
            ticker.armed = True
            await returned.wait()
            await anyio.sleep(0.2)  # whatever the return left behind runs now
            ticker.armed = False

            print(
                f"\nnetwork cut [{anyio_backend[0]}, {cancel}]: the waiter returned "
                f"{took[0]:.2f} s after it started waiting under move_on_after(2); "
                f"worst loop stall {ticker.worst * 1000:.0f} ms"
            )
            assert took[0] < 3.0, f"the waiter returned after {took[0]:.2f} s (bound: 3 s)"
            assert ticker.worst <= MAX_STALL, (
                f"the event loop stalled for {ticker.worst * 1000:.0f} ms during the cut"
            )
            proxy.restore()
            with anyio.fail_after(5):  # the server drops the cut-off session's request
                while any(pid == waiting[0] for pid, _ in await _requests(pg_dsn, namespace)):
                    await anyio.sleep(0.02)
            assert [g for _, g in await _requests(pg_dsn, namespace)] == [True]  # the holder
            holder.release()
            with anyio.fail_after(5):  # and the cut-off process reconnects
                async with far.lock("shared"):
                    pass
            tg.cancel_scope.cancel()


async def test_acquire_nowait_through_a_cut_network_gives_up_within_its_bound(
    pg_dsn: str, proxy: TcpProxy, anyio_backend: Any
) -> None:
    namespace = _namespace()
    async with PostgresLocks(_through(pg_dsn, proxy), namespace=namespace) as far:
        lock = far.lock("shared")
        lock.acquire_nowait()  # a pooled session, connected before the cut
        lock.release()
        await anyio.sleep(0.05)
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(anyio.WouldBlock):
            lock.acquire_nowait()
        took = time.monotonic() - started
        print(f"\nacquire_nowait() through a cut network gave up after {took:.2f} s")
        assert took < NOWAIT_BOUND, f"acquire_nowait() blocked for {took:.2f} s"
        assert not lock.locked()
        proxy.restore()
        with anyio.fail_after(5):
            async with lock:  # a new session
                pass


async def test_acquire_nowait_of_a_holder_through_a_cut_network_gives_up_and_reports_the_loss(
    pg_dsn: str, proxy: TcpProxy, anyio_backend: Any
) -> None:
    """The try statement goes on the holder's own session; unanswered by the deadline, it is
    undone by closing that session (never by waiting): the hold it backed is lost, and said so."""
    namespace = _namespace()
    async with (
        PostgresLocks(pg_dsn, namespace=namespace) as near,
        PostgresLocks(_through(pg_dsn, proxy), namespace=namespace) as far,
    ):
        held = far.lock("held")
        with anyio.fail_after(10):
            await held.acquire()
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(anyio.WouldBlock):
            far.lock("other").acquire_nowait()
        took = time.monotonic() - started
        print(f"\nacquire_nowait() through a cut network gave up after {took:.2f} s")
        assert took < NOWAIT_BOUND, f"acquire_nowait() blocked for {took:.2f} s"
        assert not far.lock("other").locked()
        assert not held.locked()
        with pytest.raises(LockLostError):
            held.release()
        proxy.restore()
        with anyio.fail_after(10):  # the server drops the closed session, and its lock
            async with near.lock("held"):
                pass


async def test_first_acquire_nowait_through_a_cut_network_gives_up_within_its_bound(
    pg_dsn: str, proxy: TcpProxy, anyio_backend: Any
) -> None:
    proxy.cut()  # before the first connection: connecting is part of the bound
    async with PostgresLocks(_through(pg_dsn, proxy), namespace=_namespace()) as far:
        lock = far.lock("shared")
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            lock.acquire_nowait()
        took = time.monotonic() - started
        print(f"\nacquire_nowait() through a cut network gave up after {took:.2f} s")
        assert took < NOWAIT_BOUND, f"acquire_nowait() blocked for {took:.2f} s"
        proxy.restore()
        lock.acquire_nowait()
        lock.release()


@pytest.fixture
def fds_above_1023() -> Iterator[None]:
    """Occupies every descriptor below 1024, so the next socket gets a number above it."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"the descriptor limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < 1100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1100, hard))
    base = socket.socket()
    taken = []
    try:
        while (fd := os.dup(base.fileno())) < 1024:
            taken.append(fd)
        os.close(fd)
        yield
    finally:
        for fd in taken:
            os.close(fd)
        base.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_acquire_nowait_works_on_a_descriptor_above_1023(
    pg_dsn: str, anyio_backend: Any, fds_above_1023: None
) -> None:
    """Regression: ``select.select`` raised ValueError for such a descriptor."""
    async with PostgresLocks(pg_dsn, namespace=_namespace()) as pg:
        lock = pg.lock("high")
        lock.acquire_nowait()  # connects, then one round trip, both waited for in the thread
        try:
            assert lock.locked()
        finally:
            lock.release()


async def test_a_task_waiting_for_a_releasing_session_that_is_lost_connects_instead(
    pg_dsn: str, proxy: TcpProxy, anyio_backend: Any
) -> None:
    """A checkout waits for the session of a task that reads its last unlock's answer rather
    than opening one; if that answer never comes (here: a cut network, until the release
    gives up and closes the session), the checkout must not wait forever: it connects."""
    async with PostgresLocks(_through(pg_dsn, proxy), namespace=_namespace()) as far:
        held = anyio.Event()
        go = anyio.Event()
        gave_up = anyio.Event()
        b_done = anyio.Event()

        async def holder() -> None:
            try:
                async with far.lock("a"):
                    held.set()
                    await go.wait()
            except LockLostError:  # no answer to its unlock: the session was closed
                gave_up.set()

        async def other() -> None:
            async with far.lock("b"):
                b_done.set()

        with anyio.fail_after(40):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await held.wait()
                proxy.cut()
                go.set()
                await anyio.wait_all_tasks_blocked()  # the holder waits for its unlock's answer
                tg.start_soon(other)
                await anyio.wait_all_tasks_blocked()  # "b" waits for the holder's session
                assert not b_done.is_set()
                await gave_up.wait()  # the release gave up, the session was closed
                proxy.restore()
                await b_done.wait()


async def test_connections_closed_unanswered_are_retried_as_a_restarting_server(
    pg_dsn: str, proxy: TcpProxy, anyio_backend: Any
) -> None:
    """While the server shuts down or starts up, the postmaster may close a new connection
    before answering ("server closed the connection unexpectedly"): an acquire retries that,
    as it retries "connection refused", instead of failing at once."""
    namespace = _namespace()
    async with PostgresLocks(_through(pg_dsn, proxy), namespace=namespace) as far:
        proxy.drop_next(3)
        with anyio.fail_after(10):
            async with far.lock("restarting"):
                assert far.lock("restarting").locked()
        assert proxy.connections == 1  # the fourth attempt, pooled now


@pytest.mark.parametrize("heard_by", ["release", "watch"])
async def test_a_hold_is_lost_when_the_servers_fatal_message_arrives_before_its_close(
    pg_dsn: str, proxy: TcpProxy, anyio_backend: Any, heard_by: str
) -> None:
    """A backend that ends (terminated, idle or lease timeout) sends FATAL, releases its locks,
    and only then closes its socket, so another process may be granted the lock before the
    holder's socket closes.  The FATAL alone must tell the holder (libpq reports an error that
    arrives while no statement runs as a mere notice).  The proxy delivers the FATAL and holds
    the close back.  ``release``: the holder's plain ``release()`` is the first to read it;
    ``watch``: the session's watch reads it, and ``locked()`` turns False.  No heartbeat, so
    no ping reads the socket first."""
    namespace = _namespace()
    dsn = _through(pg_dsn, proxy)
    async with PostgresLocks(dsn, namespace=namespace, heartbeat=0) as far:
        lock = far.lock("ended")
        with anyio.fail_after(10):
            await lock.acquire()
            ((pid, granted),) = await _requests(pg_dsn, namespace)
            assert granted
            proxy.hold_fins()

            def terminate() -> None:
                with psycopg.connect(pg_dsn, autocommit=True) as c:
                    c.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))

            if heard_by == "release":
                # nothing reads the socket before release() does: the watch is off meanwhile
                far._engine.ledger.tasks[far._engine.task()].session.unwatch()
            await anyio.to_thread.run_sync(terminate)
            if heard_by == "release":
                while await _requests(pg_dsn, namespace) or proxy.fins_held < 1:
                    await anyio.sleep(0.01)  # the server let go; the FATAL is in our socket
            else:
                while lock.locked():
                    await anyio.sleep(0.01)  # the watch read the FATAL (no close came)
            with pytest.raises(LockLostError):
                lock.release()
        assert not lock.locked()
