"""``aiolocks.threadsafe.RWLock``: readers-writer lock for threads and tasks of any event loops."""

from __future__ import annotations

from collections.abc import Awaitable
from types import TracebackType
from typing import Any, final

from anyio import LockStatistics, WouldBlock

from .._backend import READY
from .._common import not_holding, set_name
from .._exceptions import DeadlockError
from .._types import RWLockStatistics
from . import _core
from ._core import (
    GRANTED,
    THREAD,
    Primitive,
    Waiter,
    async_caller,
    caller,
    owner_info,
    owner_name,
    refuse_in_loop,
    thread_caller,
)

__all__ = ["RWLock"]

READ = "read"
WRITE = "write"
UPGRADABLE = "upgradable"
UPGRADE = "upgrade"

_CONFLICTS_WITH_NEW_READER = (WRITE, UPGRADE)


@final
class RWLock(Primitive):
    """A readers-writer lock shared by threads and by tasks of any event loops.

    The thread-safe twin of :class:`aiolocks.RWLock`, with the same views (``reader``,
    ``writer``, ``upgradable``), fairness (writer-preferring, phase-fair, FIFO among writers),
    per-owner re-entrancy, :class:`~aiolocks.DeadlockError` on a read-to-write upgrade, and
    ``writer.downgrade()``.  Tasks of any asyncio loop (in any thread, uvloop included) or of
    trio use ``async with rw.reader:``; threads use ``with rw.reader:`` or
    ``rw.reader.acquire_blocking(timeout)``.  One FIFO queue serves threads and tasks.  The
    owner is the task (async side) or the thread (blocking side); an owner that ends holding
    breaks the lock for the requests that conflict with its hold.

    Acquiring from a task is a checkpoint unless ``fast_acquire=True`` (see
    :class:`aiolocks.threadsafe.Lock`).

    Args:
        fast_acquire: skip the schedule point on uncontended async acquisitions.
        name: shown in ``repr`` and in :func:`aiolocks.debug.snapshot`.

    Example::

        config_lock = aiolocks.threadsafe.RWLock()

        def reload_config():                 # a plain thread
            with config_lock.writer:
                CONFIG.update(read_file())

        async def handler(request):          # any task, any event loop, any thread; or trio
            async with config_lock.reader:
                return CONFIG[request.key]

    .. versionadded:: 0.1
    """

    # Invariants (with _cs held):
    #   _writer is not None  implies  _readers holds no owner but _writer (its own read levels)
    #   _writer is not None  implies  _upgradable is None or _upgradable is _writer (upgraded)
    #   _version is odd      iff      _writer is not None
    #   a queued WRITE or UPGRADE waiter holds back every READ waiter behind it
    __slots__ = (
        "_readers",
        "_uhome",
        "_upgradable",
        "_version",
        "_whome",
        "_wlevels",
        "_writer",
        "reader",
        "upgradable",
        "writer",
    )

    def __init__(self, *, fast_acquire: bool = False, name: str | None = None) -> None:
        super().__init__(fast_acquire)
        set_name(self, name)
        self._readers: dict[Any, tuple[int, Any]] = {}  # owner -> (levels, home)
        self._writer: Any = None
        self._wlevels = 0
        self._whome: Any = None
        self._upgradable: Any = None
        self._uhome: Any = None
        self._version = 0
        self.reader: ReadLock = ReadLock(self)
        self.writer: WriteLock = WriteLock(self)
        self.upgradable: UpgradableLock = UpgradableLock(self)

    def __repr__(self) -> str:
        # No critical section (see Lock.__repr__): a description from fields read one by one.
        parts = []
        if self._writer is not None:
            parts.append(f"write-locked by {owner_name(self._writer)}")
        if self._readers:
            parts.append(f"{len(self._readers)} reading")
        if self._upgradable is not None and self._writer is None:
            parts.append(f"upgradable held by {owner_name(self._upgradable)}")
        if self._q:
            parts.append(f"{len(self._q)} waiting")
        if self._broken:
            parts.append("broken")
        state = ", ".join(parts) or "unlocked"
        return f"<aiolocks.threadsafe.RWLock{self._name_part()} {state} at {id(self):#x}>"

    @property
    def version(self) -> int:
        """Moves by one at each outermost write acquisition and at its final release."""
        return self._version

    # -- requests (either side) -------------------------------------------------------------------

    def _try(self, owner: Any, home: Any, mode: str) -> bool | None:
        """Take ``mode`` at once if possible (``_cs`` held): True taken, False must wait.

        Raises DeadlockError (as None returned to the caller, which raises outside ``_cs``).
        """
        if mode == READ:
            held = self._readers.get(owner)
            if held is not None:
                self._readers[owner] = (held[0] + 1, home)
                return True
            if owner is self._writer or owner is self._upgradable:
                self._readers[owner] = (1, home)
                return True
            if self._writer is None and (
                not self._q or not any(w.mode in _CONFLICTS_WITH_NEW_READER for w in self._q)
            ):
                self._readers[owner] = (1, home)
                return True
            return False
        if mode == WRITE:
            if owner is self._writer:
                self._wlevels += 1
                return True
            if owner in self._readers or owner is self._upgradable:
                return None
            if (
                self._writer is None
                and not self._readers
                and self._upgradable is None
                and not self._q
            ):
                self._take_write(owner, home)
                return True
            return False
        if mode == UPGRADABLE:
            if owner is self._upgradable or owner is self._writer or owner in self._readers:
                return None
            if (
                self._writer is None
                and self._upgradable is None
                and not any(w.mode in (WRITE, UPGRADABLE) for w in self._q)
            ):
                self._upgradable, self._uhome = owner, home
                return True
            return False
        # UPGRADE (the caller holds the upgradable lock, checked by the view)
        if owner in self._readers:
            return None
        if not self._readers:
            self._take_write(owner, home)
            return True
        return False

    def _take_write(self, owner: Any, home: Any) -> None:
        self._writer, self._whome, self._wlevels = owner, home, 1
        self._version += 1

    def _acquire_async(self, mode: str) -> Awaitable[None]:
        task, home = async_caller()
        cs = self._cs
        cs.acquire()  # (not 'with': see Lock.__aenter__)
        try:
            taken = self._try(task, home, mode)
            if taken is False:
                return self._park_async(task, home, mode)  # type: ignore[no-any-return]
        finally:
            cs.release()
        if taken:
            if self._fast and home.__class__ is not _core._token_type:
                return READY
            return self._checkpoint(task, (home, mode))  # type: ignore[no-any-return]
        raise self._deadlock(mode)

    def _acquire_blocking(self, mode: str, timeout: float | None) -> bool:
        refuse_in_loop(self)
        owner = thread_caller()
        self._cs.acquire()
        taken = self._try(owner, None, mode)
        if taken is False:
            if timeout is not None and timeout <= 0:
                self._cs.release()
                return False
            return self._park_blocking(owner, mode, timeout).state == GRANTED
        self._cs.release()
        if taken:
            return True
        raise self._deadlock(mode)

    def _acquire_nowait(self, mode: str) -> None:
        owner, home = caller()
        with self._cs:
            taken = self._try(owner, home, mode)
        if taken:
            return
        if taken is None:
            raise self._deadlock(mode)
        raise WouldBlock

    def _broken_for(self, mode: Any) -> str | None:
        # A dead reader blocks only writers and upgrades; a new reader waits only behind
        # those, which fail (or are refused) while the dead hold stays.
        if mode == READ and self._writer is None:
            return None
        return self._broken

    def _deadlock(self, mode: str) -> DeadlockError:
        if mode == WRITE:
            return DeadlockError(
                f"{self!r}: a read (or upgradable) holder asked for the write lock; it would "
                "wait for itself (release the read lock first, or use rw.upgradable)"
            )
        if mode == UPGRADABLE:
            return DeadlockError(
                f"{self!r}: the upgradable lock is not re-entrant, and a holder of read or "
                "write may not ask for it"
            )
        return DeadlockError(f"{self!r}: cannot upgrade while also holding a plain read lock")

    # -- releases ---------------------------------------------------------------------------------

    def _release(self, owner: Any, mode: str) -> None:
        error = None
        cs = self._cs
        cs.acquire()  # (not 'with': see Lock.__aenter__)
        try:
            granted: list[Waiter] = []
            if mode == READ:
                held = self._readers.get(owner)
                if held is None:
                    error = "reader.release()"
                elif held[0] > 1:
                    self._readers[owner] = (held[0] - 1, held[1])
                else:
                    del self._readers[owner]
                    granted = self._admit()
            elif mode == WRITE or (mode == UPGRADABLE and owner is self._writer):
                if owner is not self._writer:
                    error = "writer.release()"
                elif self._wlevels > 1:
                    self._wlevels -= 1
                else:
                    self._writer = self._whome = None
                    self._wlevels = 0
                    self._version += 1
                    if self._upgradable is owner:  # an upgraded hold ends whole
                        self._upgradable = self._uhome = None
                    granted = self._admit(all_readers=True)
            elif owner is not self._upgradable:
                error = "upgradable.release()"
            else:
                self._upgradable = self._uhome = None
                granted = self._admit()
        finally:
            cs.release()
        if error is not None:
            holders = [self._writer, self._upgradable, *self._readers]
            raise not_holding(error, self, owner, holders)
        self._wake(granted)

    def _downgrade(self, owner: Any, home: Any) -> None:
        with self._cs:
            ok = owner is self._writer and self._wlevels == 1
            if ok:
                self._writer = self._whome = None
                self._wlevels = 0
                self._version += 1
                if self._upgradable is not owner:
                    held = self._readers.get(owner)
                    self._readers[owner] = (held[0] + 1 if held else 1, home)
                granted = self._admit(all_readers=True, writers=False)
        if not ok:
            if owner is self._writer:
                raise RuntimeError(
                    f"writer.downgrade() of {self!r}: the write lock is held re-entrantly "
                    f"({self._wlevels} levels); release the inner levels first"
                )
            raise not_holding("writer.downgrade()", self, owner, (self._writer,))
        self._wake(granted)

    def _undo_owner(self, owner_mode: Any) -> None:
        owner, mode = owner_mode
        self._release(owner, mode)

    def _checkpoint(self, owner: Any, home_mode: Any) -> Any:
        home, mode = home_mode
        return super()._checkpoint((owner, mode), home)

    # -- the core's hooks (called with _cs held) ---------------------------------------------

    def _admit(self, all_readers: bool = False, writers: bool = True) -> list[Waiter]:
        """Grant whatever the queue's order and the holds allow now.

        ``all_readers`` (a write hold just ended): every queued reader goes, also those behind
        a waiting writer (phase-fair: no reader waits for more than one writer phase).
        """
        granted: list[Waiter] = []
        if not self._q:
            return granted
        if self._upgradable is not None and self._writer is None:
            # The holder's upgrade(), if queued, goes first and alone, once no reader holds:
            # the writers and upgradable requests queued ahead of it wait for its hold, and the
            # readers queued ahead of it wait as new ones would (as in the in-process lock).
            for w in self._q:
                if w.mode == UPGRADE:
                    if not self._readers:
                        del self._q[w]
                        self._grant(w)
                        granted.append(w)
                    return granted
        if all_readers:
            for w in [w for w in self._q if w.mode == READ]:
                del self._q[w]
                self._grant(w)
                granted.append(w)
        hold_readers = hold_writers = False  # a queued request ahead blocks those behind it
        for w in list(self._q):
            if self._writer is not None or (hold_readers and hold_writers):
                break
            mode = w.mode
            if mode == READ:
                if hold_readers:
                    continue
            elif mode == WRITE:
                if (
                    hold_writers
                    or not writers
                    or self._readers
                    or self._upgradable is not None
                    or granted
                ):
                    hold_readers = hold_writers = True
                    continue
            elif mode == UPGRADABLE:
                if hold_writers or self._upgradable is not None:
                    hold_writers = True
                    continue
            else:  # UPGRADE: served above (its upgradable hold lasts while it waits)
                hold_readers = hold_writers = True
                continue
            del self._q[w]
            self._grant(w)
            granted.append(w)
        return granted

    def _grant(self, w: Waiter) -> None:
        w.state = GRANTED
        home = None if w.kind == THREAD else w.where
        if w.mode == READ:
            held = self._readers.get(w.owner)
            self._readers[w.owner] = (held[0] + 1 if held else 1, home)
        elif w.mode == UPGRADABLE:
            self._upgradable, self._uhome = w.owner, home
        else:
            self._take_write(w.owner, home)

    def _undo_grant(self, waiter: Waiter) -> None:
        owner, mode = waiter.owner, waiter.mode
        if mode == READ:
            held = self._readers[owner]
            if held[0] > 1:
                self._readers[owner] = (held[0] - 1, held[1])
            else:
                del self._readers[owner]
        elif mode == UPGRADABLE:
            self._upgradable = self._uhome = None
        else:
            self._writer = self._whome = None
            self._wlevels = 0
            self._version += 1
            if mode == WRITE:
                return
        # (the caller, _leave, runs _admit after this)

    def _blockers(self, waiter: Waiter) -> list[tuple[Any, Any]]:
        out = []
        if self._writer is not None:
            out.append((self._writer, self._whome))
        if waiter.mode in (WRITE, UPGRADABLE) and self._upgradable is not None:
            out.append((self._upgradable, self._uhome))
        if waiter.mode in (WRITE, UPGRADE):
            out.extend((o, h[1]) for o, h in self._readers.items() if o is not waiter.owner)
        return out

    def _broken_victims(self, owner: Any) -> list[Waiter] | None:
        if owner is self._writer:
            return list(self._q)
        if owner is self._upgradable:
            return [w for w in self._q if w.mode in (WRITE, UPGRADABLE)]
        if owner in self._readers:
            return [w for w in self._q if w.mode in (WRITE, UPGRADE)]
        return None

    # -- the condition port (see _condition.py; called with _cs held) --------------------------

    def _cv_holds(self, owner: Any) -> bool:
        return self._writer is owner

    def _cv_refuse(self, owner: Any) -> str | None:
        # wait() lets go of the write levels only; a hold it would keep could never be
        # restored (read levels keep the write request back for ever) or would keep every
        # notifier out (the upgradable hold excludes writers).  As the in-process lock does.
        if self._writer is not owner:
            return None
        if self._upgradable is owner:
            return (
                "the write hold came from upgrade(); wait on a condition over rw.writer with "
                "a plain write hold"
            )
        if owner in self._readers:
            return (
                f"{owner_name(owner)} holds read levels on top of its write hold; release them "
                "before waiting"
            )
        return None

    def _cv_take(self, owner: Any) -> tuple[int, str] | None:
        if self._writer is not owner:
            return None
        levels = self._wlevels
        self._writer = self._whome = None
        self._wlevels = 0
        self._version += 1
        return levels, WRITE

    def _cv_restore(self, owner: Any, levels: int) -> None:
        self._wlevels = levels

    # -- inspection -------------------------------------------------------------------------------

    def statistics(self) -> RWLockStatistics:
        """Return a :class:`~aiolocks.RWLockStatistics` snapshot (tasks and threads alike)."""
        with self._cs:
            readers = len(self._readers)
            up = self._upgradable
            if up is not None and up not in self._readers and self._writer is None:
                readers += 1
            writer = self._writer
            rw = sum(1 for w in self._q if w.mode == READ)
            ww = len(self._q) - rw
            version = self._version
        return RWLockStatistics(readers, owner_info(writer), rw, ww, version)


