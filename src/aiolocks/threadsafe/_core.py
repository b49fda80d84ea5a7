"""The one waiter queue of the thread-safe family: owners, waiters, hand-off, owner exit.

Every primitive of :mod:`aiolocks.threadsafe` keeps its whole state behind one internal
``threading.Lock`` (``_cs``, the critical section) and mutates it only while holding it.  The
critical section is short (a few attribute writes and a dict operation) and is never held across
an ``await``, a blocking wait, a wake-up or a user callback.  Nothing here relies on the GIL
making a *sequence* of Python operations atomic: that is what the critical section is for.

A waiter is one of three kinds, each woken on its own terms:

* an asyncio task parks on a future of its own loop; the releaser sets it directly when it runs
  on that loop, through ``loop.call_soon_threadsafe`` otherwise;
* a trio task parks in ``wait_task_rescheduled``; it is rescheduled directly from its own run,
  through its run's ``TrioToken.run_sync_soon`` from elsewhere;
* a thread parks on a ``threading.Lock`` of its own, created locked, which the releaser
  releases (no polling; ``acquire(timeout=...)`` gives the timeout).

Hand-off, not wake-up: the releaser decides who goes next and records it as the holder inside
the critical section (the waiter's state becomes ``GRANTED``), then wakes it outside.  A waiter
that leaves (cancelled, timed out, its loop gone) re-enters the critical section: if it was
still ``WAITING`` it is removed; if it had been ``GRANTED`` meanwhile, it gives the grant back,
which hands it on.  So a grant is never lost and a leaving waiter never keeps the lock.

Owner exit: a task or thread that ends while holding breaks the lock for whoever would wait
behind it.  Owners are watched only once someone waits behind them (see :meth:`Primitive._watch`).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import weakref
from _thread import allocate_lock, get_ident
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import anyio
from anyio import BrokenResourceError

from .._backend import LIVE, TRIO, task_name, task_of, watch
from .._common import check_flag, held_checkpoint, name_of

__all__ = [
    "FAILED",
    "GONE",
    "GRANTED",
    "THREAD",
    "WAITING",
    "Primitive",
    "ThreadOwner",
    "Waiter",
    "async_caller",
    "caller",
    "owner_info",
    "owner_name",
    "thread_caller",
]

WAITING = 0  # queued
GRANTED = 1  # handed what it asked for (recorded as a holder); wakes up holding it
FAILED = 2  # the lock broke under it; wakes up with ``error``
GONE = 3  # left the queue (cancelled or timed out before any grant)

_get_running_loop = asyncio._get_running_loop
_now = time.monotonic


# -- owners -------------------------------------------------------------------------------------


class _Sentinel:
    __slots__ = ("__weakref__",)


class ThreadOwner:
    """The identity of a thread on the blocking side, with exit detection.

    One per thread, kept in a ``threading.local``.  Beside it the thread-local keeps a sentinel
    that nothing else references; CPython drops a thread's thread-local values when the thread
    ends, so the sentinel dies then, and the weak reference to it calls :meth:`_exited` (in the
    ending thread, or wherever the thread state is cleared).  Locks that need to know register
    a callback with :meth:`watch`; a callback registered after the exit runs at once.
    """

    __slots__ = ("__weakref__", "_callbacks", "_dead", "_guard", "_ref", "ident", "name", "park")

    def __init__(self, sentinel: _Sentinel) -> None:
        thread = threading.current_thread()
        self.ident = get_ident()
        self.name = thread.name
        # The lock this thread parks on (see Primitive._park_blocking), kept locked between
        # parks; only this thread reads or replaces it.  None: make a new one.
        self.park: Any = None
        self._guard = allocate_lock()
        self._dead = False
        self._callbacks: list[Callable[[Any], None]] = []
        self._ref = weakref.ref(sentinel, self._exited)

    def get_name(self) -> str:
        return f"thread {self.name}"

    def __repr__(self) -> str:
        return f"<thread {self.name!r} ({self.ident})>"

    def watch(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(self)`` when the thread ends (at once if it has ended)."""
        with self._guard:
            if not self._dead:
                self._callbacks.append(callback)
                return
        callback(self)

    def _exited(self, ref: object) -> None:
        with self._guard:
            self._dead = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


_tls = threading.local()


def _new_thread_owner() -> ThreadOwner:
    sentinel = _Sentinel()
    owner = ThreadOwner(sentinel)
    _tls.sentinel = sentinel
    _tls.owner = owner
    return owner


def thread_caller() -> ThreadOwner:
    """The calling thread's owner identity (blocking side)."""
    try:
        return _tls.owner  # type: ignore[no-any-return]
    except AttributeError:
        return _new_thread_owner()


