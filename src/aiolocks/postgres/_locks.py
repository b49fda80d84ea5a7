"""``PostgresLocks``: aiolocks' lock shapes over PostgreSQL session-level advisory locks.

The public face of a lock space; the work is done by layers, each in its own module:

* :mod:`._names`: a lock name's 64-bit key, the names table and the token sequence;
* :mod:`._pool`: the space's private sessions (checkout and checkin, idle close, connect retry);
* :mod:`._state`: what the client knows (holds per task, tasks per key, the local per-name
  queue that keeps waiting sessions to one per name);
* :mod:`._protocol`: the lock and unlock statements and the grant-then-cancel protocol;
* :mod:`._watch`: the maintenance task, pings and lease, session loss and cancel-on-loss;
* :mod:`._engine`: the acquire and release paths over them, one session per busy task;
* :mod:`._views`: the lock objects (``pg.lock(name)``, ``pg.rwlock(name)``);
* :mod:`._snapshot`: who holds and waits, across all processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, cast, final

from ._engine import LockEngine
from ._names import LOCK, RWLOCK, check_text
from ._snapshot import PgLockInfo, take_snapshot
from ._state import S, X
from ._views import PostgresLock, PostgresRWLock, _View

__all__ = ["PostgresLocks"]


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

    __slots__ = ("__weakref__", "_engine", "_views")

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
        namespace = check_text(namespace, "namespace")
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
        self._engine = LockEngine(
            dsn,
            namespace,
            max_sessions=max_sessions,
            idle_timeout=float(idle_timeout),
            heartbeat=float(heartbeat),
            lease=float(lease) if lease is not None else None,
            cancel_on_loss=cancel_on_loss,
            max_held_keys=max_held_keys,
        )
        self._views: dict[tuple[str, str], Any] = {}

    def __repr__(self) -> str:
        return repr(self._engine)

    @property
    def namespace(self) -> str:
        """The namespace of this lock space."""
        return self._engine.names.namespace

    @property
    def _sequence(self) -> str:
        # the namespace's token sequence (a test drops it)
        return self._engine.names.sequence

    # -- views ------------------------------------------------------------------------------------

    def lock(self, name: str) -> PostgresLock:
        """The mutual-exclusion lock called ``name`` in this namespace (FIFO, not re-entrant).

        Args:
            name: any non-empty str; the same name in any process is the same lock.

        Raises:
            TypeError: ``name`` is not a str.
            ValueError: ``name`` is empty or cannot be stored as PostgreSQL text.
        """
        view = self._views.get((LOCK, name))
        if view is None:
            view = self._cache_view(LOCK, name, PostgresLock(self, check_text(name, "name")))
        return cast("PostgresLock", view)

    def rwlock(self, name: str) -> PostgresRWLock:
        """The readers-writer lock called ``name`` (not the same lock as ``lock(name)``).

        Args:
            name: any non-empty str; the same name in any process is the same lock.

        Raises:
            TypeError: ``name`` is not a str.
            ValueError: ``name`` is empty or cannot be stored as PostgreSQL text.
        """
        view = self._views.get((RWLOCK, name))
        if view is None:
            view = self._cache_view(RWLOCK, name, PostgresRWLock(self, check_text(name, "name")))
        return cast("PostgresRWLock", view)

    def _cache_view(self, kind: str, name: str, view: Any) -> Any:
        # Views hold no state (it all lives in the engine): the same object can serve every call.
        if len(self._views) >= 10_000:
            self._views.clear()
        self._views[(kind, name)] = view
        return view

    async def _acquire_batch(self, items: Sequence[tuple[Any, bool]]) -> None:
        """For :class:`aiolocks.LockCollection`: take every ``(view, shared)`` of ``items`` in
        one statement, in ascending key order; all or none."""
        for view, _ in items:
            if not isinstance(view, _View) or view._pg is not self:
                raise ValueError(f"{view!r} belongs to another PostgresLocks")
        await self._engine.acquire([(view, S if shared else X) for view, shared in items])

    # -- inspection -------------------------------------------------------------------------------

    async def snapshot(self) -> list[PgLockInfo]:
        """Holders and waiters of every lock of this namespace, across all processes.

        One query over ``pg_locks`` and ``pg_stat_activity`` (names from the names table).
        A lock that is neither held nor awaited is not listed.

        Returns:
            One :class:`PgLockInfo` per lock, sorted by kind and name.

        .. versionadded:: 0.1
        """
        async with self._engine.session() as session:
            return await take_snapshot(session, self._engine.names)

    async def aclose(self) -> None:
        """Close every session of the space: the server releases whatever they held.

        Holds of tasks still inside ``async with`` are lost (their release raises
        :class:`~aiolocks.LockLostError`); new acquisitions raise
        :class:`anyio.ClosedResourceError`.  Idempotent.
        """
        await self._engine.close()

    async def __aenter__(self) -> PostgresLocks:
        self._engine.check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
