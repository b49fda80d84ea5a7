"""aiolocks: correct, fast async locks for asyncio and trio, built on anyio.

None of the primitives is thread-safe: use each from the tasks of one event loop at a time.
"""

from __future__ import annotations

from anyio import LockStatistics

from ._condition import Condition, ConditionStatistics
from ._exceptions import DeadlockError, TaskKeyError
from ._lock import Lock
from ._rwlock import ReadLock, RWLock, RWLockStatistics, UpgradableLock, WriteLock

__all__ = [
    "Condition",
    "ConditionStatistics",
    "DeadlockError",
    "Lock",
    "LockStatistics",
    "RWLock",
    "RWLockStatistics",
    "ReadLock",
    "TaskKeyError",
    "UpgradableLock",
    "WriteLock",
]

__version__ = "0.1.0.dev0"
