"""The private sessions of a lock space: checkout and checkin, idle close, connect retry.

Sessions are opened on demand, up to ``max_sessions``, and pooled LIFO when the task they
served holds and awaits nothing; an idle session is closed after ``idle_timeout`` seconds (by
the maintenance task of :mod:`._watch`, which ``on_idle`` starts).  When every session is in
use, or the server refuses a new one for a while (full, restarting), a checkout waits for a
session of the process (FIFO, handed over by :meth:`SessionPool.checkin`), retrying the
connection with backoff: a burst of load never turns into a burst of errors.

Invariants:
    count == sessions open or being opened, idle ones included
    a session in ``idle`` is bound to no task and watched by nobody
    ``waiters`` is non-empty only while no session is idle (a checkin hands over first)
    a checkout opens a session only when parked checkouts claim every ``returning`` one
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import final

import anyio
from anyio import WouldBlock

from ._names import owner_prefix
from ._session import Session, SessionLost
from ._steps import Steps, run_async

__all__ = ["SessionPool", "session_settings"]

#: Connection failures that pass: the server is full ("too many clients"), starting up or
#: shutting down, or not listening yet (a restart).  A checkout retries them with backoff.
_TRANSIENT_CONNECT = (
    "too many clients",
    "too many connections",  # for a role or a database (CONNECTION LIMIT)
    "remaining connection slots are reserved",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "connection refused",
    # a restart: the postmaster took the connection, then closed it before answering
    "server closed the connection unexpectedly",
)
#: Without a session of its own to wait for, a checkout retries transient failures this long.
_CONNECT_RETRY = 30.0


def session_settings(heartbeat: float, lease: float | None = None) -> dict[str, str]:
    # The server notices a vanished client (frozen, partitioned) within idle + interval * count
    # seconds; the client's own heartbeat is meant to notice a loss first.  With a lease, the
    # server ends a session that stays idle (no ping from the heartbeat) for that long.
    idle = max(10, int(heartbeat * 5))
    return {
        # Durable fencing tokens on a server that commits asynchronously: nextval() writes WAL
        # every 32 values and then takes a transaction id, so that the commit of its statement
        # waits for that WAL to be flushed -- only if the session commits synchronously.  Same
        # for the namespace's CREATE SEQUENCE.  ("on", not "local": a synchronous standby gets
        # the WAL too, so a failover to it keeps the tokens.)  The 31 nextval() calls between
        # two WAL writes do not wait (see tests/postgres/test_pg_durable.py for the window).
        "synchronous_commit": "on",
        "statement_timeout": "0",
        "lock_timeout": "0",
        "idle_in_transaction_session_timeout": "0",
        "idle_session_timeout": str(round(lease * 1000)) if lease else "0",
        "client_min_messages": "error",
        "tcp_keepalives_idle": str(idle),
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
        "client_connection_check_interval": "1000",  # a dead waiter leaves the queue in ~1 s
    }


def _transient(exc: SessionLost) -> bool:
    text = str(exc).lower()
    return any(part in text for part in _TRANSIENT_CONNECT)


@final
class _PoolWaiter:
    __slots__ = ("event", "session")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.session: Session | None = None  # handed over by checkin(); None: a free slot


@final
class _Backoff:
    """One checkout's retries of transient connection failures (50 ms doubling to 1 s)."""

    __slots__ = ("delay", "error", "since")

    def __init__(self) -> None:
        self.delay = 0.0
        self.since = 0.0
        self.error: SessionLost | None = None  # the last failure

    def retry(self, exc: SessionLost, alone: bool) -> bool:
        """Whether to try again after ``exc`` (``alone``: no session of ours can come back)."""
        now = time.monotonic()
        self.since = self.since or now
        self.error = exc
        if not _transient(exc) or (alone and now - self.since > _CONNECT_RETRY):
            return False
        self.delay = min(max(self.delay * 2, 0.05), 1.0)
        return True


