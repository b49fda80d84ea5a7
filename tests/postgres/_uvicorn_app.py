"""A small Starlette app guarding shared state with ``aiolocks.postgres``, for uvicorn workers.

Served by ``tests/postgres/test_pg_uvicorn.py`` (issue 14, the production-deployment test)::

    python -m uvicorn tests.postgres._uvicorn_app:app --workers 8

Configured by environment variables (read at import, in every worker process):

- ``AIOLOCKS_UVICORN_DSN``: the server the locks live on;
- ``AIOLOCKS_UVICORN_NAMESPACE``: the lock namespace;
- ``AIOLOCKS_UVICORN_LOCK``: the name of the lock of ``/counter`` (and of the rwlock of ``/rw``);
- ``AIOLOCKS_UVICORN_DIR``: a directory for the shared state (files, shared by all workers);
- ``AIOLOCKS_UVICORN_MAX_SESSIONS`` (optional): ``max_sessions`` of the lock space.

Endpoints:

- ``GET /counter``: under ``pg.lock(NAME)``, read a counter from a file, yield to the event
  loop, write it back plus one; answers ``{"token": <fencing token>, "value": <new value>}``.
  Without mutual exclusion across the workers, increments are lost.
- ``GET /rw?mode=write``: under ``pg.rwlock(NAME).writer``, increment ``a``, yield, increment
  ``b`` (so ``a == b`` holds only between writes); answers ``{"token": <fencing token>}``.
- ``GET /rw?mode=read``: under ``pg.rwlock(NAME).reader``, read ``a``, yield, read ``b``;
  answers ``{"a": a, "b": b}`` (equal unless a writer ran meanwhile).
- ``GET /ping``: takes no lock; answers ``{"pid": <worker pid>}``.

An exception in a handler is answered with status 500 and ``<type>: <message>`` as the body,
and logged as one line ``aiolocks-app PID PATH: <type>: <message>`` on stderr, so that the
test can tell the errors apart.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio.lowlevel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from aiolocks.postgres import PostgresLocks

DSN = os.environ["AIOLOCKS_UVICORN_DSN"]
NAMESPACE = os.environ["AIOLOCKS_UVICORN_NAMESPACE"]
LOCK_NAME = os.environ["AIOLOCKS_UVICORN_LOCK"]
STATE_DIR = os.environ["AIOLOCKS_UVICORN_DIR"]
_max_sessions = os.environ.get("AIOLOCKS_UVICORN_MAX_SESSIONS")

pg = (
    PostgresLocks(DSN, namespace=NAMESPACE)
    if not _max_sessions
    else PostgresLocks(DSN, namespace=NAMESPACE, max_sessions=int(_max_sessions))
)

# The shared state: 8-byte little-endian integers in files that every worker opens.
_counter_fd = os.open(os.path.join(STATE_DIR, "counter"), os.O_RDWR | os.O_CREAT, 0o600)
_rw_fd = os.open(os.path.join(STATE_DIR, "rw"), os.O_RDWR | os.O_CREAT, 0o600)


def _get(fd: int, slot: int = 0) -> int:
    data = os.pread(fd, 8, 8 * slot)
    return int.from_bytes(data, "little", signed=True) if len(data) == 8 else 0


def _put(fd: int, value: int, slot: int = 0) -> None:
    os.pwrite(fd, value.to_bytes(8, "little", signed=True), 8 * slot)


def _reported(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            text = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}".replace("\n", " ")
            # one write, so that the lines of the workers sharing the log do not interleave
            os.write(2, f"aiolocks-app {os.getpid()} {request.url.path}: {text}\n".encode())
            return PlainTextResponse(text, status_code=500)

    return wrapper


@_reported
async def counter(request: Request) -> Response:
    lock = pg.lock(LOCK_NAME)
    async with lock:
        token = lock.fencing_token
        value = _get(_counter_fd)
        # a yield: other requests of this worker run here (and other workers anyway)
        await anyio.lowlevel.checkpoint()
        _put(_counter_fd, value + 1)
    return JSONResponse({"token": token, "value": value + 1})


@_reported
async def rw(request: Request) -> Response:
    rwlock = pg.rwlock(LOCK_NAME)
    if request.query_params.get("mode") == "write":
        async with rwlock.writer:
            token = rwlock.writer.fencing_token
            _put(_rw_fd, _get(_rw_fd, 0) + 1, 0)
            await anyio.lowlevel.checkpoint()
            _put(_rw_fd, _get(_rw_fd, 1) + 1, 1)
        return JSONResponse({"token": token})
    async with rwlock.reader:
        a = _get(_rw_fd, 0)
        await anyio.lowlevel.checkpoint()
        b = _get(_rw_fd, 1)
    return JSONResponse({"a": a, "b": b})


async def ping(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid()})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await pg.aclose()


app = Starlette(
    routes=[Route("/counter", counter), Route("/rw", rw), Route("/ping", ping)],
    lifespan=lifespan,
)
