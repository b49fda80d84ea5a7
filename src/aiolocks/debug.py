"""Diagnostics for the day a service hangs: who holds what, lock-order checking, wait cycles.

Always available, at no cost to the locks:

* :func:`snapshot` lists every live aiolocks primitive with its holders and waiters, and how
  long each waiter has waited; :func:`dump` prints it, with any cycle of tasks waiting on each
  other (a deadlock) spelled out.  Call it from an admin endpoint or a watchdog task when
  requests stop coming back, or let :func:`dump_on_signal` (``AIOLOCKS_DUMP_SIGNAL=USR1``)
  print it, with each task's await stack, for every event loop: ``kill -USR1 <pid>``.

In debug mode (:func:`enable`, or ``AIOLOCKS_DEBUG=1`` in the environment, or
``pytest --aiolocks-debug``), for tests and staging:

* **Lock-order checking** (the Linux kernel's lockdep idea): taking B while holding A records
  the order A->B; an acquisition that inverts an order seen before, transitively, in any task,
  raises :class:`~aiolocks.LockOrderError` (or warns), even if nothing deadlocked this time.
* **Wait-for cycle detection**: a wait that would close a cycle of tasks waiting on each other
  raises :class:`~aiolocks.DeadlockError` in the task that would close it.
* Holders' acquisition sites and times, waiters' sites, and contention statistics per primitive
  are recorded for :func:`snapshot`.

Debug mode costs nothing while off: :func:`enable` swaps instrumented versions of the acquire
and release methods into the lock classes, and :func:`disable` swaps the originals back, so the
fast paths carry no flag to test.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO
from weakref import WeakKeyDictionary

from . import _introspect, _patch, _queue
from ._backend import LIVE, current_task, task_name
from ._common import name_of
from ._condition import Condition
from ._dump import dump_on_signal
from ._exceptions import DeadlockError, LockOrderError, LockOrderWarning
from ._lock import Lock
from ._lockclass import LockClass, class_of
from ._rwlock import ReadLock, UpgradableLock, WriteLock

__all__ = [
    "ContentionStatistics",
    "HolderInfo",
    "PrimitiveInfo",
    "WaiterInfo",
    "disable",
    "dump",
    "dump_on_signal",
    "enable",
    "enabled",
    "snapshot",
]


# -- what snapshot() returns ------------------------------------------------------------------


@dataclass(frozen=True)
class HolderInfo:
    """A task holding a primitive.

    Attributes:
        task: the task's name.
        mode: ``"read"``, ``"write"``, ``"upgradable"`` or ``"exclusive"`` (a plain Lock).
        since: when it took the hold (``time.time()``), recorded in debug mode only, else None.
        site: ``file:line`` where it took the hold, recorded in debug mode only, else None.
    """

    task: str
    mode: str
    since: float | None
    site: str | None


@dataclass(frozen=True)
class WaiterInfo:
    """A task waiting for a primitive (or, for a Condition, for a notification).

    Attributes:
        task: the task's name.
        mode: what it waits for: ``"read"``, ``"write"``, ``"upgradable"`` or ``"exclusive"``.
        waited: seconds it has waited so far (always measured).
        site: ``file:line`` where it started waiting, recorded in debug mode only, else None.
    """

    task: str
    mode: str
    waited: float
    site: str | None


@dataclass(frozen=True)
class ContentionStatistics:
    """How contended a primitive has been since debug mode was switched on.

    Attributes:
        acquisitions: holds taken (re-entrant ones included).
        contended: acquisitions that had to wait.
        total_wait: seconds spent waiting, summed over the contended acquisitions.
        max_wait: the longest single wait, in seconds.
    """

    acquisitions: int
    contended: int
    total_wait: float
    max_wait: float


@dataclass(frozen=True)
class PrimitiveInfo:
    """One live primitive in a :func:`snapshot`.

    Attributes:
        name: the ``name=`` it was given, else ``"<kind> at 0x..."``.
        kind: ``"Lock"``, ``"RWLock"`` or ``"Condition"``.
        holders: the tasks holding it (a Condition reports none: its lock does).
        waiters: the tasks waiting for it, in arrival order.
        contention: its :class:`ContentionStatistics` in debug mode, else None.
    """

    name: str
    kind: str
    holders: tuple[HolderInfo, ...]
    waiters: tuple[WaiterInfo, ...]
    contention: ContentionStatistics | None = None


# -- debug mode state ----------------------------------------------------------------------------


class _Hold:
    """One hold a task took in debug mode: what, how, where, when."""

    __slots__ = ("mode", "prim", "since", "site")

    def __init__(self, prim: Any, mode: str, site: str | None) -> None:
        self.prim = prim
        self.mode = mode
        self.site = site
        self.since = time.time()


class _Edge:
    """The first time lock B was taken while A was held: the order A -> B."""

    __slots__ = ("a_mode", "a_site", "b_mode", "b_site", "stack", "task")

    def __init__(self, hold: _Hold, b_mode: str, b_site: str | None, task: str, stack: str):
        self.a_mode, self.a_site = hold.mode, hold.site
        self.b_mode, self.b_site = b_mode, b_site
        self.task = task
        self.stack = stack


class _Stats:
    __slots__ = ("acquisitions", "contended", "max_wait", "total_wait")

    def __init__(self) -> None:
        self.acquisitions = 0
        self.contended = 0
        self.total_wait = 0.0
        self.max_wait = 0.0


class _State:
    __slots__ = ("after", "held", "on_inversion", "stats", "wait_sites", "warned")

    def __init__(self, on_inversion: str) -> None:
        self.on_inversion = on_inversion
        self.held: dict[Any, list[_Hold]] = {}  # task -> its holds, oldest first
        # prim -> {prim taken while it was held -> the first time that happened}
        self.after: WeakKeyDictionary[Any, WeakKeyDictionary[Any, _Edge]] = WeakKeyDictionary()
        self.stats: WeakKeyDictionary[Any, _Stats] = WeakKeyDictionary()
        self.wait_sites: dict[Any, str | None] = {}  # task -> where it waits now
        self.warned: set[tuple[int, int]] = set()


_state: _State | None = None

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_frame() -> Any:
    """The innermost frame outside aiolocks (the caller's ``async with`` line)."""
    f: Any = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_PACKAGE):
        f = f.f_back
    return f


