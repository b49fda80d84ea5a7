"""The candidates: aiolocks and its peers, by the names shown in the tables.

Each factory makes a fresh lock (or lock view) usable with ``async with``; scenarios call it
inside the event loop that will use it. aiolocks candidates are simply absent while
``import aiolocks`` fails, so the peers can be measured on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import trio

try:
    import aiorwlock
except ImportError:  # the peer is optional: its rows are then left out
    aiorwlock = None

try:
    import aiolocks
except Exception as exc:  # ImportError, or a half-written package
    aiolocks = None
    AIOLOCKS_IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    AIOLOCKS_IMPORT_ERROR = None

Factory = Callable[[], Any]

ASYNCIO_LOCK = "asyncio.Lock()"
ANYIO_LOCK = "anyio.Lock()"
ANYIO_LOCK_FAST = "anyio.Lock(fast_acquire=True)"
TRIO_LOCK = "trio.Lock()"

LOCK = "aiolocks.Lock()"
LOCK_FAST = "aiolocks.Lock(fast_acquire=True)"
RW_READER = "aiolocks.RWLock().reader"
RW_WRITER = "aiolocks.RWLock().writer"
RW_READER_FAST = "aiolocks.RWLock(fast_acquire=True).reader"
RW_WRITER_FAST = "aiolocks.RWLock(fast_acquire=True).writer"
RWLOCK = "aiolocks.RWLock()"
RWLOCK_FAST = "aiolocks.RWLock(fast_acquire=True)"

AIORW_READER = "aiorwlock.RWLock().reader_lock"
AIORW_WRITER = "aiorwlock.RWLock().writer_lock"
AIORWLOCK = "aiorwlock.RWLock()"
AIORWLOCK_FAST = "aiorwlock.RWLock(fast=True)"

BARE_TASKS = "bare tasks"

ASYNCIO_COND = "asyncio.Condition()"
ANYIO_COND = "anyio.Condition()"
TRIO_COND = "trio.Condition()"
COND = "aiolocks.Condition()"
COND_FAST = "aiolocks.Condition(Lock(fast_acquire=True))"
COND_RW_WRITER = "aiolocks.Condition(RWLock().writer)"

# Optimistic (versioned) reads: the candidate is a whole RWLock, used without its lock views.
OPT_STAMP = "rw.optimistic_read() + rw.validate(stamp)"
OPT_READ = "await RWLock().read_optimistic(fn)"
OPT_READ_FAST = "await RWLock(fast_acquire=True).read_optimistic(fn)"

# Lock collections: the candidate makes a collection over the locks it is given.
COLL_ORDERED = 'LockCollection(..., strategy="ordered")'
COLL_RETRY = 'LockCollection(..., strategy="retry")'
COLL_ORDERED_BUILT = 'LockCollection(a, b) made per op, "ordered"'
COLL_NOWAIT = "with LockCollection(a, b).lock_nowait(key)"
NESTED_2 = "async with a, b: (nested, no collection)"

FACTORIES: dict[str, Factory] = {
    ASYNCIO_LOCK: asyncio.Lock,
    ANYIO_LOCK: anyio.Lock,
    ANYIO_LOCK_FAST: lambda: anyio.Lock(fast_acquire=True),
    TRIO_LOCK: trio.Lock,
    ASYNCIO_COND: asyncio.Condition,
    ANYIO_COND: anyio.Condition,
    TRIO_COND: trio.Condition,
}

# Whole read-write locks, as (reader view, writer view) makers, for the mixed scenarios.
RW_FACTORIES: dict[str, Callable[[], tuple[Any, Any]]] = {}


def _aiorw(fast: bool) -> tuple[Any, Any]:
    rw = aiorwlock.RWLock(fast=fast)
    return rw.reader_lock, rw.writer_lock


if aiorwlock is not None:
    FACTORIES[AIORW_READER] = lambda: aiorwlock.RWLock().reader_lock
    FACTORIES[AIORW_WRITER] = lambda: aiorwlock.RWLock().writer_lock
    RW_FACTORIES[AIORWLOCK] = lambda: _aiorw(False)
    RW_FACTORIES[AIORWLOCK_FAST] = lambda: _aiorw(True)

_al: Any = aiolocks
HAS_LOCK = hasattr(_al, "Lock")
HAS_RWLOCK = hasattr(_al, "RWLock")
HAS_CONDITION = hasattr(_al, "Condition")

if HAS_LOCK:
    FACTORIES[LOCK] = lambda: _al.Lock()
    FACTORIES[LOCK_FAST] = lambda: _al.Lock(fast_acquire=True)

if HAS_RWLOCK:

    def _rw(fast: bool) -> tuple[Any, Any]:
        rw = _al.RWLock(fast_acquire=True) if fast else _al.RWLock()
        return rw.reader, rw.writer

    FACTORIES.update(
        {
            RW_READER: lambda: _al.RWLock().reader,
            RW_WRITER: lambda: _al.RWLock().writer,
            RW_READER_FAST: lambda: _al.RWLock(fast_acquire=True).reader,
            RW_WRITER_FAST: lambda: _al.RWLock(fast_acquire=True).writer,
        }
    )
    RW_FACTORIES[RWLOCK] = lambda: _rw(False)
    RW_FACTORIES[RWLOCK_FAST] = lambda: _rw(True)

if HAS_CONDITION:
    FACTORIES[COND] = lambda: _al.Condition()
    if HAS_LOCK:
        FACTORIES[COND_FAST] = lambda: _al.Condition(_al.Lock(fast_acquire=True))
    if HAS_RWLOCK:
        FACTORIES[COND_RW_WRITER] = lambda: _al.Condition(_al.RWLock().writer)

# Optimistic-read candidates, as makers of the RWLock they read through.
OPTIMISTIC: dict[str, Factory] = {}
if HAS_RWLOCK and hasattr(_al.RWLock, "read_optimistic"):
    OPTIMISTIC.update(
        {
            OPT_STAMP: lambda: _al.RWLock(),
            OPT_READ: lambda: _al.RWLock(),
            OPT_READ_FAST: lambda: _al.RWLock(fast_acquire=True),
        }
    )

# Objects whose idle size is measured: the whole lock, not a view.
MEMORY_FACTORIES: dict[str, Factory] = {
    ASYNCIO_LOCK: asyncio.Lock,
    ANYIO_LOCK: anyio.Lock,
}
if aiorwlock is not None:
    MEMORY_FACTORIES[AIORWLOCK] = aiorwlock.RWLock
if HAS_LOCK:
    MEMORY_FACTORIES[LOCK] = lambda: _al.Lock()
    MEMORY_FACTORIES[LOCK_FAST] = lambda: _al.Lock(fast_acquire=True)
if HAS_RWLOCK:
    MEMORY_FACTORIES[RWLOCK] = lambda: _al.RWLock()
    MEMORY_FACTORIES[RWLOCK_FAST] = lambda: _al.RWLock(fast_acquire=True)

# Collection candidates, as makers of a collection over the given locks; NESTED_2 (no
# collection: the two locks taken one inside the other) is always measurable.
COLLECTIONS: dict[str, Callable[..., Any]] = {}
HAS_COLLECTION = hasattr(_al, "LockCollection") and hasattr(_al, "TaskKey")
HAS_KEYED = hasattr(_al, "KeyedRWLock")
if HAS_COLLECTION:
    COLLECTIONS.update(
        {
            COLL_ORDERED: lambda *locks: _al.LockCollection(*locks, strategy="ordered"),
            COLL_RETRY: lambda *locks: _al.LockCollection(*locks, strategy="retry"),
            COLL_ORDERED_BUILT: lambda *locks: _al.LockCollection(*locks, strategy="ordered"),
            COLL_NOWAIT: lambda *locks: _al.LockCollection(*locks, strategy="ordered"),
        }
    )

MISSING = [
    n
    for n, ok in (
        ("aiolocks.Lock", HAS_LOCK),
        ("aiolocks.RWLock", HAS_RWLOCK),
        ("aiolocks.Condition", HAS_CONDITION),
        ("aiolocks.LockCollection", HAS_COLLECTION),
        ("aiolocks.KeyedRWLock", HAS_KEYED),
    )
    if not ok
]


def available(*names: str) -> list[str]:
    """The names among ``names`` that can be measured in this environment."""
    return [
        n
        for n in names
        if n in FACTORIES
        or n in RW_FACTORIES
        or n in OPTIMISTIC
        or n in COLLECTIONS
        or n in (BARE_TASKS, NESTED_2)
    ]
