"""``aiolocks.threadsafe.Lock``: a FIFO mutex shared by threads and tasks of any event loops."""

from __future__ import annotations

from collections.abc import Awaitable
from types import TracebackType
from typing import Any, final

from anyio import LockStatistics, WouldBlock

from .._backend import READY
from .._common import not_holding, set_name
from .._exceptions import DeadlockError
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

__all__ = ["Lock"]


@final
class Lock(Primitive):
    """A mutual-exclusion lock shared by threads and by tasks of any event loops, FIFO.

    Use it where state is shared between threads, between event loops running in different
    threads (asyncio, uvloop or trio), or between sync and async code: tasks take it with
    ``async with lock:`` (never blocking their event loop), threads with ``with lock:``.  Tasks
    and threads wait in one FIFO queue and the lock is handed to the first waiter at release,
    so nobody can barge in.  The owner is the task (async side) or the thread (blocking side).

    Not re-entrant: the holder asking again gets :class:`~aiolocks.DeadlockError` at once.  A
    task or thread that ends holding the lock breaks it: waiters get
    :class:`anyio.BrokenResourceError`.  ``acquire()`` is cancellation-safe, and a checkpoint
    (a cancel point and a schedule point) unless the lock was made with ``fast_acquire=True``:
    then an uncontended ``acquire()`` does not yield to the event loop (on asyncio it is not a
    cancel point either, like ``asyncio.Lock``; on trio it still is), as with
    :class:`aiolocks.Lock`.  A contended acquire always waits, and is therefore cancellable.
    ``acquire_blocking(timeout)`` gives up after ``timeout`` seconds.

    Slower than :class:`aiolocks.Lock`, which is for the tasks of one event loop.

    Args:
        fast_acquire: skip the schedule point on the uncontended async path (the blocking side
            never has one).
        name: shown in ``repr`` and in :func:`aiolocks.debug.snapshot`.

    Example::

        lock = aiolocks.threadsafe.Lock()

        def from_a_thread():
            with lock:
                state.update()

        async def from_any_task():
            async with lock:
                state.update()

    .. versionadded:: 0.1
    """

    # Invariants (with _cs held):
    #   _q non-empty      implies  _owner is not None  (waiters queue only behind an owner)
    #   _broken is set    implies  _owner is the dead owner, and _q is empty
    __slots__ = ("_home", "_owner")

    def __init__(self, *, fast_acquire: bool = False, name: str | None = None) -> None:
        super().__init__(fast_acquire)
        set_name(self, name)
        self._owner: Any = None
        self._home: Any = None  # the owner's loop or TrioToken (None for a thread)

    def __repr__(self) -> str:
        # No critical section: a repr may be built while it is held (error messages); it reads
        # three fields, each read atomically, which is enough for a description.
        owner, waiting, broken = self._owner, len(self._q), self._broken
        if owner is None:
            state = "unlocked"
        else:
            state = f"locked by {owner_name(owner)}"
            if waiting:
                state += f", {waiting} waiting"
            if broken:
                state += ", broken"
        return f"<aiolocks.threadsafe.Lock{self._name_part()} {state} at {id(self):#x}>"

    # -- async side -----------------------------------------------------------------------------

    def __aenter__(self) -> Awaitable[None]:
        task, home = async_caller()
        cs = self._cs
        cs.acquire()  # (not 'with': on this hot path it costs as much as the rest together)
        try:
            if self._owner is None:  # no owner implies nobody waits
                self._owner = task
                self._home = home
                if self._fast and home.__class__ is not _core._token_type:
                    return READY
                return self._checkpoint(task, home)  # type: ignore[no-any-return]
            if self._owner is not task:
                return self._park_async(task, home, None)  # type: ignore[no-any-return]
        finally:
            cs.release()
        raise self._deadlock()  # (repr takes _cs: never build a message while holding it)

    async def acquire(self) -> None:
        """Acquire the lock, waiting (FIFO, behind tasks and threads) while it is held.

        A checkpoint unless the lock was made with ``fast_acquire=True`` (see the class
        docstring); cancellable while it waits, and a cancelled acquire holds nothing.

        Raises:
            DeadlockError: the calling task already holds the lock.
            anyio.BrokenResourceError: the holder exited without releasing it.
        """
        await self.__aenter__()

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        self._release(async_caller()[0])
        return READY

    # -- blocking side ----------------------------------------------------------------------------

    def acquire_blocking(self, timeout: float | None = None) -> bool:
        """Acquire the lock from a thread, blocking only that thread; FIFO with tasks.

        Args:
            timeout: give up after this many seconds (None: wait as long as it takes).

        Returns:
            True if the lock is now held, False on timeout (nothing held).

        Raises:
            RuntimeError: the calling thread runs an event loop (use ``async with``).
            DeadlockError: the calling thread already holds the lock.
            anyio.BrokenResourceError: the holder exited without releasing it.
        """
        refuse_in_loop(self)
        owner = thread_caller()
        self._cs.acquire()
        if self._owner is None:
            self._owner = owner
            self._home = None
            self._cs.release()
            return True
        if self._owner is owner:
            self._cs.release()
            raise self._deadlock()
        if timeout is not None and timeout <= 0:
            self._cs.release()
            return False
        return self._park_blocking(owner, None, timeout).state == GRANTED

    def __enter__(self) -> None:
        self.acquire_blocking()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release(thread_caller())

    # -- either side ------------------------------------------------------------------------------

    def acquire_nowait(self) -> None:
        """Acquire the lock if that is possible without waiting (for the calling task or thread).

        Raises:
            anyio.WouldBlock: someone holds the lock (or the lock is broken).
            DeadlockError: the caller already holds the lock.
        """
        owner, home = caller()
        with self._cs:
            if self._owner is None:
                self._owner = owner
                self._home = home
                return
            mine = self._owner is owner
        if mine:
            raise self._deadlock()
        raise WouldBlock

    def release(self) -> None:
        """Release the lock, handing it to the first waiter (task or thread) if any.

        Synchronous: never awaits, never blocks on anything but the short internal critical
        section; callable from tasks and threads.

        Raises:
            RuntimeError: the calling task or thread does not hold the lock (nothing changes).
        """
        self._release(caller()[0])

    def _release(self, owner: Any) -> None:
        cs = self._cs
        cs.acquire()  # (not 'with', as in __aenter__)
        try:
            holder = self._owner
            if holder is owner:
                self._owner = None
                granted = self._admit() if self._q else None
        finally:
            cs.release()
        if holder is not owner:
            raise not_holding("release()", self, owner, (holder,))
        if granted:
            self._wake(granted)

    def _undo_owner(self, owner: Any) -> None:
        with self._cs:
            if self._owner is not owner:
                return
            self._owner = None
            granted = self._admit()
        self._wake(granted)

    def _deadlock(self) -> DeadlockError:
        return DeadlockError(f"{self!r} is already held by this caller (it is not re-entrant)")

    # -- the core's hooks (called with _cs held) ---------------------------------------------

    def _admit(self) -> list[Waiter]:
        if self._owner is not None or not self._q:
            return []
        waiter, _ = self._q.popitem(last=False)
        waiter.state = GRANTED
        self._owner = waiter.owner
        self._home = None if waiter.kind == THREAD else waiter.where
        return [waiter]

    def _undo_grant(self, waiter: Waiter) -> None:
        if self._owner is waiter.owner:
            self._owner = None

    def _blockers(self, waiter: Waiter) -> list[tuple[Any, Any]]:
        return [(self._owner, self._home)]

    def _broken_victims(self, owner: Any) -> list[Waiter] | None:
        if self._owner is not owner:
            return None
        return list(self._q)

    # -- inspection -------------------------------------------------------------------------------

    def locked(self) -> bool:
        """Return True if a task or thread holds the lock."""
        return self._owner is not None

    def statistics(self) -> LockStatistics:
        """Return anyio's :class:`~anyio.LockStatistics` for this lock.

        Fields: ``locked`` (bool), ``owner`` (:class:`anyio.TaskInfo` of the holding task, or
        one naming the holding thread; None when free), ``tasks_waiting`` (tasks and threads
        queued).
        """
        with self._cs:
            owner, waiting = self._owner, len(self._q)
        return LockStatistics(owner is not None, owner_info(owner), waiting)

    # -- the condition port (see _condition.py; called with _cs held) --------------------------

    def _cv_holds(self, owner: Any) -> bool:
        return self._owner is owner

    def _cv_take(self, owner: Any) -> tuple[int, Any] | None:
        if self._owner is not owner:
            return None
        self._owner = self._home = None
        return 1, None

    def _cv_restore(self, owner: Any, levels: int) -> None:
        pass

    def _collection_view(self) -> tuple[Any, bool]:
        """What ``LockCollection`` orders and de-duplicates by: (the lock, not shared)."""
        return self, False