class _View:
    """A lock-like view of one mode of an :class:`RWLock` (common lock shape, both sides)."""

    __slots__ = ("__weakref__", "_rw")
    _mode = READ

    def __init__(self, rw: RWLock) -> None:
        self._rw = rw

    def __repr__(self) -> str:
        return f"<{self._mode} view of {self._rw!r}>"

    def __aenter__(self) -> Awaitable[None]:
        return self._rw._acquire_async(self._mode)

    async def acquire(self) -> None:
        """Acquire this mode, waiting in the lock's FIFO (behind tasks and threads) if needed.

        A checkpoint unless the lock was made with ``fast_acquire=True``; cancellable while it
        waits, and a cancelled acquire holds nothing.

        Raises:
            DeadlockError: the request could never be granted (see the class docstring).
            anyio.BrokenResourceError: a holder the request waits for exited holding.
        """
        await self._rw._acquire_async(self._mode)

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        self._rw._release(async_caller()[0], self._mode)
        return READY

    def acquire_blocking(self, timeout: float | None = None) -> bool:
        """Acquire this mode from a thread, blocking only that thread.

        Args:
            timeout: give up after this many seconds (None: wait as long as it takes).

        Returns:
            True if now held, False on timeout (nothing held).

        Raises:
            RuntimeError: the calling thread runs an event loop (use ``async with``).
            DeadlockError: the request could never be granted.
            anyio.BrokenResourceError: a holder the request waits for exited holding.
        """
        return self._rw._acquire_blocking(self._mode, timeout)

    def __enter__(self) -> None:
        self._rw._acquire_blocking(self._mode, None)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._rw._release(thread_caller(), self._mode)

    def acquire_nowait(self) -> None:
        """Acquire this mode without waiting; never jumps ahead of a conflicting waiter.

        Raises:
            anyio.WouldBlock: it cannot be taken now.
            DeadlockError: the request could never be granted.
        """
        self._rw._acquire_nowait(self._mode)

    def release(self) -> None:
        """Release one level of this mode, handing the lock on as the fairness rules say.

        Raises:
            RuntimeError: the calling task or thread does not hold it (nothing changes).
        """
        self._rw._release(caller()[0], self._mode)

    def statistics(self) -> RWLockStatistics:
        """The whole lock's :class:`~aiolocks.RWLockStatistics`."""
        return self._rw.statistics()


