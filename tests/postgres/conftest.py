"""Fixtures for the PostgreSQL tests: a real server, a fresh lock space per test, hygiene checks.

The server is started once per test session (``aiolocks.postgres.testing.PostgresServer``), or
taken from the environment variable ``AIOLOCKS_PG_DSN``.  Without a server the tests are
skipped, except in CI (``CI`` set), where they fail: the suite never silently skips there.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

#: Every aiolocks lock session sets an application_name starting with this.
APP_PREFIX = "aiolocks:"


class ExternalServer:
    """A server the suite did not start (``AIOLOCKS_PG_DSN``): it cannot be restarted."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _refuse(self) -> None:
        pytest.skip("needs a PostgreSQL server started by the test suite (AIOLOCKS_PG_DSN is set)")

    def restart(self) -> None:
        self._refuse()

    def kill(self) -> None:
        self._refuse()

    def stop(self) -> None:
        self._refuse()


def _no_server(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the PostgreSQL tests, but no server is available: {reason}")
    pytest.skip(f"no PostgreSQL server: {reason}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A running PostgreSQL server (``PostgresServer``, or ``ExternalServer`` from the env)."""
    dsn = os.environ.get("AIOLOCKS_PG_DSN")
    if dsn:
        yield ExternalServer(dsn)
        return
    try:
        from aiolocks.postgres.testing import PostgresServer
    except ImportError as exc:  # psycopg missing
        _no_server(f"cannot import aiolocks.postgres ({exc}); install aiolocks[postgres]")
        return
    try:
        server = PostgresServer.start(fast=True, settings={"deadlock_timeout": "100ms"})
    except Exception as exc:
        _no_server(str(exc))
        return
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_dsn(pg_server: Any) -> str:
    """The DSN of the test server."""
    return str(pg_server.dsn)


def _query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, application_name="aiolocks-tests") as conn:
        return conn.execute(sql, params).fetchall()


_HELD_SQL = """
    SELECT a.pid, a.application_name, l.mode, l.granted, l.classid, l.objid
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND a.application_name LIKE %s
"""
_SESSIONS_SQL = """
    SELECT pid, application_name, state FROM pg_stat_activity
    WHERE application_name LIKE %s AND pid <> pg_backend_pid()
"""


def _wait_empty(dsn: str, sql: str, prefix: str, timeout: float = 3.0) -> list[tuple[Any, ...]]:
    """Poll until ``sql`` returns nothing (a closed session's backend exits a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _query(dsn, sql, prefix.replace("_", r"\_") + "%")
        if not rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _pg_hygiene(pg_dsn: str) -> Iterator[None]:
    """After every test: no aiolocks session holds an advisory lock, and none is left open."""
    yield
    held = _wait_empty(pg_dsn, _HELD_SQL, APP_PREFIX)
    assert not held, f"advisory locks still held by aiolocks sessions after the test: {held}"
    left = _wait_empty(pg_dsn, _SESSIONS_SQL, APP_PREFIX)
    assert not left, f"aiolocks sessions left open after the test: {left}"


def own_prefix() -> str:
    """The application_name prefix of this process's lock sessions."""
    from aiolocks.postgres import owner_prefix

    return owner_prefix()


@pytest.fixture
async def pg_locks(
    pg_dsn: str, request: pytest.FixtureRequest, anyio_backend: Any
) -> AsyncIterator[Any]:
    """A fresh ``PostgresLocks`` with a namespace of its own, closed after the test.

    Before closing it, checks that this process's idle lock sessions hold nothing (every task
    of the test is done by then, so anything held is a leak of the pool).
    """
    from aiolocks.postgres import PostgresLocks

    namespace = f"test-{uuid.uuid4().hex[:12]}"
    pg = PostgresLocks(pg_dsn, namespace=namespace, heartbeat=0.2)
    try:
        yield pg
        # (a synchronous release() sends its unlock without waiting: allow it to arrive)
        held = _wait_empty(pg_dsn, _HELD_SQL, own_prefix(), timeout=1.0)
        assert not held, f"lock sessions returned to the pool still hold locks: {held}"
    finally:
        await pg.aclose()
