"""``aiolocks.KeyedRWLock`` and ``KeyedLock``: one lock per hashable key, made on first use."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Callable, Generic, TypeVar, final
from weakref import WeakValueDictionary

from ._common import check_flag
from ._lock import Lock
from ._rwlock import RWLock

__all__ = ["KeyedLock", "KeyedRWLock"]

L = TypeVar("L", Lock, RWLock)


class _Keyed(Generic[L]):
    """A table of locks by key that holds each only while something refers to it."""

    __slots__ = ("__weakref__", "_make", "_table")

    def __init__(self, make: Callable[[], L]) -> None:
        self._make: Callable[[], L] = make
        self._table: WeakValueDictionary[Hashable, L] = WeakValueDictionary()

    def __getitem__(self, key: Hashable) -> L:
        lock = self._table.get(key)
        if lock is None:
            lock = self._table[key] = self._make()
        return lock

    def __contains__(self, key: object) -> bool:
        return key in self._table

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._table.keys()))

    def __repr__(self) -> str:
        return f"<aiolocks.{type(self).__name__} with {len(self._table)} live key(s)>"


@final
class KeyedRWLock(_Keyed[RWLock]):
    """One :class:`RWLock` per hashable key, made on first use.

    ``table[key]`` returns the lock for ``key``: the same object for as long as any task holds
    it, waits for it or refers to it; once nothing does, the entry goes away, so a table used
    with millions of distinct keys over time holds memory only for the keys in use.  (A lock
    and its views refer to each other, so once a lock has been used the garbage collector,
    rather than reference counting, frees it.)  The per-user / per-resource lock web handlers
    need, and the way to split one coarse lock into many::

        accounts = KeyedRWLock()

        async def withdraw(user_id, amount):
            async with accounts[user_id].writer:
                ...

    Args:
        fast_acquire: passed to every :class:`RWLock` the table makes.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __init__(self, *, fast_acquire: bool = False) -> None:
        fast = check_flag(fast_acquire, "fast_acquire")
        super().__init__(lambda: RWLock(fast_acquire=fast))


@final
class KeyedLock(_Keyed[Lock]):
    """One :class:`Lock` per hashable key, made on first use (see :class:`KeyedRWLock`).

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __init__(self, *, fast_acquire: bool = False) -> None:
        fast = check_flag(fast_acquire, "fast_acquire")
        super().__init__(lambda: Lock(fast_acquire=fast))
