"""Snapshots: who holds and who waits for the locks of a namespace, across all processes.

One query over ``pg_locks`` and ``pg_stat_activity``, names from the names table (see
:mod:`._names`), turned into frozen :class:`PgLockInfo` records.  Read-only: it never takes
or changes a lock, and shows every process's sessions, not only this one's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._names import LOCK, Names, lock_key
from ._session import Session

__all__ = ["PgHolder", "PgLockInfo", "PgWaiter", "take_snapshot"]

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

_MODE_NAMES = {"ExclusiveLock": "write", "ShareLock": "read"}


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


async def take_snapshot(session: Session, names: Names) -> list[PgLockInfo]:
    """Run the snapshot query on ``session`` (setting the namespace up first if needed)."""
    if not names.setup_done:
        await session.wait(session.send(names.setup_sql(), None, names.setup_finished))
    waitstart = b"l.waitstart" if session.server_version >= 140000 else b"NULL"
    pending = await session.execute(
        _SQL_SNAPSHOT.replace(b"{waitstart}", waitstart), [names.namespace.encode()]
    )
    if pending.error is not None:
        raise pending.error
    res = pending.result
    rows = []
    for r in range(res.ntuples if res is not None else 0):
        assert res is not None
        rows.append([res.get_value(r, c) for c in range(8)])
    return _build(rows, names.namespace)


def _build(rows: list[list[bytes | None]], namespace: str) -> list[PgLockInfo]:
    by_lock: dict[tuple[str, str], tuple[list[PgHolder], list[PgWaiter]]] = {}
    for kind_b, name_b, mode_b, granted_b, pid_b, owner_b, waited_b, blocked_b in rows:
        kind = (kind_b or b"").decode()
        name = (name_b or b"").decode()
        mode = _MODE_NAMES.get((mode_b or b"").decode(), "write")
        if kind == LOCK:
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
