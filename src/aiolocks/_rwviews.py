"""The three lock-shaped views of an :class:`~aiolocks.RWLock`: ``rw.reader``, ``rw.writer``
and ``rw.upgradable``.

Thin front ends over the state that ``_rwlock.py`` keeps on the RWLock: each view is a lock with
the anyio/trio shape, and its uncontended ``__aenter__``/``__aexit__``/``release`` are written
out inline (they touch only the RWLock's own slots; a benchmark showed the call they save).
Everything else goes to the RWLock's ``_enter``, ``_wait`` and ``_release_*`` methods.  The
views read the RWLock's slots but never import its module at run time (it imports this one).

Debug mode (``aiolocks.debug.enable()``) swaps instrumented versions of the views' methods into
these classes; nothing here checks for it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

from anyio import LockStatistics, WouldBlock

from ._backend import READY, resolve_task, task_info, task_of, thread_mark
from ._common import AsyncOnly, held_checkpoint, who
from ._exceptions import DeadlockError
from ._queue import Waiter
from ._types import RWLockStatistics

if TYPE_CHECKING:
    from ._rwlock import RWLock, _RWState

__all__ = ["READ", "UPGRADABLE", "UPGRADE", "WRITE", "ReadLock", "UpgradableLock", "WriteLock"]

#: What a request asks an RWLock for (a waiter's ``mode``).
READ, WRITE, UPGRADABLE, UPGRADE = 0, 1, 2, 3
_MODE_NAMES = ("read", "write", "upgradable", "upgrade")


class _View(AsyncOnly):
    """What the three views share: the misuse guards and ``acquire``."""

    __slots__ = ("__weakref__", "_rw")

    _mode = READ

    def __init__(self, rw: RWLock) -> None:
        self._rw = rw

    def __aenter__(self) -> Awaitable[None]:
        rw = self._rw
        return rw._enter(rw._me(), self._mode)

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        self.release()
        return READY

    async def acquire(self) -> None:
        """Acquire this side of the lock, waiting while that is not possible.

        Raises:
            DeadlockError: the request could never be granted (see :class:`RWLock`).
            anyio.BrokenResourceError: a task holding a conflicting hold exited.
        """
        await self.__aenter__()

    def acquire_nowait(self) -> None:
        """Acquire without waiting.  Never jumps the queue (except re-entrant acquisitions).

        Raises:
            anyio.WouldBlock: the lock would have to wait.
            DeadlockError: the request could never be granted.
        """
        rw = self._rw
        task = rw._me()
        if self._mode == READ:
            granted = rw._try_read(task)
        elif self._mode == WRITE:
            granted = rw._try_write(task)
        else:
            granted = rw._try_upgradable(task)
        if not granted:
            raise WouldBlock

    def release(self) -> None:  # pragma: no cover - every view overrides it
        """Release what this view's acquisition holds."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{_MODE_NAMES[self._mode]} side of {self._rw!r}>"


@final
class ReadLock(_View):
    """The read side of an :class:`RWLock` (``rw.reader``); shared among tasks.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __aenter__(self) -> Awaitable[None]:
        rw = self._rw
        task = task_of(rw._loop)
        if task is None or rw._tid != thread_mark():
            task = resolve_task(rw)
        if rw._writer is None and rw._slow is None:
            readers = rw._readers
            if readers is None:
                readers = rw._readers = {}
            if task in readers:
                readers[task] += 1
            else:
                readers[task] = 1
            if rw._fast:
                return READY
            return held_checkpoint(rw._loop, rw._release_read, task, rw._fast)
        return rw._enter(task, READ)

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        rw = self._rw
        readers = rw._readers
        if rw._slow is None and readers:  # no thread check: as in WriteLock.__aexit__
            task = task_of(rw._loop)
            n = readers.pop(task, 0)  # one dict operation for the common case (one level)
            if n == 1:
                return READY
            if n:
                readers[task] = n  # back as it was: release() takes one level off
        self.release()
        return READY

    def release(self) -> None:
        """Release one read level of the calling task.

        Raises:
            RuntimeError: the calling task holds no read lock (nothing is changed).
        """
        rw = self._rw
        task = task_of(rw._loop)
        if task is None or rw._tid != thread_mark():
            task = resolve_task(rw)
        readers = rw._readers
        if rw._slow is None and readers:
            n = readers.get(task, 0)
            if n == 1:
                del readers[task]
                return
            if n > 1:
                readers[task] = n - 1
                return
        rw._release_read(task)

    def locked(self) -> bool:
        """True if any task holds a read lock (the upgradable holder and a writer that took
        read levels on top of its write hold count)."""
        return bool(self._rw._read_holders())

    def statistics(self) -> RWLockStatistics:
        """The whole lock's :class:`RWLockStatistics`."""
        return self._rw.statistics()

    # -- the condition port (see _condition.py): a reader waits by letting go of its read
    # hold, as Go's sync.NewCond(rw.RLocker()); a writer excludes readers, so it may notify

    _cv_mode = "read"

    def _cv_holds(self, task: Any, waiting: bool = False) -> bool:
        rw = self._rw
        if rw._readers and task in rw._readers:
            return True
        return not waiting and rw._writer is task

    def _cv_release(self, task: Any) -> int:
        rw = self._rw
        readers = rw._readers
        assert readers is not None  # _cv_holds(task, waiting=True) said so
        levels = readers[task]
        readers[task] = 1
        rw._release_read(task, keep_mark=True)
        return levels

    def _cv_restore(self, task: Any, levels: int) -> None:
        readers = self._rw._readers
        if levels > 1 and readers is not None:
            readers[task] = levels

    def _cv_repark(self, waiter: Waiter) -> bool:
        return False  # no queue to join: a woken reader takes its read hold back itself


