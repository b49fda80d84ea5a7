"""aiolocks: correct, fast async locks for asyncio and trio, built on anyio.

None of the primitives is thread-safe: use each from the tasks of one event loop at a time.
"""

from __future__ import annotations

import os as _os

from anyio import LockStatistics

from ._collection import CollectionGuard, LockCollection, LockLike
from ._condition import Condition
from ._exceptions import (
    DeadlockError,
    LockLostError,
    LockOrderError,
    LockOrderWarning,
    TaskKeyError,
)
from ._keyed import KeyedLock, KeyedRWLock
from ._keys import TaskKey
from ._lock import Lock
from ._rwlock import ReadLock, RWLock, UpgradableLock, WriteLock
from ._types import ConditionStatistics, RWLockStatistics

__all__ = [
    "CollectionGuard",
    "Condition",
    "ConditionStatistics",
    "DeadlockError",
    "KeyedLock",
    "KeyedRWLock",
    "Lock",
    "LockCollection",
    "LockLike",
    "LockLostError",
    "LockOrderError",
    "LockOrderWarning",
    "LockStatistics",
    "RWLock",
    "RWLockStatistics",
    "ReadLock",
    "TaskKey",
    "TaskKeyError",
    "UpgradableLock",
    "WriteLock",
]

__version__ = "0.1.0.dev0"

from . import debug

if _os.environ.get("AIOLOCKS_DEBUG"):
    debug._enable_from_environment(_os.environ["AIOLOCKS_DEBUG"])
if _os.environ.get("AIOLOCKS_DUMP_SIGNAL"):
    from ._dump import _from_environment

    _from_environment(_os.environ["AIOLOCKS_DUMP_SIGNAL"])
    del _from_environment
