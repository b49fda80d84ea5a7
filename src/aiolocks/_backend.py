"""The few backend-specific fast paths: who the current task is, and a cheap checkpoint.

Everything here exists because a benchmark showed it matters on the hot path:

* ``task_of(loop)`` finds the running asyncio task with one dict lookup up to CPython 3.13, and
  through ``asyncio.current_task(loop)`` from 3.14 (see :func:`_make_task_of`).  On CPython 3.11
  ``asyncio.current_task()`` and ``asyncio.get_running_loop()`` cost a ``getpid()`` system call
  each, more than a whole ``asyncio.Lock`` cycle.  Each primitive remembers the loop it was last
  used from (its ``_loop`` slot); a miss (``None``) sends the caller to :func:`resolve_task`,
  which finds the task the official way, on asyncio or trio, and rebinds the primitive.
* ``READY`` is an awaitable that completes at once without allocating a coroutine, so that
  ``__aenter__``/``__aexit__`` can be plain methods on the uncontended path (see
  :func:`_make_ready`).
* ``asyncio_schedule_point`` is a bare ``yield`` to the asyncio task: a schedule point and a
  cancel point (native ``Task.cancel()`` and anyio cancel scopes both deliver there) for a
  fraction of the cost of ``anyio.lowlevel.checkpoint()``.
"""

from __future__ import annotations

import asyncio
import sys
import types
from _thread import get_ident
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast
from weakref import WeakSet

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable

__all__ = [
    "LISTED",
    "LIVE",
    "READY",
    "TASK_OF_PATH",
    "TRIO",
    "Bindable",
    "asyncio_schedule_point",
    "current_task",
    "get_ident",
    "thread_mark",
    "resolve_task",
    "task_info",
    "task_name",
    "task_of",
    "unwatch",
    "watch",
]


class _TrioMarker:
    """Stands in a primitive's ``_loop`` slot while it is used from trio."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<trio>"


TRIO: Any = _TrioMarker()


def _public_task_of(current_task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``task_of`` through the documented API: ``asyncio.current_task(loop)``.

    CPython 3.14 keeps the running task in the thread state, and ``current_task(loop)`` for the
    running loop reads it there: this is the fast path there.  (For another loop it searches
    every thread, so an unbound or trio-bound primitive must not get that far.)
    """

    def task_of(loop: Any) -> Any:
        if loop is None or loop is TRIO:
            return None
        try:
            return current_task(loop)
        except RuntimeError:  # a closed loop
            return None

    return task_of


def _make_task_of(tasks: Any = asyncio.tasks) -> tuple[str, Callable[[Any], Any]]:
    """Choose how ``task_of`` finds the running task on this interpreter: ``(path, task_of)``.

    * ``"dict"``: ``.get`` of the dict that ``asyncio.current_task()`` itself reads (loop ->
      running task), one C call, correct by construction.  That dict is
      ``asyncio.tasks._current_tasks``, read by the Python ``current_task`` up to 3.11 and by
      the C one (``_asyncio``) in 3.12 and 3.13.
    * ``"public"``: ``asyncio.current_task(loop)`` (3.14 and later, where the dict is gone).
    """
    official = tasks.current_task
    current_tasks = getattr(tasks, "_current_tasks", None)
    c_asyncio = sys.modules.get("_asyncio")
    if isinstance(current_tasks, dict):
        code = getattr(official, "__code__", None)
        python_reads_it = code is not None and "_current_tasks" in code.co_names
        c_reads_it = (
            c_asyncio is not None
            and official is getattr(c_asyncio, "current_task", None)
            and getattr(c_asyncio, "_current_tasks", None) is current_tasks
        )
        if python_reads_it or c_reads_it:
            return "dict", cast("Callable[[Any], Any]", current_tasks.get)
    return "public", _public_task_of(official)


#: Which lookup this interpreter uses (``"dict"`` or ``"public"``; see :func:`_make_task_of`).
#: ``task_of(loop)`` -> the task running on ``loop`` right now, or None.
TASK_OF_PATH, task_of = _make_task_of()


def _make_thread_mark() -> Callable[[], Any]:
    # From 3.12 the running loop lives in the thread state: reading it is a few C instructions
    # and returns the loop itself, which tells threads apart as well as an id.  Up to 3.11 it
    # costs a getpid() system call, so the thread id is cheaper there (both are correct on
    # every version; tests/test_backend.py checks both).
    if sys.version_info >= (3, 12):
        return cast("Callable[[], Any]", asyncio._get_running_loop)
    return get_ident