@final
class WriteLock(_View):
    """The write side of an :class:`RWLock` (``rw.writer``); exclusive.

    .. versionadded:: 0.1
    """

    __slots__ = ()
    _mode = WRITE

    def __aenter__(self) -> Awaitable[None]:
        rw = self._rw
        task = task_of(rw._loop)
        if task is None or rw._tid != thread_mark():
            task = resolve_task(rw)
        if rw._writer is None and rw._slow is None and not rw._readers:
            rw._writer = task
            rw._version += 1
            if rw._fast:
                return READY
            return held_checkpoint(rw._loop, rw._release_write, task, rw._fast)
        writer = rw._writer
        if writer is not None and writer is not task:
            return rw._wait(task, WRITE)  # held by another writer: nothing to decide, wait
        if rw._try_write(task):
            return held_checkpoint(rw._loop, rw._release_write, task, rw._fast)
        return rw._wait(task, WRITE)

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        rw = self._rw
        writer = rw._writer
        # No thread check here (release() has one): ``async with`` leaves in the task, and so
        # in the thread, that entered it.
        if writer is not None and writer is task_of(rw._loop):
            if rw._slow is None:
                rw._writer = None
                rw._version += 1
            else:
                rw._release_write(writer)
            return READY
        self.release()
        return READY

    def release(self) -> None:
        """Release one write level of the calling task, handing the lock on if it was the last.

        After :meth:`downgrade`, it releases the read level the write hold turned into.

        Raises:
            RuntimeError: the calling task does not hold the write lock (nothing is changed).
        """
        rw = self._rw
        task = task_of(rw._loop)
        if task is None or rw._tid != thread_mark():
            task = resolve_task(rw)
        if rw._writer is task and rw._slow is None:
            rw._writer = None
            rw._version += 1
            return
        rw._release_write(task)

    def downgrade(self) -> None:
        """Atomically turn the caller's write hold into a read hold.

        Waiting readers are admitted at once; no writer is.  After ``rw.upgradable.upgrade()``
        it returns the caller to the upgradable hold instead.

        The write acquisition now stands for the read hold it became: leaving its
        ``async with rw.writer:`` block (or calling ``rw.writer.release()``) releases that read
        level, so both of these end holding nothing::

            async with rw.writer:
                cache.update(await load())
                rw.writer.downgrade()        # readers may come in; no writer can
                await publish(cache)         # still reading a consistent cache

            await rw.writer.acquire()
            try:
                rw.writer.downgrade()
                ...
            finally:
                rw.writer.release()          # releases the read hold

        Raises:
            RuntimeError: the caller does not hold the write lock, or holds it re-entrantly.
        """
        rw = self._rw
        rw._downgrade(rw._me())

    async def acquire_if_unchanged(self, stamp: int) -> bool:
        """Take the write lock only if no write happened since ``stamp``.

        The compare-and-set of async read-modify-write code: read optimistically (or under the
        read lock, then release it), ``await`` whatever you need, then commit only if nothing
        changed meanwhile::

            stamp = rw.optimistic_read()
            new = await compute(cache.value)          # no lock held across the await
            if await rw.writer.acquire_if_unchanged(stamp):
                try:
                    cache.value = new
                finally:
                    rw.writer.release()
            else:
                ...                                   # somebody wrote: start over

        Returns False at once, holding nothing, if the lock was written since ``stamp``, is
        write-held now (also by the caller: its own writes count), or a writer or an
        ``upgrade()`` is already queued (it would write first).  Otherwise waits for the write
        lock like :meth:`acquire` and returns True holding it, unless another writer got it
        first (then it releases it and returns False).  Cancelled while waiting, it holds
        nothing.

        Raises:
            DeadlockError: the caller holds a read lock or the upgradable lock (whatever the
                stamp: the request itself could never be granted).

        .. versionadded:: 0.1
        """
        rw = self._rw
        s = rw._slow
        if rw._readers or s is not None:
            task = rw._me()
            readers = rw._readers
            if rw._writer is not task and (
                (readers and task in readers) or (s is not None and s.upgrader is task)
            ):
                rw._try_write(task)  # raises the DeadlockError that explains it
        if stamp != rw._version or stamp & 1:
            return False
        if s is not None and (s.write_queue.writers or s.upgrading is not None):
            return False  # a queued writer (or a pending upgrade) will write first
        await self.acquire()
        if rw._version == stamp + 1:  # ours is the only write acquisition since the stamp
            return True
        self.release()
        return False

    def locked(self) -> bool:
        """True if some task holds the write lock."""
        return self._rw._writer is not None

    def statistics(self) -> LockStatistics:
        """anyio's :class:`~anyio.LockStatistics` shape: (locked, owner, tasks_waiting)."""
        rw = self._rw
        s = rw._slow
        waiting = 0 if s is None else len(s.write_queue) + (s.upgrading is not None)
        return LockStatistics(rw._writer is not None, task_info(rw._writer), waiting)

    # -- the condition port (see _condition.py) -------------------------------------------

    _cv_mode = "write"

    def _cv_holds(self, task: Any, waiting: bool = False) -> bool:
        return self._rw._writer is task

    def _cv_release(self, task: Any) -> int:
        rw, levels = self._rw, 1
        s = rw._slow
        if s is not None:
            if s.upgraded:
                raise RuntimeError(
                    f"wait() on a condition over {self!r}: the write hold came from upgrade(); "
                    "wait on a condition over rw.writer with a plain write hold"
                )
            if s.writer_reads:
                raise RuntimeError(
                    f"wait() on a condition over {self!r}: this task holds read levels on top "
                    "of its write hold; release them before waiting"
                )
            levels += s.extra_write_levels
            s.extra_write_levels = 0
        rw._release_write(task)
        return levels

    def _cv_restore(self, task: Any, levels: int) -> None:
        if levels > 1:
            self._rw._state().extra_write_levels = levels - 1

    def _cv_repark(self, waiter: Waiter) -> bool:
        """Queue a sleeping waiter for the write lock (a notified Condition waiter, never a
        lost one): it wakes up holding it."""
        rw = self._rw
        s = rw._state()
        s.ticket += 1
        waiter.home = rw
        waiter.mode = WRITE
        waiter.ticket = s.ticket
        s.write_queue.append(waiter)
        if rw._writer is None:  # a cancelled wait() just passed its notification on
            rw._dispatch(s, False)
            rw._maybe_idle(s)
        else:
            rw._watch_holders(s)
        return True


