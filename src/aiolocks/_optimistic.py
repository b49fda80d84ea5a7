"""Optimistic (versioned) reads of an :class:`~aiolocks.RWLock`: the seqlock / StampedLock idea.

The RWLock's ``_version`` moves by one at each outermost write acquisition and at its final
release, so it is odd exactly while the lock is write-held.  A reader that takes a stamp, reads
without the lock and finds the same even stamp afterwards read a consistent snapshot.  These
methods only read ``_version``; :class:`RWLock` takes them from :class:`Versioned`
(``WriteLock.acquire_if_unchanged`` is the write side of the same idea).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from inspect import isawaitable
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:  # positional arguments checked against fn's signature, as anyio does
    from typing_extensions import TypeVarTuple, Unpack

    from ._rwviews import ReadLock

    PosArgsT = TypeVarTuple("PosArgsT")

__all__ = ["Versioned"]

T = TypeVar("T")


class Versioned:
    """The optimistic-read half of :class:`~aiolocks.RWLock` (a mixin: no state of its own)."""

    __slots__ = ()

    _version: int

    @property
    def reader(self) -> ReadLock:
        raise NotImplementedError  # pragma: no cover - RWLock defines it

    @property
    def version(self) -> int:
        """Moves by one at each outermost write acquisition and at its final release.

        Odd while the lock is write-held; re-entrant write levels do not move it.
        """
        return self._version

    # -- optimistic (versioned) reads: the seqlock / StampedLock idea ------------------------

    def optimistic_read(self) -> int:
        """Return a stamp for an optimistic read; never blocks, never a checkpoint.

        Read the shared state without the lock, then call :meth:`validate` with the stamp: if it
        returns True, no writer held or took the lock in between, so what was read is a
        consistent snapshot.  A stamp taken while a writer holds the lock never validates.

        Example::

            stamp = rw.optimistic_read()
            x, y = point.x, point.y          # may be torn by a writer that awaits mid-update
            if not rw.validate(stamp):
                async with rw.reader:        # fall back to the read lock
                    x, y = point.x, point.y

        .. versionadded:: 0.1
        """
        return self._version

    def validate(self, stamp: int) -> bool:
        """True iff no writer held or took the lock since ``stamp`` was taken.

        ``stamp`` comes from :meth:`optimistic_read` (or :attr:`version`).  Never blocks, never
        a checkpoint.

        .. versionadded:: 0.1
        """
        return stamp == self._version and not stamp & 1

    @overload
    async def read_optimistic(
        self, fn: Callable[[Unpack[PosArgsT]], Awaitable[T]], *args: Unpack[PosArgsT]
    ) -> T: ...
    @overload
    async def read_optimistic(
        self, fn: Callable[[Unpack[PosArgsT]], T], *args: Unpack[PosArgsT]
    ) -> T: ...
    async def read_optimistic(
        self, fn: Callable[[Unpack[PosArgsT]], Any], *args: Unpack[PosArgsT]
    ) -> Any:
        """Run ``fn(*args)`` without the lock; if a writer interfered, run it again under it.

        ``fn`` may be a plain function or a coroutine function; it should only read.  The first
        run takes no lock: if :meth:`validate` then confirms that no writer held or took the
        lock meanwhile, its result is returned.  Otherwise ``fn`` runs once more holding the
        read lock, so a stream of writers can never starve it (no retry loop, no livelock).
        An exception raised by ``fn`` in a run that fails validation is discarded (it may come
        from torn data) and ``fn`` is run again under the read lock; an exception from a
        validated run propagates.  Cancellation always propagates; nothing is held afterwards.

        It beats ``async with rw.reader`` when writes are rare and ``fn`` is short: no lock
        traffic, and it does not queue behind a writer that holds the lock across an ``await``
        unless it has to.  It loses when writes are frequent (two runs instead of one) or when
        ``fn`` has side effects that must not happen twice.

        The optimistic run is not a checkpoint unless ``fn`` awaits.

        Returns:
            the validated result of ``fn``.

        .. versionadded:: 0.1
        """
        stamp = self._version
        if not stamp & 1:
            try:
                result = fn(*args)
                if isawaitable(result):
                    result = await result
            except Exception:
                if stamp == self._version:
                    raise  # validated: the data was consistent, so the error is real
            else:
                if stamp == self._version:
                    return result
        async with self.reader:
            result = fn(*args)
            if isawaitable(result):
                result = await result
            return result
