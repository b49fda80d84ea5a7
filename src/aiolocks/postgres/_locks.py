"""``PostgresLocks``: aiolocks' lock shapes over PostgreSQL session-level advisory locks.

How it works, in short:

* A lock name maps to a 64-bit advisory-lock key (a keyed blake2b hash of kind, namespace and
  name); a names table turns the astronomically rare collision into a loud error and lets
  :meth:`PostgresLocks.snapshot` show names.
* One task = one server session while it holds or waits on any lock of the lock space, so the
  server's FIFO queue (with writer preference) and its deadlock detector see one task as one
  session.  Sessions come from a private pool and are returned when the task holds nothing.
* Re-entrancy is counted in the client: the same (key, mode) is never taken twice in one server
  session.  After *any* failure of a lock statement (cancellation, deadlock, lost connection)
  one shielded unlock of exactly that (key, mode) runs on the same session, so a lock granted
  just as the caller was cancelled is never left behind ("grant-then-cancel"); if that unlock
  fails, the session is closed and the server drops its locks.
* A heartbeat (a system task, alive only while holds exist) checks the sessions of holders and
  reports a lost hold (:class:`~aiolocks.LockLostError`), cancelling the holder's ``async with``
  body by default.

Invariants (per lock space):
    _tasks[t].session is bound to task t only; a task's session never waits in the pool
    a _Hold with server_x / server_s set is held by that task's session on the server, unless
      the hold is marked lost
    _held_keys == number of _Hold entries over all tasks
    every idle (pooled) session holds nothing on the server once its queued statements ran
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, cast, final

import anyio
import anyio.lowlevel
from anyio import LockStatistics, WouldBlock

from .._backend import (
    TRIO,
    asyncio_schedule_point,
    resolve_task,
    task_info,
    task_name,
    task_of,
    thread_mark,
    unwatch,
    watch,
)
from .._common import held_checkpoint, no_sync_with
from .._exceptions import DeadlockError, LockLostError
from .._lock import Lock
from .._types import RWLockStatistics
from ._session import Pending, ServerError, Session, SessionLost

__all__ = [
    "PgHolder",
    "PgLockInfo",
    "PgWaiter",
    "PostgresLock",
    "PostgresLocks",
    "PostgresRWLock",
    "PostgresReadLock",
    "PostgresWriteLock",
    "owner_prefix",
]

X, S = 0, 1  # exclusive, shared
_LOCK, _RWLOCK = "lock", "rwlock"

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
)
#: Without a session of its own to wait for, a checkout retries transient failures this long.
_CONNECT_RETRY = 30.0

#: Bound on the shielded clean-up after a failed lock statement, and on a release's wait.
_RECOVERY_TIMEOUT = 10.0
#: acquire_nowait() blocks the event loop for one round trip, at most this long in all.
_NOWAIT_TIMEOUT = 5.0
#: Bound on delivering a cancel request for a waiting lock statement; past it the network or
#: the server is taken for gone and the session is closed instead (the server then drops the
#: request).  A waiter timed out during a network cut returns this long after its deadline.
_CANCEL_TIMEOUT = 0.5

_SQL_LOCK_X = b"SELECT pg_advisory_lock($1), nextval($2::regclass)"
_SQL_LOCK_S = b"SELECT pg_advisory_lock_shared($1)"
_SQL_LOCK_X_NAMED = (
    b"SELECT set_config('application_name', $3, false), pg_advisory_lock($1), nextval($2::regclass)"
)
_SQL_LOCK_S_NAMED = b"SELECT set_config('application_name', $2, false), pg_advisory_lock_shared($1)"
_SQL_TRY_X = b"SELECT CASE WHEN pg_try_advisory_lock($1) THEN nextval($2::regclass) END"
_SQL_TRY_S = b"SELECT pg_try_advisory_lock_shared($1)"
_SQL_UNLOCK = (b"SELECT pg_advisory_unlock($1)", b"SELECT pg_advisory_unlock_shared($1)")
_SQL_DOWNGRADE = b"SELECT pg_advisory_lock_shared($1), pg_advisory_unlock($1)"
_SQL_UNLOCK_ALL = b"SELECT pg_advisory_unlock_all()"
_SQL_PING = b"SELECT 1"
_SQL_REGISTER = (
    b"WITH ins AS (INSERT INTO aiolocks_names (key, namespace, kind, name) "
    b"VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING RETURNING namespace, kind, name) "
    b"SELECT namespace, kind, name FROM ins UNION ALL "
    b"SELECT namespace, kind, name FROM aiolocks_names WHERE key = $1"
)
_SQL_NAMES = b"SELECT key, namespace, kind, name FROM aiolocks_names WHERE key = ANY($1::bigint[])"
_SQL_SETUP = """DO $aiolocks$
BEGIN
    PERFORM pg_advisory_xact_lock({setup_key});
    CREATE TABLE IF NOT EXISTS aiolocks_names (
        key bigint PRIMARY KEY, namespace text NOT NULL, kind text NOT NULL, name text NOT NULL
    );
    CREATE SEQUENCE IF NOT EXISTS {sequence};
END
$aiolocks$"""
_SQL_SNAPSHOT = b"""
SELECT n.kind, n.name, l.mode, l.granted, l.pid, coalesce(a.application_name, ''),
       CASE WHEN l.granted THEN NULL
            ELSE greatest(0, extract(epoch FROM clock_timestamp() - {waitstart})) END,
       CASE WHEN l.granted THEN NULL ELSE pg_blocking_pids(l.pid) END
