"""``aiolocks.RWLock``: a phase-fair, writer-preferring readers-writer lock.

One state (on the :class:`RWLock`) and three lock-like views over it: ``reader``, ``writer``
and ``upgradable``.  The uncontended paths touch only the RWLock's own slots; everything that
exists only under contention or in rarer modes (queues, upgradable hold, re-entrant write levels,
a broken owner, watched holders) lives in an ``_RWState`` that is created on demand and dropped
as soon as the lock is back to a plain state, so ``_slow is None`` is the fast-path test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from inspect import isawaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, final, overload

from anyio import BrokenResourceError, LockStatistics, WouldBlock

from ._backend import READY, TRIO, resolve_task, task_info, task_of, thread_mark, unwatch, watch
from ._common import (
    check_flag,
    held_checkpoint,
    lock_broken,
    name_of,
    no_sync_with,
    not_holding,
    set_name,
    who,
)
from ._exceptions import DeadlockError
from ._queue import GONE, WAITING, Waiter, WaitQueue, new_waiter
from ._types import RWLockStatistics

__all__ = ["RWLock", "RWLockStatistics", "ReadLock", "UpgradableLock", "WriteLock"]

T = TypeVar("T")
if TYPE_CHECKING:  # positional arguments checked against fn's signature, as anyio does
    from typing_extensions import TypeVarTuple, Unpack

    PosArgsT = TypeVarTuple("PosArgsT")

READ, WRITE, UPGRADABLE, UPGRADE = 0, 1, 2, 3
_MODE_NAMES = ("read", "write", "upgradable", "upgrade")
_MODES = {"read": READ, "write": WRITE, "upgradable": UPGRADABLE, "upgrade": UPGRADE}
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
        self.watched: dict[Any, Any] = {}  # holder task -> token, while tasks wait
        # Tasks whose read hold came from writer.downgrade(): one of their read levels stands
        # for the write acquisition, so writer.release() (leaving ``async with rw.writer``)
        # releases that level.
        self.downgraded: set[Any] = set()


@final
class RWLock:
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

    # Invariants (checked by _check_invariants after every step of the stress and model tests):
    #   _writer is not None      implies  no task in _readers (the writer's own read levels
    #                                     are counted in _slow.writer_reads)
    #   _slow is None            implies  no waiters, no upgradable hold, one write level
    #   a reader waits           only while a writer holds, an upgrade is pending, or a writer
    #                                     that arrived before it is queued
    #   nothing grantable waits  (after every operation: no lost hand-off)
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
        self._fast = check_flag(fast_acquire, "fast_acquire")
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

    @property
    def version(self) -> int:
        """Moves by one at each outermost write acquisition and at its final release.

        Odd while the lock is write-held; re-entrant write levels do not move it.
        """
        return self._version

    # -- optimistic (versioned) reads: the seqlock / StampedLock idea ------------------------

    def optimistic_read(self) -> int:
        """Return a stamp for an optimistic read; never blocks, never a checkpoint.

        Read the shared state without the lock, then call :meth:`validate` with the stamp: if it
        returns True, no writer held or took the lock in between, so what was read is a
        consistent snapshot.  A stamp taken while a writer holds the lock never validates.

        Example::

            stamp = rw.optimistic_read()
            x, y = point.x, point.y          # may be torn by a writer that awaits mid-update
            if not rw.validate(stamp):
                async with rw.reader:        # fall back to the read lock
                    x, y = point.x, point.y

        .. versionadded:: 0.1
        """
        return self._version

    def validate(self, stamp: int) -> bool:
        """True iff no writer held or took the lock since ``stamp`` was taken.

        ``stamp`` comes from :meth:`optimistic_read` (or :attr:`version`).  Never blocks, never
        a checkpoint.

        .. versionadded:: 0.1
        """
        return stamp == self._version and not stamp & 1

    @overload
    async def read_optimistic(
        self, fn: Callable[[Unpack[PosArgsT]], Awaitable[T]], *args: Unpack[PosArgsT]
    ) -> T: ...
    @overload
    async def read_optimistic(
        self, fn: Callable[[Unpack[PosArgsT]], T], *args: Unpack[PosArgsT]
    ) -> T: ...
    async def read_optimistic(
        self, fn: Callable[[Unpack[PosArgsT]], Any], *args: Unpack[PosArgsT]
    ) -> Any:
        """Run ``fn(*args)`` without the lock; if a writer interfered, run it again under it.

        ``fn`` may be a plain function or a coroutine function; it should only read.  The first
        run takes no lock: if :meth:`validate` then confirms that no writer held or took the
        lock meanwhile, its result is returned.  Otherwise ``fn`` runs once more holding the
        read lock, so a stream of writers can never starve it (no retry loop, no livelock).
        An exception raised by ``fn`` in a run that fails validation is discarded (it may come
        from torn data) and ``fn`` is run again under the read lock; an exception from a
        validated run propagates.  Cancellation always propagates; nothing is held afterwards.

        It beats ``async with rw.reader`` when writes are rare and ``fn`` is short: no lock
        traffic, and it does not queue behind a writer that holds the lock across an ``await``
        unless it has to.  It loses when writes are frequent (two runs instead of one) or when
        ``fn`` has side effects that must not happen twice.

        The optimistic run is not a checkpoint unless ``fn`` awaits.

        Returns:
            the validated result of ``fn``.

        .. versionadded:: 0.1
        """
        stamp = self._version
        if not stamp & 1:
            try:
                result = fn(*args)
                if isawaitable(result):
                    result = await result
            except Exception:
                if stamp == self._version:
                    raise  # validated: the data was consistent, so the error is real
            else:
                if stamp == self._version:
                    return result
        async with self.reader:
            result = fn(*args)
            if isawaitable(result):
                result = await result
            return result

    def __repr__(self) -> str:
        name = name_of(self)
        name = f" {name!r}" if name else ""
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
        return f"<aiolocks.RWLock{name} {state} at {id(self):#x}>"

    def statistics(self) -> RWLockStatistics:
        """Return a :class:`RWLockStatistics` snapshot."""
        s = self._slow
        readers = len(self._read_holders())
        if s is None:
            return RWLockStatistics(readers, task_info(self._writer), 0, 0, self._version)
        return RWLockStatistics(
            readers,
            task_info(self._writer),
            len(s.read_queue),
            len(s.write_queue) + (s.upgrading is not None),
            self._version,
        )

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
        if self._writer is None and not readers:
            if s is None:
                self._writer = task
                self._version += 1
                return True
            if s.upgrader is None and not s.write_queue:
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
        if task in s.watched and not (self._readers and task in self._readers):
            unwatch(task, s.watched.pop(task))
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
                    s.watched[task] = watch(self._loop, task, self._holder_exited)
                return
            s.upgrader = w.task
            w.grant()
        if rq or wq or s.upgrading is not None:
            self._watch_holders(s)

    def _maybe_idle(self, s: _RWState) -> None:
        if s.read_queue or s.write_queue or s.upgrading is not None:
            return
        if s.watched and not s.broken:
            for task, token in s.watched.items():
                unwatch(task, token)
            s.watched.clear()
        if (
            s.upgrader is None
            and not s.upgraded
            and not s.extra_write_levels
            and not s.writer_reads
            and not s.broken
            and not s.watched
            and not s.downgraded
        ):
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

    def _repark_writer(self, waiter: Waiter) -> bool:
        """Queue a sleeping waiter for the write lock (a notified Condition waiter, never a
        lost one): it wakes up holding it."""
        s = self._state()
        s.ticket += 1
        waiter.home = self
        waiter.mode = WRITE
        waiter.ticket = s.ticket
        s.write_queue.append(waiter)
        if self._writer is None:  # a cancelled wait() just passed its notification on
            self._dispatch(s, False)
            self._maybe_idle(s)
        else:
            self._watch_holders(s)
        return True

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
            if task is not None and task not in watched and not s.broken:
                watched[task] = None  # a watch may report an exit at once (trio)
                watched[task] = watch(self._loop, task, self._holder_exited)

    def _forget(self, s: _RWState, task: Any) -> None:
        if task in s.watched and not self._holds(s, task):
            unwatch(task, s.watched.pop(task))

    def _holder_exited(self, task: Any) -> None:
        s = self._slow
        if s is None or not self._holds(s, task):
            return
        s.watched.pop(task, None)
        s.downgraded.discard(task)
        s.broken = True
        message = self._broken_message(task)
        failed = s.write_queue.take_all()
        if s.upgrading is not None:
            failed.append(s.upgrading)
            s.upgrading = None
        if self._writer is task:
            failed += s.read_queue.take_all()
        for w in failed:
            w.fail(BrokenResourceError(message))
        self._dispatch(s, False)  # readers held back only by the failed writers may go
        lock_broken(self, self._writer is task)

    def _broken_message(self, task: Any = None) -> str:
        if task is None:
            return f"{self!r}: a task holding it exited without releasing it"
        return f"{self!r}: {who(task)} exited while holding it"

    # -- misc --------------------------------------------------------------------------------

    def _in_use(self) -> bool:
        return self._writer is not None or bool(self._readers) or self._slow is not None

    # -- introspection for aiolocks.debug (never on a hot path) -------------------------------

    _debug_kind = "RWLock"

    def _debug_holders(self) -> list[tuple[Any, str]]:
        return self._holders()

    def _debug_waiters(self) -> list[tuple[Waiter, str]]:
        s = self._slow
        if s is None:
            return []
        waiters = [*s.read_queue, *s.write_queue]
        if s.upgrading is not None:
            waiters.append(s.upgrading)
        waiters.sort(key=lambda w: w.ticket)
        return [(w, self._debug_mode(w)) for w in waiters]

    def _debug_mode(self, waiter: Waiter) -> str:
        return "write" if waiter.mode == UPGRADE else _MODE_NAMES[waiter.mode]

    def _debug_blockers(self, task: Any, mode: str, waiter: Waiter | None = None) -> list[Any]:
        """The tasks a request of ``task`` (or its queued ``waiter``) waits for; ``[]`` if none.

        Only genuine waits, and only as many as a cycle search needs: everyone queued in this
        lock waits, in the end, for its holders, so a request depends on the holders it
        conflicts with; a reader held back by a queued writer (writer preference) depends on
        that writer, which is named so a reported cycle reads as it happens.
        """
        s = self._slow
        writer, readers = self._writer, self._readers or {}
        m = waiter.mode if waiter is not None else _MODES.get(mode, UPGRADE)
        others = [t for t in readers if t is not task]
        if m == UPGRADE:
            return others
        if waiter is None and (
            writer is task or task in readers or (s is not None and s.upgrader is task)
        ):
            return []  # re-entrant, or a request refused at once
        if m == READ:
            if writer is not None:
                return [writer]
            if s is None:
                return []
            limit = waiter.ticket if waiter is not None else _NO_LIMIT
            first = next((w for w in s.write_queue if w.mode == WRITE and w.ticket < limit), None)
            if first is not None:
                return [first.task]
            return [s.upgrading.task] if s.upgrading is not None else []
        upg = s.upgrader if s is not None else None
        out = [t for t in (writer, upg) if t is not None and t is not task]
        if m == WRITE:
            out += others
        if not out and s is not None:  # only queued behind another request (FIFO)
            limit = waiter.ticket if waiter is not None else _NO_LIMIT
            ahead = next((w for w in s.write_queue if w.ticket < limit), None)
            if ahead is not None:
                out = [ahead.task]
        return out

    def _me(self) -> Any:
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            task = resolve_task(self)
        return task

    def _check_invariants(self) -> None:
        readers = self._readers or {}
        assert all(n >= 1 for n in readers.values()), "a reader with no levels"
        writer = self._writer
        if writer is not None:
            assert writer not in readers, "the writer is counted as a plain reader"
            assert not readers, "readers hold the lock together with a writer"
            assert self._version % 2 == 1, "version even while write-held"
        else:
            assert self._version % 2 == 0, "version odd while not write-held"
        s = self._slow
        if s is not None:
            self._check_queues(s, writer, readers)

    def _check_queues(self, s: _RWState, writer: Any, readers: dict[Any, int]) -> None:
        for q in (s.read_queue, s.write_queue):
            assert all(w.state == WAITING and w.home is self for w in q), "a stale waiter queued"
        assert all(w.mode == READ for w in s.read_queue)
        assert s.write_queue.writers == sum(1 for w in s.write_queue if w.mode == WRITE), (
            "queued writer count"
        )
        if s.upgrading is not None:
            assert s.upgrader is s.upgrading.task and writer is None, "upgrade pending without hold"
        if s.upgraded:
            assert writer is not None and writer is s.upgrader, (
                "upgraded without the upgrader writing"
            )
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
        if not s.broken:
            self._check_watched(s, writer, readers)

    def _check_watched(self, s: _RWState, writer: Any, readers: dict[Any, int]) -> None:
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


class _View:
    """What the three views share: the misuse guards and ``acquire``."""

    __slots__ = ("__weakref__", "_rw")

    _mode = READ

    def __init__(self, rw: RWLock) -> None:
        self._rw = rw

    def __aenter__(self) -> Awaitable[None]:
        rw = self._rw
        return rw._enter(rw._me(), self._mode)

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        self.release()
        return READY

    async def acquire(self) -> None:
        """Acquire this side of the lock, waiting while that is not possible.

        Raises:
            DeadlockError: the request could never be granted (see :class:`RWLock`).
            anyio.BrokenResourceError: a task holding a conflicting hold exited.
        """
        await self.__aenter__()

    def acquire_nowait(self) -> None:
        """Acquire without waiting.  Never jumps the queue (except re-entrant acquisitions).

        Raises:
            anyio.WouldBlock: the lock would have to wait.
            DeadlockError: the request could never be granted.
        """
        rw = self._rw
        task = rw._me()
        if self._mode == READ:
            granted = rw._try_read(task)
        elif self._mode == WRITE:
            granted = rw._try_write(task)
        else:
            granted = rw._try_upgradable(task)
        if not granted:
            raise WouldBlock

    def release(self) -> None:  # pragma: no cover - every view overrides it
        """Release what this view's acquisition holds."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{_MODE_NAMES[self._mode]} side of {self._rw!r}>"

    def __enter__(self) -> None:
        no_sync_with(self)

    def __exit__(self, *args: object) -> None:
        no_sync_with(self)