@final
class ReadLock(_View):
    """``rw.reader``: the shared mode of a thread-safe :class:`RWLock`."""

    __slots__ = ()

    def locked(self) -> bool:
        """Return True if a task or thread holds read."""
        return bool(self._rw._readers)

    def _collection_view(self) -> tuple[Any, bool]:
        return self._rw, True


@final
class WriteLock(_View):
    """``rw.writer``: the exclusive mode of a thread-safe :class:`RWLock`."""

    __slots__ = ()
    _mode = WRITE

    def locked(self) -> bool:
        """Return True if a task or thread holds write."""
        return self._rw._writer is not None

    def _collection_view(self) -> tuple[Any, bool]:
        return self._rw, False

    def statistics(self) -> LockStatistics:  # type: ignore[override]
        """anyio's shape: ``locked``, ``owner`` (the writer), ``tasks_waiting`` (all queued)."""
        rw = self._rw
        with rw._cs:
            writer, waiting = rw._writer, len(rw._q)
        return LockStatistics(writer is not None, owner_info(writer), waiting)

    def downgrade(self) -> None:
        """Atomically turn the caller's write hold into a read hold (or back into the
        upgradable hold after ``upgrade()``), admitting waiting readers but no writer.

        Raises:
            RuntimeError: the caller does not hold write, or holds it re-entrantly.
        """
        owner, home = caller()
        self._rw._downgrade(owner, home)


