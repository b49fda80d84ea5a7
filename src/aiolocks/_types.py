"""Types shared by the core and the backends: statistics snapshots and the port through
which :class:`~aiolocks.LockCollection` takes locks that live outside the process."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from anyio import TaskInfo

__all__ = ["Batching", "ConditionStatistics", "RWLockStatistics", "RemoteMember"]


@dataclass(frozen=True)
class RWLockStatistics:
    """A snapshot of an :class:`RWLock`.

    Attributes:
        readers: tasks holding a read lock: plain readers, the upgradable holder (until it
            upgrades), and a writer that took read levels on top of its write hold.
        writer: the task holding the write lock, or None.
        readers_waiting: tasks queued for a read lock.
        writers_waiting: tasks queued for the write lock or the upgradable lock, plus a pending
            ``upgrade()``.
        version: the lock's version stamp (see :attr:`RWLock.version`).

    .. versionadded:: 0.1
    """

    readers: int
    writer: TaskInfo | None
    readers_waiting: int
    writers_waiting: int
    version: int


@dataclass(frozen=True)
class ConditionStatistics:
    """A snapshot of a :class:`Condition`.

    Attributes:
        tasks_waiting: tasks inside ``wait()`` that have not been notified yet.
        lock_statistics: the statistics of the condition's lock (its own ``statistics()``).

    .. versionadded:: 0.1
    """

    tasks_waiting: int
    lock_statistics: Any


class Batching(Protocol):
    """A lock space outside the process (``aiolocks.postgres``) that takes several of its
    locks in one request, in its own global order, all or nothing."""

    async def _acquire_batch(self, items: Sequence[tuple[Any, bool]]) -> None:
        """Take every ``(lock, shared)`` of ``items`` for the current task, or none."""


@runtime_checkable
class RemoteMember(Protocol):
    """A lock that a :class:`Batching` space takes for :class:`~aiolocks.LockCollection`
    (each member is then released on its own)."""

    def _collection_member(self) -> tuple[Batching, Hashable, bool]:
        """(its lock space, its identity in that space's order, whether it is shared)"""