def _site() -> str | None:
    f = _user_frame()
    return None if f is None else f"{f.f_code.co_filename}:{f.f_lineno}"


def _machinery() -> tuple[str, ...]:
    """Where the event loops' and test runners' own frames live (left out of stacks)."""
    dirs = []
    for mod in ("asyncio", "anyio", "trio", "outcome", "uvloop", "_pytest", "pluggy", "pytest"):
        path = getattr(sys.modules.get(mod), "__file__", None)
        if path:
            dirs.append(os.path.dirname(path))
    return (*dirs, "<frozen runpy>", getattr(sys.modules.get("contextlib"), "__file__", "?"))


def _stack() -> str:
    """The caller's stack, its own frames only, innermost last (for lock-order reports)."""
    machinery = _machinery()
    frames = [
        fs for fs in traceback.extract_stack(_user_frame()) if not fs.filename.startswith(machinery)
    ]
    return "".join(traceback.format_list(frames[-8:]))


def _describe(prim: Any) -> str:
    if isinstance(prim, LockClass):
        return repr(prim)
    name = name_of(prim)
    kind = _introspect.kind(prim) if _introspect.is_primitive(prim) else type(prim).__name__
    return f"{kind} {name!r}" if name else f"{kind} at {id(prim):#x}"


def _target(view: Any) -> Any:
    """The primitive a lock-like object stands for (an RWLock for its views)."""
    return getattr(view, "_rw", view)


