"""A network cut between a process and the server: no stall of the event loop, bounded returns.

The lock sessions under test reach the server through a loopback TCP proxy (``_netproxy.py``)
that can stop forwarding without closing anything, so the client sees a silent network, as
when a cable is pulled.  What must hold then:

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

from aiolocks.postgres import PostgresLocks  # noqa: E402

from ._netproxy import TcpProxy  # noqa: E402

pytestmark = pytest.mark.anyio

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
        assert took < NOWAIT_BOUND, f"acquire_nowait() blocked for {took:.2f} s"
        assert not lock.locked()
        proxy.restore()
        with anyio.fail_after(5):
            async with lock:  # a new session
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