@final
class ReadLock(_View):
    """The read side of an :class:`RWLock` (``rw.reader``); shared among tasks.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def __aenter__(self) -> Awaitable[None]:
        rw = self._rw
        task = task_of(rw._loop)
        if task is None or rw._tid != thread_mark():
            task = resolve_task(rw)
        if rw._writer is None and rw._slow is None:
            readers = rw._readers
            if readers is None:
                readers = rw._readers = {}
            readers[task] = readers.get(task, 0) + 1
            if rw._fast and rw._loop is not TRIO:
                return READY
            return held_checkpoint(rw._loop, rw._release_read, task, rw._fast)
        return rw._enter(task, READ)

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        rw = self._rw
        readers = rw._readers
        if rw._slow is None and readers:  # no thread check: as in WriteLock.__aexit__
            task = task_of(rw._loop)
            n = readers.pop(task, 0)  # one dict operation for the common case (one level)
            if n == 1:
                return READY
            if n:
                readers[task] = n  # back as it was: release() takes one level off
        self.release()
        return READY

    def release(self) -> None:
        """Release one read level of the calling task.

        Raises:
            RuntimeError: the calling task holds no read lock (nothing is changed).
        """
        rw = self._rw
        task = task_of(rw._loop)
        if task is None or rw._tid != thread_mark():
            task = resolve_task(rw)
        readers = rw._readers
        if rw._slow is None and readers:
            n = readers.get(task, 0)
            if n == 1:
                del readers[task]
                return
            if n > 1:
                readers[task] = n - 1
                return
        rw._release_read(task)

    def locked(self) -> bool:
        """True if any task holds a read lock (the upgradable holder and a writer that took
        read levels on top of its write hold count)."""
        return bool(self._rw._read_holders())

    def statistics(self) -> RWLockStatistics:
        """The whole lock's :class:`RWLockStatistics`."""
        return self._rw.statistics()

    # -- the condition port (see _condition.py): a reader waits by letting go of its read
    # hold, as Go's sync.NewCond(rw.RLocker()); a writer excludes readers, so it may notify

    _cv_mode = "read"

    def _cv_holds(self, task: Any, waiting: bool = False) -> bool:
        rw = self._rw
        if rw._readers and task in rw._readers:
            return True
        return not waiting and rw._writer is task

    def _cv_release(self, task: Any) -> int:
        rw = self._rw
        readers = rw._readers
        assert readers is not None  # _cv_holds(task, waiting=True) said so
        levels = readers[task]
        readers[task] = 1
        rw._release_read(task, keep_mark=True)
        return levels

    def _cv_restore(self, task: Any, levels: int) -> None:
        readers = self._rw._readers
        if levels > 1 and readers is not None:
            readers[task] = levels

    def _cv_repark(self, waiter: Waiter) -> bool:
        return False  # no queue to join: a woken reader takes its read hold back itself


