"""``aiolocks.threadsafe.Condition``: wait / notify for threads and tasks of any event loops."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar, final

from anyio import BrokenResourceError

from .._backend import READY
from .._common import name_of, not_holding, set_name
from .._types import ConditionStatistics
from ._core import (
    FAILED,
    THREAD,
    WAITING,
    Waiter,
    async_caller,
    caller,
    is_trio,
    refuse_in_loop,
    thread_caller,
)
from ._lock import Lock
from ._rwlock import WriteLock

__all__ = ["Condition"]

T = TypeVar("T")


@final
class Condition:
    """A condition variable over a thread-safe :class:`Lock` or ``rw.writer``.

    Tasks of any event loop wait with ``await cond.wait()``, threads with
    ``cond.wait_blocking(timeout)``; ``notify(n)`` / ``notify_all()`` wake either kind, in the
    order they began to wait.  A notified waiter moves straight into the lock's queue and wakes
    up holding the lock (no second round of contention, no lost wake-up).

    ``wait()`` always returns or raises holding the lock again, also when cancelled (it then
    waits for the lock, shielded, before the cancellation propagates); a notification that
    reached a waiter cancelled before it could act is passed on to the next waiter.  A
    re-entrant writer's ``wait()`` releases every level and restores them; a writer that also
    holds read levels, or whose write hold came from ``upgrade()``, is refused with
    ``RuntimeError`` (the wait could not give those up), as by :class:`aiolocks.Condition`.
    If the lock breaks (its holder exited holding it), waiters get
    :class:`anyio.BrokenResourceError` without it.

    Args:
        lock: an :class:`aiolocks.threadsafe.Lock` or ``rw.writer`` of an
            :class:`aiolocks.threadsafe.RWLock`; a new ``Lock`` by default.
        name: shown in ``repr``.

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "_prim", "_q", "lock")

    def __init__(self, lock: Lock | WriteLock | None = None, *, name: str | None = None) -> None:
        if lock is None:
            lock = Lock()
        if isinstance(lock, Lock):
            self._prim: Any = lock
        elif isinstance(lock, WriteLock):
            self._prim = lock._rw
        else:
            raise TypeError(
                "aiolocks.threadsafe.Condition needs an aiolocks.threadsafe.Lock or the writer "
                f"of an aiolocks.threadsafe.RWLock, not {type(lock).__name__}"
            )
        set_name(self, name)
        #: The lock this condition is over.
        self.lock: Lock | WriteLock = lock
        self._q: OrderedDict[Waiter, None] = OrderedDict()  # waiting for a notification
        with self._prim._cs:
            self._prim._conds.append(self)

    def __repr__(self) -> str:
        name = name_of(self)
        name = f" {name!r}" if name else ""
        return f"<aiolocks.threadsafe.Condition{name} {len(self._q)} waiting over {self.lock!r}>"

    # -- the lock's shape, delegated --------------------------------------------------------------

    def __aenter__(self) -> Awaitable[None]:
        return self.lock.__aenter__()

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        if isinstance(exc, BrokenResourceError) and not self._holds(async_caller()[0]):
            return READY  # wait() raised it without the lock: nothing to release
        return self.lock.__aexit__(exc_type, exc, tb)

    def _holds(self, owner: Any) -> bool:
        with self._prim._cs:
            return bool(self._prim._cv_holds(owner))

    def __enter__(self) -> None:
        self.lock.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, BrokenResourceError) and not self._holds(thread_caller()):
            return
        self.lock.__exit__(exc_type, exc, tb)

    async def acquire(self) -> None:
        """Acquire the underlying lock (see :meth:`Lock.acquire`)."""
        await self.lock.acquire()

    def acquire_blocking(self, timeout: float | None = None) -> bool:
        """Acquire the underlying lock from a thread (see :meth:`Lock.acquire_blocking`)."""
        return self.lock.acquire_blocking(timeout)

    def acquire_nowait(self) -> None:
        """Acquire the underlying lock without waiting (``anyio.WouldBlock`` if held)."""
        self.lock.acquire_nowait()

    def release(self) -> None:
        """Release the underlying lock."""
        self.lock.release()

    def locked(self) -> bool:
        """Return True if the underlying lock is held."""
        return self.lock.locked()

    def statistics(self) -> ConditionStatistics:
        """``tasks_waiting`` (tasks and threads waiting for a notification) and the lock's
        statistics."""
        return ConditionStatistics(len(self._q), self.lock.statistics())

    # -- waiting ----------------------------------------------------------------------------------

    def _begin(self, owner: Any, kind: int, where: Any, call: str) -> tuple[Waiter, Any]:
        """Release every level of the caller's hold and queue it for a notification."""
        prim = self._prim
        with prim._cs:
            refused = prim._cv_refuse(owner)
            taken = None if refused else prim._cv_take(owner)
            if taken is not None:
                levels, mode = taken
                waiter = Waiter(prim, owner, mode, kind, where)
                self._q[waiter] = None
                granted = prim._admit()
        if refused:
            raise RuntimeError(f"{call} on a condition over {self.lock!r}: {refused}")
        if taken is None:
            raise not_holding(call, self, owner)
        prim._wake(granted)
        return waiter, levels

    def _end(self, waiter: Waiter, levels: Any) -> bool:
        """After the grant (or a failure): restore the levels; True unless failed."""
        if waiter.state == FAILED:
            assert waiter.error is not None
            raise waiter.error
        with self._prim._cs:
            self._prim._cv_restore(waiter.owner, levels)
        return True

    def _give_up(self, waiter: Waiter, pass_on: bool = True) -> tuple[bool, bool]:
        """The waiter stops waiting for a notification (cancelled or timed out).

        Returns ``(wake_coming, notified)``: whether a wake-up is still on its way to it (it
        is queued for the lock, or was granted or failed and woken meanwhile), and whether it
        had been notified.  Otherwise it holds the lock now (granted at once).
        """
        prim = self._prim
        with prim._cs:
            if waiter in self._q:  # not notified: queue for the lock itself
                del self._q[waiter]
                return self._requeue(waiter), False
            # Notified, but leaving before it could act on it: the next waiter gets it (it may
            # wake for nothing, which wait()'s callers allow for; a lost wake-up could hang).
            if pass_on:
                self._notify(1)
            return True, True

    def _requeue(self, waiter: Waiter) -> bool:
        """Move ``waiter`` into the lock's queue (``_cs`` held); False if granted at once."""
        prim = self._prim
        if prim._broken is not None:
            waiter.state = FAILED
            waiter.error = BrokenResourceError(prim._broken)
            return False
        prim._q[waiter] = None
        for w in prim._admit():
            if w is waiter:
                return False
            w.wake()  # pragma: no cover - only the requeued waiter can be admitted here
        return True

    async def wait(self) -> None:
        """Release the lock, wait for a notification, and return holding the lock again.

        Cancellation: ``wait()`` still takes the lock back (shielded) before the cancellation
        propagates, and a notification it received but could not act on goes to the next
        waiter.

        Raises:
            RuntimeError: the calling task does not hold the lock, or (over ``rw.writer``)
                also holds read levels or the upgradable lock, which the wait could not give
                up; nothing changes.
            anyio.BrokenResourceError: the lock broke while waiting (not held on return).
        """
        task, home = async_caller()
        if is_trio(home):
            waiter, levels = self._begin(task, 1, home, "wait()")
            await self._park_trio(waiter, levels)
        else:
            waiter, levels = self._begin(task, 0, home, "wait()")
            await self._park_asyncio(waiter, home, levels)
        self._end(waiter, levels)

    async def _park_asyncio(self, waiter: Waiter, loop: Any, levels: Any) -> None:
        fut = waiter.park = loop.create_future()
        try:
            await fut
        except asyncio.CancelledError:
            self._give_up(waiter)
            await _shielded_asyncio(waiter, loop)
            self._end(waiter, levels)
            raise

    async def _park_trio(self, waiter: Waiter, levels: Any) -> None:
        trio = sys.modules["trio"]

        def abort(raise_cancel: Any) -> Any:
            if self._give_up(waiter)[0]:
                return trio.lowlevel.Abort.FAILED  # it returns holding; cancelled later
            return trio.lowlevel.Abort.SUCCEEDED  # holds now: restored below

        try:
            await trio.lowlevel.wait_task_rescheduled(abort)
        except trio.Cancelled:
            self._end(waiter, levels)
            raise

    def wait_blocking(self, timeout: float | None = None) -> bool:
        """:meth:`wait` from a thread: True if notified, False on timeout.

        Returns holding the lock in both cases.

        Raises:
            RuntimeError: the calling thread does not hold the lock, or runs an event loop,
                or holds more than :meth:`wait` can give up (see there).
            anyio.BrokenResourceError: the lock broke while waiting (not held on return).
        """
        refuse_in_loop(self)
        park = _allocate_locked()
        waiter, levels = self._begin(thread_caller(), THREAD, park, "wait_blocking()")
        notified = bool(park.acquire(True, -1 if timeout is None else max(timeout, 0.0)))
        if not notified:
            # (notified meanwhile: it returns True and acts on it, nothing to pass on)
            wake_coming, notified = self._give_up(waiter, pass_on=False)
            if wake_coming:
                park.acquire()  # the lock's grant (or its failure)
        self._end(waiter, levels)
        return notified

    async def wait_for(self, predicate: Callable[[], T]) -> T:
        """Wait until ``predicate()`` is true (checked holding the lock); return its value."""
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    def wait_for_blocking(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """:meth:`wait_for` from a thread; on timeout returns the predicate's last (false)
        value.  Returns holding the lock."""
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.wait_blocking(left)
            result = predicate()
        return result

    # -- notifying --------------------------------------------------------------------------------

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters (oldest first); each wakes holding the lock, in turn.

        Raises:
            RuntimeError: the caller does not hold the lock.
        """
        owner = caller()[0]
        with self._prim._cs:
            held = self._prim._cv_holds(owner)
            if held:
                self._notify(n)
        if not held:
            raise not_holding("notify()", self, owner)

    def notify_all(self) -> None:
        """Wake every waiter (see :meth:`notify`)."""
        self.notify(sys.maxsize)

    def _notify(self, n: int) -> None:
        while n > 0 and self._q:
            waiter, _ = self._q.popitem(last=False)
            self._requeue(waiter)  # the notifier holds the lock: never granted here
            if waiter.state == FAILED:
                waiter.wake()
            n -= 1

    def _lock_broken(self) -> list[Waiter]:
        """The lock broke (``_cs`` held): fail every waiter; returns them to wake."""
        out = []
        while self._q:
            waiter, _ = self._q.popitem(last=False)
            waiter.state = FAILED
            waiter.error = BrokenResourceError(str(self._prim._broken))
            out.append(waiter)
        return out


async def _shielded_asyncio(waiter: Waiter, loop: Any) -> None:
    """Wait for the lock's grant, through further cancellations (wait() returns holding)."""
    fut = waiter.park = loop.create_future()
    # A grant made before the new future was in place found the old one: state tells.
    while waiter.state == WAITING and not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            continue


def _allocate_locked() -> Any:
    from _thread import allocate_lock

    park = allocate_lock()
    park.acquire()
    return park