@final
class UpgradableLock(_View):
    """The upgradable-read side of an :class:`RWLock` (``rw.upgradable``).

    At most one task holds it; it coexists with plain readers and excludes writers and other
    upgradable holders.  ``await upgrade()`` turns it into the write hold once the other readers
    have left (new readers queue behind it), so two upgraders can never deadlock each other.

    .. versionadded:: 0.1
    """

    __slots__ = ()
    _mode = UPGRADABLE

    def release(self) -> None:
        """Release the upgradable hold (the write hold, after ``upgrade()``).

        Raises:
            RuntimeError: the calling task does not hold it (nothing is changed).
        """
        rw = self._rw
        rw._release_upgradable(rw._me())

    def _check_upgrade(self, task: Any) -> _RWState:
        rw = self._rw
        s = rw._slow
        if s is None or s.upgrader is not task:
            raise RuntimeError(f"{rw!r}: upgrade() by {who(task)}, which does not hold it")
        if s.upgraded:
            raise RuntimeError(f"{rw!r}: upgrade() by {who(task)}, which already upgraded")
        if rw._readers and task in rw._readers:
            raise DeadlockError(
                f"{rw!r}: upgrade() by a task that also holds a plain read lock would wait "
                "for itself forever; release the read lock first"
            )
        return s

    def _upgrade_now(self, s: _RWState, task: Any) -> bool:
        rw = self._rw
        if rw._readers:
            return False
        rw._writer = task
        s.upgraded = True
        rw._version += 1
        return True

    async def upgrade(self) -> None:
        """Atomically turn the upgradable hold into the write hold.

        Waits for the plain readers to leave; readers arriving meanwhile queue behind it.  If
        cancelled while waiting, the caller keeps the upgradable hold.

        Raises:
            RuntimeError: the caller does not hold the upgradable lock.
            DeadlockError: the caller also holds a plain read lock.
            anyio.BrokenResourceError: a reader exited holding the lock.
        """
        rw = self._rw
        task = rw._me()
        s = self._check_upgrade(task)
        if self._upgrade_now(s, task):
            await held_checkpoint(rw._loop, rw._downgrade, task, rw._fast)
            return
        await rw._wait(task, UPGRADE)

    def upgrade_nowait(self) -> None:
        """Upgrade if no other reader holds the lock.

        Raises:
            anyio.WouldBlock: other readers hold the lock.
        """
        rw = self._rw
        task = rw._me()
        if not self._upgrade_now(self._check_upgrade(task), task):
            raise WouldBlock

    def locked(self) -> bool:
        """True if some task holds the upgradable lock."""
        s = self._rw._slow
        return s is not None and s.upgrader is not None

    def statistics(self) -> RWLockStatistics:
        """The whole lock's :class:`RWLockStatistics`."""
        return self._rw.statistics()
