"""Reading a thread-safe primitive's state from outside: ``aiolocks.debug`` and the tests.

The adapters the core's ``_introspect`` module has for ``aiolocks.Lock`` and ``RWLock``, for
this family; registered with it, so that ``debug.snapshot()``, ``dump()``, the wait-for cycle
search and ``check_invariants()`` treat both families alike.  Each reads under the primitive's
critical section: another thread may be changing it.
"""

from __future__ import annotations

from typing import Any

from .. import _introspect
from ._core import Waiter
from ._lock import Lock
from ._rwlock import RWLock

__all__: list[str] = []


class _LockInfo:
    kind = "threadsafe.Lock"

    @staticmethod
    def holders(lock: Lock) -> list[tuple[Any, str]]:
        owner = lock._owner
        return [] if owner is None else [(owner, "exclusive")]

    @staticmethod
    def waiters(lock: Lock) -> list[tuple[Waiter, str]]:
        with lock._cs:
            return [(w, "exclusive") for w in lock._q]

    @staticmethod
    def mode(lock: Lock, waiter: Waiter) -> str:
        return "exclusive"

    @staticmethod
    def blockers(lock: Lock, task: Any, mode: str, waiter: Waiter | None) -> list[Any]:
        owner = lock._owner
        return [] if owner is None or owner is task else [owner]

    @staticmethod
    def check(lock: Lock) -> None:
        with lock._cs:
            if lock._q:
                assert lock._owner is not None, "waiters queued behind no owner"
            if lock._broken is not None:
                assert not lock._q, "waiters queued on a broken lock"
            assert all(w.state == 0 for w in lock._q), "a stale waiter queued"


class _RWLockInfo:
    kind = "threadsafe.RWLock"

    @staticmethod
    def holders(rw: RWLock) -> list[tuple[Any, str]]:
        with rw._cs:
            out = [(o, "read") for o in rw._readers]
            if rw._writer is not None:
                out.append((rw._writer, "write"))
            elif rw._upgradable is not None:
                out.append((rw._upgradable, "upgradable"))
        return out

    @staticmethod
    def waiters(rw: RWLock) -> list[tuple[Waiter, str]]:
        with rw._cs:
            return [(w, w.mode) for w in rw._q]

    @staticmethod
    def mode(rw: RWLock, waiter: Waiter) -> str:
        return str(waiter.mode)

    @staticmethod
    def blockers(rw: RWLock, task: Any, mode: str, waiter: Waiter | None) -> list[Any]:
        if waiter is None:
            return []
        with rw._cs:
            return [o for o, _ in rw._blockers(waiter) if o is not task]

    @staticmethod
    def check(rw: RWLock) -> None:
        with rw._cs:
            if rw._writer is not None:
                assert set(rw._readers) <= {rw._writer}, "readers beside a writer"
                assert rw._upgradable in (None, rw._writer), "upgradable beside a writer"
                assert rw._wlevels >= 1
                assert rw._version % 2 == 1, "version even while write-held"
            else:
                assert rw._wlevels == 0
                assert rw._version % 2 == 0, "version odd while not write-held"
            assert all(w.state == 0 for w in rw._q), "a stale waiter queued"
            assert all(n >= 1 for n, _ in rw._readers.values())


_introspect.register(Lock, _LockInfo)
_introspect.register(RWLock, _RWLockInfo)
