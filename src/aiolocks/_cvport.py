"""The *condition port*: what a :class:`~aiolocks.Condition` needs from its lock.

A condition lets go of its lock in ``wait()``, and gets it back either by being moved into the
lock's own queue when notified (it wakes up holding the lock: trio's "repark") or by taking it
back itself.  :class:`~aiolocks.Lock`, ``rw.writer`` and ``rw.reader`` implement the port next
to their own state (their ``_cv_*`` methods); an :class:`anyio.Lock` gets :class:`AnyioPort`.
So ``Condition`` touches no lock's internals.
"""

from __future__ import annotations

from typing import Any, Protocol, final, runtime_checkable

import anyio

from ._queue import Waiter

__all__ = ["AnyioPort", "OneLevelPort", "Port", "port_of", "retake"]


@runtime_checkable
class Port(Protocol):
    """What a condition needs from its lock: the *condition port*.  :class:`~aiolocks.Lock`,
    ``rw.writer`` and ``rw.reader`` implement it next to their own state; an
    :class:`anyio.Lock` gets :class:`AnyioPort`."""

    _cv_mode: str  # how a sleeper shows in diagnostics: "exclusive", "write" or "read"

    def _cv_holds(self, task: Any, waiting: bool = False) -> bool:
        """Does ``task`` hold the lock (``waiting``: in a way ``wait()`` can let go of)?"""

    def _cv_release(self, task: Any) -> int:
        """Release every level ``task`` holds and return how many (refuse, changing nothing,
        a hold that wait() could not restore)."""

    def _cv_restore(self, task: Any, levels: int) -> None:
        """``task`` holds one level again: give it back ``levels`` in all.  (A reparked
        waiter's ``wait()`` calls it only when ``levels > 1``: one level is what it holds.)"""

    def _cv_repark(self, waiter: Waiter) -> bool:
        """Move a notified sleeper into the lock's own queue (it wakes up holding the lock);
        False if the lock has none (the sleeper is then woken to take the lock back)."""


class OneLevelPort:
    """What the port of a lock with one holder and one level (:class:`~aiolocks.Lock`, an
    :class:`anyio.Lock`) always does: ``wait()`` releases one level and restores nothing."""

    __slots__ = ()

    _cv_mode = "exclusive"

    def _release(self) -> None:
        """Release the lock on behalf of its holder (who is known to hold it)."""
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    def _cv_release(self, task: Any) -> int:
        self._release()
        return 1

    def _cv_restore(self, task: Any, levels: int) -> None:
        pass


@final
class AnyioPort(OneLevelPort):
    """The condition port over an :class:`anyio.Lock` (no queue to join)."""

    __slots__ = ("_lock",)

    def __init__(self, lock: anyio.Lock) -> None:
        self._lock = lock

    def _cv_holds(self, task: Any, waiting: bool = False) -> bool:
        owner = self._lock.statistics().owner
        return owner is not None and owner.id == id(task)

    def _release(self) -> None:
        self._lock.release()

    def _cv_repark(self, waiter: Waiter) -> bool:
        return False


def port_of(lock: object) -> Port:
    """The condition port of ``lock``.

    Raises:
        TypeError: ``lock`` is none of the supported locks.
    """
    if isinstance(lock, Port):  # aiolocks.Lock, rw.writer, rw.reader
        return lock
    if isinstance(lock, anyio.Lock):
        return AnyioPort(lock)
    raise TypeError(
        "Condition needs an aiolocks.Lock, rw.writer, rw.reader or anyio.Lock, not "
        f"{type(lock).__module__}.{type(lock).__qualname__}"
    )


async def retake(lock: Any, port: Port, task: Any, levels: int) -> None:
    """Take ``lock`` back after a wait, shielded from cancellation; give back all ``levels``;
    re-raise a native cancel after."""
    cancelled: BaseException | None = None
    with anyio.CancelScope(shield=True):
        while True:
            try:
                await lock.acquire()
                break
            except anyio.get_cancelled_exc_class() as exc:  # a native Task.cancel()
                cancelled = exc
    port._cv_restore(task, levels)
    if cancelled is not None:
        raise cancelled