def _trio() -> Any:
    return sys.modules.get("trio")


def _in_trio_run() -> bool:
    trio = sys.modules.get("trio")
    return trio is not None and bool(trio.lowlevel.in_trio_run())


def _trio_task() -> tuple[Any, Any] | None:
    """``(task, TrioToken)`` of the running trio task, or None outside trio."""
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_run():
        global _token_type
        token = trio.lowlevel.current_trio_token()
        _token_type = token.__class__
        return trio.lowlevel.current_task(), token
    return None


class _NoToken:
    pass


_token_type: type = _NoToken  # trio's TrioToken once trio is seen (cheaper than isinstance)


def is_trio(home: Any) -> bool:
    """Whether ``home`` (of an async owner) is a TrioToken, not an asyncio loop."""
    return home.__class__ is _token_type


# The two lookups below are the hot path of every acquire and release: the asyncio case is
# written out in each (a function call costs as much as the lookup itself).


def caller() -> tuple[Any, Any]:
    """``(owner, home)`` of a caller of either side: the running task and its asyncio loop or
    TrioToken, else the calling thread (whose home is None)."""
    loop = _get_running_loop()
    if loop is not None:
        task = task_of(loop)
        if task is not None:
            return task, loop
    return _trio_task() or (thread_caller(), None)


def async_caller() -> tuple[Any, Any]:
    """``(task, home)`` of the running task (async side)."""
    loop = _get_running_loop()
    if loop is not None:
        task = task_of(loop)
        if task is not None:
            return task, loop
    found = _trio_task()
    if found is None:
        raise RuntimeError(
            "aiolocks.threadsafe: 'async with' / acquire() must run in an asyncio or trio task; "
            "from a plain thread use 'with' or acquire_blocking()"
        )
    return found


def refuse_in_loop(prim: object) -> None:
    """A blocking wait from a thread that runs an event loop would freeze that loop."""
    if _get_running_loop() is not None or ("trio" in sys.modules and _in_trio_run()):
        raise RuntimeError(
            f"{prim!r}: a blocking acquire in a thread that runs an event loop would freeze "
            "the loop; use 'async with' (or 'await ....acquire()') there"
        )


def owner_name(owner: Any) -> str:
    if isinstance(owner, ThreadOwner):
        return owner.get_name()
    return f"task {task_name(owner)!r}"


def owner_info(owner: Any) -> anyio.TaskInfo | None:
    """anyio's TaskInfo for a task or a thread owner (``None`` for ``None``)."""
    if owner is None:
        return None
    if isinstance(owner, ThreadOwner):
        return anyio.TaskInfo(id(owner), None, owner.get_name(), None)  # type: ignore[arg-type]
    coro = owner.get_coro() if hasattr(owner, "get_coro") else owner.coro
    return anyio.TaskInfo(id(owner), None, task_name(owner), coro)


# -- waiters ------------------------------------------------------------------------------------


class Waiter:
    """One request parked in a primitive's queue.

    ``mode`` is what it asks for (the primitive's own vocabulary); ``state`` moves from WAITING
    to GRANTED, FAILED or GONE, only inside the primitive's critical section.
    """

    __slots__ = ("error", "kind", "mode", "owner", "park", "prim", "since", "state", "where")

    def __init__(self, prim: Any, owner: Any, mode: Any, kind: int, where: Any) -> None:
        self.prim = prim
        self.owner = owner
        self.mode = mode
        self.state = WAITING
        self.error: BaseException | None = None
        self.kind = kind  # _ASYNCIO, _TRIO or _THREAD
        self.where = where  # the asyncio loop, the TrioToken, or the park lock of a thread
        self.park: Any = None  # the asyncio future (asyncio side)
        self.since = _now()  # for aiolocks.debug.snapshot()

    @property
    def task(self) -> Any:  # the names aiolocks.debug reads
        return self.owner

    @property
    def home(self) -> Any:
        return self.prim

    def wake(self) -> bool:
        """Wake the waiter after its state left WAITING; False if it can never run again."""
        kind = self.kind
        if kind == _THREAD:
            self.where.release()
            return True
        if kind == _ASYNCIO:
            loop = self.where
            if _get_running_loop() is loop:
                _resolve(self.park, self.error)
                return True
            try:
                loop.call_soon_threadsafe(_resolve, self.park, self.error)
            except RuntimeError:  # its loop is closed: the task will never run again
                return False
            return True
        trio = sys.modules["trio"]
        outcome = sys.modules["outcome"]
        result = outcome.Value(None) if self.error is None else outcome.Error(self.error)
        if trio.lowlevel.in_trio_run() and trio.lowlevel.current_trio_token() is self.where:
            trio.lowlevel.reschedule(self.owner, result)
            return True
        try:
            self.where.run_sync_soon(trio.lowlevel.reschedule, self.owner, result)
        except trio.RunFinishedError:
            return False
        return True


