"""Protocol steps written once and driven two ways (``aiolocks.postgres._steps``).

The drivers are tested on steps written here (generators that wait on a socket pair or an
Event), then through the one synchronous path that uses the blocking driver,
``acquire_nowait()``, against a real server: a pool with every session in use, and a server
that refuses connections.  The network-cut bounds are in ``test_pg_netcut.py``.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

pytest.importorskip("psycopg")
from psycopg.conninfo import make_conninfo

from aiolocks.postgres import PostgresLocks
from aiolocks.postgres._steps import Steps, run_async, run_blocking

pytestmark = pytest.mark.anyio


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _wait_then_clean_up(
    sock: socket.socket, log: list[str], clean_up_timeout: float | None, shielded: bool
) -> Steps[str]:
    """Waits for ``sock`` to be readable; on any failure, waits for it again (the clean-up),
    then lets the failure propagate."""
    try:
        came = yield sock.fileno(), True, None, False
        log.append(f"first {came}")
    except BaseException as exc:
        log.append(f"raised {type(exc).__name__}")
        came = yield sock.fileno(), True, clean_up_timeout, shielded
        log.append(f"clean-up {came}")
        raise
    finally:
        log.append("finally")
    return "done"


def test_blocking_driver_answers_not_in_time_at_its_deadline_and_at_once_after_it(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, _ = pair
    replies: list[bool] = []

    def step() -> Steps[None]:
        replies.append((yield a.fileno(), True, None, False))
        replies.append((yield a.fileno(), True, 30.0, False))  # its own limit is later

    started = time.monotonic()
    run_blocking(step(), started + 0.2)
    took = time.monotonic() - started
    assert replies == [False, False]
    assert 0.2 <= took < 1.0, f"took {took:.2f} s for a 0.2 s deadline"


def test_blocking_driver_reports_a_ready_descriptor(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    b.send(b"x")
    log: list[str] = []
    assert run_blocking(_wait_then_clean_up(a, log, None, False), time.monotonic() + 5) == "done"
    assert log == ["first True", "finally"]


def test_blocking_driver_raises_would_block_inside_a_step_waiting_for_another_task() -> None:
    """An Event can only be set by another task, and none runs while the driver blocks."""
    log: list[str] = []

    def step(event: anyio.Event) -> Steps[None]:
        try:
            yield event, None, None, False
        except anyio.WouldBlock:
            log.append("WouldBlock at the yield")
            raise
        finally:
            log.append("finally")

    async def main() -> None:
        event = anyio.Event()
        with pytest.raises(anyio.WouldBlock):
            run_blocking(step(event), time.monotonic() + 5)
        assert log == ["WouldBlock at the yield", "finally"]
        event.set()
        log.clear()
        run_blocking(step(event), time.monotonic() + 5)  # set already: no wait
        assert log == ["finally"]

    anyio.run(main)


async def test_async_driver_raises_a_cancellation_inside_the_step_and_shields_its_clean_up(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    log: list[str] = []
    scope = anyio.CancelScope()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                with scope:
                    await run_async(_wait_then_clean_up(a, log, 30.0, True))

            tg.start_soon(run)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            # the step's clean-up waits, shielded, although its task was cancelled
            assert len(log) == 1 and log[0].startswith("raised Cancel"), log
            b.send(b"x")
    assert log[1:] == ["clean-up True", "finally"]
    assert scope.cancelled_caught


async def test_async_driver_answers_not_in_time_when_a_waits_own_timeout_expires(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, _ = pair
    replies: list[bool] = []

    def step() -> Steps[int]:
        replies.append((yield a.fileno(), True, 0.05, False))
        replies.append((yield a.fileno(), True, 0.05, True))
        return 7

    with anyio.fail_after(5):
        assert await run_async(step()) == 7
    assert replies == [False, False]


def _namespace() -> str:
    return f"steps-{uuid.uuid4().hex[:10]}"


async def test_acquire_nowait_with_every_session_in_use_raises_would_block_at_once(
    pg_dsn: str, anyio_backend: Any
) -> None:
    """Regression guard for the blocking driver: the checkout must not wait for another
    task's session (it would freeze the loop), and must leave no waiter behind."""
    async with PostgresLocks(pg_dsn, namespace=_namespace(), max_sessions=1) as pg:
        held = anyio.Event()
        release = anyio.Event()

        async def holder() -> None:
            async with pg.lock("a"):
                held.set()
                await release.wait()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await held.wait()

                async def try_b() -> None:
                    started = time.monotonic()
                    with pytest.raises(anyio.WouldBlock):
                        pg.lock("b").acquire_nowait()
                    assert time.monotonic() - started < 1.0
                    assert not pg.lock("b").locked()

                tg.start_soon(try_b)
                await anyio.wait_all_tasks_blocked()
                release.set()
            async with pg.lock("b"):  # the one session is free again: nothing waits for it
                pass


async def test_acquire_nowait_when_the_server_refuses_connections_raises_connection_error(
    pg_dsn: str, anyio_backend: Any
) -> None:
    """A refused connection is a transient failure that an awaited checkout retries; the
    blocking driver cannot wait for the retry, and reports the failure, not WouldBlock."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        dsn = make_conninfo(pg_dsn, host="127.0.0.1", port=str(port))
        async with PostgresLocks(dsn, namespace=_namespace()) as pg:
            started = time.monotonic()
            with pytest.raises(ConnectionError, match=r"(?i)refused"):
                pg.lock("x").acquire_nowait()
            assert time.monotonic() - started < 2.0
            assert not pg.lock("x").locked()
