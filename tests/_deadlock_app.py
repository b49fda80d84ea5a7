"""A Starlette app whose two handlers deadlock on purpose, for ``test_dump_on_signal.py``.

Served in a subprocess by uvicorn, with ``AIOLOCKS_DUMP_SIGNAL`` set by the test::

    AIOLOCKS_DUMP_SIGNAL=USR1 python -m uvicorn --app-dir tests _deadlock_app:app

- ``GET /transfer`` takes ``accounts`` then ``ledger``; ``GET /audit`` takes ``ledger`` then
  ``accounts``.  Each takes its second lock only once the other handler holds its first, so
  two concurrent requests deadlock every time (and never answer).
- ``GET /state``: how many tasks wait for each lock, ``{"accounts": n, "ledger": m}``.
- ``GET /ping``: takes no lock; answers ``pong``.
"""

from __future__ import annotations

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import aiolocks

accounts = aiolocks.Lock(name="accounts")
ledger = aiolocks.Lock(name="ledger")
_took = {"transfer": anyio.Event(), "audit": anyio.Event()}


async def transfer(request: Request) -> Response:
    async with accounts:
        _took["transfer"].set()
        await _took["audit"].wait()
        async with ledger:
            return PlainTextResponse("transferred")


async def audit(request: Request) -> Response:
    async with ledger:
        _took["audit"].set()
        await _took["transfer"].wait()
        async with accounts:
            return PlainTextResponse("audited")


async def state(request: Request) -> Response:
    return JSONResponse(
        {
            "accounts": accounts.statistics().tasks_waiting,
            "ledger": ledger.statistics().tasks_waiting,
        }
    )


async def ping(request: Request) -> Response:
    return PlainTextResponse("pong")


app = Starlette(
    routes=[
        Route("/transfer", transfer),
        Route("/audit", audit),
        Route("/state", state),
        Route("/ping", ping),
    ]
)