_ASYNCIO = 0
_TRIO = 1
_THREAD = THREAD = 2


def _resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():  # cancelled meanwhile: its task gives the grant back itself
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


# -- the base of every primitive ----------------------------------------------------------------


class Primitive:
    """State behind one critical section, one FIFO of waiters, owner-exit detection.

    Subclasses implement, each called with ``_cs`` held:

    * ``_admit()`` -> list of waiters granted now (state set to GRANTED, recorded as holders);
    * ``_undo_grant(waiter)`` -> give back what a granted waiter was given (it is leaving);
    * ``_holds(owner)`` -> whether ``owner`` holds something that the queued waiters need;
    * ``_broken_victims(owner)`` -> the waiters that can never be served because ``owner``
      exited holding (they are removed and failed), or None if ``owner`` holds nothing.
    """

    __slots__ = ("__weakref__", "_broken", "_conds", "_cs", "_fast", "_q", "_watched")

    def __init__(self, fast_acquire: bool) -> None:
        self._fast = check_flag(fast_acquire, "fast_acquire")
        self._cs = allocate_lock()
        # waiter -> None, in arrival order (O(1) append, removal and pop of the first)
        self._q: OrderedDict[Waiter, None] = OrderedDict()
        self._broken: str | None = None  # why, once an owner exited holding
        self._watched: set[Any] = set()  # owners whose exit we listen for
        self._conds: list[Any] = []  # Conditions over this lock (their waiters fail if it breaks)
        LIVE.add(self)

    # hooks ------------------------------------------------------------------------------------

    def _admit(self) -> list[Waiter]:
        raise NotImplementedError

    def _undo_grant(self, waiter: Waiter) -> None:
        raise NotImplementedError

    def _broken_victims(self, owner: Any) -> list[Waiter] | None:
        raise NotImplementedError

    def _broken_for(self, mode: Any) -> str | None:
        """Why a request of ``mode`` that has to wait fails at once (a dead owner's hold)."""
        return self._broken

    def _blockers(self, waiter: Waiter) -> list[tuple[Any, Any]]:
        """``(owner, home)`` of the holders ``waiter`` waits for (watched for their exit)."""
        raise NotImplementedError

    def _cv_refuse(self, owner: Any) -> str | None:
        """Why a Condition's ``wait()`` by ``owner`` must be refused: a hold it could not let
        go of and take back (None: it may wait)."""
        return None

    # parking ------------------------------------------------------------------------------------

    def _enqueue(self, owner: Any, mode: Any, kind: int, home: Any) -> tuple[Waiter, list[Any]]:
        """Queue a waiter (``_cs`` held); returns it and the owners to start watching."""
        if self._broken is not None:  # (a lock that never broke refuses nobody)
            why = self._broken_for(mode)
            if why is not None:
                raise BrokenResourceError(why)
        waiter = Waiter(self, owner, mode, kind, home)
        self._q[waiter] = None
        watch = []
        for blocker, where in self._blockers(waiter):
            if blocker not in self._watched:
                self._watched.add(blocker)
                watch.append((blocker, where))
        return waiter, watch

    def _park_async(self, owner: Any, home: Any, mode: Any) -> Any:
        """Queue the current task and return the awaitable that waits for its grant.

        Raises BrokenResourceError at once if the lock is broken.  Called with ``_cs`` held.
        """
        if not is_trio(home):
            waiter, watch = self._enqueue(owner, mode, _ASYNCIO, home)
            waiter.park = home.create_future()
            return self._wait_asyncio(waiter, watch)
        waiter, watch = self._enqueue(owner, mode, _TRIO, home)
        return self._wait_trio(waiter, watch)

    async def _wait_asyncio(self, waiter: Waiter, watch: list[Any]) -> None:
        self._start_watching(watch)
        try:
            await waiter.park
        except BaseException:
            if waiter.error is None:
                self._leave(waiter)
            raise

    async def _wait_trio(self, waiter: Waiter, watch: list[Any]) -> None:
        trio = sys.modules["trio"]
        self._start_watching(watch)

        def abort(raise_cancel: Any) -> Any:
            with self._cs:
                if waiter.state != WAITING:
                    return trio.lowlevel.Abort.FAILED  # a grant or failure is on its way
                waiter.state = GONE
                del self._q[waiter]
                granted = self._admit()
            self._wake(granted)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _park_blocking(self, owner: Any, mode: Any, timeout: float | None) -> Waiter:
        """Queue the calling thread and sleep until granted, failed or timed out.

        Called with ``_cs`` held; returns with it released.  On return the waiter's state says
        what happened (GRANTED: it holds; GONE: timed out).
        """
        # The thread's own park lock, locked: a wake-up releases it, and the acquire below
        # that consumes the wake-up leaves it locked for the next park.  A park that ends
        # without consuming its wake-up (timeout, interrupt) drops it: a wake-up may still be
        # on its way to it.
        park = owner.park
        if park is None:
            park = allocate_lock()
            park.acquire()
        try:
            waiter, watch = self._enqueue(owner, mode, _THREAD, park)
        finally:
            self._cs.release()
        self._start_watching(watch)
        owner.park = None
        try:
            woken = park.acquire(True, -1 if timeout is None else max(timeout, 0.0))
        except BaseException:  # KeyboardInterrupt in the main thread
            self._leave(waiter)
            raise
        if woken:
            owner.park = park
        else:
            with self._cs:
                if waiter.state == WAITING:
                    waiter.state = GONE
                    del self._q[waiter]
                    granted = self._admit()
                else:
                    granted = []
            self._wake(granted)
        if waiter.state == FAILED:
            assert waiter.error is not None
            raise waiter.error
        return waiter

    def _leave(self, waiter: Waiter) -> None:
        """``waiter`` stops waiting (cancelled, interrupted, or it can never run again)."""
        with self._cs:
            if waiter.state == WAITING:
                waiter.state = GONE
                del self._q[waiter]
            elif waiter.state == GRANTED:
                waiter.state = GONE
                self._undo_grant(waiter)
            granted = self._admit()
        self._wake(granted)

    def _wake(self, waiters: list[Waiter]) -> None:
        """Wake granted or failed waiters (outside ``_cs``); pass on grants nobody can take."""
        for waiter in waiters:
            if not waiter.wake():
                self._leave(waiter)

    def _checkpoint(self, owner: Any, home: Any) -> Any:
        """The checkpoint after an uncontended async acquire; a cancel there gives it back.

        With ``fast_acquire`` there is none on asyncio and a cancel point only on trio (the
        rules of the in-process locks, see :func:`aiolocks._common.held_checkpoint`).
        """
        if home.__class__ is not _token_type:
            return held_checkpoint(home, self._undo_owner, owner, self._fast)
        return held_checkpoint(TRIO, self._undo_owner, owner, self._fast)

    def _undo_owner(self, owner: Any) -> None:
        raise NotImplementedError

    # owner exit -----------------------------------------------------------------------------------

    def _start_watching(self, owners: list[tuple[Any, Any]]) -> None:
        """Listen for the exit of ``(owner, home)`` pairs (outside ``_cs``), each on its terms."""
        if not owners:
            return
        ref = weakref.ref(self)

        def exited(owner: Any) -> None:
            prim = ref()
            if prim is not None:
                prim._owner_exited(owner)

        for owner, where in owners:
            if isinstance(owner, ThreadOwner):
                owner.watch(exited)
            elif not is_trio(where):
                loop = where
                try:
                    loop.call_soon_threadsafe(watch, loop, owner, exited)
                except RuntimeError:  # its loop is closed: the task can never release
                    exited(owner)
            else:
                _watch_trio_task(owner, where, exited)

    def _owner_exited(self, owner: Any) -> None:
        with self._cs:
            self._watched.discard(owner)
            victims = self._broken_victims(owner)
            if victims is None:
                return
            message = f"{self!r}: its holder ({owner_name(owner)}) exited without releasing it"
            self._broken = message
            for waiter in victims:
                waiter.state = FAILED
                waiter.error = BrokenResourceError(message)
                del self._q[waiter]
            for cond in self._conds:
                victims += cond._lock_broken()
            granted = self._admit()  # those that waited behind a failed request may go now
        for waiter in victims:
            waiter.wake()
        self._wake(granted)

    # introspection ------------------------------------------------------------------------------

    def _name_part(self) -> str:
        name = name_of(self)
        return f" {name!r}" if name else ""


def _watch_trio_task(task: Any, token: Any, callback: Callable[[Any], None]) -> None:
    trio = sys.modules["trio"]
    try:
        token.run_sync_soon(watch, TRIO, task, callback)  # in the task's own run
    except trio.RunFinishedError:
        callback(task)
