"""The locks a keyed table makes: they pin themselves into the table while they are held.

A hold does not keep a lock alive by itself (a task that called ``acquire()`` keeps no reference
to it), so each lock a :class:`~aiolocks.KeyedRWLock` or :class:`~aiolocks.KeyedLock` makes puts
itself (the RWLock, for a view) into the table's ``_pins`` dict whenever it is acquired, and takes
itself out when a release leaves it idle.  Locks made elsewhere pay nothing for this: only the
table's locks are of these classes.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from ._backend import READY
from ._lock import Lock
from ._rwlock import ReadLock, UpgradableLock, WriteLock

__all__ = ["PinnedLock", "PinnedRead", "PinnedUpgradable", "PinnedWrite"]


class _Pinning:
    """Mixin for the locks a table makes: whenever one is acquired, its lock (the RWLock, for a
    view) is pinned into the table; a release that leaves it idle unpins it."""

    __slots__ = ()

    _pins: dict[int, Any]

    def _target(self) -> Any:
        return getattr(self, "_rw", self)

    def _pin(self) -> None:
        target = self._target()
        self._pins[id(target)] = target

    def __aenter__(self) -> Awaitable[None]:
        self._pin()
        return super().__aenter__()  # type: ignore[misc, no-any-return]

    def acquire_nowait(self) -> None:
        self._pin()
        super().acquire_nowait()  # type: ignore[misc]

    def release(self) -> None:
        super().release()  # type: ignore[misc]
        target = self._target()
        if not target._in_use():
            self._pins.pop(id(target), None)

    def __aexit__(self, *exc_info: object) -> Awaitable[None]:
        self.release()  # the base's fast path would skip the unpinning
        return READY


class PinnedLock(_Pinning, Lock):  # type: ignore[misc]
    __slots__ = ("_pins",)


class PinnedRead(_Pinning, ReadLock):  # type: ignore[misc]
    __slots__ = ("_pins",)


class PinnedWrite(_Pinning, WriteLock):  # type: ignore[misc]
    __slots__ = ("_pins",)


class PinnedUpgradable(_Pinning, UpgradableLock):  # type: ignore[misc]
    __slots__ = ("_pins",)