@final
class WriteLock(_View):
    """The write side of an :class:`RWLock` (``rw.writer``); exclusive.

    .. versionadded:: 0.1
    """

    __slots__ = ()
    _mode = WRITE

    def __aenter__(self) -> Awaitable[None]:
        rw = self._rw
        task = task_of(rw._loop)
        if task is None or rw._tid != thread_mark():
            task = resolve_task(rw)
        if rw._writer is None and rw._slow is None and not rw._readers:
            rw._writer = task
            rw._version += 1
            if rw._fast and rw._loop is not TRIO:
                return READY
            return held_checkpoint(rw._loop, rw._release_write, task, rw._fast)
        writer = rw._writer
        if writer is not None and writer is not task:
            return rw._wait(task, WRITE)  # held by another writer: nothing to decide, wait
        if rw._try_write(task):
            return held_checkpoint(rw._loop, rw._release_write, task, rw._fast)
        return rw._wait(task, WRITE)

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        rw = self._rw
        writer = rw._writer
        # No thread check here (release() has one): ``async with`` leaves in the task, and so
        # in the thread, that entered it.
        if writer is not None and rw._slow is None and writer is task_of(rw._loop):
            rw._writer = None
            rw._version += 1
            return READY
        self.release()
        return READY

    def release(self) -> None:
        """Release one write level of the calling task, handing the lock on if it was the last.

        After :meth:`downgrade`, it releases the read level the write hold turned into.

        Raises:
            RuntimeError: the calling task does not hold the write lock (nothing is changed).
        """
        rw = self._rw
        task = task_of(rw._loop)
        if task is None or rw._tid != thread_mark():
            task = resolve_task(rw)
        if rw._writer is task and rw._slow is None:
            rw._writer = None
            rw._version += 1
            return
        rw._release_write(task)

    def downgrade(self) -> None:
        """Atomically turn the caller's write hold into a read hold.

        Waiting readers are admitted at once; no writer is.  After ``rw.upgradable.upgrade()``
        it returns the caller to the upgradable hold instead.

        The write acquisition now stands for the read hold it became: leaving its
        ``async with rw.writer:`` block (or calling ``rw.writer.release()``) releases that read
        level, so both of these end holding nothing::

            async with rw.writer:
                cache.update(await load())
                rw.writer.downgrade()        # readers may come in; no writer can
                await publish(cache)         # still reading a consistent cache

            await rw.writer.acquire()
            try:
                rw.writer.downgrade()
                ...
            finally:
                rw.writer.release()          # releases the read hold

        Raises:
            RuntimeError: the caller does not hold the write lock, or holds it re-entrantly.
        """
        rw = self._rw
        rw._downgrade(rw._me())

    async def acquire_if_unchanged(self, stamp: int) -> bool:
        """Take the write lock only if no write happened since ``stamp``.

        The compare-and-set of async read-modify-write code: read optimistically (or under the
        read lock, then release it), ``await`` whatever you need, then commit only if nothing
        changed meanwhile::

            stamp = rw.optimistic_read()
            new = await compute(cache.value)          # no lock held across the await
            if await rw.writer.acquire_if_unchanged(stamp):
                try:
                    cache.value = new
                finally:
                    rw.writer.release()
            else:
                ...                                   # somebody wrote: start over

        Returns False at once, holding nothing, if the lock was written since ``stamp``, is
        write-held now (also by the caller: its own writes count), or a writer or an
        ``upgrade()`` is already queued (it would write first).  Otherwise waits for the write
        lock like :meth:`acquire` and returns True holding it, unless another writer got it
        first (then it releases it and returns False).  Cancelled while waiting, it holds
        nothing.

        Raises:
            DeadlockError: the caller holds a read lock or the upgradable lock (whatever the
                stamp: the request itself could never be granted).

        .. versionadded:: 0.1
        """
        rw = self._rw
        s = rw._slow
        if rw._readers or s is not None:
            task = rw._me()
            readers = rw._readers
            if rw._writer is not task and (
                (readers and task in readers) or (s is not None and s.upgrader is task)
            ):
                rw._try_write(task)  # raises the DeadlockError that explains it
        if stamp != rw._version or stamp & 1:
            return False
        if s is not None and (s.write_queue.writers or s.upgrading is not None):
            return False  # a queued writer (or a pending upgrade) will write first
        await self.acquire()
        if rw._version == stamp + 1:  # ours is the only write acquisition since the stamp
            return True
        self.release()
        return False

    def locked(self) -> bool:
        """True if some task holds the write lock."""
        return self._rw._writer is not None

    def statistics(self) -> LockStatistics:
        """anyio's :class:`~anyio.LockStatistics` shape: (locked, owner, tasks_waiting)."""
        rw = self._rw
        s = rw._slow
        waiting = 0 if s is None else len(s.write_queue) + (s.upgrading is not None)
        return LockStatistics(rw._writer is not None, task_info(rw._writer), waiting)

    # -- the condition port (see _condition.py) -------------------------------------------

    _cv_mode = "write"

    def _cv_holds(self, task: Any, waiting: bool = False) -> bool:
        return self._rw._writer is task

    def _cv_release(self, task: Any) -> int:
        rw, levels = self._rw, 1
        s = rw._slow
        if s is not None:
            if s.upgraded:
                raise RuntimeError(
                    f"wait() on a condition over {self!r}: the write hold came from upgrade(); "
                    "wait on a condition over rw.writer with a plain write hold"
                )
            if s.writer_reads:
                raise RuntimeError(
                    f"wait() on a condition over {self!r}: this task holds read levels on top "
                    "of its write hold; release them before waiting"
                )
            levels += s.extra_write_levels
            s.extra_write_levels = 0
        rw._release_write(task)
        return levels

    def _cv_restore(self, task: Any, levels: int) -> None:
        if levels > 1:
            self._rw._state().extra_write_levels = levels - 1

    def _cv_repark(self, waiter: Waiter) -> bool:
        return self._rw._repark_writer(waiter)