FROM pg_locks l
JOIN aiolocks_names n
  ON n.key = ((l.classid::bigint << 32) | l.objid::bigint) AND n.namespace = $1
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY n.kind, n.name, l.granted DESC, {waitstart} NULLS FIRST, l.pid
"""

_DEADLOCK_LOCK_RE = re.compile(rb"advisory lock \[\d+,(\d+),(\d+),1\]")


def _session_settings(heartbeat: float, lease: float | None = None) -> dict[str, str]:
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


# -- names and keys --------------------------------------------------------------------------


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must be a non-empty str")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters (PostgreSQL text cannot)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode (it contains a lone surrogate)") from None
    return value


def _digest(*parts: str, size: int = 8) -> bytes:
    h = hashlib.blake2b(digest_size=size, person=b"aiolocks-pg")
    for part in parts:
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(4, "big"))
        h.update(b)
    return h.digest()


def lock_key(kind: str, namespace: str, name: str) -> int:
    """The 64-bit signed advisory-lock key of a lock (the same in every process)."""
    return int.from_bytes(_digest(kind, namespace, name), "big", signed=True)


_prefix_cache: tuple[int, str] = (-1, "")


def owner_prefix() -> str:
    """The ``application_name`` prefix of this process's lock sessions: ``aiolocks:HOST:PID:``.

    Each lock session's ``application_name`` is this prefix followed by the name of the task it
    serves (cut to PostgreSQL's 63 bytes), so ``pg_stat_activity`` and
    :meth:`PostgresLocks.snapshot` show who holds what.

    .. versionadded:: 0.1
    """
    global _prefix_cache
    pid = os.getpid()
    if _prefix_cache[0] != pid:  # recomputed after a fork
        host = socket.gethostname().split(".")[0][:20]
        _prefix_cache = (pid, f"aiolocks:{host}:{pid}:")
    return _prefix_cache[1]


def _owner_id(task: Any) -> str:
    # application_name keeps 63 bytes: keep the tail of long (trio) task names
    prefix = owner_prefix()
    room = 63 - len(prefix.encode("utf-8"))
    name = task_name(task).encode("utf-8")[-room:].decode("utf-8", "ignore")
    return prefix + name


# -- what the client knows ------------------------------------------------------------------------


@final
class _Hold:
    """What one task holds on one key (client-side counts over at most one server hold per
    mode)."""

    __slots__ = ("key", "lost", "s", "server_s", "server_x", "token", "x")

    def __init__(self, key: int) -> None:
        self.key = key
        self.x = 0  # exclusive levels (re-entrant writes)
        self.s = 0  # shared levels (re-entrant reads, also on top of a write hold)
        self.server_x = False  # the session holds the key exclusively on the server
        self.server_s = False  # the session holds the key shared on the server
        self.token = 0  # fencing token of the exclusive hold
        self.lost: BaseException | None = None  # why the hold was lost, once it was


@final
class _TaskState:
    """A task that holds or waits on locks of the space, and the session serving it."""

    __slots__ = ("holds", "lost", "ping", "ping_at", "session", "task", "waiting", "watch")

    def __init__(
        self, task: Any, session: Session | None, on_lost: Callable[[_TaskState, Any], None]
    ) -> None:
        self.task = task
        self.lost = partial(on_lost, self)  # called with the reason when its session breaks
        self.session = session
        self.holds: dict[int, _Hold] = {}
        self.waiting = 0
        self.watch: Any = None
        self.ping: Pending | None = None
        self.ping_at = 0.0


@final
class _KeyInfo:
    """Local knowledge about one key: which tasks of this process hold or wait for it."""

    __slots__ = ("gate", "readers", "s_waiting", "writer", "x_waiting")

    def __init__(self) -> None:
        self.writer: Any = None
        self.readers: dict[Any, None] = {}  # tasks holding only shared
        self.x_waiting = 0
        self.s_waiting = 0
        #: the local queue in front of the server's: a task that holds nothing waits here
        #: for its turn to wait on the server, so one key costs this process at most one
        #: waiting session however many tasks want it (see _gated)
        self.gate: Lock | None = None

    def idle(self) -> bool:
        return (
            self.writer is None and not self.readers and not self.x_waiting and not self.s_waiting
        )


@final
class _PoolWaiter:
    __slots__ = ("event", "session")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.session: Session | None = None


# -- snapshot dataclasses -------------------------------------------------------------------------


@dataclass(frozen=True)
class PgHolder:
    """A session holding a lock (see :meth:`PostgresLocks.snapshot`).

    Attributes:
        owner: the holder's owner id (``application_name``): ``aiolocks:HOST:PID:TASK`` for
            aiolocks sessions.
        pid: the server process id of the holding session (for ``pg_terminate_backend``).
        mode: ``"exclusive"`` (a ``lock``), ``"write"`` or ``"read"`` (an ``rwlock``).

    .. versionadded:: 0.1
    """

    owner: str
    pid: int
    mode: str


@dataclass(frozen=True)
class PgWaiter:
    """A session waiting for a lock (see :meth:`PostgresLocks.snapshot`).

    Attributes:
        owner: the waiter's owner id (``application_name``).
        pid: the server process id of the waiting session.
        mode: ``"exclusive"``, ``"write"`` or ``"read"``.
        waited: seconds it has waited so far (None on PostgreSQL < 14).
        blocked_by: server process ids of the sessions it waits for (holders, and waiters
            queued ahead of it in a conflicting mode).

    .. versionadded:: 0.1
    """

    owner: str
    pid: int
    mode: str
    waited: float | None
    blocked_by: tuple[int, ...]


@dataclass(frozen=True)
class PgLockInfo:
    """One lock of a namespace that is held or awaited somewhere (see
    :meth:`PostgresLocks.snapshot`).

    Attributes:
        name: the lock's name.
        kind: ``"lock"`` (``pg.lock(name)``) or ``"rwlock"`` (``pg.rwlock(name)``).
        key: its advisory-lock key.
        holders: the sessions holding it.
        waiters: the sessions waiting for it, oldest first.

    .. versionadded:: 0.1
    """

    name: str
    kind: str
    key: int
    holders: tuple[PgHolder, ...]
    waiters: tuple[PgWaiter, ...]


# -- the lock space -------------------------------------------------------------------------------


@final
class PostgresLocks:
    """A space of named locks shared by every process that uses the same server and namespace.

    Backed by PostgreSQL session-level advisory locks: shared and exclusive modes, a FIFO wait
    queue in which a waiting writer holds back later readers, deadlock detection between
    sessions, and release when the holding session dies.  Works on asyncio (also uvloop) and
    trio.

    The space owns private lock sessions (never the application's connection pool) and binds
    one to each task while it holds any of its locks or waits on the server for one.  Tasks
    that hold nothing queue in the process per name (FIFO) before one of them waits on the
    server, so a name costs the process at most one waiting session however many tasks want
    it; sessions are bounded by what is held and contended, not by tasks, and close after
    ``idle_timeout`` seconds unused.  When the server refuses a new session (``too many
    clients``, a restart), a task waits for one of the process's own sessions, or retries
    with backoff for 30 s, within its cancel scope.  A transaction-mode pooler
    (PgBouncer ``pool_mode=transaction``) between the process and the server breaks session
    locks: connect directly or through a session-mode pooler.

    Create it anywhere (a module-level global is fine); it binds to the first event loop that
    uses it, and may move to another loop while no task holds or waits on its locks (it then
    drops its old sessions).  Not thread-safe.

    A task that exits while holding locks (without releasing them) has them released for it:
    its session is reset with ``pg_advisory_unlock_all()`` and goes back to the pool.  Lock
    sessions name themselves in ``application_name`` (``aiolocks:HOST:PID:TASK``, see
    :func:`owner_prefix`), so ``pg_stat_activity`` and :meth:`snapshot` show who holds what.
    The first use of a namespace creates the table ``aiolocks_names`` and a sequence for
    fencing tokens in the current schema (``CREATE`` privilege needed once).

    Args:
        dsn: a libpq connection string or ``postgresql://`` URL.
        namespace: names are unique within a namespace; other namespaces are other locks.
        max_sessions: the most server sessions the space opens at once (the default, 10,
            leaves room for the application's own connections with 8 worker processes on a
            server with PostgreSQL's default ``max_connections`` of 100).  Tasks holding
            locks need one each; count processes times ``max_sessions`` against the server's
            ``max_connections``.
        idle_timeout: seconds after which an unused session is closed (0: at the next check).
        lease: seconds (>= 1; PostgreSQL 14+): the server ends a lock session it has not
            heard from for that long, so a holder that is frozen (SIGSTOP, a long GC pause, a
            VM migration) or cut off from the server loses its locks within ``lease`` seconds
            instead of holding them until TCP keepalive gives up; the heartbeat pings every
            ``lease / 4`` and reports the hold lost after ``lease / 2`` without an answer, before
            the server frees it.  Guard writes with :attr:`PostgresLock.fencing_token`: a
            process that resumes after its lease has to be refused by the store.  None (the
            default): no lease.
        heartbeat: seconds between checks of the holders' sessions (0 disables the heartbeat;
            a loss is then found at release at the latest).
        cancel_on_loss: cancel the ``async with`` body of a hold as soon as the heartbeat finds
            it lost (the body may be acting without the lock); leaving the block then raises
            :class:`~aiolocks.LockLostError`.
        max_held_keys: the most distinct keys this process may hold at once; more raises
            ``RuntimeError`` before the server's shared lock table (about
            ``max_locks_per_transaction * max_connections`` entries for every session) runs out.

    Example::

        locks = PostgresLocks("postgresql://app@db/app", namespace="shop")

        async def refresh_prices():
            async with locks.rwlock("prices").writer:
                ...

    .. versionadded:: 0.1
    """

    __slots__ = (
        "__weakref__",
        "_cancel_on_loss",
        "_closed",
        "_count",
        "_dsn",
        "_hb_interval",
        "_hb_running",
        "_hb_scope",
        "_hb_task",
        "_held_keys",
        "_idle",
        "_idle_timeout",
        "_keys",
        "_lease",
        "_loop",
        "_max_held_keys",
        "_max_sessions",
        "_names",
        "_namespace",
        "_pool_waiters",
        "_registered",
        "_scopes",
        "_sequence",
        "_settings",
        "_setup_done",
        "_tasks",
        "_tid",
        "_views",
    )

    def __init__(
        self,
        dsn: str,
        *,
        namespace: str = "aiolocks",
        max_sessions: int = 10,
        idle_timeout: float = 5.0,
        heartbeat: float = 2.0,
        lease: float | None = None,
        cancel_on_loss: bool = True,
        max_held_keys: int = 10_000,
    ) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str, not {type(dsn).__name__}")
        self._namespace = _check_text(namespace, "namespace")
        if not isinstance(max_sessions, int) or max_sessions < 1:
            raise ValueError("max_sessions must be an int >= 1")
        if not isinstance(idle_timeout, (int, float)) or idle_timeout < 0:
            raise ValueError("idle_timeout must be a number of seconds >= 0")
        if not isinstance(heartbeat, (int, float)) or heartbeat < 0:
            raise ValueError("heartbeat must be a number of seconds >= 0")
        if lease is not None and (not isinstance(lease, (int, float)) or lease < 1):
            raise ValueError(
                "lease must be None or a number of seconds >= 1 (the server frees the locks "
                "of a session it has not heard from for that long)"
            )
        if not isinstance(max_held_keys, int) or max_held_keys < 1:
            raise ValueError("max_held_keys must be an int >= 1")
        if not isinstance(cancel_on_loss, bool):
            raise TypeError("cancel_on_loss must be a bool")
        self._dsn = dsn
        self._max_sessions = max_sessions
        self._hb_interval = float(heartbeat)
        self._idle_timeout = float(idle_timeout)
        self._cancel_on_loss = cancel_on_loss
        self._max_held_keys = max_held_keys
        self._lease = float(lease) if lease is not None else None
        self._settings = _session_settings(self._hb_interval, self._lease)
        self._sequence = "aiolocks_fence_" + _digest(self._namespace, size=8).hex()
        self._loop: Any = None
        self._tid: Any = None
        self._closed = False
        self._idle: list[tuple[Session, float]] = []  # pooled sessions and since when, LIFO
        self._count = 0  # sessions open or being opened
        self._pool_waiters: deque[_PoolWaiter] = deque()
        self._tasks: dict[Any, _TaskState] = {}
        self._keys: dict[int, _KeyInfo] = {}
        self._held_keys = 0
        self._views: dict[tuple[str, str], Any] = {}
        self._scopes: dict[Any, list[tuple[int, anyio.CancelScope]]] = {}  # async with bodies
        self._names: dict[int, tuple[str, str]] = {}  # key -> (kind, name), for messages
        self._registered: set[int] = set()  # keys checked against the names table
        self._setup_done = False
        self._hb_running = False
        self._hb_task: Any = None
        self._hb_scope: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._count} sessions, {len(self._tasks)} tasks"
        return f"<aiolocks.postgres.PostgresLocks namespace={self._namespace!r} {state}>"

    @property
    def namespace(self) -> str:
        """The namespace of this lock space."""
        return self._namespace

    # -- views ------------------------------------------------------------------------------------

    def lock(self, name: str) -> PostgresLock:
        """The mutual-exclusion lock called ``name`` in this namespace (FIFO, not re-entrant).

        Args:
            name: any non-empty str; the same name in any process is the same lock.

        Raises:
            TypeError: ``name`` is not a str.
            ValueError: ``name`` is empty or cannot be stored as PostgreSQL text.
        """
        view = self._views.get((_LOCK, name))
        if view is None:
            view = self._cache_view(_LOCK, name, PostgresLock(self, _check_text(name, "name")))
        return cast("PostgresLock", view)

    def rwlock(self, name: str) -> PostgresRWLock:
        """The readers-writer lock called ``name`` (not the same lock as ``lock(name)``).

        Args:
            name: any non-empty str; the same name in any process is the same lock.

        Raises:
            TypeError: ``name`` is not a str.
            ValueError: ``name`` is empty or cannot be stored as PostgreSQL text.
        """
        view = self._views.get((_RWLOCK, name))
        if view is None:
            view = self._cache_view(_RWLOCK, name, PostgresRWLock(self, _check_text(name, "name")))
        return cast("PostgresRWLock", view)

    def _cache_view(self, kind: str, name: str, view: Any) -> Any:
        # Views hold no state (it all lives here): the same object can serve every call.
        if len(self._views) >= 10_000:
            self._views.clear()
        self._views[(kind, name)] = view
        return view

    def _key_for(self, kind: str, name: str) -> int:
        key = lock_key(kind, self._namespace, name)
        if key not in self._names:
            if len(self._names) > 100_000:  # a process with endless dynamic names
                self._names = {k: self._names[k] for k in self._registered if k in self._names}
                self._registered = set(self._names)
            self._names[key] = (kind, name)
        return key

    # -- tasks, loops and sessions ----------------------------------------------------------------

    def _task(self) -> Any:
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            old = self._loop
            task = resolve_task(self)
            if old is not None and self._loop is not old:
                self._rebind()
        return task

    def _in_use(self) -> bool:
        return bool(self._tasks) or self._count > len(self._idle)

    def _rebind(self) -> None:
        """Moved to a new event loop while idle: the old loop's sessions and heartbeat go."""
        for session, _ in self._idle:
            session.close()
        self._idle.clear()
        self._count = 0
        self._pool_waiters.clear()
        self._hb_running = False
        self._hb_task = None
        self._hb_scope = None

    def _check_open(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError(f"{self!r} is closed")

    async def _checkout(self) -> Session:
        """A session for a task that holds nothing (it may wait for one, holding nothing).

        When the server refuses a new session for a while (full, restarting), the task waits
        for one of the process's own sessions if it has any, else retries with backoff for
        :data:`_CONNECT_RETRY` seconds: a burst of load never turns into a burst of errors.
        """
        backoff, failing_since = 0.0, 0.0
        while True:
            self._check_open()
            session = self._pop_idle()
            if session is not None:
                return session
            if self._count < self._max_sessions:
                self._count += 1
                try:
                    return await Session.connect(self._dsn, owner_prefix(), self._settings)
                except SessionLost as exc:
                    self._count -= 1
                    self._wake_pool_waiter()
                    now = anyio.current_time()
                    failing_since = failing_since or now
                    if not _transient(exc) or (
                        not self._count and now - failing_since > _CONNECT_RETRY
                    ):
                        raise
                    backoff = min(max(backoff * 2, 0.05), 1.0)
                except BaseException:
                    self._count -= 1
                    self._wake_pool_waiter()
                    raise
            waiter = _PoolWaiter()
            self._pool_waiters.append(waiter)
            try:
                if backoff:  # a session of our own comes back, or it is time to try again
                    with anyio.move_on_after(backoff):
                        await waiter.event.wait()
                    if not waiter.event.is_set():
                        self._pool_waiters.remove(waiter)
                        continue
                else:
                    await waiter.event.wait()
            except BaseException:
                if waiter.session is not None:
                    self._checkin(waiter.session)
                else:
                    try:
                        self._pool_waiters.remove(waiter)
                    except ValueError:  # woken for a free slot: pass the wake-up on
                        self._wake_pool_waiter()
                raise
            if waiter.session is not None:
                return waiter.session

    def _checkout_blocking(self, deadline: float) -> Session:
        """A session without awaiting, for :meth:`_View.acquire_nowait` (may connect, until
        ``deadline`` at the latest)."""
        self._check_open()
        session = self._pop_idle()
        if session is not None:
            return session
        if self._count >= self._max_sessions:
            raise WouldBlock  # every session is bound to a task: nothing to try on
        self._count += 1
        try:
            return Session.connect_blocking(self._dsn, owner_prefix(), self._settings, deadline)
        except BaseException:
            self._count -= 1
            raise

    def _pop_idle(self) -> Session | None:
        while self._idle:
            session, _ = self._idle.pop()
            if not session.closed:
                try:
                    session.poll()  # zero round trips: a backend ended while pooled shows here
                except SessionLost:
                    pass
            if not session.closed:
                return session
            self._count -= 1  # closed while pooled (terminated, server restarted, bad unlock)
        return None

    def _checkin(self, session: Session) -> None:
        session.unwatch()
        if session.closed or self._closed:
            session.close()
            self._count -= 1
            self._wake_pool_waiter()
            return
        while self._pool_waiters:
            waiter = self._pool_waiters.popleft()
            waiter.session = session
            waiter.event.set()
            return
        self._idle.append((session, time.monotonic()))
        self._start_maintenance()

    def _wake_pool_waiter(self) -> None:
        if self._pool_waiters:
            self._pool_waiters.popleft().event.set()

    def _bind(self, task: Any, session: Session) -> _TaskState:
        ts = _TaskState(task, session, self._session_lost)
        self._tasks[task] = ts
        ts.watch = watch(self._loop, task, self._task_exited)
        return ts

    def _maybe_unbind(self, ts: _TaskState) -> None:
        """A task that holds and awaits nothing gives its session back to the pool."""
        if ts.holds or ts.waiting:
            return
        if self._tasks.get(ts.task) is ts:
            del self._tasks[ts.task]
        unwatch(ts.task, ts.watch)
        ts.watch = None
        session, ts.session = ts.session, None
        if session is not None:
            self._checkin(session)

    def _task_exited(self, task: Any) -> None:
        """A task exited holding locks without releasing them: they are released now.

        The session is reset (``pg_advisory_unlock_all()``, sent at once) and pooled again.
        """
        ts = self._tasks.pop(task, None)
        if ts is None:
            return
        ts.watch = None
        for hold in list(ts.holds.values()):
            self._forget_hold(ts, hold)
        ts.waiting = 0
        session, ts.session = ts.session, None
        if session is not None and not session.closed:
            try:
                session.send(_SQL_UNLOCK_ALL, None, _close_on_error(session), prepared=True)
            except SessionLost:
                pass
        if session is not None:
            self._checkin(session)

    async def _session_for(self, ts: _TaskState | None, task: Any) -> _TaskState:
        if ts is None:
            session = await self._checkout()
            ts = self._tasks.get(task)
            if ts is None:
                return self._bind(task, session)
            self._checkin(session)  # pragma: no cover - the task cannot bind twice at once
        if ts.session is None or ts.session.closed:
            if ts.session is not None:
                self._drop_session(ts)
            ts.waiting += 1  # while it waits for a new session, it must stay bound
            try:
                ts.session = await self._checkout()
            finally:
                ts.waiting -= 1
        return ts

    def _drop_session(self, ts: _TaskState) -> None:
        session, ts.session = ts.session, None
        if session is not None:
            session.close()
            self._count -= 1
            self._wake_pool_waiter()

    # -- bookkeeping of holds ---------------------------------------------------------------------

    def _key_info(self, key: int) -> _KeyInfo:
        info = self._keys.get(key)
        if info is None:
            info = self._keys[key] = _KeyInfo()
        return info

    def _drop_key_info(self, key: int, info: _KeyInfo) -> None:
        if info.idle():
            self._keys.pop(key, None)

    def _update_key_info(self, task: Any, hold: _Hold) -> None:
        info = self._key_info(hold.key)
        if hold.lost is not None:  # a lost hold is held by nobody, though not yet released
            if info.writer is task:
                info.writer = None
            info.readers.pop(task, None)
        elif hold.x:
            info.writer = task
            info.readers.pop(task, None)
        else:
            if info.writer is task:
                info.writer = None
            if hold.s:
                info.readers[task] = None
            else:
                info.readers.pop(task, None)
        self._drop_key_info(hold.key, info)

    def _forget_hold(self, ts: _TaskState, hold: _Hold) -> None:
        hold.x = hold.s = 0
        hold.server_x = hold.server_s = False
        if ts.holds.pop(hold.key, None) is not None:
            self._held_keys -= 1
            if not ts.holds and ts.session is not None:
                ts.session.unwatch()
        self._update_key_info(ts.task, hold)

    def _session_lost(self, ts: _TaskState, reason: BaseException) -> None:
        """The task's session is gone: every hold of it is lost; bodies are cancelled."""
        self._drop_session(ts)
        self._setup_done = False  # maybe a new server: check the table and sequence again
        for hold in ts.holds.values():
            if hold.lost is None and (hold.server_x or hold.server_s):
                hold.lost = reason
                hold.server_x = hold.server_s = False
                self._update_key_info(ts.task, hold)
                if self._cancel_on_loss:
                    for key, scope in self._scopes.get(ts.task, ()):
                        if key == hold.key:
                            scope.cancel()

    # -- acquiring --------------------------------------------------------------------------------

    async def _acquire(self, view: _View, mode: int) -> Any:
        self._check_open()
        task = self._task()
        key = view._key
        ts = self._tasks.get(task)
        hold = ts.holds.get(key) if ts is not None else None
        if hold is not None and (hold.x or hold.s):
            assert ts is not None
            self._reenter(ts, view, hold, mode)
            if mode == X:
                hold.x += 1
            else:
                hold.s += 1
            await held_checkpoint(self._loop, self._undo_level(view, mode), task)
            return task
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._held_keys >= self._max_held_keys and hold is None:
            raise RuntimeError(
                f"this process holds {self._held_keys} PostgreSQL advisory locks already "
                f"(max_held_keys={self._max_held_keys}); more could exhaust the server's "
                "shared lock table and make other sessions fail"
            )
        info = self._key_info(key)
        if mode == X:
            info.x_waiting += 1
        else:
            info.s_waiting += 1
        try:
            async with self._gated(ts, [info], view):
                ts = await self._session_for(ts, task)
                ts.waiting += 1
                try:
                    try:
                        token = await self._lock_statement(ts, view, mode)
                    except SessionLost:
                        # The session died (its locks with it): a new acquisition reconnects
                        # transparently, once.
                        ts = await self._session_for(ts, task)
                        token = await self._lock_statement(ts, view, mode)
                finally:
                    ts.waiting -= 1
        except BaseException:
            if ts is not None:
                self._maybe_unbind(ts)
            raise
        finally:
            if mode == X:
                info.x_waiting -= 1
            else:
                info.s_waiting -= 1
            self._drop_key_info(key, info)
        self._record(ts, key, mode, token)
        # The answer often arrives before the first wait: keep acquire() a schedule point.  A
        # cancellation delivered there gives the lock back, and the unlock is awaited before
        # the cancellation propagates: a cancelled acquire never leaves the lock held.
        try:
            await _schedule_point(self._loop)
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await self._release_and_wait(view, mode)
                except LockLostError:
                    pass
            raise
        return task

    def _gated(self, ts: _TaskState | None, infos: list[_KeyInfo], view: _View) -> _Gates:
        """The local queue a task waits in before it waits on the server, for each key of
        ``infos`` (ascending keys).

        Only a task that holds nothing queues here: it costs no session until its turn, and
        nothing can wait for it, so the gates never hide a deadlock from the server's
        detector (a holder goes straight to the server with the session it has).
        """
        if ts is not None and ts.holds:
            return _NO_GATES
        gates = []
        for info in infos:
            if info.gate is None:
                info.gate = Lock(fast_acquire=True, name=f"aiolocks.postgres {view._describe()}")
            gates.append(info.gate)
        return _Gates(gates)

    def _undo_level(self, view: _View, mode: int) -> Any:
        def undo(task: Any) -> None:  # cancelled at the checkpoint after a re-entrant grant
            try:
                self._release(view, mode)
            except LockLostError:
                pass

        return undo

    def _reenter(self, ts: _TaskState, view: _View, hold: _Hold, mode: int) -> None:
        """A task that already holds ``hold`` asks for ``mode``: it gets it at once
        (client-side count), or this raises."""
        self._check_alive(ts)
        if hold.lost is not None:
            raise LockLostError(f"{view!r} was lost before this re-entrant acquire") from hold.lost
        if view._kind == _LOCK:
            raise DeadlockError(f"{view!r} is already held by this task (it is not re-entrant)")
        if mode == S or hold.x:
            return  # reads are re-entrant, also on top of a write hold; writes are re-entrant
        raise DeadlockError(
            f"{view!r}: this task holds the read lock and asks for the write lock; a read-to-write "
            "upgrade can deadlock (two readers upgrading wait for each other forever). Release "
            "the read lock first."
        )

    def _check_alive(self, ts: _TaskState) -> None:
        """Zero round trips: has the server already told us the session is gone?"""
        session = ts.session
        if session is not None and not session.reading:
            try:
                session.poll()
            except SessionLost as exc:
                self._session_lost(ts, exc)

    def _record(self, ts: _TaskState, key: int, mode: int, token: int) -> None:
        hold = ts.holds.get(key)
        if hold is None:
            hold = ts.holds[key] = _Hold(key)
            self._held_keys += 1
        if mode == X:
            hold.x = 1
            hold.server_x = True
            hold.token = token
        else:
            hold.s = 1
            hold.server_s = True
        self._update_key_info(ts.task, hold)
        session = ts.session
        if session is not None:  # a terminated backend or a shutdown is known at once
            session.watch(self._loop, ts.lost)
        if not self._hb_running and (self._hb_interval > 0 or self._lease):
            self._start_maintenance()

    def _prefix_statements(self, session: Session, view: _View) -> Pending | None:
        """Send what must run before the first lock statement of a name (same round trip).

        Returns the pending registration of the name, to be checked with
        :meth:`_check_registration` once the lock statement has its answer.
        """
        if not self._setup_done:
            # every task that finds the setup unconfirmed sends it (it is idempotent, and
            # serialized on the server): a lock statement must never run before it
            session.send(self._setup_sql(), None, self._setup_finished)
        if view._key in self._registered:
            return None
        return session.send(
            _SQL_REGISTER,
            [str(view._key).encode(), self._namespace.encode(), view._kind.encode(),
             view._name.encode()],
            prepared=True,
        )  # fmt: skip

    def _setup_sql(self) -> bytes:
        setup_key = lock_key("setup", "", "aiolocks_names")
        return _SQL_SETUP.format(setup_key=setup_key, sequence=self._sequence).encode()

    def _setup_finished(self, pending: Pending) -> None:
        if pending.error is None:
            self._setup_done = True

    def _lock_sql(self, ts: _TaskState, key: int, mode: int) -> tuple[bytes, list[bytes | None]]:
        session = ts.session
        assert session is not None
        k = str(key).encode()
        if session.owner is not ts.task:
            session.owner = ts.task
            name = _owner_id(ts.task).encode()
            if mode == X:
                return _SQL_LOCK_X_NAMED, [k, self._sequence.encode(), name]
            return _SQL_LOCK_S_NAMED, [k, name]
        if mode == X:
            return _SQL_LOCK_X, [k, self._sequence.encode()]
        return _SQL_LOCK_S, [k]

    async def _lock_statement(self, ts: _TaskState, view: _View, mode: int) -> int:
        """Take (key, mode) on the task's session; the grant-then-cancel protocol on failure."""
        session = ts.session
        assert session is not None
        # Earlier statements (a release's unlock) may still be unanswered: the lock statement
        # is pipelined behind them (one round trip), and their answers are read first.
        registration = self._prefix_statements(session, view)
        sql, params = self._lock_sql(ts, view._key, mode)
        pending = None
        try:
            pending = session.send(sql, params, prepared=True)
            await session.wait(pending)
            value = pending.value(2 if sql is _SQL_LOCK_X_NAMED else 1) if mode == X else None
            self._check_registration(view, registration)
        except BaseException as exc:
            await self._undo(ts, [(view._key, mode)], pending)
            translated = await self._translate(exc, view, ts)
            if translated is exc:
                raise
            raise translated from exc
        return int(value) if value is not None else 0

    def _check_registration(self, view: _View, pending: Pending | None) -> None:
        if pending is None:
            return
        if pending.error is not None:
            raise pending.error
        res = pending.result
        if res is not None and res.ntuples:
            got = tuple((res.get_value(0, c) or b"").decode() for c in range(3))
            want = (self._namespace, view._kind, view._name)
            if got != want:
                raise RuntimeError(
                    f"lock key collision: {view._kind} {view._name!r} in namespace "
                    f"{self._namespace!r} has the same 64-bit key ({view._key}) as {got[1]} "
                    f"{got[2]!r} in namespace {got[0]!r}; rename one of them"
                )
        self._registered.add(view._key)

    async def _undo(
        self, ts: _TaskState, members: list[tuple[int, int]], target: Pending | None
    ) -> None:
        """After any failure of a lock statement (``target``): one shielded unlock of exactly
        its (key, mode) pairs on the same session (true means it had been granted: now
        undone).  If that fails, the session is closed: the server then drops all it held."""
        session = ts.session
        if session is None or session.closed:
            if session is not None:
                self._session_lost(ts, SessionLost("the connection to PostgreSQL was lost"))
            return
        if len(members) == 1:
            sql, prepared = _SQL_UNLOCK[members[0][1]], True
        else:
            parts = [
                f"pg_advisory_unlock{'_shared' if mode == S else ''}(${i})"
                for i, (_, mode) in enumerate(members, 1)
            ]
            sql, prepared = ("SELECT " + ", ".join(parts)).encode(), False
        ok = False
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + _RECOVERY_TIMEOUT
            try:
                await _cancel_and_drain(session, target)
                params = [str(key).encode() for key, _ in members]
                pending = session.send(sql, params, prepared=prepared)
                await session.wait(pending)
                pending.value()
                ok = True
            except Exception:
                ok = False
        if not ok:
            self._session_lost(
                ts, SessionLost("the lock session failed while cleaning up a failed acquire")
            )

    async def _translate(self, exc: BaseException, view: _View, ts: _TaskState) -> BaseException:
        if isinstance(exc, ServerError) and exc.sqlstate in ("42P01", "3F000"):
            # the names table or the token sequence is gone (a restore, a failover, a dropped
            # schema): the next acquisition sets them up again
            self._setup_done = False
            self._registered.clear()
        if isinstance(exc, ServerError) and exc.sqlstate == "40P01":
            names = await self._cycle_names(exc, ts)
            return DeadlockError(
                f"{view!r}: PostgreSQL detected a deadlock between sessions and chose this "
                f"task's request as the victim; locks in the cycle: {names}"
            )
        return exc

    async def _cycle_names(self, exc: ServerError, ts: _TaskState) -> str:
        """The locks named in a deadlock report (keys of other processes from the table)."""
        keys: list[int] = []
        for hi, lo in _DEADLOCK_LOCK_RE.findall(exc.detail.encode()):
            key = int.from_bytes(((int(hi) << 32) | int(lo)).to_bytes(8, "big"), "big", signed=True)
            if key not in keys:
                keys.append(key)
        unknown = [key for key in keys if key not in self._names]
        session = ts.session
        if unknown and session is not None and not session.closed:
            with anyio.move_on_after(2):
                try:
                    array = "{" + ",".join(map(str, unknown)) + "}"
                    pending = await session.execute(_SQL_NAMES, [array.encode()])
                    res = pending.result
                    for r in range(res.ntuples if res is not None and not pending.error else 0):
                        assert res is not None
                        key_b, ns_b, kind_b, name_b = (res.get_value(r, c) for c in range(4))
                        if (ns_b or b"").decode() == self._namespace:
                            self._names[int(key_b or 0)] = (
                                (kind_b or b"").decode(),
                                (name_b or b"").decode(),
                            )
                except SessionLost:
                    pass
        names = []
        for key in keys:
            known = self._names.get(key)
            names.append(f"{known[0]} {known[1]!r}" if known else f"advisory key {key}")
        return ", ".join(names) or exc.detail or "(unknown)"

    def _acquire_nowait(self, view: _View, mode: int) -> None:
        self._check_open()
        task = self._task()
        key = view._key
        ts = self._tasks.get(task)
        hold = ts.holds.get(key) if ts is not None else None
        if hold is not None and (hold.x or hold.s):
            assert ts is not None
            self._reenter(ts, view, hold, mode)
            if mode == X:
                hold.x += 1
            else:
                hold.s += 1
            return
        info = self._keys.get(key)
        if info is not None:  # refusals that need no round trip
            if info.writer is not None and info.writer is not task:
                raise WouldBlock
            if mode == X and (info.readers or info.x_waiting or info.s_waiting):
                raise WouldBlock
            if mode == S and info.x_waiting:
                raise WouldBlock
        if self._held_keys >= self._max_held_keys and hold is None:
            raise RuntimeError(
                f"this process holds {self._held_keys} PostgreSQL advisory locks already "
                f"(max_held_keys={self._max_held_keys})"
            )
        deadline = time.monotonic() + _NOWAIT_TIMEOUT
        if ts is None:
            ts = self._bind(task, self._checkout_blocking(deadline))
        elif ts.session is None or ts.session.closed:
            if ts.session is not None:
                self._drop_session(ts)
            ts.session = self._checkout_blocking(deadline)
        try:
            token = self._try_lock_blocking(ts, view, mode, deadline)
        except BaseException:
            self._maybe_unbind(ts)
            raise
        self._record(ts, key, mode, token)

    def _try_lock_blocking(self, ts: _TaskState, view: _View, mode: int, deadline: float) -> int:
        session = ts.session
        assert session is not None
        k = str(view._key).encode()
        try:
            session.wait_blocking(None, deadline)  # earlier results first
            registration = self._prefix_statements(session, view)
            if session.owner is not ts.task:
                session.owner = ts.task
                session.send(
                    b"SELECT set_config('application_name', $1, false)",
                    [_owner_id(ts.task).encode()],
                )
            if mode == X:
                pending = session.send(_SQL_TRY_X, [k, self._sequence.encode()], prepared=True)
            else:
                pending = session.send(_SQL_TRY_S, [k], prepared=True)
            session.wait_blocking(pending, deadline)
            value = pending.value()
            self._check_registration(view, registration)
        except BaseException as exc:
            self._undo_blocking(ts, view._key, mode, deadline)
            if isinstance(exc, TimeoutError):
                raise WouldBlock from exc
            raise
        if mode == X:
            if value is None:
                raise WouldBlock
            return int(value)
        if value != b"t":
            raise WouldBlock
        return 0

    def _undo_blocking(self, ts: _TaskState, key: int, mode: int, deadline: float) -> None:
        """After any failure of a try-lock: unlock it on the same session by ``deadline``, or
        close the session (the server then drops all it held)."""
        session = ts.session
        if session is None or session.closed:
            if session is not None:
                self._session_lost(ts, SessionLost("the connection to PostgreSQL was lost"))
            return
        try:
            # A try-lock never waits on the server: a statement still unanswered means the
            # server or the network did not answer in time, and a cancel request could only
            # wait for it too.  Closing the session is the undo that never blocks.
            if not session.idle:
                raise TimeoutError
            pending = session.send(_SQL_UNLOCK[mode], [str(key).encode()], prepared=True)
            session.wait_blocking(pending, deadline)
            pending.value()
        except Exception:
            self._session_lost(
                ts, SessionLost("the lock session failed while cleaning up a failed acquire")
            )

    # -- releasing --------------------------------------------------------------------------------

    def _release(self, view: _View, mode: int) -> Pending | None:
        """Release one level; returns the unlock sent to the server, if any (never awaits).

        Raises:
            RuntimeError: the calling task does not hold it (nothing changes).
            LockLostError: the hold had been lost (the local state is cleaned up first).
        """
        task = self._task()
        ts = self._tasks.get(task)
        pending = self._release_level(task, ts, view, mode)
        assert ts is not None
        self._maybe_unbind(ts)
        return pending

    def _release_level(
        self, task: Any, ts: _TaskState | None, view: _View, mode: int
    ) -> Pending | None:
        hold = ts.holds.get(view._key) if ts is not None else None
        if ts is None or hold is None or (hold.x if mode == X else hold.s) == 0:
            raise RuntimeError(
                f"release() of {view!r} by task {task_name(task)!r}: this task does not hold it"
            )
        if mode == X:
            hold.x -= 1
        else:
            hold.s -= 1
        pending: Pending | None = None
        lost = hold.lost
        if lost is None:
            pending = self._sync_server(ts, hold)
            lost = hold.lost
        if not hold.x and not hold.s:
            self._forget_hold(ts, hold)
        else:
            self._update_key_info(task, hold)
        if lost is not None:
            self._maybe_unbind(ts)
            raise LockLostError(f"{view!r}: the lock was lost while held ({lost})") from lost
        return pending

    def _sync_server(self, ts: _TaskState, hold: _Hold) -> Pending | None:
        """Bring the server's holds in line with the client's counts after a release."""
        session = ts.session
        key = str(hold.key).encode()
        if (hold.server_x and not hold.x) or (hold.server_s and not hold.s and not hold.x):
            self._check_alive(ts)  # a hold already known lost is reported as such
            if hold.lost is not None:
                return None
            session = ts.session
        if hold.server_x and not hold.x:
            if hold.s and not hold.server_s:
                sql = _SQL_DOWNGRADE  # stay a reader: take shared before dropping exclusive
                hold.server_s = True
            else:
                sql = _SQL_UNLOCK[X]
            hold.server_x = False
        elif hold.server_s and not hold.s and not hold.x:
            sql = _SQL_UNLOCK[S]
            hold.server_s = False
        else:
            return None
        if session is None or session.closed:
            hold.lost = SessionLost("the connection to PostgreSQL was lost")
            return None
        try:
            return session.send(sql, [key], self._unlock_done(ts, session), prepared=True)
        except SessionLost as exc:
            hold.lost = exc
            self._session_lost(ts, exc)
            return None

    def _unlock_done(self, ts: _TaskState, session: Session) -> Any:
        def on_done(pending: Pending) -> None:
            if pending.error is None:
                return  # false ("was not held") cannot happen on a live session
            # An unlock that failed may have left the lock held: the session must go (the
            # server then drops all it held); whoever still holds something through it lost it.
            if session.closed:
                return
            owner = self._tasks.get(ts.task)
            if owner is not None and owner.session is session:
                self._session_lost(owner, SessionLost("an unlock failed; the session was closed"))
            else:
                session.close()

        return on_done

    async def _release_and_wait(self, view: _View, mode: int) -> None:
        """``__aexit__``: release, then await the unlock's answer (shielded).

        The task keeps its session until the answer is read, so no other task can take the
        session meanwhile.
        """
        task = self._task()
        ts = self._tasks.get(task)
        if ts is not None:
            ts.waiting += 1
        try:
            pending = self._release_level(task, ts, view, mode)
            session = ts.session if ts is not None else None
            if pending is None or session is None:
                return
            if not pending.done:
                try:
                    session.poll()  # the answer is often there already: no shield needed
                except SessionLost:
                    pass
            if not pending.done and not session.closed:
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + _RECOVERY_TIMEOUT
                    try:
                        await session.wait(pending)
                    except SessionLost:
                        pass
            if not pending.done:
                assert ts is not None
                self._session_lost(ts, SessionLost("no answer from PostgreSQL to an unlock"))
                raise LockLostError(f"{view!r}: no answer from PostgreSQL to its release")
            if pending.error is not None or pending.value(0) != b"t":
                raise LockLostError(
                    f"{view!r}: the lock turned out to be lost when it was released"
                ) from pending.error
        finally:
            if ts is not None:
                ts.waiting -= 1
                self._maybe_unbind(ts)

    # -- the heartbeat and the idle sessions ------------------------------------------------------

    def _start_maintenance(self) -> None:
        """Start the system task that checks holders and closes idle sessions, unless it runs
        (it ends by itself when there is nothing left to do)."""
        if self._hb_running or self._closed:
            return
        self._hb_running = True
        if self._loop is TRIO:
            trio = sys.modules["trio"]
            self._hb_task = trio.lowlevel.spawn_system_task(self._maintain, name="aiolocks-pg")
        else:
            self._hb_task = self._loop.create_task(self._maintain())

    async def _maintain(self) -> None:
        """Every ``heartbeat`` seconds while holds exist, checks the sessions of holders; closes
        sessions left idle for ``idle_timeout`` seconds."""
        scope = self._hb_scope = anyio.CancelScope()
        beat = self._hb_interval or float("inf")
        ping_every = self._hb_interval * 3
        ping_timeout = max(self._hb_interval * 2, 1.0)
        if self._lease:
            # a ping reaches the server every lease/4; one unanswered for lease/2 means the
            # hold is lost, before the server (lease after the last ping it got) frees it
            ping_every = self._lease / 4
            ping_timeout = self._lease / 2
            beat = min(beat, ping_every / 2)
        try:
            with scope:
                while not self._closed:
                    holds = beat < float("inf") and any(ts.holds for ts in self._tasks.values())
                    if not holds and not self._idle:
                        break
                    delay = beat
                    if self._idle:
                        expiry = self._idle[0][1] + self._idle_timeout
                        delay = max(0.0, min(beat, expiry - time.monotonic()))
                    await anyio.sleep(delay)
                    now = time.monotonic()
                    self._close_idle(now)
                    if holds:
                        self._tick(now, ping_every, ping_timeout)
        except Exception:  # pragma: no cover - a heartbeat must never crash the event loop
            pass
        finally:
            if self._hb_scope is scope:
                self._hb_scope = None
            self._hb_running = False
            self._hb_task = None

    def _close_idle(self, now: float) -> None:
        while self._idle and now - self._idle[0][1] >= self._idle_timeout:
            session, _ = self._idle.pop(0)
            session.close()
            self._count -= 1

    def _tick(self, now: float, ping_every: float, ping_timeout: float) -> None:
        for ts in list(self._tasks.values()):
            session = ts.session
            if session is None or not ts.holds or session.reading:
                continue  # an owner reading its session finds a loss itself
            try:
                session.poll()
            except SessionLost as exc:
                self._session_lost(ts, exc)
                continue
            ping = ts.ping
            if ping is not None and not ping.done:
                if now - ts.ping_at > ping_timeout:
                    self._session_lost(
                        ts, SessionLost(f"no answer from PostgreSQL in {ping_timeout:g} s")
                    )
            elif now - ts.ping_at >= ping_every:
                try:
                    ts.ping = session.send(_SQL_PING, prepared=True)
                    ts.ping_at = now
                except SessionLost as exc:
                    self._session_lost(ts, exc)

    # -- many at once (LockCollection) ------------------------------------------------------------

    async def _acquire_batch(self, items: Sequence[tuple[_View, bool]]) -> None:
        """Take every ``(view, shared)`` in one statement, in ascending key order; all or none.

        Members the task already holds are re-entered client-side (with the usual rules,
        checked before anything is taken).
        """
        self._check_open()
        task = self._task()
        ts = self._tasks.get(task)
        wanted: dict[int, tuple[_View, int]] = {}
        reentered: list[tuple[_Hold, int]] = []
        for view, shared in items:
            if view._pg is not self:
                raise ValueError(f"{view!r} belongs to another PostgresLocks")
            mode = S if shared else X
            hold = ts.holds.get(view._key) if ts is not None else None
            if hold is not None and (hold.x or hold.s):
                assert ts is not None
                self._reenter(ts, view, hold, mode)
                reentered.append((hold, mode))
                continue
            if view._key in wanted:
                raise ValueError(f"{view!r} appears twice")
            wanted[view._key] = (view, mode)
        await anyio.lowlevel.checkpoint_if_cancelled()
        if not wanted:
            for hold, mode in reentered:
                if mode == X:
                    hold.x += 1
                else:
                    hold.s += 1
            return
        if self._held_keys + len(wanted) > self._max_held_keys:
            raise RuntimeError(f"this process would hold more than {self._max_held_keys} keys")
        order = sorted(wanted)
        infos = [(self._key_info(k), wanted[k][1]) for k in order]
        for info, mode in infos:
            if mode == X:
                info.x_waiting += 1
            else:
                info.s_waiting += 1
        try:
            async with self._gated(ts, [info for info, _ in infos], wanted[order[0]][0]):
                ts = await self._session_for(ts, task)
                ts.waiting += 1
                try:
                    tokens = await self._lock_many_statement(ts, [wanted[k] for k in order])
                finally:
                    ts.waiting -= 1
        except BaseException:
            if ts is not None:
                self._maybe_unbind(ts)
            raise
        finally:
            for (info, mode), key in zip(infos, order, strict=False):
                if mode == X:
                    info.x_waiting -= 1
                else:
                    info.s_waiting -= 1
                self._drop_key_info(key, info)
        for key, token in zip(order, tokens, strict=False):
            self._record(ts, key, wanted[key][1], token)
        for hold, mode in reentered:
            if mode == X:
                hold.x += 1
            else:
                hold.s += 1

    async def _lock_many_statement(
        self, ts: _TaskState, members: list[tuple[_View, int]]
    ) -> list[int]:
        session = ts.session
        assert session is not None
        registrations = [self._prefix_statements(session, view) for view, _ in members]
        parts: list[str] = []
        params: list[bytes | None] = []
        seq = self._sequence.encode()
        if session.owner is not ts.task:
            session.owner = ts.task
            params.append(_owner_id(ts.task).encode())
            parts.append(f"set_config('application_name', ${len(params)}, false)")
        token_cols: list[int | None] = []
        for view, mode in members:
            params.append(str(view._key).encode())
            if mode == X:
                parts.append(f"pg_advisory_lock(${len(params)})")
                params.append(seq)
                parts.append(f"nextval(${len(params)}::regclass)")
                token_cols.append(len(parts) - 1)
            else:
                parts.append(f"pg_advisory_lock_shared(${len(params)})")
                token_cols.append(None)
        sql = ("SELECT " + ", ".join(parts)).encode()
        pending = None
        try:
            pending = session.send(sql, params)
            await session.wait(pending)
            tokens = [int(pending.value(c) or 0) if c is not None else 0 for c in token_cols]
            for (view, _), registration in zip(members, registrations, strict=False):
                self._check_registration(view, registration)
        except BaseException as exc:
            await self._undo(ts, [(v._key, m) for v, m in members], pending)
            translated = await self._translate(exc, members[0][0], ts)
            if translated is exc:
                raise
            raise translated from exc
        return tokens

    # -- inspection -------------------------------------------------------------------------------

    async def snapshot(self) -> list[PgLockInfo]:
        """Holders and waiters of every lock of this namespace, across all processes.

        One query over ``pg_locks`` and ``pg_stat_activity`` (names from the names table).
        A lock that is neither held nor awaited is not listed.

        Returns:
            One :class:`PgLockInfo` per lock, sorted by kind and name.

        .. versionadded:: 0.1
        """
        self._check_open()
        task = self._task()
        ts = self._tasks.get(task)
        borrowed = None
        if ts is not None and ts.session is not None and not ts.session.closed:
            session = ts.session
        else:
            session = borrowed = await self._checkout()
        try:
            if not self._setup_done:
                await session.wait(session.send(self._setup_sql(), None, self._setup_finished))
            waitstart = b"l.waitstart" if session.server_version >= 140000 else b"NULL"
            pending = await session.execute(
                _SQL_SNAPSHOT.replace(b"{waitstart}", waitstart), [self._namespace.encode()]
            )
            if pending.error is not None:
                raise pending.error
            res = pending.result
            rows = []
            for r in range(res.ntuples if res is not None else 0):
                assert res is not None
                rows.append([res.get_value(r, c) for c in range(8)])
        finally:
            if borrowed is not None:
                self._checkin(borrowed)
        return _build_snapshot(rows, self._namespace)

    async def aclose(self) -> None:
        """Close every session of the space: the server releases whatever they held.

        Holds of tasks still inside ``async with`` are lost (their release raises
        :class:`~aiolocks.LockLostError`); new acquisitions raise
        :class:`anyio.ClosedResourceError`.  Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        reason = anyio.ClosedResourceError(f"{self!r} was closed")
        for ts in list(self._tasks.values()):
            if ts.session is not None:
                for hold in ts.holds.values():
                    if hold.lost is None:
                        hold.lost = reason
                        hold.server_x = hold.server_s = False
                        self._update_key_info(ts.task, hold)
                self._drop_session(ts)
        for session, _ in self._idle:
            session.close()
        self._idle.clear()
        while self._pool_waiters:
            self._pool_waiters.popleft().event.set()
        if self._hb_scope is not None:
            self._hb_scope.cancel()
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> PostgresLocks:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@final
class _Gates:
    """Holds the local gates of some keys (core :class:`~aiolocks.Lock` s, so FIFO and
    cancellation-safe) for the body of ``async with``, taken in list order."""

    __slots__ = ("_gates", "_held")

    def __init__(self, gates: list[Lock]) -> None:
        self._gates = gates
        self._held = 0

    async def __aenter__(self) -> None:
        try:
            for gate in self._gates:
                await gate.acquire()
                self._held += 1
        except BaseException:
            self.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        while self._held:
            self._held -= 1
            self._gates[self._held].release()


_NO_GATES = _Gates([])


def _transient(exc: SessionLost) -> bool:
    text = str(exc).lower()
    return any(part in text for part in _TRANSIENT_CONNECT)


def _schedule_point(loop: Any) -> Awaitable[None]:
    """A schedule point and cancel point, as cheap as each backend allows."""
    if loop is TRIO:
        return sys.modules["trio"].lowlevel.checkpoint()  # type: ignore[no-any-return]
    return asyncio_schedule_point()


def _close_on_error(session: Session) -> Any:
    def on_done(pending: Pending) -> None:
        if pending.error is not None:
            session.close()

    return on_done


async def _cancel_and_drain(session: Session, target: Pending | None) -> None:
    """Stop the lock statement ``target`` if it still runs and read every result (call it
    shielded).

    A cancel request hits whatever the backend runs when it arrives, so it is sent only while
    ``target`` is the oldest unanswered statement: earlier ones (a release's unlock) are
    waited for, never cancelled.  A request that arrives between statements is ignored by the
    server, hence the retry.
    """
    session.poll()
    silent: Pending | None = None
    while not session.idle:
        head = session.oldest
        if head is target:
            if not await session.cancel_running(_CANCEL_TIMEOUT):
                # Undeliverable (network cut, server gone, libpq < 17): the statement may wait
                # on forever, so the session goes; the server drops the request and any grant.
                reason = SessionLost("a waiting lock statement could not be cancelled in time")
                session.close(reason)
                raise reason
        elif head is silent:
            # An earlier statement (an unlock, a name's registration: none of them waits on
            # the server) is still unanswered after 0.5 s: the network or the server is gone,
            # and the answers may never come.  The session goes, as above.
            reason = SessionLost("the lock session stopped answering")
            session.close(reason)
            raise reason
        silent = head
        with anyio.move_on_after(0.5):
            await session.wait(head)


_MODE_NAMES = {"ExclusiveLock": "write", "ShareLock": "read"}


def _build_snapshot(rows: list[list[bytes | None]], namespace: str) -> list[PgLockInfo]:
    by_lock: dict[tuple[str, str], tuple[list[PgHolder], list[PgWaiter]]] = {}
    for kind_b, name_b, mode_b, granted_b, pid_b, owner_b, waited_b, blocked_b in rows:
        kind = (kind_b or b"").decode()
        name = (name_b or b"").decode()
        mode = _MODE_NAMES.get((mode_b or b"").decode(), "write")
        if kind == _LOCK:
            mode = "exclusive"
        owner = (owner_b or b"").decode(errors="replace")
        pid = int(pid_b or 0)
        holders, waiters = by_lock.setdefault((kind, name), ([], []))
        if granted_b == b"t":
            holders.append(PgHolder(owner, pid, mode))
        else:
            blocked = tuple(
                int(p) for p in (blocked_b or b"{}").decode().strip("{}").split(",") if p
            )
            waited = float(waited_b) if waited_b is not None else None
            waiters.append(PgWaiter(owner, pid, mode, waited, blocked))
    return [
        PgLockInfo(name, kind, lock_key(kind, namespace, name), tuple(h), tuple(w))
        for (kind, name), (h, w) in by_lock.items()
    ]


# -- the views ------------------------------------------------------------------------------------


class _View:
    """The common lock shape over one (kind, name) of a :class:`PostgresLocks`."""

    __slots__ = ("__weakref__", "_key", "_kind", "_name", "_pg")

    _mode: int = X

    def __init__(self, pg: PostgresLocks, kind: str, name: str, key: int | None = None) -> None:
        self._pg = pg
        self._kind = kind
        self._name = name
        self._key = pg._key_for(kind, name) if key is None else key

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._name

    def _collection_member(self) -> tuple[PostgresLocks, int, bool]:
        """For :class:`aiolocks.LockCollection`: (lock space, key, shared)."""
        return self._pg, self._key, self._mode == S

    @property
    def key(self) -> int:
        """The PostgreSQL advisory-lock key (``pg_locks``: ``classid << 32 | objid``)."""
        return self._key

    def _describe(self) -> str:
        return f"{self._kind}({self._name!r}) of namespace {self._pg._namespace!r}"

    def __repr__(self) -> str:
        info = self._pg._keys.get(self._key)
        if info is None or info.idle():
            state = "not held here"
        else:
            parts = []
            if info.writer is not None:
                parts.append(f"held by task {task_name(info.writer)!r}")
            if info.readers:
                parts.append(f"{len(info.readers)} readers here")
            if info.x_waiting or info.s_waiting:
                parts.append(f"{info.x_waiting + info.s_waiting} waiting here")
            state = ", ".join(parts)
        view = type(self).__name__
        return f"<aiolocks.postgres.{view} {self._describe()} key={self._key} {state}>"

    async def acquire(self) -> None:
        """Acquire the lock, waiting in the server's FIFO queue (a checkpoint).

        Cancellation (a cancel scope, a timeout) never leaves the lock held on the server,
        and never blocks the event loop: the waiting statement is cancelled with libpq's
        non-blocking cancel, and if that cannot reach the server within 0.5 s (network cut)
        the session is closed instead, so a cancelled acquire returns at most about 0.5 s
        after its cancellation (on a server that answers, the clean-up takes a round trip or
        two).

        Raises:
            DeadlockError: the acquisition could never succeed (see the class docs), or
                PostgreSQL found a deadlock between sessions (the message names the locks).
            LockLostError: a re-entrant acquire of a hold that was lost.
            ConnectionError: the server is unreachable (nothing is held).
            anyio.ClosedResourceError: the lock space was closed.
        """
        await self._pg._acquire(self, self._mode)

    def acquire_nowait(self) -> None:
        """Acquire the lock if it is free and nobody waits for it in a conflicting mode.

        Synchronous, so it **blocks the event loop for one round trip** to the server, plus a
        connection on first use: at most 5 s in all, then it gives up holding nothing (the
        session it used is closed, so the server drops what it may have granted).  Refusals
        that local knowledge settles (another task of this process holds the lock or waits
        for it in a conflicting mode) need no round trip.  Like the local locks, it never
        jumps the queue: a waiting writer in any process makes it fail.

        Raises:
            anyio.WouldBlock: the lock is not available now, or the server did not answer
                within the bound (nothing is held).
            DeadlockError: as :meth:`acquire`.
            ConnectionError: no session could be opened within the bound.
        """
        self._pg._acquire_nowait(self, self._mode)

    def release(self) -> None:
        """Release one level of the caller's hold.

        Synchronous, never awaits: the unlock is sent to the server and its answer read
        later (``async with`` waits for it instead).

        Raises:
            RuntimeError: the calling task does not hold it (nothing changes).
            LockLostError: the hold had been lost (session killed, server restarted or
                unreachable); the local state is released all the same.
        """
        self._pg._release(self, self._mode)

    async def __aenter__(self) -> None:
        pg = self._pg
        task = await pg._acquire(self, self._mode)
        if pg._cancel_on_loss:
            # the body runs in a cancel scope that the heartbeat cancels if the hold is lost;
            # __aexit__ exits it (async with guarantees the LIFO order scopes need)
            scope = anyio.CancelScope()
            scope.__enter__()
            stack = pg._scopes.get(task)
            if stack is None:
                stack = pg._scopes[task] = []
            stack.append((self._key, scope))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        pg = self._pg
        swallowed = False
        stack = pg._scopes.get(pg._task()) if pg._cancel_on_loss else None
        if stack:
            for i in range(len(stack) - 1, -1, -1):
                if stack[i][0] == self._key:
                    scope = stack.pop(i)[1]
                    if not stack:
                        del pg._scopes[pg._task()]
                    swallowed = bool(scope.__exit__(exc_type, exc, tb))
                    break
        await pg._release_and_wait(self, self._mode)
        return swallowed

    def __enter__(self) -> None:
        no_sync_with(self)

    def __exit__(self, *args: object) -> None:
        no_sync_with(self)


def _token_of(view: _View) -> int:
    pg = view._pg
    ts = pg._tasks.get(pg._task())
    hold = ts.holds.get(view._key) if ts is not None else None
    if hold is None or not hold.x:
        raise RuntimeError(f"fencing_token of {view!r}: this task does not hold it exclusively")
    if hold.lost is not None:
        raise LockLostError(
            f"fencing_token of {view!r}: the lock was lost ({hold.lost}); another process may "
            "hold it now, so this token must not be used"
        ) from hold.lost
    return hold.token


@final
class PostgresLock(_View):
    """A mutual-exclusion lock shared across processes: ``pg.lock(name)``.

    The rules of :class:`aiolocks.Lock`: FIFO (PostgreSQL's wait queue), not re-entrant (the
    holder asking again gets :class:`~aiolocks.DeadlockError` at once).  ``locked()`` and
    ``statistics()`` report what this process knows: holders and waiters among its own tasks
    (see :meth:`PostgresLocks.snapshot` for every process).

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __init__(self, pg: PostgresLocks, name: str) -> None:
        super().__init__(pg, _LOCK, name)

    @property
    def fencing_token(self) -> int:
        """A number that is strictly greater at each acquisition of this lock, in any process.

        Pass it along with writes to another system that refuses tokens older than the last
        one it saw: a holder that lost the lock without knowing (paused, partitioned) cannot
        then overwrite newer data.  Drawn from a PostgreSQL sequence of the namespace, so
        tokens are strictly increasing (also across server crashes) but not consecutive.

        Raises:
            RuntimeError: the calling task does not hold the lock.
        """
        return _token_of(self)

    def locked(self) -> bool:
        """True if a task of this process holds the lock (local knowledge only)."""
        info = self._pg._keys.get(self._key)
        return info is not None and info.writer is not None

    def statistics(self) -> LockStatistics:
        """anyio's :class:`~anyio.LockStatistics`, for the tasks of this process.

        Fields: ``locked`` (a task of this process holds it), ``owner``
        (:class:`anyio.TaskInfo` of that task, or None), ``tasks_waiting`` (tasks of this
        process waiting for it).
        """
        info = self._pg._keys.get(self._key)
        if info is None:
            return LockStatistics(False, None, 0)
        return LockStatistics(
            info.writer is not None, task_info(info.writer), info.x_waiting + info.s_waiting
        )


@final
class PostgresRWLock:
    """A readers-writer lock shared across processes: ``pg.rwlock(name)``.

    Use its views :attr:`reader` and :attr:`writer`.  The rules of :class:`aiolocks.RWLock`
    that hold across processes: many readers or one writer; FIFO with writer preference
    (PostgreSQL's queue: a waiting writer holds back readers that arrive after it); reads
    and writes re-entrant per task; a write holder may take read at once, and releasing the
    write first leaves it a reader; read-to-write upgrade raises
    :class:`~aiolocks.DeadlockError` at once (nothing changes).  There is no ``upgradable``
    view and no optimistic reads across processes.

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "_name", "_pg", "_reader", "_writer")

    def __init__(self, pg: PostgresLocks, name: str) -> None:
        self._pg = pg
        self._name = name
        self._reader = PostgresReadLock(pg, name)
        self._writer = PostgresWriteLock(pg, name, self._reader._key)

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._name

    @property
    def reader(self) -> PostgresReadLock:
        """The shared (read) side."""
        return self._reader

    @property
    def writer(self) -> PostgresWriteLock:
        """The exclusive (write) side."""
        return self._writer

    def statistics(self) -> RWLockStatistics:
        """:class:`aiolocks.RWLockStatistics` for the tasks of this process (``version`` is 0)."""
        return self._reader.statistics()

    def __repr__(self) -> str:
        return repr(self._reader).replace("PostgresReadLock", "PostgresRWLock", 1)


def _rw_statistics(view: _View) -> RWLockStatistics:
    info = view._pg._keys.get(view._key)
    if info is None:
        return RWLockStatistics(0, None, 0, 0, 0)
    return RWLockStatistics(
        len(info.readers), task_info(info.writer), info.s_waiting, info.x_waiting, 0
    )


@final
class PostgresReadLock(_View):
    """The shared side of a :class:`PostgresRWLock` (``pg.rwlock(name).reader``).

    .. versionadded:: 0.1
    """

    __slots__ = ()
    _mode = S

    def __init__(self, pg: PostgresLocks, name: str) -> None:
        super().__init__(pg, _RWLOCK, name)

    def locked(self) -> bool:
        """True if a task of this process holds the read lock (local knowledge only)."""
        info = self._pg._keys.get(self._key)
        return info is not None and bool(info.readers)

    def statistics(self) -> RWLockStatistics:
        """:class:`aiolocks.RWLockStatistics` for the tasks of this process.

        Fields: ``readers`` (tasks of this process holding only read), ``writer``
        (:class:`anyio.TaskInfo` of the task of this process holding write, or None),
        ``readers_waiting`` / ``writers_waiting`` (tasks of this process waiting), ``version``
        (always 0: no optimistic reads across processes).
        """
        return _rw_statistics(self)


@final
class PostgresWriteLock(_View):
    """The exclusive side of a :class:`PostgresRWLock` (``pg.rwlock(name).writer``).

    .. versionadded:: 0.1
    """

    __slots__ = ()
    _mode = X

    def __init__(self, pg: PostgresLocks, name: str, key: int | None = None) -> None:
        super().__init__(pg, _RWLOCK, name, key)

    @property
    def fencing_token(self) -> int:
        """Strictly increasing per name across all processes (see
        :attr:`PostgresLock.fencing_token`).

        Raises:
            RuntimeError: the calling task does not hold the write lock.
        """
        return _token_of(self)

    def locked(self) -> bool:
        """True if a task of this process holds the write lock (local knowledge only)."""
        info = self._pg._keys.get(self._key)
        return info is not None and info.writer is not None

    def statistics(self) -> LockStatistics:
        """anyio's :class:`~anyio.LockStatistics` for the tasks of this process.

        Fields: ``locked``, ``owner`` (:class:`anyio.TaskInfo` or None), ``tasks_waiting``
        (tasks of this process waiting for the write lock).
        """
        info = self._pg._keys.get(self._key)
        if info is None:
            return LockStatistics(False, None, 0)
        return LockStatistics(info.writer is not None, task_info(info.writer), info.x_waiting)
