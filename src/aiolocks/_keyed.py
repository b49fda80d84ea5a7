"""``aiolocks.KeyedRWLock`` and ``KeyedLock``: one lock per hashable key, made on first use.

An entry must live while any task holds it, waits for it or refers to it, and no longer.
References and waits keep a lock alive by themselves (the table is weak); a *hold* does not (a
task that called ``acquire()`` keeps no reference), so the locks a table makes pin themselves
into the table's ``_pinned`` dict whenever they are acquired and unpin themselves when a release
leaves them idle; the table also sweeps out pins of locks that became idle another way (a
cancelled acquire), amortised, on access.  Locks made elsewhere pay nothing for
this: only the table's locks use the pinning classes (``_pinned.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final
from weakref import WeakValueDictionary

from ._common import check_flag, set_name
from ._lock import Lock
from ._lockclass import LockClass, Pins
from ._pinned import PinnedLock, PinnedRead, PinnedUpgradable, PinnedWrite
from ._rwlock import RWLock

__all__ = ["KeyedLock", "KeyedRWLock"]

L = TypeVar("L", Lock, RWLock)
if TYPE_CHECKING:  # a default, so that an unannotated KeyedRWLock() is KeyedRWLock[Hashable]
    from typing_extensions import TypeVar as _TypeVarWithDefault

    K = _TypeVarWithDefault("K", bound=Hashable, default=Hashable)
else:
    K = TypeVar("K", bound=Hashable)


class _Keyed(Generic[L, K]):
    """A table of locks by key that holds each only while it is held, waited for or referred to."""

    __slots__ = ("__weakref__", "_make", "_name", "_pinned", "_swept", "_table")

    def __init__(self, make: Callable[[dict[int, Any]], L], name: str | None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        self._name = name
        self._make: Callable[[dict[int, Any]], L] = make
        self._table: WeakValueDictionary[K, L] = WeakValueDictionary()
        # id -> lock, for locks acquired since the last sweep; carries the entries' lock class
        self._pinned = Pins(LockClass(type(self).__name__, name))
        self._swept = 0  # how many stayed pinned after the last sweep

    def __getitem__(self, key: K) -> L:
        if len(self._pinned) > 2 * self._swept + 16:
            self._sweep()
        lock = self._table.get(key)
        if lock is None:
            lock = self._table[key] = self._make(self._pinned)
            if self._name is not None:
                set_name(lock, f"{self._name}[{key!r}]")
        return lock

    def _sweep(self) -> None:
        pinned = self._pinned
        for ident, lock in list(pinned.items()):
            if not lock._in_use():
                del pinned[ident]  # idle: from now on only references keep it alive
        self._swept = len(pinned)

    def __contains__(self, key: object) -> bool:
        self._sweep()
        return key in self._table

    def __len__(self) -> int:
        self._sweep()
        return len(self._table)

    def __iter__(self) -> Iterator[K]:
        self._sweep()
        return iter(list(self._table.keys()))

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name else ""
        return f"<aiolocks.{type(self).__name__}{name} with {len(self._table)} live key(s)>"


def _make_rwlock(fast: bool) -> Callable[[dict[int, Any]], RWLock]:
    def make(pins: dict[int, Any]) -> RWLock:
        rw = RWLock(fast_acquire=fast)
        for slot, cls in (("_rv", PinnedRead), ("_wv", PinnedWrite), ("_uv", PinnedUpgradable)):
            view = cls(rw)
            view._pins = pins
            setattr(rw, slot, view)
        return rw

    return make


def _make_lock(fast: bool) -> Callable[[dict[int, Any]], Lock]:
    def make(pins: dict[int, Any]) -> Lock:
        lock = PinnedLock(fast_acquire=fast)
        lock._pins = pins
        return lock

    return make


@final
class KeyedRWLock(_Keyed[RWLock, K], Generic[K]):
    """One :class:`RWLock` per hashable key, made on first use.

    ``table[key]`` returns the lock for ``key``: the same object for as long as any task holds
    it, waits for it or refers to it; once nothing does, the entry goes away, so a table used
    with millions of distinct keys over time holds memory only for the keys in use.  (A lock
    and its views refer to each other, so once a lock is unused the garbage collector, rather
    than reference counting, frees it; ``len(table)`` counts the live entries.)  This is the
    per-user / per-resource lock web handlers need, and the way to split one coarse lock into
    many::

        accounts = KeyedRWLock()

        async def withdraw(user_id, amount):
            async with accounts[user_id].writer:
                ...

    Generic in its key type, for type checkers: ``KeyedRWLock[int]()`` accepts only ``int``
    keys (unannotated, any hashable key).

    Args:
        fast_acquire: passed to every :class:`RWLock` the table makes.
        name: names the table's locks ``name[key]`` in ``repr`` and diagnostics.

    Raises:
        TypeError: (on ``table[key]``) the key is not hashable.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __init__(self, *, fast_acquire: bool = False, name: str | None = None) -> None:
        super().__init__(_make_rwlock(check_flag(fast_acquire, "fast_acquire")), name)


@final
class KeyedLock(_Keyed[Lock, K], Generic[K]):
    """One :class:`Lock` per hashable key, made on first use (see :class:`KeyedRWLock`).

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __init__(self, *, fast_acquire: bool = False, name: str | None = None) -> None:
        super().__init__(_make_lock(check_flag(fast_acquire, "fast_acquire")), name)