# -- wait-for cycles -----------------------------------------------------------------------------


def _find_cycle(
    task: Any, prim: Any, mode: str, blockers: list[Any], waiting: dict[Any, Any]
) -> list[tuple[Any, Any, str, Any]] | None:
    """A chain of waits from ``task`` (about to wait on ``prim``) back to ``task``.

    Each step is ``(waiting task, primitive, mode, task it waits for)``.  Iterative, visiting
    each task once, so thousands of waiters cost thousands of steps.
    """
    start = (task, prim, mode, blockers)
    parent: dict[int, tuple[Any, Any, str, list[Any]]] = {}  # id(blocker) -> step it came from
    stack: list[tuple[tuple[Any, Any, str, list[Any]], Any]] = [(start, b) for b in blockers]
    seen: set[int] = {id(task)}
    while stack:
        step, blocker = stack.pop()
        if blocker is task:
            chain = [(step[0], step[1], step[2], blocker)]
            t = step[0]
            while t is not task:
                prev = parent[id(t)]
                chain.append((prev[0], prev[1], prev[2], t))
                t = prev[0]
            chain.reverse()
            return chain
        if id(blocker) in seen:
            continue
        seen.add(id(blocker))
        waiter = waiting.get(blocker)
        if waiter is None or waiter.state != _queue.WAITING:
            continue
        home = waiter.home
        nxt = (
            blocker,
            home,
            _introspect.mode(home, waiter),
            _introspect.blockers(home, blocker, "", waiter),
        )
        parent[id(blocker)] = step
        stack.extend((nxt, b) for b in nxt[3])
    return None


def _relation(prim: Any, blocker: Any) -> str:
    for t, mode in _introspect.holders(prim):
        if t is blocker:
            return f"held ({mode}) by task {task_name(blocker)!r}"
    return f"queued behind task {task_name(blocker)!r}"


def _describe_cycle(chain: list[tuple[Any, Any, str, Any]]) -> str:
    return "; ".join(
        f"task {task_name(t)!r} waits for {_describe(p)} ({m}), {_relation(p, b)}"
        for t, p, m, b in chain
    )


def _check_cycle(task: Any, prim: Any, mode: str, blockers: list[Any]) -> None:
    waiting = _queue.waiting
    if waiting is None:
        return
    chain = _find_cycle(task, prim, mode, blockers, waiting)
    if chain is not None:
        raise DeadlockError(
            f"waiting for {_describe(prim)} ({mode}) would close a cycle of tasks waiting on "
            f"each other, which none of them could ever leave: {_describe_cycle(chain)}. "
            "Nothing was acquired; the other tasks are unaffected"
        )


# -- lock order ----------------------------------------------------------------------------------


def _order_path(st: _State, start: Any, targets: dict[int, _Hold]) -> list[tuple[Any, Any]]:
    """Recorded orders leading from ``start`` to a lock in ``targets``: [(a, b), ...]."""
    parent: dict[int, tuple[Any, Any]] = {}
    frontier = [start]
    seen = {id(start)}
    while frontier:
        nxt = []
        for a in frontier:
            for b in list(st.after.get(a, ())):
                if id(b) in seen:
                    continue
                seen.add(id(b))
                parent[id(b)] = (a, b)
                if id(b) in targets:
                    path = [(a, b)]
                    while a is not start:
                        path.append(parent[id(a)])
                        a = parent[id(a)][0]
                    path.reverse()
                    return path
                nxt.append(b)
        frontier = nxt
    return []


_READ_READ = (
    " All the holds involved are read holds, and that can still deadlock: with writer "
    "preference a writer queued on a lock holds back new readers of it, so two tasks taking "
    "read locks in opposite orders deadlock as soon as writers queue on both."
)


def _node(prim: Any) -> Any:
    """What orders are learnt on: a keyed table's entries all stand for their lock class."""
    return class_of(prim) or prim