@final
class SessionPool:
    """The sessions of one lock space (see the module docs)."""

    __slots__ = (
        "_check_open",
        "_on_idle",
        "closed",
        "count",
        "dsn",
        "idle",
        "idle_timeout",
        "max_sessions",
        "returning",
        "settings",
        "waiters",
    )

    def __init__(
        self,
        dsn: str,
        settings: dict[str, str],
        max_sessions: int,
        idle_timeout: float,
        check_open: Callable[[], None],
        on_idle: Callable[[], None],
    ) -> None:
        self.dsn = dsn
        self.settings = settings
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._check_open = check_open  # raises once the lock space is closed
        self._on_idle = on_idle  # a session went idle: idle sessions need closing later
        self.closed = False
        self.idle: list[tuple[Session, float]] = []  # pooled sessions and since when, LIFO
        self.count = 0  # sessions open or being opened
        self.returning = 0  # sessions to be checked in once an unlock's answer is read
        self.waiters: deque[_PoolWaiter] = deque()

    @property
    def in_use(self) -> bool:
        """Some session is bound to a task or being opened."""
        return self.count > len(self.idle)

    async def checkout(self) -> Session:
        """A session for a task that holds nothing (see :meth:`checkout_steps`)."""
        session = self.pop_idle()  # the common case without starting a driver (no await either)
        return session if session is not None else await run_async(self.checkout_steps())

    def checkout_steps(self) -> Steps[Session]:
        """A session for a task that holds nothing, as a step (see :mod:`._steps`): it may
        wait for one, holding nothing.

        When the server refuses a new session for a while (full, restarting), the task waits
        for one of the process's own sessions if it has any, else retries with backoff for
        :data:`_CONNECT_RETRY` seconds.  Driven without waiting for other tasks
        (``acquire_nowait()``), it raises :class:`anyio.WouldBlock` when every session is in
        use, and the connection error when the server refuses a new one.
        """
        backoff = None
        while True:
            self._check_open()
            session = self.pop_idle()
            if session is not None:
                return session
            backoff = backoff or _Backoff()
            # A session about to come back (its task awaits its last unlock's answer) serves
            # sooner than a new one, and keeps the count down (1,000 tasks on one name).
            if self.count < self.max_sessions and len(self.waiters) >= self.returning:
                session = yield from self._connect(backoff)
            if session is None:
                try:
                    session = yield from self._wait(backoff.delay)
                except WouldBlock:  # driven without waiting for other tasks (acquire_nowait)
                    if backoff.error is None and self.count < self.max_sessions:
                        session = yield from self._connect(backoff)  # not one coming back
                    if session is None:
                        if backoff.error is not None:  # why it would have to wait
                            raise backoff.error from None
                        raise
            if session is not None:
                return session

    def _connect(self, backoff: _Backoff) -> Steps[Session | None]:
        """A new session, or None after a transient failure (wait ``backoff.delay`` then)."""
        self.count += 1
        try:
            return (yield from Session.connect_steps(self.dsn, owner_prefix(), self.settings))
        except SessionLost as exc:
            self._uncount()
            if not backoff.retry(exc, alone=not self.count):
                raise
            return None
        except BaseException:
            self._uncount()
            raise

    def _wait(self, delay: float) -> Steps[Session | None]:
        """Wait for a session handed over by :meth:`checkin`, or a free slot (None), or, with
        ``delay``, the time to try connecting again (None)."""
        waiter = _PoolWaiter()
        self.waiters.append(waiter)
        try:
            # a session of our own comes back, or (with a delay) it is time to try again
            yield waiter.event, None, delay or None, False
            if not waiter.event.is_set():
                self.waiters.remove(waiter)
        except BaseException:
            if waiter.session is not None:
                self.checkin(waiter.session)
            else:
                try:
                    self.waiters.remove(waiter)
                except ValueError:  # woken for a free slot: pass the wake-up on
                    self._wake()
            raise
        return waiter.session

    def pop_idle(self) -> Session | None:
        while self.idle:
            session, _ = self.idle.pop()
            if not session.closed:
                try:
                    session.poll()  # zero round trips: a backend ended while pooled shows here
                except SessionLost:
                    pass
            if not session.closed:
                return session
            self.count -= 1  # closed while pooled (terminated, server restarted, bad unlock)
        return None

    def checkin(self, session: Session) -> None:
        """A session whose task holds and awaits nothing: to a waiting task, or pooled."""
        session.unwatch()
        if session.closed or self.closed:
            self.discard(session)
            return
        if self.waiters:
            waiter = self.waiters.popleft()
            waiter.session = session
            waiter.event.set()
            return
        self.idle.append((session, time.monotonic()))
        self._on_idle()

    def returned(self) -> None:
        """A session counted in ``returning`` was checked in, or lost: a checkout that waited
        for it in vain (the session was lost) tries again."""
        self.returning -= 1
        if len(self.waiters) > self.returning:
            self._wake()

    def discard(self, session: Session | None) -> None:
        """Close a session that is not pooled, if any (the server releases all it held)."""
        if session is not None:
            session.close()
            self._uncount()

    def _uncount(self) -> None:
        self.count -= 1
        self._wake()

    def _wake(self) -> None:
        if self.waiters:
            self.waiters.popleft().event.set()

    # -- idle sessions ----------------------------------------------------------------------------

    def next_expiry(self) -> float | None:
        """When the oldest idle session is to be closed (``time.monotonic()``), if any."""
        return self.idle[0][1] + self.idle_timeout if self.idle else None

    def close_idle(self, now: float) -> None:
        while self.idle and now - self.idle[0][1] >= self.idle_timeout:
            session, _ = self.idle.pop(0)
            session.close()
            self.count -= 1

    def reset(self) -> None:
        """Moved to a new event loop while idle: the old loop's sessions go."""
        for session, _ in self.idle:
            session.close()
        self.idle.clear()
        self.count = 0
        self.waiters.clear()

    def close(self) -> None:
        """The lock space closes: idle sessions close, waiting checkouts wake (and raise)."""
        self.closed = True
        while self.idle:
            self.idle.pop()[0].close()
            self.count -= 1
        while self.waiters:
            self.waiters.popleft().event.set()
