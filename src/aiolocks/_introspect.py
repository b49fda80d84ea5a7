"""Reading a primitive's state from outside: for ``aiolocks.debug`` and the tests only.

The primitives hold only what running them needs; what diagnostics ask of them (who holds it,
who waits and for what, which tasks a request waits for) and the invariant checks the tests run
after every step live here, one small adapter per primitive, chosen by type.  Nothing here is on
a hot path.

* :func:`kind`, :func:`holders`, :func:`waiters`, :func:`mode` and :func:`blockers` answer
  ``aiolocks.debug`` (``snapshot()``, ``dump()`` and wait-for cycle detection);
* :func:`check_invariants` asserts the invariants written above each primitive's slots (and
  above ``RWLock._dispatch``); the stress, model and cancellation tests call it after every step.
"""

from __future__ import annotations

from typing import Any

from . import _backend
from ._condition import Condition
from ._lock import Lock
from ._queue import WAITING, Waiter
from ._rwlock import RWLock, _RWState
from ._rwviews import READ, UPGRADABLE, UPGRADE, WRITE

__all__ = [
    "blockers",
    "check_invariants",
    "holders",
    "is_primitive",
    "kind",
    "mode",
    "register",
    "waiters",
]

_MODE_NAMES = ("read", "write", "upgradable", "write")  # an upgrade() waits to write
_MODES = {"read": READ, "write": WRITE, "upgradable": UPGRADABLE, "upgrade": UPGRADE}
_NO_LIMIT = float("inf")


class _LockInfo:
    kind = "Lock"

    @staticmethod
    def holders(lock: Lock) -> list[tuple[Any, str]]:
        return [] if lock._owner is None else [(lock._owner, "exclusive")]

    @staticmethod
    def waiters(lock: Lock) -> list[tuple[Waiter, str]]:
        return [(w, "exclusive") for w in lock._q] if lock._q is not None else []

    @staticmethod
    def mode(lock: Lock, waiter: Waiter) -> str:
        return "exclusive"

    @staticmethod
    def blockers(lock: Lock, task: Any, mode: str, waiter: Waiter | None) -> list[Any]:
        # Everyone queued ahead waits for the owner too, so naming it is enough for a cycle
        # search (and keeps the search linear in the number of tasks).
        if lock._owner is None or lock._owner is task:
            return []
        return [lock._owner]

    @staticmethod
    def check(lock: Lock) -> None:
        _check_fast(lock)
        q = lock._q
        if q is not None:
            assert lock._owner is not None, "waiters queued behind no owner"
            assert all(w.state == WAITING and w.home is lock for w in q), "a stale waiter queued"
            if len(q) and not q.broken:
                assert q.watch_token is not None, "owner not watched while tasks wait"
            if not q:
                assert q.watch_token is None, "an owner watched while nobody waits"


def _check_fast(prim: Lock | RWLock) -> None:
    if prim._fast is not False:
        on_asyncio = prim._loop is not None and prim._loop is not _backend.TRIO
        assert prim._fast is (True if on_asyncio else None), "_fast out of step with its loop"


