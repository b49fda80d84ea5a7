"""Locks shared by threads and by the tasks of any number of event loops.

:mod:`aiolocks.threadsafe` has the same lock shapes as :mod:`aiolocks`, usable at once from
tasks of any asyncio loops (in any threads, uvloop included), from trio, and from plain threads
(``with lock:``, ``acquire_blocking(timeout)``).  One FIFO queue serves them all.  See
``docs/threadsafe.md``.
"""

from __future__ import annotations

from . import _introspect as _introspect  # registers the locks with aiolocks.debug
from ._condition import Condition
from ._lock import Lock
from ._rwlock import ReadLock, RWLock, UpgradableLock, WriteLock

__all__ = ["Condition", "Lock", "RWLock", "ReadLock", "UpgradableLock", "WriteLock"]