@final
class UpgradableLock(_View):
    """``rw.upgradable``: an upgradable read of a thread-safe :class:`RWLock`."""

    __slots__ = ()
    _mode = UPGRADABLE

    def locked(self) -> bool:
        """Return True if a task or thread holds the upgradable lock."""
        return self._rw._upgradable is not None

    async def upgrade(self) -> None:
        """Turn the caller's upgradable hold into the write hold once other readers leave.

        Raises:
            RuntimeError: the caller does not hold the upgradable lock.
            DeadlockError: the caller also holds a plain read lock.
        """
        self._check_holder(async_caller()[0])
        await self._rw._acquire_async(UPGRADE)

    def upgrade_nowait(self) -> None:
        """:meth:`upgrade` without waiting: ``anyio.WouldBlock`` while other readers hold."""
        self._check_holder(caller()[0])
        self._rw._acquire_nowait(UPGRADE)

    def upgrade_blocking(self, timeout: float | None = None) -> bool:
        """:meth:`upgrade` from a thread; False on timeout (the upgradable hold is kept)."""
        self._check_holder(thread_caller())
        return self._rw._acquire_blocking(UPGRADE, timeout)

    def _check_holder(self, owner: Any) -> None:
        rw = self._rw
        if rw._upgradable is not owner or rw._writer is owner:
            raise not_holding("upgradable.upgrade()", rw, owner, (rw._upgradable,))