class _RWLockInfo:
    kind = "RWLock"

    @staticmethod
    def holders(rw: RWLock) -> list[tuple[Any, str]]:
        return rw._holders()

    @staticmethod
    def waiters(rw: RWLock) -> list[tuple[Waiter, str]]:
        s = rw._slow
        if s is None:
            return []
        waiters = [*s.read_queue, *s.write_queue]
        if s.upgrading is not None:
            waiters.append(s.upgrading)
        waiters.sort(key=lambda w: w.ticket)
        return [(w, _MODE_NAMES[w.mode]) for w in waiters]

    @staticmethod
    def mode(rw: RWLock, waiter: Waiter) -> str:
        return _MODE_NAMES[waiter.mode]

    @staticmethod
    def blockers(rw: RWLock, task: Any, mode: str, waiter: Waiter | None) -> list[Any]:
        # Only genuine waits, and only as many as a cycle search needs: everyone queued in this
        # lock waits, in the end, for its holders, so a request depends on the holders it
        # conflicts with; a reader held back by a queued writer (writer preference) depends on
        # that writer, which is named so a reported cycle reads as it happens.
        s = rw._slow
        writer, readers = rw._writer, rw._readers or {}
        m = waiter.mode if waiter is not None else _MODES.get(mode, UPGRADE)
        others = [t for t in readers if t is not task]
        if m == UPGRADE:
            return others
        if waiter is None and (
            writer is task or task in readers or (s is not None and s.upgrader is task)
        ):
            return []  # re-entrant, or a request refused at once
        limit = waiter.ticket if waiter is not None else _NO_LIMIT
        if m == READ:
            if writer is not None:
                return [writer]
            if s is None:
                return []
            first = next((w for w in s.write_queue if w.mode == WRITE and w.ticket < limit), None)
            if first is not None:
                return [first.task]
            return [s.upgrading.task] if s.upgrading is not None else []
        upg = s.upgrader if s is not None else None
        out = [t for t in (writer, upg) if t is not None and t is not task]
        if m == WRITE:
            out += others
        if not out and s is not None:  # only queued behind another request (FIFO)
            ahead = next((w for w in s.write_queue if w.ticket < limit), None)
            if ahead is not None:
                out = [ahead.task]
        return out

    @staticmethod
    def check(rw: RWLock) -> None:
        _check_fast(rw)
        readers = rw._readers or {}
        assert all(n >= 1 for n in readers.values()), "a reader with no levels"
        writer = rw._writer
        if writer is not None:
            assert writer not in readers, "the writer is counted as a plain reader"
            assert not readers, "readers hold the lock together with a writer"
            assert rw._version % 2 == 1, "version even while write-held"
        else:
            assert rw._version % 2 == 0, "version odd while not write-held"
        s = rw._slow
        if s is not None:
            _check_rw_queues(rw, s, writer, readers)
            if not s.broken:
                _check_rw_watched(s, writer, readers)


def _check_rw_queues(rw: RWLock, s: _RWState, writer: Any, readers: dict[Any, int]) -> None:
    for q in (s.read_queue, s.write_queue):
        assert all(w.state == WAITING and w.home is rw for w in q), "a stale waiter queued"
    assert all(w.mode == READ for w in s.read_queue)
    assert s.write_queue.writers == sum(1 for w in s.write_queue if w.mode == WRITE), (
        "queued writer count"
    )
    if s.upgrading is not None:
        assert s.upgrader is s.upgrading.task and writer is None, "upgrade pending without hold"
    if s.upgraded:
        assert writer is not None and writer is s.upgrader, "upgraded without the upgrader writing"
    elif s.upgrader is not None:
        assert writer is None, "writer alongside an upgradable holder"
    if writer is None:
        assert not s.extra_write_levels and not s.writer_reads, "write levels without a writer"
        if s.upgrading is not None:
            assert readers, "a pending upgrade was not granted with no readers left"
        else:
            # (a writer Task.cancel() got to, whose task has not run yet, still counts: the
            # next dispatch, at the latest when that task leaves, drops it)
            limit = min((w.ticket for w in s.write_queue if w.mode == WRITE), default=_NO_LIMIT)
            assert all(w.ticket > limit for w in s.read_queue), "a reader waits for no reason"
            head = next(iter(s.write_queue), None)
            if head is not None and head.mode == WRITE:
                assert readers or s.upgrader is not None, "a writer waits on a free lock"
            elif head is not None:
                assert s.upgrader is not None, "an upgradable request waits for no reason"


