"""``aiolocks.RWLock``: a phase-fair, writer-preferring readers-writer lock.

One state (on the :class:`RWLock`) and three lock-like views over it: ``reader``, ``writer``
and ``upgradable`` (``_rwviews.py``; the optimistic reads are in ``_optimistic.py``, what
diagnostics read of the state in ``_introspect.py``).  The uncontended paths touch only the
RWLock's own slots; everything that exists only under contention or in rarer modes (queues,
upgradable hold, re-entrant write levels, a broken owner, watched holders) lives in an
``_RWState`` that is created on demand and dropped as soon as the lock is back to a plain state,
so ``_slow is None`` is the fast-path test.  Debug mode (``aiolocks.debug.enable()``) swaps
instrumented methods into the views' classes; nothing here checks for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, final

from anyio import BrokenResourceError

from ._backend import TRIO, resolve_task, task_info, task_of, thread_mark
from ._common import (
    check_flag,
    held_checkpoint,
    lock_broken,
    not_holding,
    repr_name,
    set_name,
    who,
)
from ._exceptions import DeadlockError
from ._optimistic import Versioned
from ._queue import (
    GONE,
    Waiter,
    WaitQueue,
    new_waiter,
    unwatch_all,
    unwatch_holder,
    watch_holder,
)
from ._rwviews import READ, UPGRADABLE, UPGRADE, WRITE, ReadLock, UpgradableLock, WriteLock
from ._types import RWLockStatistics

__all__ = ["RWLock", "RWLockStatistics", "ReadLock", "UpgradableLock", "WriteLock"]

_NO_LIMIT = float("inf")


class _WriteQueue(WaitQueue):
    """The queue of write and upgradable requests, counting the write requests in it (a reader
    arriving must know at once whether a writer waits: writer preference)."""

    __slots__ = ("writers",)

    def __init__(self) -> None:
        super().__init__()
        self.writers = 0

    def append(self, waiter: Waiter) -> None:
        self[waiter] = None
        self.writers += waiter.mode == WRITE

    def pop_first(self) -> Waiter:
        waiter = self.popitem(last=False)[0]
        self.writers -= waiter.mode == WRITE
        return waiter

    def remove(self, waiter: Waiter) -> None:
        waiter.state = GONE
        del self[waiter]
        self.writers -= waiter.mode == WRITE

    def take_all(self) -> list[Waiter]:
        self.writers = 0
        return super().take_all()

    def first_writer_ticket(self) -> float:
        """The arrival ticket of the first write request that can still be granted."""
        if self.writers:
            for w in self:
                if w.mode == WRITE and not w.lost():
                    return w.ticket
        return _NO_LIMIT


class _RWState:
    """Everything an RWLock needs only under contention or in its rarer modes."""

    __slots__ = (
        "broken",
        "downgraded",
        "extra_write_levels",
        "read_queue",
        "ticket",
        "upgraded",
        "upgrader",
        "upgrading",
        "watched",
        "write_queue",
        "writer_reads",
    )

    def __init__(self) -> None:
        self.read_queue = WaitQueue()  # readers waiting (admitted together)
        self.write_queue = _WriteQueue()  # writers and upgradable requests waiting, FIFO
        self.ticket = 0  # arrival order of waiters
        self.upgrader: Any = None  # task holding the upgradable lock
        self.upgraded = False  # the writer's hold came from upgrade()
        self.upgrading: Waiter | None = None  # the upgradable holder waiting in upgrade()
        self.extra_write_levels = 0  # re-entrant write levels beyond the first
        self.writer_reads = 0  # read levels the writer took on top of its write hold
        self.broken = False  # a holder exited holding it
        self.watched: dict[Any, Any] = {}  # holder -> token, while tasks wait (see _queue.py)
        # Tasks whose read hold came from writer.downgrade(): one of their read levels stands
        # for the write acquisition, so writer.release() (leaving ``async with rw.writer``)
        # releases that level.
        self.downgraded: set[Any] = set()

    def plain(self) -> bool:
        """Nothing here but empty queues: the RWLock can drop this state."""
        return (
            self.upgrader is None
            and not self.upgraded
            and not self.extra_write_levels
            and not self.writer_reads
            and not self.broken
            and not self.watched
            and not self.downgraded
        )


@final
class RWLock(Versioned):
    """A readers-writer lock: many readers at once, or one writer.

    Fair by construction (phase-fair, writer-preferring, starvation-free):

    * a waiting writer holds back readers that arrive after it, so writers are never starved;
    * when a writer releases, every reader waiting at that moment is admitted before the next
      writer, so no reader waits for more than one writer phase;
    * writers (and upgradable requests) are served FIFO; ownership is handed over at release.

    Re-entrant per task: a task holding read (or write) takes read again at once, even while
    writers wait, so the classic nested-read hang cannot happen; a task holding write takes
    write again.  Each acquire needs its own release.  A task holding only read that asks for
    write gets :class:`~aiolocks.DeadlockError` at once (two such readers would wait for each
    other forever): take :attr:`upgradable` instead and call ``upgrade()``.

    Use the views, each a lock with the anyio/trio shape (``acquire``, ``acquire_nowait``,
    ``release``, ``locked``, ``statistics``, ``async with``)::

        cache_lock = aiolocks.RWLock()        # fine at module level, before any loop runs

        async def get(key):
            async with cache_lock.reader:     # many readers at once
                return cache[key]

        async def refresh():
            async with cache_lock.writer:     # exclusive
                cache.update(await load())

    Acquiring is a checkpoint unless ``fast_acquire=True`` (see :class:`aiolocks.Lock`).  If a
    holder exits without releasing, requests that conflict with its hold fail with
    :class:`anyio.BrokenResourceError` from then on; others still succeed.  Not thread-safe.

    Args:
        fast_acquire: skip the schedule point on uncontended acquisitions.
        name: shown in ``repr`` and diagnostics.

    .. versionadded:: 0.1
    """

    # Invariants (aiolocks._introspect.check_invariants asserts them, and those above
    # _dispatch, after every step of the stress, model and cancellation tests):
    #   _writer is not None      implies  no task in _readers (the writer's own read levels
    #                                     are counted in _slow.writer_reads)
    #   _slow is None            implies  no waiters, no upgradable hold, one write level
    __slots__ = (
        "__weakref__",
        "_fast",
        "_loop",
        "_readers",
        "_rv",
        "_slow",
        "_tid",
        "_uv",
        "_version",
        "_writer",
        "_wv",
    )

    def __init__(self, *, fast_acquire: bool = False, name: str | None = None) -> None:
        # as Lock's: False, or with fast_acquire: True on an asyncio loop, None elsewhere
        self._fast: bool | None = None if check_flag(fast_acquire, "fast_acquire") else False
        set_name(self, name)
        self._readers: dict[Any, int] | None = None  # task -> read levels
        self._writer: Any = None
        self._version = 0
        self._slow: _RWState | None = None
        self._loop: Any = None
        self._tid: Any = None
        self._rv: ReadLock | None = None
        self._wv: WriteLock | None = None
        self._uv: UpgradableLock | None = None

    if not TYPE_CHECKING:  # at run time only: for type checkers an RWLock is no context manager

        def __aenter__(self) -> None:
            raise TypeError(
                f"{self!r} is not a lock itself: write 'async with rw.reader:' (shared) or "
                "'async with rw.writer:' (exclusive)"
            )

        def __aexit__(self, *exc_info: object) -> None:  # pragma: no cover - never entered
            pass

        __enter__ = __aenter__
        __exit__ = __aexit__

    @property
    def reader(self) -> ReadLock:
        """The shared (read) side: many tasks may hold it at once."""
        view = self._rv
        if view is None:
            view = self._rv = ReadLock(self)
        return view

    @property
    def writer(self) -> WriteLock:
        """The exclusive (write) side."""
        view = self._wv
        if view is None:
            view = self._wv = WriteLock(self)
        return view

    @property
    def upgradable(self) -> UpgradableLock:
        """An upgradable read: shared with readers, exclusive among upgraders and writers."""
        view = self._uv
        if view is None:
            view = self._uv = UpgradableLock(self)
        return view

    def __repr__(self) -> str:
        parts = []
        if self._writer is not None:
            parts.append(f"write-held by {who(self._writer)}")
        s = self._slow
        if s is not None and s.upgrader is not None and not s.upgraded:
            parts.append(f"upgradable held by {who(s.upgrader)}")
        readers = len(self._read_holders())
        if readers:
            parts.append(f"{readers} reader(s)")
        if s is not None:
            if s.read_queue:
                parts.append(f"{len(s.read_queue)} reader(s) waiting")
            waiting = len(s.write_queue) + (s.upgrading is not None)
            if waiting:
                parts.append(f"{waiting} writer(s) waiting")
            if s.broken:
                parts.append("broken")
        state = ", ".join(parts) or "unlocked"
        return f"<aiolocks.RWLock{repr_name(self)} {state} at {id(self):#x}>"

    def statistics(self) -> RWLockStatistics:
        """Return a :class:`RWLockStatistics` snapshot."""
        s = self._slow
        waiting = (
            (len(s.read_queue), len(s.write_queue) + (s.upgrading is not None)) if s else (0, 0)
        )
        readers = len(self._read_holders())
        return RWLockStatistics(readers, task_info(self._writer), *waiting, self._version)

    # -- who holds what: the one answer every inspection method uses ---------------------------

    def _holders(self) -> list[tuple[Any, str]]:
        """Every hold as ``(task, mode)``, mode ``"write"``, ``"upgradable"`` or ``"read"``.

        A task appears once per kind of hold it has: a writer that took read levels on top of
        its write hold holds ``"write"`` and ``"read"``; the upgradable holder holds
        ``"upgradable"`` (a read hold that may become the write hold), and ``"read"`` as well if
        it also took plain read levels.
        """
        out: list[tuple[Any, str]] = []
        writer, s = self._writer, self._slow
        if writer is not None:
            out.append((writer, "write"))
            if s is not None and s.writer_reads:
                out.append((writer, "read"))
        if s is not None and s.upgrader is not None and not s.upgraded:
            out.append((s.upgrader, "upgradable"))
        out += [(task, "read") for task in self._readers or ()]
        return out

    def _read_holders(self) -> set[Any]:
        """The tasks holding a read lock (the upgradable holder counts until it upgrades)."""
        return {task for task, mode in self._holders() if mode != "write"}

    # -- deciding: grant now (True), wait (False), or refuse (raise) -------------------------

    def _state(self) -> _RWState:
        s = self._slow
        if s is None:
            s = self._slow = _RWState()
        return s

    def _try_read(self, task: Any) -> bool:
        readers = self._readers
        if readers is None:
            readers = self._readers = {}
        n = readers.get(task)
        if n is not None:  # re-entrant: never queue behind writers (that is the classic hang)
            readers[task] = n + 1
            return True
        s = self._slow
        if self._writer is task:
            self._state().writer_reads += 1
            return True
        if s is not None and s.upgrader is task:
            readers[task] = 1
            return True
        if self._writer is None and (
            s is None or (s.upgrading is None and not s.write_queue.writers)
        ):
            readers[task] = 1
            return True
        return False

    def _try_write(self, task: Any) -> bool:
        if self._writer is task:
            self._state().extra_write_levels += 1
            return True
        readers = self._readers
        if readers and task in readers:
            raise DeadlockError(
                f"{self!r}: this task holds a read lock and asks for the write lock; it would "
                "wait for itself (and two such readers for each other) forever. Release the read "
                "lock first, or take rw.upgradable and call upgrade()"
            )
        s = self._slow
        if s is not None and s.upgrader is task:
            raise DeadlockError(
                f"{self!r}: this task holds the upgradable lock; use rw.upgradable.upgrade() "
                "to get the write lock"
            )
        free = s is None or (s.upgrader is None and not s.write_queue)
        if self._writer is None and not readers and free:
            self._writer = task
            self._version += 1
            return True
        return False

    def _try_upgradable(self, task: Any) -> bool:
        s = self._slow
        if self._writer is task or (s is not None and s.upgrader is task):
            raise DeadlockError(
                f"{self!r}: this task already holds the "
                f"{'write' if self._writer is task else 'upgradable'} lock; the upgradable "
                "lock is not re-entrant"
            )
        if self._readers and task in self._readers:
            raise DeadlockError(
                f"{self!r}: this task holds a read lock; it could never upgrade. Take the "
                "upgradable lock instead of (not on top of) the read lock"
            )
        if self._writer is None and (s is None or (s.upgrader is None and not s.write_queue)):
            self._state().upgrader = task
            return True
        return False

    def _enter(self, task: Any, mode: int) -> Awaitable[None]:
        """The slow half of an acquire: an immediate grant, a refusal, or a wait."""
        undo: Callable[[Any], None]
        if mode == READ:
            granted, undo = self._try_read(task), self._release_read
        elif mode == WRITE:
            granted, undo = self._try_write(task), self._release_write
        else:
            granted, undo = self._try_upgradable(task), self._release_upgradable
        if granted:
            return held_checkpoint(self._loop, undo, task, self._fast)
        return self._wait(task, mode)

    async def _wait(self, task: Any, mode: int) -> None:
        s = self._slow
        if s is None:
            s = self._slow = _RWState()
        writer = self._writer
        if writer is None or writer not in s.watched or self._readers or s.upgrader is not None:
            self._watch_holders(s)  # may find a holder already gone and break the lock
        if s.broken:
            raise BrokenResourceError(self._broken_message())
        s.ticket += 1
        waiter = new_waiter(self._loop, self, task, mode, s.ticket)
        if mode == READ:
            s.read_queue.append(waiter)
        elif mode == UPGRADE:
            s.upgrading = waiter
        else:
            s.write_queue.append(waiter)
        try:
            await waiter
        except BaseException:
            waiter.abandon()
            raise

    # -- releasing ---------------------------------------------------------------------------

    def _release_read(self, task: Any, *, keep_mark: bool = False) -> None:
        """Release one read level of ``task``.  ``keep_mark``: a Condition's ``wait()`` lets go
        of the hold for a while; a hold that came from ``downgrade()`` stays marked as such."""
        readers = self._readers
        n = readers.get(task) if readers else None
        s = self._slow
        if n is None:
            if self._writer is task and s is not None and s.writer_reads:
                s.writer_reads -= 1
                self._maybe_idle(s)
                return
            raise not_holding("reader.release()", self, task, self._read_holders())
        assert readers is not None
        if n > 1:
            readers[task] = n - 1
            return
        del readers[task]
        if s is not None:
            if s.downgraded and not keep_mark:
                s.downgraded.discard(task)
            self._forget(s, task)
            if not readers:
                self._dispatch(s, False)
            self._maybe_idle(s)

    def _release_downgraded(self, task: Any) -> bool:
        """writer.downgrade() turned ``task``'s write hold into a read hold: releasing the
        write hold (leaving ``async with rw.writer``) releases what it became."""
        s = self._slow
        if s is None or task not in s.downgraded:
            return False
        s.downgraded.discard(task)
        self._release_read(task)
        if self._slow is s:
            self._maybe_idle(s)
        return True

    def _release_write(self, task: Any, *, whole_upgrade: bool = False) -> None:
        if self._writer is not task:
            if not self._release_downgraded(task):
                raise not_holding("writer.release()", self, task, (self._writer,))
            return
        s = self._slow
        if s is None:
            self._writer = None
            self._version += 1
            return
        if s.extra_write_levels:
            s.extra_write_levels -= 1
            return
        if s.upgraded:
            if not whole_upgrade:
                raise RuntimeError(
                    f"{self!r}: this write hold came from upgrade(); release it with "
                    "rw.upgradable.release(), or go back to the upgradable hold with "
                    "rw.writer.downgrade()"
                )
            s.upgraded = False
            s.upgrader = None
        self._writer = None
        self._version += 1
        if s.writer_reads:  # read levels taken on top of the write hold outlive it
            readers = self._readers
            if readers is None:
                readers = self._readers = {}
            readers[task] = s.writer_reads
            s.writer_reads = 0
        watched = s.watched
        if task in watched and not (self._readers and task in self._readers):
            if self._loop is not TRIO:  # (the asyncio case of unwatch_holder() written out)
                task.remove_done_callback(watched.pop(task))
            else:
                unwatch_holder(watched, TRIO, task)
        self._dispatch(s, True)
        if not (s.read_queue or s.write_queue):
            self._maybe_idle(s)

    def _release_upgradable(self, task: Any) -> None:
        s = self._slow
        if s is None or s.upgrader is not task:
            raise not_holding("upgradable.release()", self, task, (s.upgrader if s else None,))
        if s.upgraded:
            if s.extra_write_levels:
                raise RuntimeError(
                    f"{self!r}: release the re-entrant write levels taken after upgrade() first"
                )
            self._release_write(task, whole_upgrade=True)
            return
        s.upgrader = None
        self._forget(s, task)
        self._dispatch(s, False)
        self._maybe_idle(s)

    def _downgrade(self, task: Any) -> None:
        if self._writer is not task:
            raise not_holding("writer.downgrade()", self, task, (self._writer,))
        s = self._slow
        if s is not None and s.extra_write_levels:
            raise RuntimeError(
                f"{self!r}: writer.downgrade() while the write lock is held re-entrantly "
                f"({s.extra_write_levels + 1} levels); release the inner levels first"
            )
        self._writer = None
        self._version += 1
        readers = self._readers
        if readers is None:
            readers = self._readers = {}
        extra = 0
        if s is not None:
            extra, s.writer_reads = s.writer_reads, 0
        if s is not None and s.upgraded:
            s.upgraded = False  # back to the upgradable hold
            if extra:
                readers[task] = extra
        else:
            readers[task] = 1 + extra
            if s is None:
                s = self._slow = _RWState()
            s.downgraded.add(task)
        self._dispatch(s, True)
        self._maybe_idle(s)

    # -- hand-off ----------------------------------------------------------------------------
    # Invariants after every operation (each ends with _dispatch when it freed something):
    #   nothing grantable waits  no lost hand-off: a writer waits only behind a hold, an
    #                                     upgradable request only behind another upgrader
    #   a reader waits           only while a writer holds, an upgrade is pending, or a writer
    #                                     that arrived before it is queued
    #   a holder is watched      while a waiter waits for it (its exit breaks the lock)

    def _dispatch(self, s: _RWState, phase_fair: bool) -> None:
        """Grant whatever can be granted now.  ``phase_fair``: a write phase just ended.

        The admission rule, in order (each waiter returned by the queues can be granted, so no
        step retries):

        1. a pending ``upgrade()`` goes as soon as no plain reader holds; until then nothing
           else does (new readers queue behind it);
        2. readers: after a write phase every waiting reader goes (phase-fair); otherwise those
           that no still-grantable queued writer arrived before (writer preference);
        3. then the first write or upgradable request, if the holds left allow it.
        """
        if self._writer is not None:
            return
        up = s.upgrading
        if up is not None:
            if self._readers:
                return
            s.upgrading = None
            if not up.lost():
                self._writer = up.task
                s.upgraded = True
                self._version += 1
                up.grant()
                return
            up.state = GONE  # Task.cancel() got there first: as if it had never asked
        rq, wq = s.read_queue, s.write_queue
        if rq:
            limit = _NO_LIMIT if phase_fair else wq.first_writer_ticket()
            readers = self._readers
            if readers is None:
                readers = self._readers = {}
            while (w := rq.first()) is not None and w.ticket <= limit:
                rq.pop_first()
                readers[w.task] = 1
                w.grant()
        w = wq.first()
        if w is not None and s.upgrader is None and (w.mode != WRITE or not self._readers):
            wq.pop_first()
            if w.mode == WRITE:
                self._writer = task = w.task
                self._version += 1
                w.grant()
                # the writer is the only holder now: watch it if anyone waits behind it
                if (wq or rq) and task not in s.watched and not s.broken:
                    if self._loop is not TRIO:  # (the asyncio case of watch_holder() written out)
                        task.add_done_callback(cb := self._holder_exited)
                        s.watched[task] = cb
                    else:
                        watch_holder(s.watched, TRIO, task, self._holder_exited)
                return
            s.upgrader = w.task
            w.grant()
        if rq or wq or s.upgrading is not None:
            self._watch_holders(s)

    def _maybe_idle(self, s: _RWState) -> None:
        if s.read_queue or s.write_queue or s.upgrading is not None:
            return
        if s.watched and not s.broken:
            unwatch_all(s.watched, self._loop)
        if s.plain():
            self._slow = None

    # -- the queue's callbacks -----------------------------------------------------------------

    def _waiter_gone(self, waiter: Waiter) -> None:
        s = self._slow
        assert s is not None
        if waiter is s.upgrading:
            s.upgrading = None
            waiter.state = GONE
        elif waiter.mode == READ:
            s.read_queue.remove(waiter)
        else:
            s.write_queue.remove(waiter)
        self._dispatch(s, False)
        self._maybe_idle(s)

    def _grant_abandoned(self, waiter: Waiter) -> None:
        task, mode = waiter.task, waiter.mode
        if mode == READ:
            self._release_read(task)
        elif mode == WRITE:
            self._release_write(task)
        elif mode == UPGRADABLE:
            self._release_upgradable(task)
        else:
            self._downgrade(task)  # a cancelled upgrade() keeps the upgradable hold

    # -- holders that exit holding the lock -----------------------------------------------------

    def _holds(self, s: _RWState, task: Any) -> bool:
        return (
            self._writer is task
            or s.upgrader is task
            or bool(self._readers and task in self._readers)
        )

    def _watch_holders(self, s: _RWState) -> None:
        """Watch every holder (``s.watched`` only ever holds current holders)."""
        if s.broken:
            return
        watched = s.watched
        readers = self._readers
        writer, upg = self._writer, s.upgrader
        holders = len(readers) if readers else 0
        if writer is not None:
            holders += 1
        if upg is not None and upg is not writer and not (readers and upg in readers):
            holders += 1
        if len(watched) >= holders:
            return
        for task in [writer, upg, *(readers or ())]:
            if task is not None and not s.broken:
                watch_holder(watched, self._loop, task, self._holder_exited)

    def _forget(self, s: _RWState, task: Any) -> None:
        if task in s.watched and not self._holds(s, task):
            unwatch_holder(s.watched, self._loop, task)

    def _holder_exited(self, task: Any) -> None:
        s = self._slow
        if s is None or not self._holds(s, task):
            return
        s.watched.pop(task, None)
        s.downgraded.discard(task)
        s.broken = True
        message = self._broken_message(task)
        s.write_queue.fail_all(message)
        if s.upgrading is not None:
            s.upgrading.fail(BrokenResourceError(message))
            s.upgrading = None
        if self._writer is task:
            s.read_queue.fail_all(message)
        self._dispatch(s, False)  # readers held back only by the failed writers may go
        lock_broken(self, self._writer is task)

    def _broken_message(self, task: Any = None) -> str:
        if task is None:
            return f"{self!r}: a task holding it exited without releasing it"
        return f"{self!r}: {who(task)} exited while holding it"

    def _in_use(self) -> bool:
        return self._writer is not None or bool(self._readers) or self._slow is not None

    def _me(self) -> Any:
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            task = resolve_task(self)
        return task
