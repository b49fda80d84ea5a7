"""The lock views: the common lock shape over one (kind, name) of a lock space.

``pg.lock(name)`` is a :class:`PostgresLock`; ``pg.rwlock(name)`` a :class:`PostgresRWLock`
whose ``reader`` and ``writer`` are a :class:`PostgresReadLock` and a
:class:`PostgresWriteLock`.  Views hold no state (it all lives in the lock space's
:mod:`._state`), so one object can serve every call; ``locked()``, ``statistics()`` and
``repr()`` report what this process knows.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, final

from anyio import LockStatistics

from .._backend import task_info, task_name
from .._common import no_sync_with
from .._exceptions import LockLostError
from .._types import RWLockStatistics
from ._names import LOCK, RWLOCK
from ._state import S, X

if TYPE_CHECKING:
    from ._locks import PostgresLocks

__all__ = ["PostgresLock", "PostgresRWLock", "PostgresReadLock", "PostgresWriteLock"]


class _View:
    """The common lock shape over one (kind, name) of a :class:`PostgresLocks`."""

    __slots__ = ("__weakref__", "_engine", "_key", "_kind", "_name", "_pg")

    _mode: int = X

    def __init__(self, pg: PostgresLocks, kind: str, name: str, key: int | None = None) -> None:
        self._pg = pg
        self._engine = pg._engine
        self._kind = kind
        self._name = name
        self._key = self._engine.names.key_for(kind, name) if key is None else key

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
        return f"{self._kind}({self._name!r}) of namespace {self._engine.names.namespace!r}"

    def __repr__(self) -> str:
        info = self._engine.ledger.keys.get(self._key)
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
        await self._engine.acquire(((self, self._mode),))

    def acquire_nowait(self) -> None:
        """Acquire the lock if it is free and nobody waits for it in a conflicting mode.

        Synchronous, so it **blocks the event loop for one round trip** to the server, plus a
        connection on first use: a 5 s deadline in all (measured: it returns 5.01 s after it
        started), then it gives up holding nothing (the session it used is closed, so the
        server drops what it may have granted).  Refusals
        that local knowledge settles (another task of this process holds the lock or waits
        for it in a conflicting mode) need no round trip.  Like the local locks, it never
        jumps the queue: a waiting writer in any process makes it fail.

        Raises:
            anyio.WouldBlock: the lock is not available now, or the server did not answer
                within the bound (nothing is held).
            DeadlockError: as :meth:`acquire`.
            ConnectionError: no session could be opened within the bound.
        """
        self._engine.acquire_nowait(self, self._mode)

    def release(self) -> None:
        """Release one level of the caller's hold.

        Synchronous, never awaits: the unlock is sent to the server and its answer read
        later (``async with`` waits for it instead).

        Raises:
            RuntimeError: the calling task does not hold it (nothing changes).
            LockLostError: the hold had been lost (session killed, server restarted or
                unreachable); the local state is released all the same.
        """
        self._engine.release(self, self._mode)

    async def __aenter__(self) -> None:
        engine = self._engine
        task = await engine.acquire(((self, self._mode),))
        engine.watch.enter_body(task, self._key)  # a loss cancels the body (cancel_on_loss)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        engine = self._engine
        task = engine.task()
        swallowed = engine.watch.exit_body(task, self._key, exc_type, exc, tb)
        await engine.release_and_wait(self, self._mode, task)
        return swallowed

    def __enter__(self) -> None:
        no_sync_with(self)

    def __exit__(self, *args: object) -> None:
        no_sync_with(self)


def _token_of(view: _View) -> int:
    hold = view._engine.hold_of(view)
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
        super().__init__(pg, LOCK, name)

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
        info = self._engine.ledger.keys.get(self._key)
        return info is not None and info.writer is not None

    def statistics(self) -> LockStatistics:
        """anyio's :class:`~anyio.LockStatistics`, for the tasks of this process.

        Fields: ``locked`` (a task of this process holds it), ``owner``
        (:class:`anyio.TaskInfo` of that task, or None), ``tasks_waiting`` (tasks of this
        process waiting for it).
        """
        info = self._engine.ledger.keys.get(self._key)
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
    info = view._engine.ledger.keys.get(view._key)
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
        super().__init__(pg, RWLOCK, name)

    def locked(self) -> bool:
        """True if a task of this process holds the read lock (local knowledge only)."""
        info = self._engine.ledger.keys.get(self._key)
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
        super().__init__(pg, RWLOCK, name, key)

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
        info = self._engine.ledger.keys.get(self._key)
        return info is not None and info.writer is not None

    def statistics(self) -> LockStatistics:
        """anyio's :class:`~anyio.LockStatistics` for the tasks of this process.

        Fields: ``locked``, ``owner`` (:class:`anyio.TaskInfo` or None), ``tasks_waiting``
        (tasks of this process waiting for the write lock).
        """
        info = self._engine.ledger.keys.get(self._key)
        if info is None:
            return LockStatistics(False, None, 0)
        return LockStatistics(info.writer is not None, task_info(info.writer), info.x_waiting)
