"""Loss watching: the maintenance task, pings and the lease, session loss, cancel-on-loss.

A hold is lost when its session is: the server ended it (terminated, restarted, the lease ran
out), or it stopped answering.  A loss is found, fastest first, by the watched session itself
(:meth:`Session.watch`: a FATAL message or a close shows within the loop's latency), by the
zero-round-trip poll of :meth:`Watch.check_alive` on every acquire and release, or by the
maintenance task's pings (``heartbeat``; with a ``lease``, every ``lease / 4``).  Then
:meth:`Watch.session_lost` closes the session, marks its holds lost and, with
``cancel_on_loss``, cancels the ``async with`` bodies of those holds.

The maintenance task is a system task alive only while there is something to do: holds to
check, or idle sessions to close after ``idle_timeout``.  It ends by itself otherwise.

Invariants:
    running is True while the maintenance task is scheduled or runs (at most one)
    scopes[t] lists the open ``async with`` bodies of task t (key, cancel scope), innermost
      last; present only with cancel_on_loss
"""

from __future__ import annotations

import sys
import time
from typing import Any, final

import anyio

from .._backend import TRIO
from ._names import Names
from ._pool import SessionPool
from ._session import SessionLost
from ._state import Ledger, TaskState

__all__ = ["Watch"]

_SQL_PING = b"SELECT 1"


@final
class Watch:
    """Finds lost holds of one lock space and reports them (see the module docs)."""

    __slots__ = (
        "cancel_on_loss",
        "closed",
        "heartbeat",
        "lease",
        "ledger",
        "names",
        "pool",
        "running",
        "scope",
        "scopes",
        "task",
    )

    def __init__(
        self,
        ledger: Ledger,
        pool: SessionPool,
        names: Names,
        heartbeat: float,
        lease: float | None,
        cancel_on_loss: bool,
    ) -> None:
        self.ledger = ledger
        self.pool = pool
        self.names = names
        self.heartbeat = heartbeat  # 0: no heartbeat
        self.lease = lease
        self.cancel_on_loss = cancel_on_loss
        self.closed = False
        self.running = False
        self.task: Any = None  # asyncio: the maintenance task (kept referenced)
        self.scope: anyio.CancelScope | None = None
        self.scopes: dict[Any, list[tuple[int, anyio.CancelScope]]] = {}

    # -- loss -------------------------------------------------------------------------------------

    def session_lost(self, ts: TaskState, reason: BaseException) -> None:
        """The task's session is gone: every hold of it is lost; bodies are cancelled."""
        self.pool.discard(ts.detach())
        self.names.setup_done = False  # maybe a new server: check the table and sequence again
        for key in self.ledger.mark_lost(ts, reason):
            if self.cancel_on_loss:
                for body_key, scope in self.scopes.get(ts.task, ()):
                    if body_key == key:
                        scope.cancel()

    def check_alive(self, ts: TaskState) -> None:
        """Zero round trips: has the server already told us the session is gone?"""
        session = ts.session
        if session is not None and not session.reading:
            try:
                session.poll()
            except SessionLost as exc:
                self.session_lost(ts, exc)

    # -- async with bodies ------------------------------------------------------------------------

    def enter_body(self, task: Any, key: int) -> None:
        """The body of ``async with`` on ``key`` starts: it runs in a cancel scope that a loss
        cancels (``__aexit__`` exits it: async with guarantees the LIFO order scopes need)."""
        if not self.cancel_on_loss:
            return
        scope = anyio.CancelScope()
        scope.__enter__()
        stack = self.scopes.get(task)
        if stack is None:
            stack = self.scopes[task] = []
        stack.append((key, scope))

    def exit_body(
        self, task: Any, key: int, exc_type: Any, exc: BaseException | None, tb: Any
    ) -> bool:
        """The body on ``key`` ends; True if its cancel scope swallowed the exception."""
        stack = self.scopes.get(task) if self.cancel_on_loss else None
        if not stack:
            return False
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] == key:
                scope = stack.pop(i)[1]
                if not stack:
                    del self.scopes[task]
                return bool(scope.__exit__(exc_type, exc, tb))
        return False

    # -- the maintenance task ---------------------------------------------------------------------

    def holding(self, loop: Any) -> None:
        """A hold was recorded: its session needs checking, if there is a heartbeat."""
        if not self.running and (self.heartbeat > 0 or self.lease):
            self.start(loop)

    def start(self, loop: Any) -> None:
        """Start the system task that checks holders and closes idle sessions, unless it runs
        (it ends by itself when there is nothing left to do)."""
        if self.running or self.closed:
            return
        self.running = True
        if loop is TRIO:
            trio = sys.modules["trio"]
            self.task = trio.lowlevel.spawn_system_task(self._maintain, name="aiolocks-pg")
        else:
            self.task = loop.create_task(self._maintain())

    def _intervals(self) -> tuple[float, float, float]:
        """(seconds between checks, between pings, until an unanswered ping means lost)"""
        beat = self.heartbeat or float("inf")
        ping_every = self.heartbeat * 3
        ping_timeout = max(self.heartbeat * 2, 1.0)
        if self.lease:
            # a ping reaches the server every lease/4; one unanswered for lease/2 means the
            # hold is lost, before the server (lease after the last ping it got) frees it
            ping_every = self.lease / 4
            ping_timeout = self.lease / 2
            beat = min(beat, ping_every / 2)
        return beat, ping_every, ping_timeout

    async def _maintain(self) -> None:
        """Every ``heartbeat`` seconds while holds exist, checks the sessions of holders; closes
        sessions left idle for ``idle_timeout`` seconds."""
        scope = self.scope = anyio.CancelScope()
        beat, ping_every, ping_timeout = self._intervals()
        try:
            with scope:
                while not self.closed:
                    holds = beat < float("inf") and any(
                        ts.holds for ts in self.ledger.tasks.values()
                    )
                    expiry = self.pool.next_expiry()
                    if not holds and expiry is None:
                        break
                    delay = (
                        beat if expiry is None else max(0.0, min(beat, expiry - time.monotonic()))
                    )
                    await anyio.sleep(delay)
                    now = time.monotonic()
                    self.pool.close_idle(now)
                    if holds:
                        self._tick(now, ping_every, ping_timeout)
        except Exception:  # pragma: no cover - a heartbeat must never crash the event loop
            pass
        finally:
            if self.scope is scope:
                self.scope = None
            self.running = False
            self.task = None

    def _tick(self, now: float, ping_every: float, ping_timeout: float) -> None:
        for ts in list(self.ledger.tasks.values()):
            session = ts.session
            if session is None or not ts.holds or session.reading:
                continue  # an owner reading its session finds a loss itself
            try:
                session.poll()
            except SessionLost as exc:
                self.session_lost(ts, exc)
                continue
            ping = ts.ping
            if ping is not None and not ping.done:
                if now - ts.ping_at > ping_timeout:
                    self.session_lost(
                        ts, SessionLost(f"no answer from PostgreSQL in {ping_timeout:g} s")
                    )
            elif now - ts.ping_at >= ping_every:
                try:
                    ts.ping = session.send(_SQL_PING, prepared=True)
                    ts.ping_at = now
                except SessionLost as exc:
                    self.session_lost(ts, exc)

    def reset(self) -> None:
        """Moved to a new event loop while idle: the old loop's task is forgotten."""
        self.running = False
        self.task = None
        self.scope = None

    def close(self) -> None:
        self.closed = True
        if self.scope is not None:
            self.scope.cancel()