def _check_rw_watched(s: _RWState, writer: Any, readers: dict[Any, int]) -> None:
    # Every holder that some waiter waits for is watched (a holder that exits breaks the
    # lock instead of stranding them).  Readers admitted next to queued upgradable
    # requests block nobody yet; a later waiter that needs them gone watches them.
    blocking: set[Any] = set()
    if s.read_queue or s.write_queue:
        blocking.update(t for t in (writer, s.upgrader) if t is not None)
    if s.write_queue.writers or s.upgrading is not None:
        blocking.update(readers)
    missing = blocking - set(s.watched)
    assert not missing, f"holders not watched while tasks wait for them: {missing}"


class _ConditionInfo:
    kind = "Condition"

    @staticmethod
    def holders(cond: Condition) -> list[tuple[Any, str]]:
        return []  # its lock reports the holders

    @staticmethod
    def waiters(cond: Condition) -> list[tuple[Waiter, str]]:
        return [(w, cond._port._cv_mode) for w in cond._q]

    @staticmethod
    def mode(cond: Condition, waiter: Waiter) -> str:
        return cond._port._cv_mode

    @staticmethod
    def blockers(cond: Condition, task: Any, mode: str, waiter: Waiter | None) -> list[Any]:
        return []  # a sleeper waits for a notify(), which no lock state predicts

    @staticmethod
    def check(cond: Condition) -> None:
        assert all(w.state == WAITING and w.home is cond for w in cond._q), "a stale sleeper"
        if is_primitive(cond._host):  # not an anyio.Lock
            check_invariants(cond._host)


_INFO: tuple[tuple[type, Any], ...] = (
    (Lock, _LockInfo),
    (RWLock, _RWLockInfo),
    (Condition, _ConditionInfo),
)


_backend.LISTED = tuple(cls for cls, _ in _INFO)  # debug.snapshot() lists their instances


def register(cls: type, info: Any) -> None:
    """Let this module read the instances of ``cls`` (another family's primitive) through
    ``info``: an object with ``kind`` and the static methods the adapters above have."""
    global _INFO
    _INFO = (*_INFO, (cls, info))
    _backend.LISTED = (*_backend.LISTED, cls)


def _info(prim: object) -> Any:
    for cls, info in _INFO:
        if isinstance(prim, cls):
            return info
    raise TypeError(f"not an aiolocks primitive: {prim!r}")


def is_primitive(prim: object) -> bool:
    """Is ``prim`` a primitive this module can read (a Lock, an RWLock or a Condition)?"""
    return isinstance(prim, _backend.LISTED)


def kind(prim: object) -> str:
    """``"Lock"``, ``"RWLock"`` or ``"Condition"``."""
    return str(_info(prim).kind)


def holders(prim: object) -> list[tuple[Any, str]]:
    """Every hold as ``(task, mode)`` (a Condition has none: its lock reports them)."""
    return _info(prim).holders(prim)  # type: ignore[no-any-return]


def waiters(prim: object) -> list[tuple[Waiter, str]]:
    """Every queued waiter as ``(waiter, mode)``, in arrival order."""
    return _info(prim).waiters(prim)  # type: ignore[no-any-return]


def mode(prim: object, waiter: Waiter) -> str:
    """What the queued ``waiter`` asked ``prim`` for, as diagnostics name it."""
    return _info(prim).mode(prim, waiter)  # type: ignore[no-any-return]


def blockers(prim: object, task: Any, mode: str, waiter: Waiter | None = None) -> list[Any]:
    """The tasks a request of ``task`` for ``mode`` (or its queued ``waiter``) waits for.

    ``[]`` if none.  Only as many as a cycle search needs: those queued ahead wait for the
    same holders, so naming the holders is enough.
    """
    return _info(prim).blockers(prim, task, mode, waiter)  # type: ignore[no-any-return]


def check_invariants(prim: object) -> None:
    """Assert the invariants written next to ``prim``'s code (tests call it after each step).

    ``prim`` may be a view of an RWLock (``rw.writer``): the RWLock is checked.
    """
    prim = getattr(prim, "_rw", prim)
    _info(prim).check(prim)