#: ``thread_mark()`` -> a value equal to the one recorded at binding (``prim._tid``) only in the
#: thread running the loop the primitive is bound to.  See :class:`Bindable`.
thread_mark: Callable[[], Any] = _make_thread_mark()


class Bindable(Protocol):
    """What :func:`resolve_task` needs of a primitive.

    ``_loop`` is the event loop the primitive is bound to (or ``TRIO``), ``_tid`` the
    :func:`thread_mark` of the thread that runs it (for trio, the thread id).  Every fast path
    looks its task up as::

        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            task = resolve_task(self)

    The thread check is what makes ``task_of`` safe: the task it finds is the one running on
    the bound loop, which is the caller only if the caller runs in that loop's thread.  Without
    it, a call from another thread (a worker thread, or another thread's event loop) would be
    taken for a call by whatever task the bound loop happens to be running.

    A primitive with a ``_fast`` slot (``Lock``, ``RWLock``) keeps in it both its
    ``fast_acquire`` flag and whether that means "return at once", which depends on where it is
    bound: ``False`` without ``fast_acquire``; with it, ``True`` while bound to an asyncio loop
    (an uncontended acquire returns without yielding) and ``None`` otherwise (unbound, or trio,
    where it is still a cancel point).  Binding updates it.  One slot read on the fast path,
    where ``_fast and _loop is not TRIO`` cost 140 instructions more (3.12, 3.13), and no slot
    more (a ``Lock`` is at its 88-byte limit).
    """

    _loop: Any
    _tid: Any

    def _in_use(self) -> bool: ...


def _no_trio() -> Any:
    raise RuntimeError("trio is not running")


_trio_current_task: Callable[[], Any] = _no_trio

#: Every primitive that has been used from an event loop, for ``aiolocks.debug.snapshot()``.
#: Added to when a primitive binds to a loop (its first use, on this slow path), so the hot
#: paths pay nothing; weak, so it keeps nothing alive.
LIVE: WeakSet[Any] = WeakSet()

#: The classes whose instances join :data:`LIVE`: the primitives ``aiolocks._introspect`` can
#: read (it sets this when ``import aiolocks`` loads it); other users of :func:`resolve_task`,
#: such as the postgres backend's engine, are not listed.
LISTED: tuple[type, ...] = ()


def resolve_task(prim: Bindable) -> Any:
    """Return the current task the slow way, binding ``prim`` to the caller's event loop.

    The task is looked up on the caller's own event loop (in the caller's thread), never on the
    loop ``prim`` is bound to.  A primitive may move to another event loop (or thread) only
    while nobody holds or waits for it (the per-test event loop of pytest); moving while in use
    would strand a task of the other loop, so it is refused with ``RuntimeError`` before
    anything changes.
    """
    if prim._loop is TRIO and prim._tid == get_ident():  # the hot path of every trio caller
        try:
            return _trio_current_task()
        except RuntimeError:
            pass
    loop: Any = asyncio._get_running_loop()
    task = asyncio.current_task(loop) if loop is not None else None
    if task is None:
        # No asyncio task: trio, also when it runs as a guest inside an asyncio loop
        # (trio.lowlevel.start_guest_run), where the host loop is running but no task of it.
        task = _trio_task()
        if task is None:
            where = (
                "inside an asyncio task" if loop is not None else "a running asyncio or trio task"
            )
            raise RuntimeError(f"{prim!r} must be used from {where}")
        loop = TRIO
    tid = get_ident() if loop is TRIO else thread_mark()
    if prim._loop is not loop or prim._tid != tid:
        _bind(prim, loop, tid)
    return task


def _trio_task() -> Any:
    global _trio_current_task
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    _trio_current_task = trio.lowlevel.current_task
    try:
        return _trio_current_task()
    except RuntimeError:
        return None


