"""``aiolocks.Lock``: a FIFO mutex with hand-off, owner tracking and broken-owner detection."""

from __future__ import annotations

from collections.abc import Awaitable
from types import TracebackType
from typing import Any, final

from anyio import BrokenResourceError, LockStatistics, WouldBlock

from ._backend import READY, TRIO, resolve_task, task_info, task_of, thread_mark, unwatch, watch
from ._common import (
    AsyncOnly,
    check_flag,
    held_checkpoint,
    lock_broken,
    not_holding,
    repr_name,
    set_name,
    who,
)
from ._cvport import OneLevelPort
from ._exceptions import DeadlockError
from ._queue import OwnerQueue, Waiter, new_waiter

__all__ = ["Lock"]


@final
class Lock(OneLevelPort, AsyncOnly):
    """A mutual-exclusion lock for asyncio and trio tasks, FIFO and not re-entrant.

    Use it where ``asyncio.Lock``, ``anyio.Lock`` or ``trio.Lock`` would do, when you also want
    the same lock on both backends, an owner that can be inspected, an immediate
    :class:`~aiolocks.DeadlockError` instead of a hang when the holder asks again, and waiters
    that are told (:class:`anyio.BrokenResourceError`) when the holder exits without releasing.

    Ownership is handed to the first waiter at release, so no task can barge in ahead of the
    queue.  ``acquire()`` is a checkpoint (a cancel point and a schedule point) unless the lock
    was made with ``fast_acquire=True``: then the uncontended path does not yield to the event
    loop (on asyncio it is not a cancel point either, like ``asyncio.Lock``; on trio it still
    is).  A contended acquire always waits, and is therefore cancellable.

    The lock can be created outside any event loop (a module-level global) and is usable from
    whichever loop first uses it; it may move to a new loop once idle.  It is not thread-safe.

    Args:
        fast_acquire: skip the schedule point on the uncontended path.
        name: shown in ``repr`` and in diagnostics.

    Example::

        lock = aiolocks.Lock()

        async def update():
            async with lock:
                await write_state()

    .. versionadded:: 0.1
    """

    # Invariants:
    #   _q is not None    implies  _owner is not None   (waiters only queue behind an owner)
    #   _q is not None    implies  len(_q) > 0, or _q.broken, or the owner is the last waiter
    #                                  it granted (an empty queue is dropped at their release)
    #   _q.watch_token    is set while _q has waiters (so an exiting owner breaks the lock)
    # (checked by aiolocks._introspect.check_invariants after every step of the tests)
    __slots__ = ("__weakref__", "_fast", "_loop", "_owner", "_q", "_tid")

    def __init__(self, *, fast_acquire: bool = False, name: str | None = None) -> None:
        # False, or with fast_acquire: True on an asyncio loop, None elsewhere (see Bindable)
        self._fast: bool | None = None if check_flag(fast_acquire, "fast_acquire") else False
        set_name(self, name)
        self._owner: Any = None
        self._q: OwnerQueue | None = None
        self._loop: Any = None  # the event loop (or TRIO) it is bound to
        self._tid: Any = None  # thread_mark() of the thread running it

    def __repr__(self) -> str:
        state = "unlocked" if self._owner is None else f"locked by {who(self._owner)}"
        q = self._q  # (not None: there is an owner)
        if q:
            state += f", {len(q)} waiting"
        if q is not None and q.broken:
            state += ", broken"
        return f"<aiolocks.Lock{repr_name(self)} {state} at {id(self):#x}>"

    # -- acquiring (debug mode swaps in wrappers of the public methods: see _queue.py) ----

    def __aenter__(self) -> Awaitable[None]:
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            task = resolve_task(self)
        if self._owner is None and self._q is None:
            self._owner = task
            if self._fast:
                return READY
            return held_checkpoint(self._loop, self._undo_acquire, task, self._fast)
        return self._acquire_contended(task)

    async def acquire(self) -> None:
        """Acquire the lock, waiting (FIFO) while another task holds it.

        Raises:
            DeadlockError: the calling task already holds the lock.
            anyio.BrokenResourceError: the holder exited without releasing the lock.
        """
        await self.__aenter__()

    def acquire_nowait(self) -> None:
        """Acquire the lock if that is possible without waiting.

        Raises:
            anyio.WouldBlock: another task holds the lock or waits for it.
            DeadlockError: the calling task already holds the lock.
        """
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            task = resolve_task(self)
        if self._owner is None and self._q is None:
            self._owner = task
            return
        if self._owner is task:
            raise DeadlockError(f"{self!r} is already held by this task (it is not re-entrant)")
        raise WouldBlock

    async def _acquire_contended(self, task: Any) -> None:
        if self._owner is task:
            raise DeadlockError(f"{self!r} is already held by this task (it is not re-entrant)")
        q = self._q
        if q is None or q.watch_token is None:  # (else: the owner is watched, not broken)
            q = self._behind_owner()
        if q.broken:
            raise BrokenResourceError(self._broken_message())
        waiter = new_waiter(self._loop, self, task, 0, 0)
        q[waiter] = None
        try:
            await waiter
        except BaseException:
            waiter.abandon()
            raise

    def _behind_owner(self) -> OwnerQueue:
        """The queue to wait in, its owner watched (which may find it gone: the lock breaks)."""
        q = self._q
        if q is None:
            q = self._q = OwnerQueue.new()
        if q.watch_token is None and not q.broken:
            if self._loop is not TRIO:  # (the asyncio case of watch() written out)
                self._owner.add_done_callback(cb := self._owner_exited)
                q.watch_token = cb
            else:
                q.watch_token = watch(self._loop, self._owner, self._owner_exited)
        return q

    def _undo_acquire(self, task: Any) -> None:
        if self._owner is task:
            self._release()

    # -- releasing --------------------------------------------------------------------------

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        owner = self._owner
        # No thread check (release() has one): ``async with`` leaves in the thread it entered.
        if owner is not None and owner is task_of(self._loop):
            if self._q is None:
                self._owner = None
            else:
                self._release()
            return READY
        self.release()
        return READY

    def release(self) -> None:
        """Release the lock, handing it to the first waiter if there is one.

        Synchronous: never awaits, never a checkpoint, safe in ``finally`` blocks and
        cancelled scopes.

        Raises:
            RuntimeError: the calling task does not hold the lock (nothing is changed).
        """
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            task = resolve_task(self)
        if self._owner is not task:
            raise not_holding("release()", self, task, (self._owner,))
        self._release()

    def _release(self) -> None:
        q = self._q
        if q is None:
            self._owner = None
            return
        token = q.watch_token
        if token is not None:
            q.watch_token = None
            if self._loop is not TRIO:  # (the asyncio case of unwatch() written out)
                self._owner.remove_done_callback(token)
            else:
                unwatch(self._owner, token)
        waiter = q.popleft() if q else None
        if waiter is None:  # nobody waits (or the lock is broken: the queue stays, failing)
            self._owner = None
            if not q.broken:
                self._q = None
                q.recycle()
            return
        self._owner = waiter.task
        if q:  # the new owner is watched while tasks wait behind it
            self._behind_owner()
        # else the emptied queue stays until the new owner releases (a ping-pong between two
        # tasks, a condition's, would otherwise drop and take a queue at every turn)
        waiter.grant()

    # -- the queue's callbacks ---------------------------------------------------------------

    def _waiter_gone(self, waiter: Waiter) -> None:
        q = self._q
        assert q is not None
        q.remove(waiter)
        if not q and not q.broken:
            unwatch(self._owner, q.watch_token)
            self._q = q.watch_token = None
            q.recycle()

    def _grant_abandoned(self, waiter: Waiter) -> None:
        self._undo_acquire(waiter.task)

    # -- the condition port (see _cvport.py; OneLevelPort does the rest) ----------------------

    def _cv_holds(self, task: Any, waiting: bool = False) -> bool:
        return self._owner is task

    def _cv_release(self, task: Any) -> int:
        if self._q is None:  # (the common case of _release() written out: a wait per item)
            self._owner = None
        else:
            self._release()
        return 1

    def _cv_repark(self, waiter: Waiter) -> bool:
        """Queue a waiter that already sleeps (a notified Condition waiter, never a lost one):
        it wakes up holding the lock."""
        waiter.home = self
        if self._owner is None:  # a cancelled wait() just passed its notification on
            self._owner = waiter.task
            waiter.grant()
            return True
        self._behind_owner()[waiter] = None
        return True

    # -- an owner that exits holding the lock -----------------------------------------------

    def _owner_exited(self, task: Any) -> None:
        q = self._q
        if self._owner is task and q is not None:
            q.break_owned(self._broken_message())
            lock_broken(self, True)

    def _broken_message(self) -> str:
        return f"{self!r}: the task holding it ({who(self._owner)}) exited without releasing it"

    # -- inspection -------------------------------------------------------------------------

    def locked(self) -> bool:
        """Return True if some task holds the lock."""
        return self._owner is not None

    def statistics(self) -> LockStatistics:
        """Return anyio's :class:`~anyio.LockStatistics` for this lock.

        Fields: ``locked`` (bool), ``owner`` (:class:`anyio.TaskInfo` of the holder or None),
        ``tasks_waiting`` (tasks queued in ``acquire()``).
        """
        return LockStatistics(
            self._owner is not None, task_info(self._owner), len(self._q) if self._q else 0
        )

    def _in_use(self) -> bool:
        return self._owner is not None or self._q is not None
