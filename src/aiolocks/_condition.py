"""``aiolocks.Condition``: wait / notify over aiolocks' locks and anyio's, with no lost wake-ups."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar, final

import anyio
from anyio import BrokenResourceError

from ._backend import READY, resolve_task, task_of, thread_mark
from ._common import add_sleeper, name_of, no_sync_with, set_name, who
from ._lock import Lock
from ._queue import GRANTED, Waiter, WaitQueue, new_waiter
from ._rwlock import ReadLock, WriteLock
from ._types import ConditionStatistics

__all__ = ["Condition", "ConditionStatistics"]

T = TypeVar("T")

# What the condition's lock is; it decides how wait() lets go of it and takes it back.
_LOCK, _WRITER, _READER, _ANYIO = range(4)
_KINDS = ((Lock, _LOCK), (WriteLock, _WRITER), (ReadLock, _READER), (anyio.Lock, _ANYIO))


@final
class Condition:
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
    __slots__ = ("__weakref__", "_kind", "_lock", "_loop", "_q", "_registered", "_rw", "_tid")

    def __init__(
        self,
        lock: Lock | WriteLock | ReadLock | anyio.Lock | None = None,
        *,
        name: str | None = None,
    ) -> None:
        if lock is None:
            lock = Lock(name=name)  # its own lock is reported under the condition's name
        kinds = [kind for cls, kind in _KINDS if isinstance(lock, cls)]
        if not kinds:
            raise TypeError(
                "Condition needs an aiolocks.Lock, rw.writer, rw.reader or anyio.Lock, not "
                f"{type(lock).__module__}.{type(lock).__qualname__}"
            )
        kind = kinds[0]
        set_name(self, name)
        self._lock: Any = lock  # Any: the hot paths reach into aiolocks' own locks
        self._kind = kind
        self._rw: Any = lock._rw if isinstance(lock, (WriteLock, ReadLock)) else None
        self._q = WaitQueue()
        self._loop: Any = None
        self._tid: Any = None
        self._registered = False

    @property
    def lock(self) -> Lock | WriteLock | ReadLock | anyio.Lock:
        """The lock this condition uses."""
        return self._lock  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        name = name_of(self)
        name = f" {name!r}" if name else ""
        return f"<aiolocks.Condition{name} over {self._lock!r}, {len(self._q)} waiting>"

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
            and not self._holds(self._me())
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
        lock = self._lock
        plain = self._kind == _LOCK and lock._owner is task  # the common case, decided inline
        if plain:
            levels = 1
        elif self._holds(task, waiting=True):
            levels = self._levels(task)  # refuses (raises) before anything changes
        else:
            raise RuntimeError(f"wait() on {self!r} by {who(task)}, which does not hold its lock")
        if not self._registered:
            add_sleeper(self._rw if self._rw is not None else lock, self)
            self._registered = True
        waiter = new_waiter(self._loop, self, task, 0, 0)
        self._q.append(waiter)
        if plain:
            lock._release()
        else:
            self._release_all(task)
        try:
            await waiter
        except BaseException as exc:
            # Notified (reparked into the lock's queue, or granted) but leaving: pass it on.
            notified = waiter.home is not self or waiter.state == GRANTED
            waiter.abandon()
            if isinstance(exc, BrokenResourceError) and not self._holds(task):
                raise
            if notified:
                self._notify(1)
            await self._retake(task, levels)
            raise
        if waiter.home is self:  # notified, not reparked: take the lock back now
            try:
                await self._retake(task, levels)
            except BaseException:
                # Cancelled while taking the lock back: the notification was never acted on.
                self._notify(1)
                raise
        elif levels > 1:  # reparked: woke up holding one write level
            self._restore(task, levels)

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
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"notify(n): n must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"notify(n): n must be >= 0, not {n}")
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            task = resolve_task(self)
        if not (self._kind == _LOCK and self._lock._owner is task) and not self._holds(task):
            raise RuntimeError(f"notify() on {self!r} by {who(task)}, which does not hold its lock")
        self._notify(n)

    def notify_all(self) -> None:
        """Wake every task waiting in :meth:`wait`.

        Raises:
            RuntimeError: the calling task does not hold the lock.
        """
        self.notify(len(self._q))

    def _notify(self, n: int) -> None:
        q, kind = self._q, self._kind
        while n > 0:
            waiter = q.popleft()
            if waiter is None:
                return
            # popleft() skips waiters Task.cancel() got to first: each one here can be woken
            if kind == _LOCK:
                self._lock._repark(waiter)
            elif kind == _WRITER:
                self._rw._repark_writer(waiter)
            else:
                waiter.grant()
            n -= 1

    # -- the queue's callbacks ---------------------------------------------------------------

    def _waiter_gone(self, waiter: Waiter) -> None:
        self._q.remove(waiter)

    def _grant_abandoned(self, waiter: Waiter) -> None:
        pass  # a notification, not a hold: wait() passes it on

    def _lock_broken(self, write_held: bool) -> None:
        if self._kind == _READER and not write_held:
            return  # a dead reader does not stop readers
        message = f"{self!r}: its lock broke (a task exited holding it)"
        for waiter in self._q.take_all():
            waiter.fail(BrokenResourceError(message))

    # -- letting go of the lock and taking it back ---------------------------------------------

    def _me(self) -> Any:
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            task = resolve_task(self)
        return task

    def _in_use(self) -> bool:
        return len(self._q) > 0

    # -- introspection for aiolocks.debug (never on a hot path) -------------------------------

    _debug_kind = "Condition"

    def _debug_holders(self) -> list[tuple[Any, str]]:
        return []  # its lock reports the holders

    def _debug_waiters(self) -> list[tuple[Waiter, str]]:
        return [(w, self._debug_mode(w)) for w in self._q]

    def _debug_mode(self, waiter: Waiter) -> str:
        kind = self._kind
        return "read" if kind == _READER else "write" if kind == _WRITER else "exclusive"

    def _debug_blockers(self, task: Any, mode: str, waiter: Waiter | None = None) -> list[Any]:
        return []  # a sleeper waits for a notify(), which no lock state predicts

    def _holds(self, task: Any, waiting: bool = False) -> bool:
        kind = self._kind
        if kind == _LOCK:
            return self._lock._owner is task
        if kind == _WRITER:
            return self._rw._writer is task
        if kind == _READER:
            # A writer excludes every reader, so it may notify readers; waiting needs a plain
            # read hold, which is what wait() lets go of.
            readers = self._rw._readers
            if readers and task in readers:
                return True
            return not waiting and self._rw._writer is task
        owner = self._lock.statistics().owner
        return owner is not None and owner.id == id(task)

    def _levels(self, task: Any) -> int:
        """How many levels ``task`` holds (refusing holds wait() cannot give back)."""
        if self._kind == _WRITER:
            s = self._rw._slow
            if s is None:
                return 1
            if s.upgraded:
                raise RuntimeError(
                    f"wait() on {self!r}: the write hold came from upgrade(); wait on a "
                    "condition over rw.writer with a plain write hold"
                )
            if s.writer_reads:
                raise RuntimeError(
                    f"wait() on {self!r}: this task holds read levels on top of its write "
                    "hold; release them before waiting"
                )
            return 1 + s.extra_write_levels  # type: ignore[no-any-return]
        if self._kind == _READER:
            return self._rw._readers[task]  # type: ignore[no-any-return]
        return 1

    def _release_all(self, task: Any) -> None:
        kind = self._kind
        if kind == _LOCK:
            self._lock._release()
        elif kind == _WRITER:
            rw = self._rw
            if rw._slow is not None:
                rw._slow.extra_write_levels = 0
            rw._release_write(task)
        elif kind == _READER:
            rw = self._rw
            rw._readers[task] = 1
            rw._release_read(task, keep_mark=True)
        else:
            self._lock.release()

    def _restore(self, task: Any, levels: int) -> None:
        if levels > 1:
            if self._kind == _WRITER:
                self._rw._state().extra_write_levels = levels - 1
            elif self._kind == _READER:
                self._rw._readers[task] = levels

    async def _retake(self, task: Any, levels: int) -> None:
        """Take the lock back, shielded from cancellation; re-raise a native cancel after."""
        cancelled: BaseException | None = None
        with anyio.CancelScope(shield=True):
            while True:
                try:
                    await self._lock.acquire()
                    break
                except anyio.get_cancelled_exc_class() as exc:  # a native Task.cancel()
                    cancelled = exc
        self._restore(task, levels)
        if cancelled is not None:
            raise cancelled

    def __enter__(self) -> None:
        no_sync_with(self)

    def __exit__(self, *args: object) -> None:
        no_sync_with(self)