def _bind(prim: Bindable, loop: Any, tid: Any) -> None:
    bound = prim._loop
    if bound is not None and prim._in_use():
        if bound is loop:
            other = "another thread"
        elif loop is TRIO:
            other = "an asyncio event loop" if bound is not TRIO else "another trio run"
        else:
            other = "trio" if bound is TRIO else "another event loop"
        raise RuntimeError(
            f"{prim!r} is in use by tasks of {other}; a lock can move to a new event loop or "
            "thread only while no task holds it or waits for it (aiolocks primitives are not "
            "thread-safe)"
        )
    prim._loop = loop
    prim._tid = tid
    if getattr(prim, "_fast", False) is not False:  # see Bindable
        cast("Any", prim)._fast = True if loop is not TRIO else None
    if isinstance(prim, LISTED):
        LIVE.add(prim)


def current_task() -> Any:
    """The running asyncio or trio task, found the official way (not on any hot path)."""
    loop = asyncio._get_running_loop()
    if loop is not None:
        task = asyncio.current_task(loop)
        if task is not None:
            return task
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            return trio.lowlevel.current_task()
        except RuntimeError:
            pass
    raise RuntimeError("aiolocks: this must be called from a running asyncio or trio task")


class _Ready:
    """Fallback for :data:`READY`: an awaitable that completes at once."""

    __slots__ = ()

    def __await__(self) -> Iterator[None]:
        return iter(())


@types.coroutine
def _finished() -> Generator[None, None, None]:
    return
    yield  # a generator: awaiting it once finished completes at once


def _make_ready() -> Awaitable[None]:
    # A finished generator-based coroutine: awaiting it sends into a generator that has
    # returned, which raises StopIteration at once (only a *native* coroutine refuses reuse),
    # allocates nothing, and can be shared by every task on every loop, and by trio.  Per
    # await (measured): 31 ns on 3.11, 42 ns on 3.12 and 40 ns on 3.13, against 39 / 101 / 97
    # ns for the completed C future used before (awaiting a future got slower in 3.12).
    ready = _finished()
    try:
        ready.send(None)
    except StopIteration:
        pass

    async def probe() -> None:
        await ready
        await ready

    coro = probe()
    try:
        coro.send(None)
    except StopIteration:
        return ready
    except Exception:  # pragma: no cover - an interpreter that refuses it (not CPython)
        pass
    coro.close()  # pragma: no cover
    return cast("Awaitable[None]", _Ready())  # pragma: no cover


#: Awaitable that completes immediately with ``None``.
READY: Awaitable[None] = _make_ready()


@types.coroutine
def asyncio_schedule_point() -> Generator[None, None, None]:
    """Yield once to the asyncio event loop: a schedule point and a cancel point."""
    yield


def task_name(task: Any) -> str:
    """A readable name for an asyncio or trio task."""
    get_name = getattr(task, "get_name", None)
    if get_name is not None:
        return str(get_name())
    return str(getattr(task, "name", task))


def task_info(task: Any) -> anyio.TaskInfo | None:
    """anyio's :class:`~anyio.TaskInfo` for an asyncio or trio task (``None`` for ``None``)."""
    if task is None:
        return None
    coro = task.get_coro() if hasattr(task, "get_coro") else task.coro
    return anyio.TaskInfo(id(task), None, task_name(task), coro)


class _Breaker:
    """Adapter that trio's runner calls (``break_lot``) when a watched task exits."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback

    def break_lot(self, task: Any) -> None:
        self._callback(task)


def watch(loop: Any, task: Any, callback: Callable[[Any], None]) -> Any:
    """Call ``callback(task)`` when ``task`` exits; returns a token for :func:`unwatch`.

    ``loop`` is what the primitive is bound to (an asyncio loop or TRIO).  Used only while some
    task waits behind ``task``: an owner that exits holding a lock must break it, never strand
    its waiters.
    """
    if loop is not TRIO:
        task.add_done_callback(callback)  # any asyncio task, also pure-Python Task subclasses
        return callback
    trio = sys.modules["trio"]
    breaker = _Breaker(callback)
    try:
        trio.lowlevel.add_parking_lot_breaker(task, breaker)
    except trio.BrokenResourceError:
        callback(task)  # it already exited
        return None
    return breaker


def unwatch(task: Any, token: Any) -> None:
    """Undo :func:`watch`."""
    if token is None:
        return
    if token.__class__ is not _Breaker:
        task.remove_done_callback(token)
        return
    try:
        sys.modules["trio"].lowlevel.remove_parking_lot_breaker(task, token)
    except RuntimeError:  # the runner already dropped it (the task exited)
        pass
