"""Lock metrics through OpenTelemetry: wait and hold times, outcomes, tasks waiting now.

Needs the ``otel`` extra (``pip install 'aiolocks[otel]'``, which installs
``opentelemetry-api`` only; the application brings the SDK and its exporters)::

    from aiolocks.telemetry import AiolocksInstrumentor

    AiolocksInstrumentor().instrument()                  # the global meter provider
    AiolocksInstrumentor().instrument(meter_provider=p)  # or a given one

Instruments (meter ``aiolocks``; names and attributes are stable):

``aiolocks.lock.wait.duration`` (histogram, s)
    Time spent in each ``acquire()`` / ``async with`` (or, on the blocking side of
    :mod:`aiolocks.threadsafe`, ``acquire_blocking()`` / ``with``) that finished, whatever its
    outcome.
``aiolocks.lock.hold.duration`` (histogram, s)
    Time from each acquisition to its release.
``aiolocks.lock.acquisitions`` (counter)
    Acquisitions by ``outcome``: ``acquired``, ``cancelled`` (the waiter was cancelled or
    timed out, also an ``acquire_blocking(timeout)`` that returned False), ``broken`` (the
    holder exited without releasing), ``deadlock`` (:class:`~aiolocks.DeadlockError`, or
    :class:`~aiolocks.LockOrderError` in debug mode) and
    ``lost`` (:class:`~aiolocks.LockLostError`, reported by a PostgreSQL lock whose hold was
    lost: counted when the loss is reported, in addition to that hold's ``acquired``).
``aiolocks.lock.waiting`` (up-down counter)
    Tasks (and threads) inside ``acquire()`` / ``async with`` (``acquire_blocking()`` /
    ``with``) right now.

Every measurement carries ``lock.name`` (the ``name=`` of the lock; its kind for unnamed locks,
so that the number of series stays bounded; a keyed table's entries report under the table's
name), ``lock.kind`` (``Lock``, ``RWLock``, ``threadsafe.Lock``, ``threadsafe.RWLock``,
``PostgresLock``, ``PostgresRWLock``) and
``lock.mode`` (``exclusive``, ``read``, ``write``, ``upgradable``).

Nothing is measured, and nothing is paid, until :meth:`AiolocksInstrumentor.instrument`: as in
debug mode, it swaps measuring versions of the acquire and release methods into the lock
classes, and :meth:`~AiolocksInstrumentor.uninstrument` puts the originals back.

.. versionadded:: 0.1
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, final
from weakref import ref

try:
    from opentelemetry import metrics as _otel
except ImportError as _missing:  # the extra is not installed
    raise ImportError(
        f"aiolocks.telemetry needs the OpenTelemetry API: pip install 'aiolocks[otel]' ({_missing})"
    ) from _missing

from anyio import BrokenResourceError

# The classes through the public package: where they are defined may change.
from . import (
    Condition,
    DeadlockError,
    Lock,
    LockLostError,
    LockOrderError,
    ReadLock,
    UpgradableLock,
    WriteLock,
    _patch,
)
from . import threadsafe as _ts
from ._backend import current_task, task_of
from ._common import name_of
from ._lockclass import class_of
from .threadsafe._core import caller as _ts_caller
from .threadsafe._core import thread_caller as _ts_thread_caller

__all__ = ["AiolocksInstrumentor"]

#: Histogram buckets (seconds) from 10 µs to a minute: a lock wait is short or a problem.
_BUCKETS = (0.0, 1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)
#: The order of the metrics among the layers of instrumented methods: outside debug mode's, so
#: that its refusals (DeadlockError, LockOrderError) are counted as outcomes.
_LAYER = 1

_clock = time.perf_counter
Attributes = Mapping[str, str]


class _Series:
    """One set of (lock.name, lock.kind, lock.mode): its counts, kept here and observed by the
    asynchronous instruments when the metrics are collected (no call into OpenTelemetry per
    acquisition for them)."""

    __slots__ = ("base", "counts", "hold", "wait", "waiting")

    def __init__(self, key: tuple[str, str, str], wait: Any, hold: Any) -> None:
        name, kind, mode = key
        self.base: Attributes = {"lock.name": name, "lock.kind": kind, "lock.mode": mode}
        self.counts: dict[str, int] = {}  # outcome -> acquisitions
        self.waiting = 0
        self.wait = wait  # the histograms it records into
        self.hold = hold

    def count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1


class _Meters:
    """The instruments, and what the measuring methods keep while instrumented."""

    def __init__(self, meter: Any) -> None:
        def histogram(name: str, description: str) -> Any:
            try:
                return meter.create_histogram(
                    name, unit="s", description=description,
                    explicit_bucket_boundaries_advisory=list(_BUCKETS),
                )  # fmt: skip
            except TypeError:  # opentelemetry-api < 1.23 takes no advisory
                return meter.create_histogram(name, unit="s", description=description)

        self.wait = histogram(
            "aiolocks.lock.wait.duration", "Time spent acquiring a lock, whatever the outcome"
        )
        self.hold = histogram(
            "aiolocks.lock.hold.duration", "Time from acquiring a lock to releasing it"
        )
        meter.create_observable_counter(
            "aiolocks.lock.acquisitions", callbacks=[self._acquisitions], unit="{acquisition}",
            description="Lock acquisitions, by outcome",
        )  # fmt: skip
        meter.create_observable_up_down_counter(
            "aiolocks.lock.waiting", callbacks=[self._waiting], unit="{task}",
            description="Tasks and threads waiting to acquire a lock now",
        )  # fmt: skip
        # Every series ever seen: few (unnamed locks share their kind's), and kept, since the
        # counts are cumulative.
        self.all: dict[tuple[str, str, str], _Series] = {}
        # id(view) -> (weak reference to the view, its series); a view's entry leaves with it
        self.series: dict[int, tuple[ref[Any], _Series]] = {}
        # (task, lock view) -> when each of its holds began, oldest first (re-entrant holds)
        self.holds: dict[tuple[Any, Any], list[float]] = {}
        # Guards what several threads may change at once: the tables of series (new entries),
        # and the counts and holds of the aiolocks.threadsafe locks, whose measuring methods
        # run in any thread.  Held for a few dict and integer operations, never across a call
        # into OpenTelemetry or into a lock.  (The in-process locks' series are only changed
        # by the tasks of their own event loop, so their path does not take it.)
        self.guard = threading.Lock()

    def of(self, view: Any, mode: str) -> _Series:
        entry = self.series.get(id(view))
        if entry is not None and entry[0]() is view:
            return entry[1]
        return self._first_time(view, mode)

    def _first_time(self, view: Any, mode: str) -> _Series:
        key = _describe(view, mode)
        with self.guard:  # two threads may meet a lock of the same series for the first time
            series = self.all.get(key)
            if key[0].startswith("aiolocks."):
                # A lock aiolocks made for itself (the local gate of a PostgreSQL lock):
                # measured through what uses it, not again.  Its series records nothing and is
                # not observed.
                series = _Series(key, _QUIET, _QUIET)
            elif series is None:
                series = self.all[key] = _Series(key, self.wait, self.hold)
            ident, table = id(view), self.series
            table[ident] = (ref(view, lambda _: table.pop(ident, None)), series)
        return series

    # The callbacks may run in the exporter's thread: they copy (under the guard) and then
    # report the copies.

    def _acquisitions(self, options: Any) -> Iterator[_otel.Observation]:
        with self.guard:
            rows = [(s.base, list(s.counts.items())) for s in self.all.values()]
        for base, counts in rows:
            for outcome, n in counts:
                yield _otel.Observation(n, {**base, "outcome": outcome})

    def _waiting(self, options: Any) -> Iterator[_otel.Observation]:
        with self.guard:
            rows = [(s.base, s.waiting) for s in self.all.values()]
        for base, waiting in rows:
            yield _otel.Observation(waiting, base)

    def begin_hold(self, task: Any, view: Any, at: float) -> None:
        key = (task, view)
        starts = self.holds.get(key)
        if starts is None:
            self.holds[key] = [at]
        else:
            starts.append(at)

    def end_hold(self, task: Any, view: Any, series: _Series, lost: bool = False) -> None:
        if lost:  # the release reported the hold lost (a PostgreSQL lock)
            series.count("lost")
        key = (task, view)
        starts = self.holds.get(key)
        if not starts:
            return  # taken before instrument()
        began = starts.pop()
        if not starts:
            del self.holds[key]
        series.hold.record(_clock() - began, series.base)

    def take_hold(self, owner: Any, view: Any) -> float | None:
        """When the latest hold of ``owner`` on ``view`` began, forgetting it (None if it is
        not known: taken before instrument()).  Called with the guard held."""
        key = (owner, view)
        starts = self.holds.get(key)
        if not starts:
            return None
        began = starts.pop()
        if not starts:
            del self.holds[key]
        return began


_meters: _Meters | None = None


class _Quiet:
    """A histogram that records nothing."""

    __slots__ = ()

    def record(self, amount: float, attributes: Attributes | None = None) -> None:
        pass


_QUIET = _Quiet()


def _describe(view: Any, mode: str) -> tuple[str, str, str]:
    """lock.name, lock.kind and lock.mode of a lock view."""
    if isinstance(view, _TS_VIEWS):
        return _ts_describe(view, mode)
    pg_kind = getattr(view, "_kind", None)
    if pg_kind is not None:  # an aiolocks.postgres view: always named
        kind = "PostgresLock" if pg_kind == "lock" else "PostgresRWLock"
        return (view.name, kind, mode)
    prim = getattr(view, "_rw", view)
    kind = "Lock" if isinstance(prim, Lock) else "RWLock"
    table = class_of(prim)  # a keyed table's entries report under the table's name
    name = name_of(prim) if table is None else table.name
    return (name or kind, kind, mode)


def _outcome(exc: BaseException) -> str | None:
    if isinstance(exc, (DeadlockError, LockOrderError)):
        return "deadlock"
    if isinstance(exc, LockLostError):
        return "lost"
    if isinstance(exc, BrokenResourceError):
        return "broken"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    trio = sys.modules.get("trio")
    if trio is not None and isinstance(exc, trio.Cancelled):
        return "cancelled"
    return None  # not a lock's answer (KeyboardInterrupt, a misuse error): not counted


def _local_task(view: Any) -> Any:
    prim = getattr(view, "_rw", view)
    return task_of(prim._loop) or current_task()


def _pg_task(view: Any) -> Any:
    return view._engine.task()


# -- the measuring methods -----------------------------------------------------------------------


def _acquiring(task_of_view: Callable[[Any], Any]) -> _patch.Wrap:
    def wrap(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
        async def acquire(self: Any) -> None:
            m = _meters
            if m is None:  # uninstrumented since: behave as the original
                await orig(self)
                return
            series = m.of(self, mode)
            series.waiting += 1
            began = _clock()
            try:
                await orig(self)
            except BaseException as exc:
                series.waiting -= 1
                outcome = _outcome(exc)
                if outcome is not None:
                    series.wait.record(_clock() - began, series.base)
                    series.count(outcome)
                raise
            now = _clock()
            series.waiting -= 1
            series.wait.record(now - began, series.base)
            series.count("acquired")
            m.begin_hold(task_of_view(self), self, now)

        return acquire

    return wrap


def _acquiring_nowait(task_of_view: Callable[[Any], Any]) -> _patch.Wrap:
    def wrap(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
        def acquire_nowait(self: Any) -> None:
            m = _meters
            try:
                orig(self)
            except (DeadlockError, LockLostError) as exc:
                if m is not None:
                    m.of(self, mode).count(_outcome(exc) or "")
                raise
            if m is not None:
                m.of(self, mode).count("acquired")
                m.begin_hold(task_of_view(self), self, _clock())

        return acquire_nowait

    return wrap


def _releasing(task_of_view: Callable[[Any], Any]) -> _patch.Wrap:
    def wrap(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
        def release(self: Any) -> None:
            m = _meters
            if m is None:
                orig(self)
                return
            task = task_of_view(self)
            try:
                orig(self)
            except LockLostError:
                m.end_hold(task, self, m.of(self, mode), lost=True)
                raise
            m.end_hold(task, self, m.of(self, mode))

        return release

    return wrap


def _pg_exiting(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    async def __aexit__(self: Any, *exc_info: Any) -> bool:
        m = _meters
        if m is None:
            return bool(await orig(self, *exc_info))
        task = self._engine.task()
        try:
            swallowed = await orig(self, *exc_info)
        except LockLostError:
            m.end_hold(task, self, m.of(self, mode), lost=True)
            raise
        m.end_hold(task, self, m.of(self, mode))
        return bool(swallowed)

    return __aexit__


def _cond_waiting(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    # wait() lets go of the lock and takes it back: the hold ends there (a sleeper holds
    # nothing) and a new one begins when the lock is back.
    async def wait(self: Any) -> None:
        m = _meters
        lock = self._lock
        if m is None or not isinstance(lock, (Lock, ReadLock, WriteLock)):
            await orig(self)
            return
        task = _local_task(lock)
        key = (task, lock)
        levels = len(m.holds.get(key, ()))
        series = m.of(lock, lock._cv_mode)
        for _ in range(levels):
            m.end_hold(task, lock, series)
        try:
            await orig(self)
        finally:
            starts = m.holds.pop(key, [])
            again = max(levels, len(starts))
            if again and self._port._cv_holds(task):
                m.holds[key] = [_clock()] * again

    return wait


# -- the thread-safe family ----------------------------------------------------------------------
#
# Its methods run in any thread at once: every change to a series' counts and to the holds
# goes through the meters' guard (a short critical section); the histograms are recorded
# outside it (the SDK's instruments are thread-safe).  The owner of a hold is what the locks
# themselves call the owner: the task (async side) or the calling thread's ThreadOwner.

_TS_VIEWS = (_ts.Lock, _ts.ReadLock, _ts.WriteLock, _ts.UpgradableLock)


def _ts_describe(view: Any, mode: str) -> tuple[str, str, str]:
    if isinstance(view, _ts.Lock):
        kind = "threadsafe.Lock"
        name = name_of(view)
        if name is None:  # the lock a Condition(name=...) made: reported under its name
            with view._cs:
                conds = list(view._conds)
            name = next((n for n in map(name_of, conds) if n), None)
    else:
        kind = "threadsafe.RWLock"
        name = name_of(view._rw)
    return (name or kind, kind, mode)


def _ts_refused(m: _Meters, series: _Series, began: float, exc: BaseException) -> None:
    now = _clock()
    outcome = _outcome(exc)
    with m.guard:
        series.waiting -= 1
        if outcome is not None:
            series.count(outcome)
    if outcome is not None:
        series.wait.record(now - began, series.base)


def _ts_acquiring(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    async def __aenter__(self: Any) -> None:
        m = _meters
        if m is None:
            await orig(self)
            return
        series = m.of(self, mode)
        with m.guard:
            series.waiting += 1
        began = _clock()
        try:
            await orig(self)
        except BaseException as exc:
            _ts_refused(m, series, began, exc)
            raise
        now = _clock()
        owner = _ts_caller()[0]
        with m.guard:
            series.waiting -= 1
            series.count("acquired")
            m.begin_hold(owner, self, now)
        series.wait.record(now - began, series.base)

    return __aenter__


def _ts_acquiring_blocking(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    def acquire_blocking(self: Any, timeout: float | None = None) -> bool:
        m = _meters
        if m is None:
            return bool(orig(self, timeout))
        series = m.of(self, mode)
        with m.guard:
            series.waiting += 1
        began = _clock()
        try:
            acquired: bool = orig(self, timeout)
        except BaseException as exc:
            _ts_refused(m, series, began, exc)
            raise
        now = _clock()
        owner = _ts_thread_caller()
        with m.guard:
            series.waiting -= 1
            if acquired:
                series.count("acquired")
                m.begin_hold(owner, self, now)
            else:  # timed out (the documented meaning of "cancelled" includes it)
                series.count("cancelled")
        series.wait.record(now - began, series.base)
        return acquired

    return acquire_blocking


def _ts_acquiring_nowait(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    def acquire_nowait(self: Any) -> None:
        m = _meters
        try:
            orig(self)
        except DeadlockError:
            if m is not None:
                series = m.of(self, mode)
                with m.guard:
                    series.count("deadlock")
            raise
        if m is not None:
            series = m.of(self, mode)
            owner = _ts_caller()[0]
            now = _clock()
            with m.guard:
                series.count("acquired")
                m.begin_hold(owner, self, now)

    return acquire_nowait


def _ts_end_hold(m: _Meters, owner: Any, view: Any, mode: str) -> None:
    now = _clock()
    with m.guard:
        began = m.take_hold(owner, view)
    if began is not None:
        series = m.of(view, mode)
        series.hold.record(now - began, series.base)


def _ts_releasing(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    def release(self: Any) -> None:
        m = _meters
        if m is None:
            orig(self)
            return
        owner = _ts_caller()[0]
        orig(self)
        _ts_end_hold(m, owner, self, mode)

    return release


def _ts_exiting(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    # Measured here rather than through release(): one call less, and the owner as cheaply as
    # the original finds it.  (The originals release without calling release().)
    def __aexit__(self: Any, *exc_info: Any) -> Any:
        m = _meters
        if m is None:
            return orig(self, *exc_info)
        owner = _ts_caller()[0]
        done = orig(self, *exc_info)
        _ts_end_hold(m, owner, self, mode)
        return done

    return __aexit__


def _ts_exiting_blocking(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    def __exit__(self: Any, *exc_info: Any) -> None:
        m = _meters
        if m is None:
            orig(self, *exc_info)
            return
        owner = _ts_thread_caller()
        orig(self, *exc_info)
        _ts_end_hold(m, owner, self, mode)

    return __exit__


def _ts_downgrading(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    # The write hold ends and a read hold of the same owner begins (not a new acquisition).
    # After upgrade() the write hold was part of the upgradable one, which goes on.
    def downgrade(self: Any) -> None:
        m = _meters
        if m is None:
            orig(self)
            return
        owner = _ts_caller()[0]
        orig(self)
        now = _clock()
        with m.guard:
            began = m.take_hold(owner, self)
            if began is not None:
                m.begin_hold(owner, self._rw.reader, now)
        if began is not None:
            series = m.of(self, mode)
            series.hold.record(now - began, series.base)

    return downgrade


def _through_aenter(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """``acquire()`` through ``__aenter__`` (the views' own goes around it)."""

    async def acquire(self: Any) -> None:
        await self.__aenter__()

    return acquire


def _through_acquire_blocking(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """``__enter__`` through ``acquire_blocking()`` (the views' own goes around it)."""

    def __enter__(self: Any) -> None:
        self.acquire_blocking()

    return __enter__


def _ts_cond_sleeps(m: _Meters, cond: Any, owner: Any) -> tuple[Any, int]:
    """End every hold ``owner`` has on the condition's lock (the wait lets go of every level)."""
    lock = cond.lock
    now = _clock()
    with m.guard:
        starts = m.holds.pop((owner, lock), [])
    if starts:
        series = m.of(lock, "exclusive" if isinstance(lock, _ts.Lock) else "write")
        for began in starts:
            series.hold.record(now - began, series.base)
    return lock, len(starts)


def _ts_cond_wakes(m: _Meters, cond: Any, owner: Any, lock: Any, levels: int) -> None:
    """The wait has returned: if it holds the lock again, its holds begin again (not when it
    failed without the lock)."""
    if levels and cond._holds(owner):
        now = _clock()
        with m.guard:
            m.holds.setdefault((owner, lock), []).extend([now] * levels)


def _ts_cond_waiting(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    async def wait(self: Any) -> None:
        m = _meters
        if m is None:
            await orig(self)
            return
        owner = _ts_caller()[0]
        lock, levels = _ts_cond_sleeps(m, self, owner)
        try:
            await orig(self)
        finally:
            _ts_cond_wakes(m, self, owner, lock, levels)

    return wait


def _ts_cond_waiting_blocking(orig: Callable[..., Any], mode: str) -> Callable[..., Any]:
    def wait_blocking(self: Any, timeout: float | None = None) -> bool:
        m = _meters
        if m is None:
            return bool(orig(self, timeout))
        owner = _ts_thread_caller()
        lock, levels = _ts_cond_sleeps(m, self, owner)
        try:
            notified: bool = orig(self, timeout)
        finally:
            _ts_cond_wakes(m, self, owner, lock, levels)
        return notified

    return wait_blocking


def _ts_plan() -> _patch.Plan:
    plan: _patch.Plan = []
    views: tuple[tuple[type, str], ...] = (
        (_ts.Lock, "exclusive"),
        (_ts.ReadLock, "read"),
        (_ts.WriteLock, "write"),
        (_ts.UpgradableLock, "upgradable"),
    )
    for cls, mode in views:
        plan += [
            (cls, "__aenter__", _ts_acquiring, mode),
            (cls, "acquire", _through_aenter, mode),
            (cls, "acquire_blocking", _ts_acquiring_blocking, mode),
            (cls, "__enter__", _through_acquire_blocking, mode),
            (cls, "acquire_nowait", _ts_acquiring_nowait, mode),
            (cls, "release", _ts_releasing, mode),
            (cls, "__aexit__", _ts_exiting, mode),
            (cls, "__exit__", _ts_exiting_blocking, mode),
        ]
    plan += [
        (_ts.WriteLock, "downgrade", _ts_downgrading, "write"),
        (_ts.Condition, "wait", _ts_cond_waiting, ""),
        (_ts.Condition, "wait_blocking", _ts_cond_waiting_blocking, ""),
    ]
    return plan


def _plan() -> _patch.Plan:
    plan: _patch.Plan = []
    local_views: tuple[tuple[type, str], ...] = (
        (Lock, "exclusive"),
        (ReadLock, "read"),
        (WriteLock, "write"),
        (UpgradableLock, "upgradable"),
    )
    for cls, mode in local_views:
        plan += [
            (cls, "__aenter__", _acquiring(_local_task), mode),
            (cls, "acquire_nowait", _acquiring_nowait(_local_task), mode),
            (cls, "release", _releasing(_local_task), mode),
            (cls, "__aexit__", _patch.release_on_exit, mode),
        ]
    plan.append((Condition, "wait", _cond_waiting, ""))
    plan += _ts_plan()
    try:
        from .postgres import PostgresLock, PostgresReadLock, PostgresWriteLock
    except ImportError:  # no psycopg: there are no PostgreSQL locks to measure
        return plan
    pg_views: tuple[tuple[type, str], ...] = (
        (PostgresLock, "exclusive"),
        (PostgresReadLock, "read"),
        (PostgresWriteLock, "write"),
    )
    for cls, mode in pg_views:
        plan += [
            (cls, "acquire", _acquiring(_pg_task), mode),
            (cls, "acquire_nowait", _acquiring_nowait(_pg_task), mode),
            (cls, "release", _releasing(_pg_task), mode),
            (cls, "__aenter__", _acquiring(_pg_task), mode),
            (cls, "__aexit__", _pg_exiting, mode),
        ]
    return plan


# -- the switch ----------------------------------------------------------------------------------


@final
class AiolocksInstrumentor:
    """Switch OpenTelemetry metrics of every aiolocks lock on and off, for the whole process.

    The OpenTelemetry instrumentor shape: ``AiolocksInstrumentor().instrument()`` /
    ``.uninstrument()``.  Instances share one state, so the instrumentor made at start-up and
    one made elsewhere switch the same thing.  Covers :class:`~aiolocks.Lock`, the
    :class:`~aiolocks.RWLock` views, a :class:`~aiolocks.Condition`'s lock (``wait()`` ends
    the hold: a sleeper holds nothing), the locks of :class:`~aiolocks.KeyedLock` and
    :class:`~aiolocks.KeyedRWLock` (under the table's name), the views of
    ``aiolocks.postgres`` (where psycopg is installed), and :mod:`aiolocks.threadsafe`'s
    ``Lock``, ``RWLock`` views and ``Condition`` on both sides: tasks of any event loop and
    plain threads (``with``, ``acquire_blocking(timeout)``, whose timing out counts as
    ``cancelled``; ``wait_blocking()`` ends the hold as ``wait()`` does; ``writer.downgrade()``
    ends the write hold and begins a read hold).  Composes with debug mode: either can be
    switched on and off while the other is on.

    Thread-safe: the thread-safe locks' measuring methods may run in many threads at once
    (free-threaded CPython included); what they share is changed under a short internal lock,
    never held across a call into OpenTelemetry.

    Holds taken before :meth:`instrument` are not measured when they are released.
    Acquisitions through a :class:`~aiolocks.LockCollection` made before :meth:`instrument`
    are not measured (it keeps the methods it was given).

    Example::

        from opentelemetry.sdk.metrics import MeterProvider
        from aiolocks.telemetry import AiolocksInstrumentor

        AiolocksInstrumentor().instrument(meter_provider=MeterProvider(...))

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def instrument(self, meter_provider: Any = None) -> None:
        """Start measuring, through ``meter_provider`` (default: the global one).

        Calling it again while instrumented switches to the new meter provider.

        Args:
            meter_provider: an OpenTelemetry ``MeterProvider``, or None for
                ``opentelemetry.metrics.get_meter_provider()``.
        """
        global _meters
        from . import __version__

        provider = _otel.get_meter_provider() if meter_provider is None else meter_provider
        _meters = _Meters(provider.get_meter("aiolocks", __version__))
        _patch.install(_LAYER, _plan())

    def uninstrument(self) -> None:
        """Stop measuring and put the lock classes' original methods back."""
        global _meters
        _patch.uninstall(_LAYER)
        _meters = None

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        """True while :meth:`instrument` is in effect."""
        return _meters is not None
