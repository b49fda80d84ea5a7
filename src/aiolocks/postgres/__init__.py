"""The same locks across processes and hosts, on PostgreSQL advisory locks.

For applications that run several worker processes or hosts (``uvicorn --workers 8``, a fleet
of job runners): an in-process lock protects nothing between them.  A :class:`PostgresLocks`
is a namespace of named locks that every process connected to the same server shares::

    from aiolocks.postgres import PostgresLocks

    locks = PostgresLocks("postgresql://app@db/app", namespace="shop")  # module level is fine

    async def refresh_prices():
        async with locks.rwlock("prices").writer:          # exclusive across every process
            token = locks.rwlock("prices").writer.fencing_token
            await store.write(prices, token=token)          # the store refuses stale tokens

    async def read_prices():
        async with locks.rwlock("prices").reader:           # many readers, in any process
            ...

Guarantees: mutual exclusion between processes; FIFO with writer preference (PostgreSQL's own
wait queue); per-task re-entrancy and :class:`~aiolocks.DeadlockError` with the rules of
:class:`aiolocks.Lock` and :class:`aiolocks.RWLock`, plus ``DeadlockError`` when the server
finds a deadlock between sessions; a cancelled or timed-out acquire never leaves the lock held;
a lock whose holder dies (process killed, connection closed) is released within milliseconds.
A hold that is lost (session terminated, server restarted, network cut) is known within
milliseconds when the server says so (the holder's session is watched), and by default the
holder's ``async with`` body is cancelled; its release raises :class:`~aiolocks.LockLostError`.

Limits: each task that holds a lock uses one server session, and tasks waiting for a name
queue in the process with one session per name on the server (``max_sessions`` caps them;
idle ones close after ``idle_timeout``); a transaction-mode pooler (PgBouncer
``pool_mode=transaction``) breaks session locks; locks do not survive a failover or server
restart (use fencing tokens to guard writes elsewhere); a frozen (SIGSTOP) or partitioned
holder keeps its locks while the server keeps its session: TCP keepalive gives up after
about 25 s when the network is cut, never while the process is only stopped; ``lease=``
bounds both.

Runs on asyncio (also uvloop) and trio; needs ``psycopg`` 3 (``pip install
aiolocks[postgres]``).  For a local development server see :mod:`aiolocks.postgres.testing`.

.. versionadded:: 0.1
"""

from __future__ import annotations

try:
    import psycopg  # noqa: F401
except ImportError as _missing:  # the extra is not installed, or psycopg cannot load libpq
    raise ImportError(
        f"aiolocks.postgres needs psycopg 3: pip install 'aiolocks[postgres]' ({_missing})",
        name=_missing.name,
        path=_missing.path,
    ) from _missing

from ._locks import PostgresLocks
from ._names import owner_prefix
from ._session import ServerError, SessionLost
from ._snapshot import PgHolder, PgLockInfo, PgWaiter
from ._views import PostgresLock, PostgresReadLock, PostgresRWLock, PostgresWriteLock

__all__ = [
    "PgHolder",
    "PgLockInfo",
    "PgWaiter",
    "PostgresLock",
    "PostgresLocks",
    "PostgresRWLock",
    "PostgresReadLock",
    "PostgresWriteLock",
    "ServerError",
    "SessionLost",
    "owner_prefix",
]
