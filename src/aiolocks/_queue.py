"""The one waiter queue every aiolocks primitive is built on.

It owns parking, hand-off and cancellation, so the primitives above it are short state
machines.  The rules it enforces:

* **Hand-off, not wake-up.**  A releaser calls :meth:`Waiter.grant` after it has recorded the
  waiter as the new holder; the waiter wakes up already owning what it asked for, so no newcomer
  can barge in and no grant can be lost.  A grant cannot fail either: the queue only ever returns
  waiters that can still be granted (see :class:`WaitQueue`).
* **Cancellation is the queue's problem.**  A waiter cancelled while queued is removed in O(1)
  (``home._waiter_gone``); a waiter that was granted and then cancelled before it could run
  hands its grant back (``home._grant_abandoned``), which passes it on (``Waiter.abandon``
  decides which).  On trio a granted task is never aborted, so only the first case exists there.

``home`` is the primitive whose queue holds the waiter; it implements :class:`Parker`.  A waiter
may change home while it sleeps: a notified ``Condition`` waiter moves into its lock's queue and
wakes up holding the lock (trio's "repark").

The cancellation cases, all handled here or in ``Waiter.abandon``:

1. cancelled while queued (trio's abort, or an asyncio cancel scope / ``Task.cancel()`` whose
   task runs before any grant): ``home._waiter_gone`` removes it and admits whoever can go;
2. on asyncio, ``Task.cancel()`` cancelled its future but its task has not run yet: the waiter
   is *lost* (no grant can reach it).  The queue skips and drops it when it reaches the head,
   so a releaser never hands a grant to it; when its task runs, it finds itself ``GONE``;
3. granted, then cancelled before its task ran (asyncio only: a cancel scope that fires after
   the grant): it owns what it asked for but is leaving, so ``home._grant_abandoned`` gives it
   back, which hands it on.

* **A holder that exits holding a lock breaks it** (trio's ``break_lot``).  While tasks wait,
  the primitive watches the holders they wait for (:func:`watch_holder`: a done-callback on
  asyncio, a parking-lot breaker on trio); if one exits, the waiters that conflict with its
  hold fail with ``BrokenResourceError`` instead of waiting forever (:meth:`WaitQueue.fail_all`;
  a ``Lock``'s :class:`OwnerQueue` stays broken).  No watch exists while nobody waits, so the
  uncontended paths pay nothing for it.

Debug mode (``aiolocks.debug``) attaches from outside: ``enable()`` swaps instrumented
methods into the primitives' classes (``__aenter__``, ``acquire_nowait``, ``release``,
``__aexit__``, ``upgrade``, ``downgrade``, ``Condition.wait``) and sets :data:`waiting`, the
one thing it needs from here (which task waits in which waiter, for wait-for cycles; the
contended path pays one global read for it).  What it reads of a primitive's state is read by
``aiolocks._introspect``; nothing here or in the primitives checks a flag on the fast paths.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from anyio import BrokenResourceError

from ._backend import TRIO, unwatch, watch

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "GONE",
    "GRANTED",
    "WAITING",
    "AsyncioWaiter",
    "OwnerQueue",
    "Parker",
    "TrioWaiter",
    "WaitQueue",
    "Waiter",
    "unwatch_all",
    "unwatch_holder",
    "watch_holder",
    "new_waiter",
]

#: Debug mode only (``aiolocks.debug``): task -> the waiter it parks in now, for wait-for cycle
#: detection.  ``None`` when debug mode is off: then the contended path pays one global read.
waiting: dict[Any, Any] | None = None

_now = time.monotonic

WAITING = 0  # queued, not yet granted
GRANTED = 1  # handed what it asked for; it wakes up holding it
GONE = 2  # removed: cancelled before a grant, or failed (broken lock)


class Parker(Protocol):
    """What a primitive implements for the queue."""

    def _waiter_gone(self, waiter: Waiter) -> None:
        """``waiter`` was cancelled while still queued: forget it, admit whoever can go now."""

    def _grant_abandoned(self, waiter: Waiter) -> None:
        """``waiter`` was granted, then cancelled before it ran: undo the grant, pass it on."""


class _WaiterBase:
    """What both kinds of waiter share."""

    __slots__ = ()

    home: Parker  # the primitive whose queue holds the waiter now (it may move: Condition)
    task: Any  # the waiting task
    mode: int  # what it asked for (the primitive's own numbering)
    ticket: int  # arrival order, where the primitive needs one
    state: int  # WAITING, GRANTED or GONE
    since: float  # time.monotonic() when it started waiting (for diagnostics)

    def abandon(self) -> None:
        """The wait ended in an exception (cancellation or a broken lock): clean up after it."""
        waiter = cast("Waiter", self)
        if self.state == WAITING:
            self.home._waiter_gone(waiter)
        elif self.state == GRANTED:
            # The grant raced with Task.cancel(): we own it but are leaving; pass it on.
            self.home._grant_abandoned(waiter)


#: The future type an asyncio waiter parks on: the C ``Future`` where ``_asyncio`` exists.
_Future = asyncio.Future


class AsyncioWaiter(_WaiterBase):
    """A waiter parked on a future of its own (one per waiter, so one cancel hits one waiter).

    The future is an exact ``asyncio.Future``, not the waiter itself (a subclass): the C
    ``Task`` handles an exact future awaited by its coroutine on its fast path, and any
    subclass on a generic one (attribute lookups and method calls for ``get_loop``,
    ``add_done_callback`` and ``result``).  Measured with callgrind on 3.11, a contended
    hand-off cost 5,700 instructions more with a subclass (about 10 % of a whole contended
    ``asyncio.Lock`` acquisition) than with this extra object.
    """

    __slots__ = ("fut", "home", "mode", "since", "state", "task", "ticket")

    fut: asyncio.Future[None]

    def __await__(self) -> Generator[Any, Any, None]:
        return self.fut.__await__()

    def lost(self) -> bool:
        """True once ``Task.cancel()`` has cancelled the future: no grant can reach the waiter
        any more (its coroutine will raise ``CancelledError``).  The queue never hands it one."""
        return self.fut.done()

    def grant(self) -> None:
        """Wake the waiter as the new holder (the queue never returns a lost waiter)."""
        self.state = GRANTED
        self.fut.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """Wake the waiter with ``exc`` instead of a grant."""
        self.state = GONE
        if not self.fut.done():
            self.fut.set_exception(exc)


class TrioWaiter(_WaiterBase):
    """A waiter parked with ``trio.lowlevel.wait_task_rescheduled``."""

    __slots__ = ("home", "mode", "since", "state", "task", "ticket")

    def __init__(self, home: Parker, task: Any, mode: int, ticket: int) -> None:
        self.home = home
        self.task = task
        self.mode = mode
        self.ticket = ticket
        self.state = WAITING
        self.since = _now()

    def __await__(self) -> Generator[Any, Any, None]:
        return self._park().__await__()

    async def _park(self) -> None:
        lowlevel = sys.modules["trio"].lowlevel

        def abort(_: Any) -> Any:
            # trio calls this only while we have not been rescheduled, i.e. never after a grant.
            self.home._waiter_gone(self)
            return lowlevel.Abort.SUCCEEDED

        await lowlevel.wait_task_rescheduled(abort)

    def lost(self) -> bool:
        """Never on trio: a cancelled waiter has left its queue already (trio's abort)."""
        return False

    def grant(self) -> None:
        """Wake the waiter as the new holder."""
        self.state = GRANTED
        sys.modules["trio"].lowlevel.reschedule(self.task)

    def fail(self, exc: BaseException) -> None:
        """Wake the waiter with ``exc`` instead of a grant."""
        self.state = GONE
        outcome = sys.modules["outcome"]
        sys.modules["trio"].lowlevel.reschedule(self.task, outcome.Error(exc))


OnExit = Callable[[Any], None]

#: One parked request: the task, what it asked for (``mode``), its arrival ``ticket``, its
#: ``state``, the primitive it waits in (``home``), and how to wake it.  Await it to park; on an
#: exception call ``abandon()``, which tells ``home`` (cancelled while queued, or granted and
#: then cancelled before it ran):
#:
#:     try:
#:         await waiter
#:     except BaseException:
#:         waiter.abandon()
#:         raise
Waiter = AsyncioWaiter | TrioWaiter


class WaitQueue(OrderedDict[Waiter, None]):
    """FIFO of waiters: O(1) append, pop of the first, and removal of any waiter.

    An ``OrderedDict`` (as trio's ``ParkingLot``) rather than a deque with tombstones: a waiter
    that leaves is really gone, so the queue never keeps a cancelled task (its frames, its
    request's locals) reachable while the lock stays contended.  ``len(q)`` and ``bool(q)`` are
    the C-level dict operations, so hot paths use them directly.

    Hand-off cannot fail: :meth:`first` and :meth:`popleft` never return a *lost* waiter (on
    asyncio, one whose future ``Task.cancel()`` already cancelled; it cannot be granted).  They
    drop it (``GONE``: its coroutine then finds nothing to undo) and go on to the next, so every
    waiter they return can be granted at once, and no primitive needs a retry loop.

    Emptied queues can be kept for reuse (:meth:`new`, :meth:`recycle`): a primitive that goes
    back and forth between contended and free (a condition's ping-pong) would otherwise build a
    queue every time; each subclass keeps its own spares.

    Invariant: every waiter in the queue is ``WAITING``.
    """

    __slots__ = ()

    _spare: ClassVar[list[Any]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._spare = []

    @classmethod
    def new(cls) -> Self:
        """A queue of this class: a spare one if there is one."""
        spare = cls._spare
        return spare.pop() if spare else cls()

    def recycle(self) -> None:
        """Keep this emptied queue as a spare (up to 64 per class); a subclass's own fields
        must be back at their initial values."""
        spare = self._spare
        if len(spare) < 64:
            spare.append(self)

    def append(self, waiter: Waiter) -> None:
        """Queue ``waiter`` last.  ``Lock`` and ``Condition`` write ``q[waiter] = None`` on
        their hot paths instead (a Python call less), which is the same for their queues; a
        subclass whose ``append`` does more (the RWLock's write queue counts write requests;
        ``check_invariants`` checks the count) is appended to only through ``append``.  An
        override of ``__setitem__`` would make the two one, but it is called from C and was
        measured 2 % dearer per contended writer hand-off (3.11, 3.13)."""
        self[waiter] = None

    def first(self) -> Waiter | None:
        """The first waiter that can be granted, without removing it (lost ones are dropped)."""
        while self:
            waiter = next(iter(self))
            if not waiter.lost():
                return waiter
            self.remove(waiter)
        return None

    def popleft(self) -> Waiter | None:
        """Remove and return the first waiter that can be granted, or None."""
        while self:
            waiter = self.popitem(last=False)[0]
            if not waiter.lost():
                return waiter
            waiter.state = GONE
        return None

    def pop_first(self) -> Waiter:
        """Remove the first waiter (the one :meth:`first` just returned)."""
        return self.popitem(last=False)[0]

    def remove(self, waiter: Waiter) -> None:
        """Forget a queued waiter (it must be in this queue)."""
        waiter.state = GONE
        del self[waiter]

    def take_all(self) -> list[Waiter]:
        """Remove and return every waiter, in order."""
        out = list(self)
        self.clear()
        return out

    def fail_all(self, message: str) -> None:
        """Empty the queue, waking every waiter with ``BrokenResourceError(message)``."""
        for waiter in self.take_all():
            waiter.fail(BrokenResourceError(message))


# -- watching holders (trio's ``break_lot``) ---------------------------------------------------
#
# A task that exits holding a lock must break it, never strand the tasks queued behind it.
# Watching costs a done-callback (asyncio) or a parking-lot breaker (trio), so a primitive
# watches its holders only while tasks wait behind them, and drops the watches when its queues
# empty.  ``watched`` is the primitive's own dict, task -> token; ``on_exit(task)`` is its own
# too, since what breaking means differs (a ``Lock`` fails every waiter, an ``RWLock`` only
# those that conflict with the dead hold).  Plain functions over a plain dict, the asyncio case
# written out (a done-callback is its own token): they run at every contended hand-off of an
# RWLock (methods of a dict subclass measured about 1 % more instructions there).  A ``Lock``
# has one owner and keeps one token (:class:`OwnerQueue`).
#
# The hand-offs themselves (``Lock._behind_owner`` and ``_release``, the writer-to-writer
# hand-off in ``RWLock._release_write`` and ``_dispatch``) write the asyncio case of these
# out, marked "(the asyncio case of ... written out)", and call them only for trio.  Calling
# them there instead (methods on OwnerQueue for a Lock) was measured with callgrind: per
# contended hand-off, 1.3 % (Lock, 3.13) to 3.3 % (rw.writer, 3.13) more instructions, and
# 1.7 to 3.0 % more per Condition turn: a Python call costs more than the two lines it saves.


def watch_holder(watched: dict[Any, Any], loop: Any, task: Any, on_exit: OnExit) -> None:
    """Watch ``task`` (a task of ``loop``: an asyncio loop or TRIO) unless it is already."""
    if task in watched:
        return
    if loop is not TRIO:
        task.add_done_callback(on_exit)  # any asyncio task, also pure-Python subclasses
        watched[task] = on_exit
    else:
        watched[task] = None  # trio reports a task that already exited from inside watch()
        watched[task] = watch(loop, task, on_exit)


def unwatch_holder(watched: dict[Any, Any], loop: Any, task: Any) -> None:
    """Stop watching ``task`` (if it is watched)."""
    token = watched.pop(task, None)
    if token is None:
        return
    if loop is not TRIO:
        task.remove_done_callback(token)
    else:
        unwatch(task, token)


def unwatch_all(watched: dict[Any, Any], loop: Any) -> None:
    """Stop watching every task."""
    for task in list(watched):
        unwatch_holder(watched, loop, task)


class OwnerQueue(WaitQueue):
    """The waiters behind one owner (a ``Lock``'s), with its watch: while they wait, the owner
    is watched, and if it exits holding the lock the queue is ``broken`` (every waiter fails,
    and so does every later one: trio's ``ParkingLot.break_lot``)."""

    __slots__ = ("broken", "watch_token")

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        # One owner, so one token (``_backend.watch``) rather than a holder dict: a hand-off
        # moves it with one unwatch() and one watch(), nothing to look up.
        self.watch_token: Any = None

    def break_owned(self, message: str) -> None:
        """The owner exited holding the lock: fail every waiter (and, from now on, every
        newcomer) with ``BrokenResourceError(message)``."""
        self.broken = True
        self.watch_token = None
        self.fail_all(message)


def new_waiter(loop: Any, home: Parker, task: Any, mode: int, ticket: int) -> Waiter:
    """A waiter for ``task`` of the backend ``loop`` stands for (an asyncio loop or TRIO)."""
    waiter: Waiter
    if loop is TRIO:
        waiter = TrioWaiter(home, task, mode, ticket)
    else:
        waiter = AsyncioWaiter()
        waiter.fut = _Future(loop=loop)
        waiter.home = home
        waiter.task = task
        waiter.mode = mode
        waiter.ticket = ticket
        waiter.state = WAITING
        waiter.since = _now()
    if waiting is not None:
        waiting[task] = waiter
    return waiter