@final
class UpgradableLock(_View):
    """The upgradable-read side of an :class:`RWLock` (``rw.upgradable``).

    At most one task holds it; it coexists with plain readers and excludes writers and other
    upgradable holders.  ``await upgrade()`` turns it into the write hold once the other readers
    have left (new readers queue behind it), so two upgraders can never deadlock each other.

    .. versionadded:: 0.1
    """

    __slots__ = ()
    _mode = UPGRADABLE

    def release(self) -> None:
        """Release the upgradable hold (the write hold, after ``upgrade()``).

        Raises:
            RuntimeError: the calling task does not hold it (nothing is changed).
        """
        rw = self._rw
        rw._release_upgradable(rw._me())

    def _check_upgrade(self, task: Any) -> _RWState:
        rw = self._rw
        s = rw._slow
        if s is None or s.upgrader is not task:
            raise RuntimeError(f"{rw!r}: upgrade() by {who(task)}, which does not hold it")
        if s.upgraded:
            raise RuntimeError(f"{rw!r}: upgrade() by {who(task)}, which already upgraded")
        if rw._readers and task in rw._readers:
            raise DeadlockError(
                f"{rw!r}: upgrade() by a task that also holds a plain read lock would wait "
                "for itself forever; release the read lock first"
            )
        return s

    def _upgrade_now(self, s: _RWState, task: Any) -> bool:
        rw = self._rw
        if rw._readers:
            return False
        rw._writer = task
        s.upgraded = True
        rw._version += 1
        return True

    async def upgrade(self) -> None:
        """Atomically turn the upgradable hold into the write hold.

        Waits for the plain readers to leave; readers arriving meanwhile queue behind it.  If
        cancelled while waiting, the caller keeps the upgradable hold.

        Raises:
            RuntimeError: the caller does not hold the upgradable lock.
            DeadlockError: the caller also holds a plain read lock.
            anyio.BrokenResourceError: a reader exited holding the lock.
        """
        rw = self._rw
        task = rw._me()
        s = self._check_upgrade(task)
        if self._upgrade_now(s, task):
            await held_checkpoint(rw._loop, rw._downgrade, task, rw._fast)
            return
        await rw._wait(task, UPGRADE)

    def upgrade_nowait(self) -> None:
        """Upgrade if no other reader holds the lock.

        Raises:
            anyio.WouldBlock: other readers hold the lock.
        """
        rw = self._rw
        task = rw._me()
        if not self._upgrade_now(self._check_upgrade(task), task):
            raise WouldBlock

    def locked(self) -> bool:
        """True if some task holds the upgradable lock."""
        s = self._rw._slow
        return s is not None and s.upgrader is not None

    def statistics(self) -> RWLockStatistics:
        """The whole lock's :class:`RWLockStatistics`."""
        return self._rw.statistics()