def _check_order(st: _State, task: Any, prim: Any, mode: str, site: str | None) -> None:
    held = st.held.get(task)
    if not held or any(h.prim is prim for h in held):
        return  # nothing held, or re-entrant: not a new order
    node = _node(prim)
    # Orders between lock classes are learnt on the classes (a keyed table's entries all
    # stand for theirs); between two entries of one table, on the entries, while they live.
    other: dict[int, tuple[_Hold, Any]] = {}  # id(node held) -> (oldest hold of it, node)
    same: dict[int, tuple[_Hold, Any]] = {}  # id(entry held) -> (hold, entry): prim's table
    for h in held:
        held_node = _node(h.prim)
        if held_node is node:
            same.setdefault(id(h.prim), (h, h.prim))
        else:
            other.setdefault(id(held_node), (h, held_node))
    for start, sources in ((node, other), (prim, same)):
        targets = {ident: h for ident, (h, _) in sources.items()}
        path = _order_path(st, start, targets) if targets else []
        if path:
            _report_inversion(st, task, prim, mode, site, targets[id(path[-1][1])], path)
            return
    stack: str | None = None
    for sources, b in ((other, node), (same, prim)):
        for h, a in sources.values():
            edges = st.after.get(a)
            if edges is None:
                edges = st.after[a] = WeakKeyDictionary()
            if b not in edges:
                if stack is None:
                    stack = _stack()
                edges[b] = _Edge(h, mode, site, task_name(task), stack)


def _report_inversion(
    st: _State,
    task: Any,
    prim: Any,
    mode: str,
    site: str | None,
    hold: _Hold,
    path: list[tuple[Any, Any]],
) -> None:
    key = (id(prim), id(hold.prim))
    if st.on_inversion == "warn" and key in st.warned:
        return
    earlier = []
    modes = {mode, hold.mode}
    for a, b in path:
        e = st.after[a][b]
        modes.update((e.a_mode, e.b_mode))
        earlier.append(
            f"task {e.task!r} took {_describe(b)} ({e.b_mode}) at {e.b_site} while holding "
            f"{_describe(a)} ({e.a_mode}, taken at {e.a_site})"
        )
    first = st.after[path[0][0]][path[0][1]]
    message = (
        f"lock order inversion: task {task_name(task)!r} takes {_describe(prim)} ({mode}) at "
        f"{site} while holding {_describe(hold.prim)} ({hold.mode}, taken at {hold.site}), "
        f"but earlier {'; then '.join(earlier)}. Tasks taking these locks in opposite orders "
        "can deadlock each other, even if they did not this time."
        + (_READ_READ if modes == {"read"} else "")
        + "\n\nWhere the earlier order was made:\n"
        + first.stack
        + "\nWhere the inversion is attempted:\n"
        + _stack()
    )
    if st.on_inversion == "raise":
        raise LockOrderError(message)
    st.warned.add(key)
    f = _user_frame()
    warnings.warn_explicit(
        LockOrderWarning(message),
        LockOrderWarning,
        f.f_code.co_filename if f else "<aiolocks>",
        f.f_lineno if f else 0,
        module_globals=f.f_globals if f else None,
    )


# -- bookkeeping of holds ------------------------------------------------------------------------


def _push(st: _State, task: Any, prim: Any, mode: str, site: str | None) -> None:
    st.held.setdefault(task, []).append(_Hold(prim, mode, site))


def _pop(st: _State, task: Any, prim: Any, mode: str | None) -> None:
    held = st.held.get(task)
    if not held:
        return
    for i in range(len(held) - 1, -1, -1):
        if held[i].prim is prim and (mode is None or held[i].mode == mode):
            del held[i]
            break
    else:
        if mode is not None:
            _pop(st, task, prim, None)
            return
    if not held:
        del st.held[task]


def _remode(st: _State, task: Any, prim: Any, old: str, new: str) -> None:
    for h in reversed(st.held.get(task, ())):
        if h.prim is prim and h.mode == old:
            h.mode = new
            return


