"""``aiolocks.LockCollection``: several locks taken all at once, deadlock-free by construction.

The idea comes from the Rust crate happylock.  Of the four conditions a deadlock needs, two are
removed: hold-and-wait (a task locks a collection with its one :class:`TaskKey`, which is in use
until the guard is released, so it cannot go on to wait for more locks) and circular wait (every
collection takes its locks in one global order, or, with ``strategy="retry"``, never waits while
holding anything).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Literal, Protocol, cast, final

import anyio
from anyio import WouldBlock

from ._common import name_of, set_name
from ._condition import Condition
from ._keys import TaskKey
from ._lock import Lock
from ._rwlock import ReadLock, UpgradableLock, WriteLock
from ._types import Batching, RemoteMember

__all__ = ["CollectionGuard", "LockCollection", "LockLike"]

_STRATEGIES = ("ordered", "retry")


class LockLike(Protocol):
    """Anything a :class:`LockCollection` can take: an object with ``async acquire()`` and
    ``release()``, such as :class:`aiolocks.Lock`, ``rw.reader``, ``rw.writer``, an
    ``anyio.Lock``, a ``trio.Lock`` or an ``asyncio.Lock``.

    .. versionadded:: 0.1
    """

    async def acquire(self) -> Any:
        """Wait until the lock is held."""

    def release(self) -> Any:
        """Release the lock."""


class _Member:
    """One member lock and how to take it: the same four operations for every kind of lock."""

    __slots__ = ("acquire", "acquire_nowait", "batch", "ident", "lock", "release", "shared")

    acquire: Callable[[], Awaitable[Any]]
    acquire_nowait: Callable[[], Any]
    release: Callable[[], Any]

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.batch: Batching | None = None  # the space of a lock outside the process (below)
        self.ident: Any = lock  # the underlying lock: what the order and duplicates go by
        self.shared = False
        if not callable(getattr(lock, "acquire", None)) or not callable(
            getattr(lock, "release", None)
        ):
            raise _not_a_member(lock)
        self.acquire = lock.acquire
        self.release = lock.release
        if isinstance(lock, RemoteMember):
            # A lock that lives outside the process (aiolocks.postgres): its lock space takes
            # a whole collection in one request, in its own global order (its keys).
            self.batch, self.ident, self.shared = lock._collection_member()
            self.acquire_nowait = cast("Any", lock).acquire_nowait
            return
        if isinstance(lock, (ReadLock, WriteLock)):
            self.ident = lock._rw
            self.shared = isinstance(lock, ReadLock)
        elif hasattr(lock, "_collection_view"):  # aiolocks.threadsafe: (underlying, shared)
            self.ident, self.shared = lock._collection_view()
            self.acquire_nowait = lock.acquire_nowait
            return
        self.acquire_nowait = _nowait_of(lock)


def _not_a_member(lock: object) -> TypeError:
    return TypeError(
        "LockCollection members must be aiolocks.Lock, rw.reader, rw.writer, or an anyio, "
        f"trio or asyncio Lock, not {type(lock).__module__}.{type(lock).__qualname__}"
    )


def _nowait_of(lock: Any) -> Callable[[], Any]:
    """How to try ``lock`` without waiting, for each kind of lock a collection takes."""
    if isinstance(lock, (UpgradableLock, Condition)):
        raise TypeError(
            f"LockCollection cannot take {type(lock).__name__} objects: use rw.reader / "
            "rw.writer, or the condition's lock"
        )
    if isinstance(lock, (ReadLock, WriteLock, Lock, anyio.Lock)):
        return lock.acquire_nowait
    if _is_trio_lock(lock):
        return lambda: _trio_lock_nowait(lock)
    if isinstance(lock, asyncio.Lock):
        return lambda: _asyncio_lock_nowait(lock)
    raise _not_a_member(lock)


def _is_trio_lock(lock: object) -> bool:
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(lock, (trio.Lock, trio.StrictFIFOLock))


def _trio_lock_nowait(lock: Any) -> None:
    try:
        lock.acquire_nowait()
    except sys.modules["trio"].WouldBlock:
        raise WouldBlock from None  # one WouldBlock for every kind of member: anyio's


def _asyncio_lock_nowait(lock: asyncio.Lock) -> None:
    # asyncio.Lock has no acquire_nowait: run acquire() up to its first suspension.  A free lock
    # with nobody queued is taken without suspending; otherwise closing the coroutine removes
    # the waiter it queued, and nothing is held.
    if lock.locked():
        raise WouldBlock
    coro = lock.acquire()
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise WouldBlock


def _release_all(held: list[_Member]) -> None:
    """Release in reverse order; report the first failure after trying them all."""
    error: BaseException | None = None
    for member in reversed(held):
        try:
            member.release()
        except BaseException as exc:  # pragma: no cover - a member released behind our back
            error = error or exc
    held.clear()
    if error is not None:  # pragma: no cover
        raise error


@final
class CollectionGuard:
    """The open hold of a :class:`LockCollection`: every member lock, taken by one task.

    Use it with ``async with`` or ``with``, or call :meth:`release`.  While it is open, the key
    that opened it is in use.

    .. versionadded:: 0.1
    """

    __slots__ = ("_coll", "_held", "_key")

    def __init__(self, coll: LockCollection, key: TaskKey, held: list[_Member]) -> None:
        self._coll = coll
        self._key: TaskKey | None = key
        self._held = held

    @property
    def locks(self) -> tuple[LockLike, ...]:
        """The member locks held, in the order they were taken (empty once released)."""
        return tuple(member.lock for member in self._held)

    def release(self) -> None:
        """Release every lock and free the key.

        Raises:
            RuntimeError: the guard was released already, or the calling task is not the one
                that took it (then nothing is released: all or nothing applies to releasing).
        """
        key = self._key
        if key is None:
            raise RuntimeError(f"{self!r} was released already")
        key._check_owner(f"release {self!r}")
        self._key = None
        try:
            _release_all(self._held)
        finally:
            key._in_use = False

    def __repr__(self) -> str:
        state = "released" if self._key is None else f"holding {len(self._held)} lock(s)"
        name = self._coll.name
        of = f" of {name!r}" if name else ""
        return f"<aiolocks.CollectionGuard{of} {state}>"

    async def __aenter__(self) -> CollectionGuard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __enter__(self) -> CollectionGuard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class _Locking(AbstractAsyncContextManager[CollectionGuard]):
    """What ``collection.lock(key)`` returns: ``async with`` it to hold the whole collection."""

    __slots__ = ("_coll", "_guard", "_key")

    def __init__(self, coll: LockCollection, key: TaskKey) -> None:
        self._coll = coll
        self._key = key
        self._guard: CollectionGuard | None = None

    async def __aenter__(self) -> CollectionGuard:
        self._guard = await self._coll._acquire(self._key)
        return self._guard

    def __await__(self) -> Any:
        raise TypeError(
            "collection.lock(key) is not awaitable: write 'async with collection.lock(key) as "
            "guard:' (or 'guard = collection.lock_nowait(key)' to take it without waiting)"
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        guard, self._guard = self._guard, None
        if guard is not None and guard._key is not None:
            guard.release()


@final
class LockCollection:
    """Several locks taken all at once, with a :class:`TaskKey`, without deadlocks.

    Members may be :class:`aiolocks.Lock`, ``rw.reader``, ``rw.writer``, and anyio, trio
    (``trio.Lock``, ``trio.StrictFIFOLock``) or asyncio locks, in any mix.
    ``async with collection.lock(key) as guard`` takes every one, all or nothing: cancelled or
    failing midway, it releases what it took.  Releasing is all or nothing too: only the task
    that took the guard may release it.

    Two strategies:

    * ``"ordered"`` (default): take the locks in one global order (by the identity of the
      underlying lock; the same order for every collection in the process, whatever the order
      of the arguments), waiting for each in turn.  Two collections can never wait for each
      other in a cycle.
    * ``"retry"``: take them in the given order without waiting while holding any; on contention
      release everything, wait for the lock that blocked, and start again from it (happylock's
      ``RetryingLockCollection``).  Nothing is held while waiting, so it also cannot deadlock.
      Under sustained contention (a failed round per member) it falls back to the global
      order, so it cannot livelock either.

    Two entries naming the same underlying lock (the same lock twice, or the reader and the
    writer of one :class:`RWLock`) are a ``ValueError``; a read-only collection (every member
    an ``rw.reader``) skips that check, since taking a read lock twice is re-entrant.

    Example::

        accounts = KeyedRWLock()

        async def transfer(src, dst, amount):
            both = LockCollection(accounts[src].writer, accounts[dst].writer)
            async with both.lock(TaskKey.get()):     # transfer(a, b) and (b, a) never deadlock
                ...

    Args:
        locks: the member locks.
        strategy: ``"ordered"`` or ``"retry"``.
        name: shown in ``repr`` (the collection's and its guards').

    Raises:
        TypeError: a member is not a supported lock, or ``name`` is not a str.
        ValueError: no members, a duplicate member, or an unknown strategy.

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "_given", "_ordered", "_read_only", "_strategy")

    def __init__(
        self,
        *locks: LockLike,
        strategy: Literal["ordered", "retry"] = "ordered",
        name: str | None = None,
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be 'ordered' or 'retry', not {strategy!r}")
        if not locks:
            raise ValueError("LockCollection needs at least one lock")
        members = [_Member(lock) for lock in locks]
        spaces = {id(m.batch) for m in members}
        if len(spaces) > 1:
            raise ValueError(
                "LockCollection: locks of a PostgresLocks can only be collected with locks of "
                "the same PostgresLocks (they are taken together, in one request to its server)"
            )
        self._read_only = all(m.shared for m in members)
        if not self._read_only:
            first: dict[Any, Any] = {}
            for member in members:
                ident = member.ident if member.batch is not None else id(member.ident)
                other = first.setdefault(ident, member.lock)
                if other is not member.lock or sum(m.lock is other for m in members) > 1:
                    raise ValueError(
                        f"LockCollection: {member.lock!r} and {other!r} name the same lock; a "
                        "task cannot hold it twice through one collection"
                    )
        self._given = members
        self._ordered = sorted(
            members, key=lambda m: m.ident if m.batch is not None else id(m.ident)
        )
        self._strategy = strategy
        set_name(self, name)

    @property
    def name(self) -> str | None:
        """The ``name=`` given to the collection, shown in ``repr`` and in its guards'."""
        return name_of(self)

    @property
    def locks(self) -> tuple[LockLike, ...]:
        """The member locks, as given."""
        return tuple(m.lock for m in self._given)

    @property
    def read_only(self) -> bool:
        """True if every member is an ``rw.reader`` (no duplicate check is needed then)."""
        return self._read_only

    @property
    def strategy(self) -> Literal["ordered", "retry"]:
        """``"ordered"`` or ``"retry"``."""
        return self._strategy

    def __repr__(self) -> str:
        name = self.name
        name = f" {name!r}" if name else ""
        return f"<aiolocks.LockCollection{name} of {len(self._given)} lock(s), {self._strategy}>"

    def lock(self, key: TaskKey) -> AbstractAsyncContextManager[CollectionGuard]:
        """Take every lock with ``key``: use as ``async with collection.lock(key) as guard``.

        Raises (on entering):
            TaskKeyError: ``key`` is another task's, or a guard opened with it is still alive.
            anyio.BrokenResourceError, DeadlockError: from a member; nothing is held then.
        """
        if not isinstance(key, TaskKey):
            raise TypeError(f"lock(key) needs a TaskKey (TaskKey.get()), not {type(key).__name__}")
        return _Locking(self, key)

    def lock_nowait(self, key: TaskKey) -> CollectionGuard:
        """Take every lock without waiting; return the open guard.

        Raises:
            anyio.WouldBlock: some member is not free; nothing is held and the key is free.
            TaskKeyError: as for :meth:`lock`.
        """
        if not isinstance(key, TaskKey):
            raise TypeError(
                f"lock_nowait(key) needs a TaskKey (TaskKey.get()), not {type(key).__name__}"
            )
        key._claim()
        held: list[_Member] = []
        try:
            for member in self._ordered:
                member.acquire_nowait()
                held.append(member)
        except BaseException:
            try:
                _release_all(held)
            finally:
                key._in_use = False
            raise
        return CollectionGuard(self, key, held)

    async def _acquire(self, key: TaskKey) -> CollectionGuard:
        key._claim()
        held: list[_Member] = []
        try:
            batch = self._ordered[0].batch
            if batch is not None:  # all or nothing in one request: no strategy needed
                await batch._acquire_batch([(m.lock, m.shared) for m in self._ordered])
                held.extend(self._ordered)
            elif self._strategy == "ordered":
                await self._acquire_ordered(held)
            else:
                await self._acquire_retrying(held)
        except BaseException:
            try:
                _release_all(held)
            finally:
                key._in_use = False
            raise
        return CollectionGuard(self, key, held)

    async def _acquire_ordered(self, held: list[_Member]) -> None:
        # Take what is free without waiting, in the global order; from the first busy member
        # on, wait for each in turn.  The order of acquisition is the same either way.
        members = self._ordered
        for member in members:
            try:
                member.acquire_nowait()
            except WouldBlock:
                break
            held.append(member)
        else:
            await anyio.lowlevel.checkpoint()  # taking a collection is a checkpoint, too
            return
        for member in members[len(held) :]:
            await member.acquire()
            held.append(member)

    async def _acquire_retrying(self, held: list[_Member]) -> None:
        members = self._given
        first = 0
        for _ in range(len(members) + 2):
            await members[first].acquire()  # the one that blocked last time: wait for it
            held.append(members[first])
            blocked = None
            for i, member in enumerate(members):
                if i == first:
                    continue
                try:
                    member.acquire_nowait()
                except WouldBlock:
                    blocked = i
                    break
                held.append(member)
            if blocked is None:
                return
            _release_all(held)  # never wait while holding anything
            first = blocked
        # Still contended after a round per member: the others are busy all the time, and
        # retrying could go on forever (livelock).  Fall back to the global order, which waits
        # while holding but, like every ordered collection, never in a cycle.
        for member in self._ordered:
            await member.acquire()
            held.append(member)
