"""``aiolocks.Condition``: wait / notify over aiolocks' locks and anyio's, with no lost wake-ups."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar, final

import anyio
from anyio import BrokenResourceError

from ._backend import READY, resolve_task, task_of, thread_mark
from ._common import AsyncOnly, add_sleeper, repr_name, set_name, who
from ._cvport import port_of, retake
from ._lock import Lock
from ._queue import GRANTED, Waiter, WaitQueue, new_waiter
from ._rwlock import ReadLock, WriteLock
from ._types import ConditionStatistics

__all__ = ["Condition", "ConditionStatistics"]

T = TypeVar("T")


@final
class Condition(AsyncOnly):
    """Wait for a state change under a lock; notify the tasks waiting for it.

    Use it when tasks must sleep until shared state, protected by a lock, reaches some
    condition.  Always wait in a loop on the predicate (or use :meth:`wait_for`)::

        cond = aiolocks.Condition()

        async def consumer():
            async with cond:
                while not queue:
                    await cond.wait()
                job = queue.popleft()

        async def producer(job):
            async with cond:
                queue.append(job)
                cond.notify()

    Args:
        lock: the lock the condition uses: an :class:`aiolocks.Lock`, ``rw.writer``,
            ``rw.reader`` (a reader waits by releasing its read hold, as Go's
            ``sync.NewCond(rw.RLocker())``) or an :class:`anyio.Lock`.  Default: a new
            :class:`aiolocks.Lock`.
        name: shown in ``repr`` and diagnostics.

    The condition is also a lock-like object: ``async with cond``, ``acquire()``,
    ``acquire_nowait()``, ``release()`` and ``locked()`` act on its lock.

    Raises:
        TypeError: ``lock`` is not one of the supported locks.

    .. versionadded:: 0.1
    """

    # Invariants:
    #   every waiter in _q sleeps in wait() and has not been notified (home is the condition)
    #   a notified waiter is either reparked in the lock's queue (Lock, rw.writer) or granted
    __slots__ = ("__weakref__", "_host", "_lock", "_loop", "_port", "_q", "_registered", "_tid")

    def __init__(
        self,
        lock: Lock | WriteLock | ReadLock | anyio.Lock | None = None,
        *,
        name: str | None = None,
    ) -> None:
        if lock is None:
            lock = Lock(name=name)  # its own lock is reported under the condition's name
        self._port = port_of(lock)  # raises TypeError for anything else
        set_name(self, name)
        self._lock: Any = lock
        # the primitive whose breaking (a holder exited) wakes this condition's sleepers
        self._host: object = lock._rw if isinstance(lock, (WriteLock, ReadLock)) else lock
        self._q = WaitQueue()
        self._loop: Any = None
        self._tid: Any = None
        self._registered = False

    @property
    def lock(self) -> Lock | WriteLock | ReadLock | anyio.Lock:
        """The lock this condition uses."""
        return self._lock  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<aiolocks.Condition{repr_name(self)} over {self._lock!r}, {len(self._q)} waiting>"

    # -- the lock shape, delegated --------------------------------------------------------

    def __aenter__(self) -> Awaitable[None]:
        return self._lock.__aenter__()  # type: ignore[no-any-return]

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        if (
            exc_type is not None
            and issubclass(exc_type, BrokenResourceError)
            and not self._port._cv_holds(self._me())
        ):
            return READY  # wait() raised it without the lock: there is nothing to release
        return self._lock.__aexit__(exc_type, exc, tb)  # type: ignore[no-any-return]

    async def acquire(self) -> None:
        """Acquire the condition's lock."""
        await self._lock.acquire()

    def acquire_nowait(self) -> None:
        """Acquire the condition's lock without waiting (``anyio.WouldBlock`` if it cannot)."""
        self._lock.acquire_nowait()

    def release(self) -> None:
        """Release the condition's lock."""
        self._lock.release()

    def locked(self) -> bool:
        """Whether the condition's lock is held."""
        return bool(self._lock.locked())

    def statistics(self) -> ConditionStatistics:
        """Return a :class:`ConditionStatistics` snapshot."""
        return ConditionStatistics(len(self._q), self._lock.statistics())

    # -- waiting ------------------------------------------------------------------------------

    async def wait(self) -> None:
        """Release the lock, sleep until notified, and take the lock back.

        All of a re-entrant holder's levels are released and restored.  ``wait()`` always
        returns or raises with the lock held again, also when cancelled: taking the lock back
        is shielded from cancellation (as trio documents for its ``Condition``), so a cancelled
        ``wait()`` may finish its re-acquisition before the cancellation propagates.  A
        notification given to a waiter that is cancelled before it can act is passed on to the
        next waiter: no wake-up is lost.  A notified waiter of a condition over an
        :class:`aiolocks.Lock` or ``rw.writer`` is moved straight into the lock's queue, so it
        wakes up holding the lock instead of waking up to contend for it.

        Raises:
            RuntimeError: the calling task does not hold the lock.
            anyio.BrokenResourceError: the lock broke (a task exited holding it) while this
                task waited; it then does not hold the lock.
        """
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            task = resolve_task(self)
        port = self._port
        if not port._cv_holds(task, waiting=True):
            raise RuntimeError(f"wait() on {self!r} by {who(task)}, which does not hold its lock")
        if not self._registered:
            add_sleeper(self._host, self)
            self._registered = True
        levels = port._cv_release(task)  # refuses (raises) before anything changes
        waiter = new_waiter(self._loop, self, task, 0, 0)
        self._q[waiter] = None
        try:
            await waiter
        except BaseException as exc:
            # Notified (reparked into the lock's queue, or granted) but leaving: pass it on.
            notified = waiter.home is not self or waiter.state == GRANTED
            waiter.abandon()
            if isinstance(exc, BrokenResourceError) and not port._cv_holds(task):
                raise
            if notified:
                self._notify(1)
            await retake(self._lock, port, task, levels)
            raise
        if waiter.home is self:  # notified, not reparked: take the lock back now
            try:
                await retake(self._lock, port, task, levels)
            except BaseException:
                # Cancelled while taking the lock back: the notification was never acted on.
                self._notify(1)
                raise
        elif levels > 1:  # reparked: woke up holding one level
            port._cv_restore(task, levels)

    async def wait_for(self, predicate: Callable[[], T]) -> T:
        """Wait until ``predicate()`` is true; return its (truthy) value.

        The predicate is evaluated with the lock held, first before waiting and again after
        every wake-up, so spurious and stolen wake-ups are handled.  This is the safe way to
        wait: a bare ``wait()`` can return while the state is not what the waiter wants.

        Raises:
            RuntimeError: the calling task does not hold the lock.
        """
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    # -- notifying -------------------------------------------------------------------------

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` tasks waiting in :meth:`wait` (FIFO).

        Raises:
            RuntimeError: the calling task does not hold the lock.
            TypeError, ValueError: ``n`` is not an int >= 0.
        """
        if n.__class__ is not int and (not isinstance(n, int) or isinstance(n, bool)):
            raise TypeError(f"notify(n): n must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"notify(n): n must be >= 0, not {n}")
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            task = resolve_task(self)
        if not self._port._cv_holds(task):
            raise RuntimeError(f"notify() on {self!r} by {who(task)}, which does not hold its lock")
        if self._q:
            self._notify(n)

    def notify_all(self) -> None:
        """Wake every task waiting in :meth:`wait`.

        Raises:
            RuntimeError: the calling task does not hold the lock.
        """
        self.notify(len(self._q))

    def _notify(self, n: int) -> None:
        q, repark = self._q, self._port._cv_repark
        while n > 0:
            waiter = q.popleft()
            if waiter is None:
                return
            # popleft() skips waiters Task.cancel() got to first: each one here can be woken
            if not repark(waiter):
                waiter.grant()
            n -= 1

    # -- the queue's callbacks ---------------------------------------------------------------

    def _waiter_gone(self, waiter: Waiter) -> None:
        self._q.remove(waiter)

    def _grant_abandoned(self, waiter: Waiter) -> None:
        pass  # a notification, not a hold: wait() passes it on

    def _lock_broken(self, write_held: bool) -> None:
        if self._port._cv_mode == "read" and not write_held:
            return  # a dead reader does not stop readers
        self._q.fail_all(f"{self!r}: its lock broke (a task exited holding it)")

    # -- letting go of the lock and taking it back ---------------------------------------------

    def _me(self) -> Any:
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            task = resolve_task(self)
        return task

    def _in_use(self) -> bool:
        return len(self._q) > 0