def _stats(st: _State, prim: Any) -> _Stats:
    s = st.stats.get(prim)
    if s is None:
        s = st.stats[prim] = _Stats()
    return s


# -- the instrumented methods --------------------------------------------------------------------


def _acquiring(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    async def acquire(self: Any) -> None:
        st = _state
        if st is None:  # disabled since: behave as the original
            await orig(self)
            return
        prim = _target(self)
        task = current_task()
        site = _site()
        blockers = _introspect.blockers(prim, task, mode)
        if blockers:
            _check_cycle(task, prim, mode, blockers)
        _check_order(st, task, prim, mode, site)
        stats = _stats(st, prim)
        if not blockers:
            await orig(self)
        else:
            st.wait_sites[task] = site
            t0 = time.monotonic()
            try:
                await orig(self)
            finally:
                st.wait_sites.pop(task, None)
                if _queue.waiting is not None:
                    _queue.waiting.pop(task, None)
                waited = time.monotonic() - t0
                stats.contended += 1
                stats.total_wait += waited
                stats.max_wait = max(stats.max_wait, waited)
        stats.acquisitions += 1
        _push(st, task, prim, mode, site)

    return acquire


def _acquiring_nowait(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    # A try-lock cannot deadlock, so it records no order (as lockdep treats trylocks), but
    # what it takes is held: later blocking acquisitions are ordered after it.
    def acquire_nowait(self: Any) -> None:
        orig(self)
        st = _state
        if st is not None:
            prim = _target(self)
            _stats(st, prim).acquisitions += 1
            _push(st, current_task(), prim, mode, _site())

    return acquire_nowait


def _releasing(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    def release(self: Any) -> None:
        orig(self)
        st = _state
        if st is not None:
            _pop(st, current_task(), _target(self), mode)

    return release


def _downgrading(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    def downgrade(self: Any) -> None:
        orig(self)
        st = _state
        if st is not None:
            rw = self._rw
            task = current_task()
            upg = rw._slow is not None and rw._slow.upgrader is task
            _remode(st, task, rw, "write", "upgradable" if upg else "read")

    return downgrade


def _upgrading(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    async def upgrade(self: Any) -> None:
        st = _state
        rw = self._rw
        task = current_task()
        if st is not None and rw._slow is not None and rw._slow.upgrader is task:
            blockers = _introspect.blockers(rw, task, "upgrade")
            if blockers:
                _check_cycle(task, rw, "write", blockers)
        try:
            await orig(self)
        finally:
            if _queue.waiting is not None:
                _queue.waiting.pop(task, None)
        if st is not None:
            _remode(st, task, rw, "upgradable", "write")

    return upgrade


def _upgrading_nowait(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    def upgrade_nowait(self: Any) -> None:
        orig(self)
        st = _state
        if st is not None:
            _remode(st, current_task(), self._rw, "upgradable", "write")

    return upgrade_nowait


def _cond_waiting(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    async def wait(self: Any) -> None:
        st = _state
        if st is None:
            await orig(self)
            return
        prim = self._host  # the primitive whose holds wait() lets go of
        task = current_task()
        held = st.held.get(task, [])
        saved = [h for h in held if h.prim is prim]
        st.wait_sites[task] = _site()
        try:
            await orig(self)
        finally:
            st.wait_sites.pop(task, None)
            if _queue.waiting is not None:
                _queue.waiting.pop(task, None)
            # wait() let go of the lock and took it back (perhaps through the instrumented
            # acquire): the holds it had are the holds it has, if it holds the lock again.
            held = st.held.get(task, [])
            held[:] = [h for h in held if h.prim is not prim]
            holders = _introspect.holders(prim) if _introspect.is_primitive(prim) else ()
            if any(t is task for t, _ in holders):
                held.extend(saved)
            if held:
                st.held[task] = held
            else:
                st.held.pop(task, None)

    return wait


_PLAN: _patch.Plan = []
for _cls, _mode in (
    (Lock, "exclusive"),
    (ReadLock, "read"),
    (WriteLock, "write"),
    (UpgradableLock, "upgradable"),
):
    _PLAN += [
        (_cls, "__aenter__", _acquiring, _mode),
        (_cls, "acquire_nowait", _acquiring_nowait, _mode),
        (_cls, "release", _releasing, _mode),
        (_cls, "__aexit__", _patch.release_on_exit, _mode),
    ]
_PLAN += [
    (WriteLock, "downgrade", _downgrading, "write"),
    (UpgradableLock, "upgrade", _upgrading, "write"),
    (UpgradableLock, "upgrade_nowait", _upgrading_nowait, "write"),
    (Condition, "wait", _cond_waiting, ""),
]
del _cls, _mode

#: The order of debug mode among the layers of instrumented methods (innermost).
_LAYER = 0


# -- the switch ----------------------------------------------------------------------------------


def enable(*, on_inversion: str = "raise") -> None:
    """Switch debug mode on for the whole process.

    Lock-order checking, wait-for cycle detection, and the recording of acquisition sites,
    hold times and contention statistics start now; holds taken before are not known to it.
    Calling it again changes ``on_inversion`` and keeps what was recorded.

    Args:
        on_inversion: ``"raise"`` to raise :class:`~aiolocks.LockOrderError` from an
            acquisition that inverts a known lock order (nothing is acquired), or ``"warn"``
            to issue a :class:`~aiolocks.LockOrderWarning` once per pair of locks and go on.

    Raises:
        ValueError: ``on_inversion`` is neither ``"raise"`` nor ``"warn"``.

    Example::

        import aiolocks.debug

        aiolocks.debug.enable(on_inversion="warn")

    .. versionadded:: 0.1
    """
    global _state
    if on_inversion not in ("raise", "warn"):
        raise ValueError(f"on_inversion must be 'raise' or 'warn', not {on_inversion!r}")
    if _state is not None:
        _state.on_inversion = on_inversion
        return
    _state = _State(on_inversion)
    _queue.waiting = {}
    _patch.install(_LAYER, _PLAN)


def disable() -> None:
    """Switch debug mode off and forget what it recorded; the locks are free again.

    .. versionadded:: 0.1
    """
    global _state
    _patch.uninstall(_LAYER)
    _queue.waiting = None
    _state = None


def enabled() -> bool:
    """Return True while debug mode is on.

    .. versionadded:: 0.1
    """
    return _state is not None


# -- who holds what ------------------------------------------------------------------------------


def snapshot() -> list[PrimitiveInfo]:
    """Every live aiolocks primitive, its holders and waiters, right now.

    Always available; debug mode adds the holders' acquisition times and sites, the waiters'
    sites and contention statistics.  Primitives are listed once they have been used (a lock
    nobody ever touched has nothing to report), busiest first; the snapshot keeps none of them
    alive.  Call it from the event loop's thread.

    Returns:
        A list of :class:`PrimitiveInfo`, those with waiters first, then those held, then idle.

    .. versionadded:: 0.1
    """
    return _snapshot(list(LIVE))


def _snapshot(prims: list[Any]) -> list[PrimitiveInfo]:
    st = _state
    now = time.monotonic()
    out = []
    for prim in prims:
        holders = []
        for task, mode in _introspect.holders(prim):
            hold = None
            if st is not None:
                hold = next((h for h in st.held.get(task, ()) if h.prim is prim), None)
            holders.append(
                HolderInfo(
                    task_name(task),
                    mode,
                    hold.since if hold else None,
                    hold.site if hold else None,
                )
            )
        waiters = tuple(
            WaiterInfo(
                task_name(w.task),
                mode,
                max(0.0, now - w.since),
                st.wait_sites.get(w.task) if st is not None else None,
            )
            for w, mode in _introspect.waiters(prim)
        )
        contention = None
        if st is not None:
            s = st.stats.get(prim)
            contention = ContentionStatistics(
                *((s.acquisitions, s.contended, s.total_wait, s.max_wait) if s else (0, 0, 0, 0))
            )
        kind = _introspect.kind(prim)
        name = name_of(prim) or f"{kind} at {id(prim):#x}"
        out.append(PrimitiveInfo(name, kind, tuple(holders), waiters, contention))
    out.sort(key=lambda p: (not p.waiters, not p.holders, p.name))
    return out


def _deadlocks(prims: list[Any]) -> list[str]:
    """Cycles of tasks waiting on each other right now, from the primitives' own state."""
    waiting: dict[Any, Any] = {}
    for prim in prims:
        for w, _ in _introspect.waiters(prim):
            waiting[w.task] = w
    found: list[str] = []
    covered: set[int] = set()
    for task, w in waiting.items():
        if id(task) in covered:
            continue
        home = w.home
        chain = _find_cycle(
            task, home, _introspect.mode(home, w), _introspect.blockers(home, task, "", w), waiting
        )
        if chain is not None:
            covered.update(id(step[0]) for step in chain)
            found.append(_describe_cycle(chain))
    return found


def _ago(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def dump(file: TextIO | None = None) -> None:
    """Print :func:`snapshot` readably (to ``sys.stderr`` by default), and any deadlock.

    Idle primitives are counted, not listed.  A cycle of tasks waiting on each other found in
    the locks' current state is printed first, whether debug mode is on or not.

    Args:
        file: a text stream to write to.

    .. versionadded:: 0.1
    """
    print("\n".join(_dump_lines(list(LIVE))), file=sys.stderr if file is None else file)


def _dump_lines(live: list[Any]) -> list[str]:
    prims = _snapshot(live)
    busy = [p for p in prims if p.holders or p.waiters]
    lines = [
        f"aiolocks: {len(busy)} primitive(s) in use, {len(prims) - len(busy)} idle"
        + ("" if _state is not None else " (debug mode off: no sites or hold times)")
    ]
    for cycle in _deadlocks(live):
        lines.append(f"DEADLOCK: {cycle}")
    now = time.time()
    for p in busy:
        head = p.name if p.name.startswith(f"{p.kind} at 0x") else f"{p.kind} {p.name!r}"
        c = p.contention
        if c is not None:
            head += (
                f"  [{c.acquisitions} acquisitions, {c.contended} contended, "
                f"max wait {_ago(c.max_wait)}]"
            )
        lines.append(head)
        for h in p.holders:
            line = f"    held    {h.mode:<10} by task {h.task!r}"
            if h.since is not None:
                line += f" for {_ago(max(0.0, now - h.since))}"
            if h.site:
                line += f" at {h.site}"
            lines.append(line)
        for w in p.waiters:
            line = f"    waiting {w.mode:<10} task {w.task!r} for {_ago(w.waited)}"
            if w.site:
                line += f" at {w.site}"
            lines.append(line)
    return lines


def _enable_from_environment(value: str) -> None:
    # Called once, when aiolocks is imported.  A value we do not understand warns and leaves
    # debug mode off instead of raising: an import error here would break every program (and
    # test session) that imports aiolocks, over a typo in a diagnostics switch.
    choice = value.strip().lower()
    if choice in ("", "0", "false", "no", "off"):
        return
    if choice in ("1", "true", "yes", "on", "raise"):
        enable(on_inversion="raise")
    elif choice == "warn":
        enable(on_inversion="warn")
    else:
        warnings.warn(
            f"AIOLOCKS_DEBUG={value!r} is not understood, so aiolocks debug mode stays off; "
            "accepted values: 1 (or raise, true, yes, on), warn, 0 (or false, no, off, empty)",
            RuntimeWarning,
            stacklevel=3,
        )
