"""The benchmark scenarios, one function each, all reporting into a ``Collector``.

Conventions: every time sample runs in a fresh event loop (``asyncio.run`` / ``trio.run``) and
is timed inside it with ``perf_counter`` (loop start-up excluded); candidates are interleaved
and compared by the median of per-repetition ratios (see ``_harness``).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import itertools
import random
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import anyio
import trio
import trio.testing

import _peers as P
from _harness import Check, Collector, Result, interleave, median, paired_ratio, run_on

Sample = dict[str, float]
Target = tuple[str, str, float]  # (candidate, op, limit)


@dataclass(frozen=True)
class Config:
    quick: bool

    def pick(self, default: Any, quick: Any) -> Any:
        return quick if self.quick else default


# ----------------------------------------------------------------------------- comparison


def compare(
    col: Collector,
    *,
    name: str,
    backend: str,
    reference: str | None = None,
    peers: list[str] | None = None,
    targets: list[Target],
    extras: list[str],
    reps: int,
    sample: Callable[[str], Sample],
    metrics: dict[str, str],
    checked: str,
    note: str = "",
    slow_after: float = float("inf"),
    label: str | None = None,
    stat: str = "median",
    curve: str = "",
    x: float | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Measure ``reference`` and every candidate interleaved; record results and ratio checks.

    ``metrics`` maps each metric the sample returns to its unit; ``checked`` is the one the
    ratio rows compare; ``label`` replaces the backend's name in the records.

    ``peers`` instead of ``reference``: the reference is the best of these peers on ``checked``
    in this very run (the fastest for a time, the highest for a throughput), so a target
    reads "at most x times the fastest peer", whichever peer that turns out to be.

    ``stat="median"``: values are medians and ratios the median of per-repetition ratios
    (for whole-workload runs). ``stat="min"``: values are minima and ratios the ratio of
    minima (for micro-benchmarks, where a busy machine only ever adds time, so the fastest of
    many short samples is the least disturbed one). ``curve``/``x``: the records are the
    point ``x`` of that scaling series (see ``SCALING``; plotted by ``report.py``). Returns
    ``{candidate: {metric: samples}}``.
    """
    agg = min if stat == "min" else median
    how = f"{stat} of {reps} runs" + (", ratio of minima" if stat == "min" else "")
    note = f"{note}; {how}" if note else how
    backend = label or backend
    if (reference is None) == (peers is None):
        raise TypeError("compare() needs exactly one of reference= and peers=")
    head = [reference] if reference is not None else list(peers or ())
    wanted = head + [t[0] for t in targets] + extras
    cands = P.available(*dict.fromkeys(wanted))
    print(f"  {name} [{backend}]: {', '.join(cands)}", flush=True)
    raw = interleave(
        cands,
        reps,
        sample,
        lambda c, exc: col.error(name, backend, c, exc),
        slow_after=slow_after,
        keep={*head, *(t[0] for t in targets)},
    )
    series: dict[str, dict[str, list[float]]] = {}
    for cand, samples in raw.items():
        series[cand] = {m: [s[m] for s in samples] for m in metrics}
        for m, unit in metrics.items():
            xs = series[cand][m]
            col.results.append(
                Result(name, backend, cand, m, agg(xs), unit, xs, stat, series=curve, x=x)
            )
    unit = metrics[checked]
    if peers is not None:
        measured = [p for p in peers if series.get(p, {}).get(checked)]
        best = max if unit == "ops/s" else min
        reference = best(measured, key=lambda p: agg(series[p][checked]), default=peers[0])
    ref = series.get(reference, {}).get(checked)
    limits = {c: (op, lim) for c, op, lim in targets}
    for cand in dict.fromkeys(wanted):
        if cand == reference:
            continue
        xs = series.get(cand, {}).get(checked)
        op, lim = limits.get(cand, (None, None))
        if xs is None and op is None:
            continue  # a reference-only extra that could not run: nothing to say
        col.checks.append(
            Check(
                name,
                backend,
                cand,
                checked,
                agg(xs) if xs else None,
                unit,
                reference=reference,
                reference_value=agg(ref) if ref else None,
                ratio=_ratio(xs, ref, stat) if xs and ref else None,
                op=op,
                limit=lim,
                note=note,
            )
        )
    return series


def _ratio(xs: list[float], ref: list[float], stat: str) -> float | None:
    if stat == "min":
        return min(xs) / min(ref) if min(ref) > 0 else None
    return paired_ratio(xs, ref)


def absolute_check(
    col: Collector,
    series: dict[str, dict[str, list[float]]],
    *,
    name: str,
    backend: str,
    candidate: str,
    metric: str,
    unit: str,
    op: str | None = None,
    limit: float | None = None,
    note: str = "",
    agg: Callable[[list[float]], float] = median,
) -> None:
    xs = series.get(candidate, {}).get(metric)
    if xs is None and op is None:
        return
    value = agg(xs) if xs else None
    col.checks.append(
        Check(name, backend, candidate, metric, value, unit, op=op, limit=limit, note=note)
    )


# ----------------------------------------------------------------------------- workloads


async def _uncontended(make: Callable[[], Any], n: int) -> Sample:
    """Per-op time of ``async with lock: pass``, unrolled ten times; backend-neutral."""
    lock = make()
    async with lock:
        pass
    loops = max(1, n // 10)
    t0 = perf_counter()
    for _ in range(loops):
        async with lock:
            pass
        async with lock:
            pass
        async with lock:
            pass
        async with lock:
            pass
        async with lock:
            pass
        async with lock:
            pass
        async with lock:
            pass
        async with lock:
            pass
        async with lock:
            pass
        async with lock:
            pass
    return {"time_per_op": (perf_counter() - t0) / (loops * 10)}


async def _contended_asyncio(make: Callable[[], Any], tasks: int, n: int) -> Sample:
    """``tasks`` tasks each take the lock ``n`` times, yielding once while holding it.

    The yield inside makes every other task queue up, so each acquisition in steady state is a
    hand-off from the releaser to the longest waiter, for every candidate alike.
    """
    lock = make()
    start = asyncio.Event()

    async def worker() -> None:
        await start.wait()
        for _ in range(n):
            async with lock:
                await asyncio.sleep(0)

    ts = [asyncio.create_task(worker()) for _ in range(tasks)]
    await asyncio.sleep(0)
    t0 = perf_counter()
    start.set()
    await asyncio.gather(*ts)
    return {"time_per_op": (perf_counter() - t0) / (tasks * n)}


async def _contended_trio(make: Callable[[], Any], tasks: int, n: int) -> Sample:
    lock = make()
    start = trio.Event()

    async def worker() -> None:
        await start.wait()
        for _ in range(n):
            async with lock:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        t0 = perf_counter()
        start.set()
    return {"time_per_op": (perf_counter() - t0) / (tasks * n)}


async def _read_mostly(
    make_rw: Callable[[], tuple[Any, Any]],
    readers: int,
    writers: int,
    duration: float,
    pause: float,
) -> Sample:
    """Readers loop holding across one yield; writers hold without yielding, then pause.

    The writers' pause keeps the mix read-mostly: without it a writer-preferring lock lets
    the writers ping-pong and starves every reader for the whole run.
    """
    rlock, wlock = make_rw()
    start = asyncio.Event()
    deadline = 0.0
    r_ops = w_ops = 0
    worst_r = worst_w = 0.0

    async def reader() -> None:
        nonlocal r_ops, worst_r
        await start.wait()
        while True:
            t = perf_counter()
            if t >= deadline:
                return
            async with rlock:
                waited = perf_counter() - t
                await asyncio.sleep(0)
            r_ops += 1
            if waited > worst_r:
                worst_r = waited

    async def writer() -> None:
        nonlocal w_ops, worst_w
        await start.wait()
        while True:
            t = perf_counter()
            if t >= deadline:
                return
            async with wlock:
                waited = perf_counter() - t
            w_ops += 1
            if waited > worst_w:
                worst_w = waited
            await asyncio.sleep(pause)

    ts = [asyncio.create_task(reader()) for _ in range(readers)]
    ts += [asyncio.create_task(writer()) for _ in range(writers)]
    await asyncio.sleep(0)
    t0 = perf_counter()
    deadline = t0 + duration
    start.set()
    await asyncio.gather(*ts)
    elapsed = perf_counter() - t0
    return {
        "throughput": (r_ops + w_ops) / elapsed,
        "reader_ops": float(r_ops),
        "writer_ops": float(w_ops),
        "worst_reader_wait": worst_r,
        "worst_writer_wait": worst_w,
    }


async def _many_readers(make_rw: Callable[[], tuple[Any, Any]] | None, n: int) -> Sample:
    """``n`` tasks each take the read lock and wait on one event, then release.

    With ``make_rw=None`` the tasks skip the lock: the bare-task baseline.
    """
    rlock = make_rw()[0] if make_rw is not None else None
    release = asyncio.Event()
    all_in = asyncio.Event()
    count = 0

    async def bare() -> None:
        nonlocal count
        count += 1
        if count == n:
            all_in.set()
        await release.wait()

    async def reader() -> None:  # the same body as bare(), inline: one coroutine per task
        nonlocal count
        async with rlock:
            count += 1
            if count == n:
                all_in.set()
            await release.wait()

    body = bare if rlock is None else reader
    t0 = perf_counter()
    ts = [asyncio.create_task(body()) for _ in range(n)]
    await all_in.wait()
    release.set()
    await asyncio.gather(*ts)
    return {"time_per_reader": (perf_counter() - t0) / n}


async def _many_readers_trio(make_rw: Callable[[], tuple[Any, Any]] | None, n: int) -> Sample:
    """``_many_readers`` on trio: ``n`` tasks of one nursery hold the read lock at once."""
    rlock = make_rw()[0] if make_rw is not None else None
    release = trio.Event()
    all_in = trio.Event()
    count = 0

    async def bare() -> None:
        nonlocal count
        count += 1
        if count == n:
            all_in.set()
        await release.wait()

    async def reader() -> None:
        nonlocal count
        async with rlock:
            count += 1
            if count == n:
                all_in.set()
            await release.wait()

    body = bare if rlock is None else reader
    t0 = perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(body)
        await all_in.wait()
        release.set()
    return {"time_per_reader": (perf_counter() - t0) / n}


async def _readers_rounds(
    fn: Callable[..., Any], make_rw: Callable[[], tuple[Any, Any]] | None, n: int, rounds: int
) -> Sample:
    """``rounds`` successive rounds of ``fn(make_rw, n)``, each with a fresh lock; the mean
    cost per reader (a small ``n`` needs many rounds to make a sample worth timing)."""
    total = 0.0
    for _ in range(rounds):
        total += (await fn(make_rw, n))["time_per_reader"]
    return {"time_per_reader": total / rounds}


async def _settle(tasks: list[asyncio.Task[Any]]) -> None:
    """Yield until every task is parked on a future (bounded)."""
    for _ in range(50):
        await asyncio.sleep(0)
        if all(getattr(t, "_fut_waiter", True) is not None for t in tasks):
            return


async def _cancel_queued_asyncio(make: Callable[[], Any] | None, n: int, seed: int) -> Sample:
    """The main task holds the lock; ``n`` tasks queue for it; all are cancelled (shuffled).

    With ``make=None`` the tasks park on futures of their own: the baseline.
    """
    loop = asyncio.get_running_loop()
    lock = make() if make is not None else None
    if lock is not None:
        await lock.acquire()

    async def bare() -> None:
        await loop.create_future()

    async def waiter() -> None:
        async with lock:
            raise AssertionError("a queued waiter was granted the lock")

    body = bare if lock is None else waiter
    t0 = perf_counter()
    ts = [asyncio.create_task(body()) for _ in range(n)]
    await _settle(ts)
    t1 = perf_counter()
    order = list(ts)
    random.Random(seed).shuffle(order)
    for t in order:
        t.cancel()
    await asyncio.wait(ts)
    t2 = perf_counter()
    if lock is not None:
        lock.release()
    bad = [t for t in ts if not t.cancelled()]
    if bad:
        bad[0].result()
    return {"cancel_per_waiter": (t2 - t1) / n, "total_per_waiter": (t2 - t0) / n}


async def _cancel_queued_anyio(make: Callable[[], Any] | None, n: int) -> Sample:
    """As ``_cancel_queued_asyncio``, but the tasks live in one anyio task group on asyncio
    and are cancelled together by its cancel scope."""
    loop = asyncio.get_running_loop()
    lock = make() if make is not None else None
    if lock is not None:
        await lock.acquire()

    async def bare() -> None:
        await loop.create_future()

    async def waiter() -> None:
        async with lock:
            raise AssertionError("a queued waiter was granted the lock")

    body = bare if lock is None else waiter
    async with anyio.create_task_group() as tg:
        t0 = perf_counter()
        for _ in range(n):
            tg.start_soon(body)
        await anyio.wait_all_tasks_blocked()
        t1 = perf_counter()
        tg.cancel_scope.cancel()
    t2 = perf_counter()
    if lock is not None:
        lock.release()
    return {"cancel_per_waiter": (t2 - t1) / n, "total_per_waiter": (t2 - t0) / n}


async def _cancel_queued_trio(make: Callable[[], Any] | None, n: int) -> Sample:
    lock = make() if make is not None else None
    if lock is not None:
        await lock.acquire()

    async def waiter() -> None:
        async with lock:
            raise AssertionError("a queued waiter was granted the lock")

    body = trio.sleep_forever if lock is None else waiter
    async with trio.open_nursery() as nursery:
        t0 = perf_counter()
        for _ in range(n):
            nursery.start_soon(body)
        await trio.testing.wait_all_tasks_blocked()
        t1 = perf_counter()
        nursery.cancel_scope.cancel()
    t2 = perf_counter()
    if lock is not None:
        lock.release()
    return {"cancel_per_waiter": (t2 - t1) / n, "total_per_waiter": (t2 - t0) / n}


async def _ping_pong_asyncio(make: Callable[[], Any], n: int) -> Sample:
    """Two tasks take turns through one condition, ``n`` turns each.

    Each waits until it is its turn, flips the turn and notifies, so every turn is one
    notify -> wake-up -> lock hand-off; the cost reported is per turn.
    """
    cond = make()
    start = asyncio.Event()
    turn = 0

    async def player(me: int) -> None:
        nonlocal turn
        await start.wait()
        for _ in range(n):
            async with cond:
                while turn != me:
                    await cond.wait()
                turn = 1 - me
                cond.notify()

    ts = [asyncio.create_task(player(0)), asyncio.create_task(player(1))]
    await asyncio.sleep(0)
    t0 = perf_counter()
    start.set()
    await asyncio.gather(*ts)
    return {"time_per_op": (perf_counter() - t0) / (2 * n)}


async def _ping_pong_trio(make: Callable[[], Any], n: int) -> Sample:
    cond = make()
    start = trio.Event()
    turn = 0

    async def player(me: int) -> None:
        nonlocal turn
        await start.wait()
        for _ in range(n):
            async with cond:
                while turn != me:
                    await cond.wait()
                turn = 1 - me
                cond.notify()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(player, 0)
        nursery.start_soon(player, 1)
        await trio.testing.wait_all_tasks_blocked()
        t0 = perf_counter()
        start.set()
    return {"time_per_op": (perf_counter() - t0) / (2 * n)}


class _Feed:
    """The state of the producer/consumer workload: items, and whether the producer is done."""

    __slots__ = ("consumed", "done", "items")

    def __init__(self) -> None:
        self.items: collections.deque[int] = collections.deque()
        self.done = False
        self.consumed = 0


async def _consume(cond: Any, feed: _Feed) -> None:
    while True:
        async with cond:
            while not feed.items and not feed.done:
                await cond.wait()
            if not feed.items:
                return
            feed.items.popleft()
            feed.consumed += 1


async def _produce(cond: Any, feed: _Feed, n: int, yield_: Callable[[], Any]) -> None:
    """One ``notify()`` per item, yielding between items so consumers run in between."""
    for x in range(n):
        async with cond:
            feed.items.append(x)
            cond.notify()
        await yield_()
    async with cond:
        feed.done = True
        cond.notify_all()


async def _producer_consumers_asyncio(make: Callable[[], Any], consumers: int, n: int) -> Sample:
    """``consumers`` tasks wait on one condition; one producer feeds them ``n`` items."""
    cond = make()
    feed = _Feed()
    ts = [asyncio.create_task(_consume(cond, feed)) for _ in range(consumers)]
    await _settle(ts)
    t0 = perf_counter()
    await _produce(cond, feed, n, lambda: asyncio.sleep(0))
    await asyncio.gather(*ts)
    elapsed = perf_counter() - t0
    if feed.consumed != n:
        raise AssertionError(f"{feed.consumed} of {n} items consumed")
    return {"time_per_op": elapsed / n}


async def _producer_consumers_trio(make: Callable[[], Any], consumers: int, n: int) -> Sample:
    cond = make()
    feed = _Feed()
    async with trio.open_nursery() as nursery:
        for _ in range(consumers):
            nursery.start_soon(_consume, cond, feed)
        await trio.testing.wait_all_tasks_blocked()
        t0 = perf_counter()
        await _produce(cond, feed, n, trio.lowlevel.checkpoint)
    elapsed = perf_counter() - t0
    if feed.consumed != n:
        raise AssertionError(f"{feed.consumed} of {n} items consumed")
    return {"time_per_op": elapsed / n}


def _memory(make: Callable[[], Any], n: int) -> float:
    """Bytes per live instance: the slope between ``n`` and ``2 n`` instances made under
    tracemalloc, so one-off allocations (caches, free lists) do not count."""
    make()
    objs: list[Any] = [None] * (2 * n)
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(n):
            objs[i] = make()
        mid = tracemalloc.get_traced_memory()[0]
        for i in range(n, 2 * n):
            objs[i] = make()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del objs
    return round((after - mid) / n, 1)


async def _use_once(obj: Any) -> None:
    if hasattr(obj, "writer_lock"):  # aiorwlock
        views = [obj.writer_lock, obj.reader_lock]
    elif hasattr(obj, "writer") and hasattr(obj, "reader"):
        views = [obj.writer, obj.reader]
    else:
        views = [obj]
    for v in views:
        async with v:
            pass


async def _memory_in_loop(make: Callable[[], Any], n: int, use: bool) -> float:
    if not use:
        return _memory(make, n)
    await _use_once(make())
    objs: list[Any] = [None] * (2 * n)
    gc.collect()
    tracemalloc.start()
    try:
        mid = 0
        for i in range(2 * n):
            if i == n:
                mid = tracemalloc.get_traced_memory()[0]
            obj = make()
            await _use_once(obj)
            objs[i] = obj
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del objs
    return round((after - mid) / n, 1)


# ----------------------------------------------------------------------------- optimistic reads


def _trivial() -> int:
    """The read of the optimistic micro-benchmarks: as cheap as a function can be."""
    return 1


async def _stamp_validate(make_rw: Callable[[], Any], n: int) -> Sample:
    """Per-op time of ``stamp = rw.optimistic_read(); rw.validate(stamp)``, unrolled ten times.

    It runs inside the event loop, as application code does, though it never awaits.
    """
    rw = make_rw()
    loops = max(1, n // 10)
    ok = True
    t0 = perf_counter()
    for _ in range(loops):
        stamp = rw.optimistic_read()
        ok &= rw.validate(stamp)
        stamp = rw.optimistic_read()
        ok &= rw.validate(stamp)
        stamp = rw.optimistic_read()
        ok &= rw.validate(stamp)
        stamp = rw.optimistic_read()
        ok &= rw.validate(stamp)
        stamp = rw.optimistic_read()
        ok &= rw.validate(stamp)
        stamp = rw.optimistic_read()
        ok &= rw.validate(stamp)
        stamp = rw.optimistic_read()
        ok &= rw.validate(stamp)
        stamp = rw.optimistic_read()
        ok &= rw.validate(stamp)
        stamp = rw.optimistic_read()
        ok &= rw.validate(stamp)
        stamp = rw.optimistic_read()
        ok &= rw.validate(stamp)
    elapsed = perf_counter() - t0
    if not ok:
        raise AssertionError("a stamp failed to validate with no writer about")
    return {"time_per_op": elapsed / (loops * 10)}


async def _read_optimistic_loop(make_rw: Callable[[], Any], n: int) -> Sample:
    """Per-op time of ``await rw.read_optimistic(fn)``, ``fn`` a trivial sync function."""
    rw = make_rw()
    fn = _trivial
    await rw.read_optimistic(fn)
    loops = max(1, n // 10)
    t0 = perf_counter()
    for _ in range(loops):
        await rw.read_optimistic(fn)
        await rw.read_optimistic(fn)
        await rw.read_optimistic(fn)
        await rw.read_optimistic(fn)
        await rw.read_optimistic(fn)
        await rw.read_optimistic(fn)
        await rw.read_optimistic(fn)
        await rw.read_optimistic(fn)
        await rw.read_optimistic(fn)
        await rw.read_optimistic(fn)
    return {"time_per_op": (perf_counter() - t0) / (loops * 10)}


async def _locked_fn_loop(make: Callable[[], Any], n: int) -> Sample:
    """Per-op time of ``async with lock: fn()``: the locked counterpart of the loop above."""
    lock = make()
    fn = _trivial
    async with lock:
        fn()
    loops = max(1, n // 10)
    t0 = perf_counter()
    for _ in range(loops):
        async with lock:
            fn()
        async with lock:
            fn()
        async with lock:
            fn()
        async with lock:
            fn()
        async with lock:
            fn()
        async with lock:
            fn()
        async with lock:
            fn()
        async with lock:
            fn()
        async with lock:
            fn()
        async with lock:
            fn()
    return {"time_per_op": (perf_counter() - t0) / (loops * 10)}


# In the read-mostly mix, the locked readers' candidate names are their read views; the
# workload needs the whole lock (its writer too).
_MIX_LOCKED = {P.RW_READER: P.RWLOCK, P.RW_READER_FAST: P.RWLOCK_FAST}


async def _optimistic_mix(
    cand: str, on_trio: bool, readers: int, duration: float, pause: float
) -> Sample:
    """``readers`` tasks read a pair ``(x, y)`` that one writer keeps equal, yielding once per read.

    The writer updates ``x``, awaits once still holding the write lock (so readers see a torn
    pair meanwhile), updates ``y``, releases, then pauses. Readers use ``read_optimistic`` or
    ``async with rw.reader``, by candidate; every result they get must be consistent (x == y).
    """
    if on_trio:
        yield_: Callable[[], Any] = trio.lowlevel.checkpoint
        sleep: Callable[[float], Any] = trio.sleep
    else:
        yield_ = _asyncio_yield
        sleep = asyncio.sleep
    optimistic = cand in P.OPTIMISTIC
    if optimistic:
        rw = P.OPTIMISTIC[cand]()
        rlock, wlock = rw.reader, rw.writer
    else:
        rw = None
        rlock, wlock = P.RW_FACTORIES[_MIX_LOCKED[cand]]()
    xy = [0, 0]
    deadline = 0.0
    r_ops = w_ops = behind = 0
    worst_r = 0.0

    def read() -> tuple[int, int]:
        return xy[0], xy[1]

    async def reader() -> None:
        nonlocal r_ops, worst_r, behind
        while True:
            t = perf_counter()
            if t >= deadline:
                return
            if wlock.locked():
                behind += 1  # must wait for the writer either way (read_optimistic: locked run)
            if rw is not None:
                x, y = await rw.read_optimistic(read)
            else:
                async with rlock:
                    x, y = read()
            waited = perf_counter() - t
            if x != y:
                raise AssertionError(f"a reader got a torn pair {(x, y)}")
            r_ops += 1
            if waited > worst_r:
                worst_r = waited
            await yield_()

    async def writer() -> None:
        nonlocal w_ops
        while perf_counter() < deadline:
            async with wlock:
                xy[0] += 1
                await yield_()  # mid-update, holding the write lock
                xy[1] += 1
            w_ops += 1
            await sleep(pause)

    t0 = perf_counter()
    deadline = t0 + duration
    if on_trio:
        async with trio.open_nursery() as nursery:
            for _ in range(readers):
                nursery.start_soon(reader)
            nursery.start_soon(writer)
    else:
        ts = [asyncio.create_task(reader()) for _ in range(readers)]
        ts.append(asyncio.create_task(writer()))
        await asyncio.gather(*ts)
    elapsed = perf_counter() - t0
    return {
        "throughput": r_ops / elapsed,
        "writer_ops": float(w_ops),
        "reads_during_write": float(behind),
        "worst_reader_wait": worst_r,
    }


async def _asyncio_yield() -> None:
    await asyncio.sleep(0)


# ----------------------------------------------------------------------------- lock collections


def _account_table() -> Any:
    """Per-account locks: a ``KeyedRWLock`` (a dict of ``RWLock`` while it is missing)."""
    if P.HAS_KEYED:
        return P.aiolocks.KeyedRWLock()
    return collections.defaultdict(P.aiolocks.RWLock)


def _transfer_plans(
    tasks: int, accounts: int, n: int, hot: bool, seed: int
) -> list[list[tuple[int, int]]]:
    """``n`` (from, to) account pairs per task, the same for every candidate of a repetition.

    ``hot``: every transfer involves account 0, as source or destination at random.
    """
    rng = random.Random(seed)
    plans = []
    for _ in range(tasks):
        plan = []
        for _ in range(n):
            if hot:
                a, b = 0, rng.randrange(1, accounts)
                if rng.random() < 0.5:
                    a, b = b, a
            else:
                a, b = rng.sample(range(accounts), 2)
            plan.append((a, b))
        plans.append(plan)
    return plans


async def _transfers(
    cand: str, on_trio: bool, plans: list[list[tuple[int, int]]], accounts: int
) -> Sample:
    """Every task runs its plan of transfers, each under ``LockCollection(src.writer,
    dst.writer).lock(key)`` holding both account locks across one yield (the awaited write of a
    real transfer). Checks that no two transfers ever overlap on an account and that money is
    conserved.
    """
    yield_: Callable[[], Any] = trio.lowlevel.checkpoint if on_trio else _asyncio_yield
    make = P.COLLECTIONS[cand]
    task_key = P.aiolocks.TaskKey
    table = _account_table()
    balance = [0] * accounts
    busy = [False] * accounts
    start = anyio.Event()
    worst = 0.0

    async def worker(plan: list[tuple[int, int]]) -> None:
        nonlocal worst
        key = task_key.get()
        await start.wait()
        for a, b in plan:
            coll = make(table[a].writer, table[b].writer)
            t = perf_counter()
            async with coll.lock(key):
                waited = perf_counter() - t
                if busy[a] or busy[b]:
                    raise AssertionError(f"two transfers hold account {a} or {b} at once")
                busy[a] = busy[b] = True
                balance[a] -= 1
                await yield_()
                balance[b] += 1
                busy[a] = busy[b] = False
            if waited > worst:
                worst = waited

    async with anyio.create_task_group() as tg:
        for plan in plans:
            tg.start_soon(worker, plan)
        await anyio.wait_all_tasks_blocked()
        t0 = perf_counter()
        start.set()
    elapsed = perf_counter() - t0
    if sum(balance) != 0:
        raise AssertionError(f"money not conserved: {sum(balance)}")
    ops = sum(len(plan) for plan in plans)
    return {"throughput": ops / elapsed, "worst_writer_wait": worst}


async def _pair_uncontended(cand: str, n: int) -> Sample:
    """Per-op time of taking and releasing two idle ``aiolocks.Lock()``s, by candidate:
    nested ``async with``, a prepared collection's ``lock(key)``, a collection made per op, or
    a prepared collection's ``lock_nowait(key)`` under a plain ``with``. Unrolled five times.
    """
    a, b = P.aiolocks.Lock(), P.aiolocks.Lock()
    loops = max(1, n // 5)
    if cand == P.NESTED_2:
        t0 = perf_counter()
        for _ in range(loops):
            async with a, b:
                pass
            async with a, b:
                pass
            async with a, b:
                pass
            async with a, b:
                pass
            async with a, b:
                pass
        return {"time_per_op": (perf_counter() - t0) / (loops * 5)}
    make = P.COLLECTIONS[cand]
    key = P.aiolocks.TaskKey.get()
    if cand == P.COLL_ORDERED_BUILT:
        t0 = perf_counter()
        for _ in range(loops):
            async with make(a, b).lock(key):
                pass
            async with make(a, b).lock(key):
                pass
            async with make(a, b).lock(key):
                pass
            async with make(a, b).lock(key):
                pass
            async with make(a, b).lock(key):
                pass
        return {"time_per_op": (perf_counter() - t0) / (loops * 5)}
    coll = make(a, b)
    if cand == P.COLL_NOWAIT:
        t0 = perf_counter()
        for _ in range(loops):
            with coll.lock_nowait(key):
                pass
            with coll.lock_nowait(key):
                pass
            with coll.lock_nowait(key):
                pass
            with coll.lock_nowait(key):
                pass
            with coll.lock_nowait(key):
                pass
        return {"time_per_op": (perf_counter() - t0) / (loops * 5)}
    async with coll.lock(key):
        pass
    t0 = perf_counter()
    for _ in range(loops):
        async with coll.lock(key):
            pass
        async with coll.lock(key):
            pass
        async with coll.lock(key):
            pass
        async with coll.lock(key):
            pass
        async with coll.lock(key):
            pass
    return {"time_per_op": (perf_counter() - t0) / (loops * 5)}


# ----------------------------------------------------------------------------- scenarios


def uncontended_fast(col: Collector, cfg: Config) -> None:
    name = "uncontended, fast_acquire=True"
    n = cfg.pick(10_000, 1_000)
    reps = cfg.pick(21, 4)
    for backend in ("asyncio", "uvloop"):
        compare(
            col,
            name=name,
            backend=backend,
            reference=P.ASYNCIO_LOCK,
            targets=[
                (P.RW_READER_FAST, "<=", 1.0),
                (P.RW_WRITER_FAST, "<=", 1.0),
                (P.LOCK_FAST, "<=", 0.8),
            ],
            extras=[P.ANYIO_LOCK_FAST],
            reps=reps,
            sample=lambda c, b=backend: run_on(b, _uncontended, P.FACTORIES[c], n),
            metrics={"time_per_op": "s"},
            checked="time_per_op",
            stat="min",
        )
    compare(
        col,
        name=name,
        backend="trio",
        reference=P.TRIO_LOCK,
        targets=[],
        extras=[P.RW_READER_FAST, P.RW_WRITER_FAST, P.LOCK_FAST, P.ANYIO_LOCK_FAST],
        reps=cfg.pick(15, 3),
        sample=lambda c: run_on("trio", _uncontended, P.FACTORIES[c], cfg.pick(3_000, 500)),
        metrics={"time_per_op": "s"},
        checked="time_per_op",
        stat="min",
        note="trio keeps the cancel point",
    )


def uncontended_default(col: Collector, cfg: Config) -> None:
    name = "uncontended, default (checkpointing)"
    n = cfg.pick(1_000, 200)
    reps = cfg.pick(21, 4)
    compare(
        col,
        name=name,
        backend="asyncio",
        reference=P.ANYIO_LOCK,
        targets=[(P.RW_READER, "<=", 0.45), (P.RW_WRITER, "<=", 0.45), (P.LOCK, "<=", 0.45)],
        extras=[P.ANYIO_LOCK_FAST, P.ASYNCIO_LOCK],
        reps=reps,
        sample=lambda c: run_on("asyncio", _uncontended, P.FACTORIES[c], n),
        metrics={"time_per_op": "s"},
        checked="time_per_op",
        stat="min",
    )
    compare(
        col,
        name=name,
        backend="trio",
        reference=P.TRIO_LOCK,
        targets=[(P.RW_READER, "<=", 0.95), (P.RW_WRITER, "<=", 0.95), (P.LOCK, "<=", 0.95)],
        extras=[P.ANYIO_LOCK],
        reps=reps,
        sample=lambda c: run_on("trio", _uncontended, P.FACTORIES[c], n),
        metrics={"time_per_op": "s"},
        checked="time_per_op",
        stat="min",
    )


def contended(col: Collector, cfg: Config) -> None:
    tasks = 100
    n = cfg.pick(20, 5)
    reps = cfg.pick(15, 3)
    name = f"contended hand-off, {tasks} writers"
    note = "each holds the lock across one yield"
    for backend, reference in (
        ("asyncio", P.ASYNCIO_LOCK),
        ("uvloop", P.ASYNCIO_LOCK),
        ("trio", P.TRIO_LOCK),
    ):
        fn = _contended_trio if backend == "trio" else _contended_asyncio
        compare(
            col,
            name=name,
            backend=backend,
            reference=reference,
            targets=[(P.LOCK, "<=", 1.1), (P.RW_WRITER, "<=", 1.1)],
            extras=[P.LOCK_FAST, P.RW_WRITER_FAST, P.ANYIO_LOCK],
            reps=reps,
            sample=lambda c, b=backend, f=fn: run_on(b, f, P.FACTORIES[c], tasks, n),
            metrics={"time_per_op": "s"},
            checked="time_per_op",
            stat="min",
            note=note,
        )


def read_mostly(col: Collector, cfg: Config) -> None:
    readers, writers = 100, 4
    duration = cfg.pick(1.0, 0.2)
    pause = 0.001
    name = f"read-mostly mix, {readers} readers + {writers} writers"
    series = compare(
        col,
        name=name,
        backend="asyncio",
        reference=P.AIORWLOCK,
        targets=[(P.RWLOCK, ">=", 1.4)],
        extras=[P.RWLOCK_FAST, P.AIORWLOCK_FAST],
        reps=cfg.pick(3, 1),
        sample=lambda c: run_on(
            "asyncio", _read_mostly, P.RW_FACTORIES[c], readers, writers, duration, pause
        ),
        metrics={
            "throughput": "ops/s",
            "reader_ops": "ops",
            "writer_ops": "ops",
            "worst_reader_wait": "s",
            "worst_writer_wait": "s",
        },
        checked="throughput",
        note=f"{duration:g} s runs, writers pause {pause * 1e3:g} ms between writes",
    )
    for cand in (P.RWLOCK, P.RWLOCK_FAST, P.AIORWLOCK, P.AIORWLOCK_FAST):
        ours = cand.startswith("aiolocks") and cand == P.RWLOCK
        for metric in ("reader_ops", "writer_ops"):
            absolute_check(
                col,
                series,
                name=name,
                backend="asyncio",
                candidate=cand,
                metric=metric,
                unit="ops",
            )
        for metric, limit in (("worst_reader_wait", 0.002), ("worst_writer_wait", 0.010)):
            absolute_check(
                col,
                series,
                name=name,
                backend="asyncio",
                candidate=cand,
                metric=metric,
                unit="s",
                op="<=" if ours else None,
                limit=limit if ours else None,
                note="median over runs of each run's worst",
            )


def many_readers(col: Collector, cfg: Config) -> None:
    sizes = cfg.pick([1_000, 4_000, 16_000], [250, 500, 2_000])
    name = "readers holding at once"
    per: dict[tuple[str, int], list[float]] = {}
    for size in sizes:
        series = compare(
            col,
            name=f"{name}, n={size}",
            backend="asyncio",
            reference=P.BARE_TASKS,
            targets=[(P.RWLOCK, "<=", 1.5)],
            extras=[P.AIORWLOCK],
            reps=cfg.pick(5, 2),
            sample=lambda c, s=size: run_on("asyncio", _many_readers, P.RW_FACTORIES.get(c), s),
            metrics={"time_per_reader": "s"},
            checked="time_per_reader",
            note="vs bare tasks waiting on an asyncio.Event",
            slow_after=3.0,
        )
        for cand, ms in series.items():
            per[cand, size] = ms["time_per_reader"]
    # 'Flat' means the cost per reader relative to bare tasks does not grow with n (aiorwlock's
    # grows linearly).  The absolute cost per task grows for bare tasks too (the garbage
    # collector traverses every live task), so the ratio to bare tasks is what is compared.
    lo, hi = sizes[0], sizes[-1]
    bare_lo, bare_hi = per.get((P.BARE_TASKS, lo)), per.get((P.BARE_TASKS, hi))
    for cand in (P.RWLOCK, P.AIORWLOCK):
        a, b = per.get((cand, lo)), per.get((cand, hi))
        ours = cand == P.RWLOCK
        if (a is None or b is None or not bare_lo or not bare_hi) and not ours:
            continue
        rel_lo = median(a) / median(bare_lo) if a and bare_lo else None
        rel_hi = median(b) / median(bare_hi) if b and bare_hi else None
        col.checks.append(
            Check(
                f"{name}, flatness n={hi} vs n={lo}",
                "asyncio",
                cand,
                "x bare tasks",
                rel_hi,
                "x",
                reference=f"same at n={lo}",
                reference_value=rel_lo,
                ratio=rel_hi / rel_lo if rel_lo and rel_hi else None,
                op="<=" if ours else None,
                limit=1.25 if ours else None,
                note="ratio to bare tasks at n=hi over the same at n=lo; 'flat' taken as <= 1.25 x",
            )
        )


# Scaling series: their records carry ``series`` (a key here) and ``x`` (the number of tasks);
# ``report.py`` draws one plot per series, one panel per backend, one line per candidate.
SCALING: dict[str, str] = {
    "contended": "Contended exclusive hand-off: cost per acquisition vs number of tasks",
    "readers": "Readers holding the lock at once: cost per reader vs number of readers",
}


def scaling(col: Collector, cfg: Config) -> None:
    """Cost per operation against the number of tasks, for every peer of each backend.

    (a) ``tasks`` tasks take one lock in turn, each holding it across one yield, so in steady
    state every acquisition is a hand-off to the longest waiter (at 1 task: an uncontended
    acquisition plus a yield); about ``total`` acquisitions per sample whatever ``tasks``.
    (b) ``n`` tasks take the read lock together and wait on one event, then release; the
    baseline is the same tasks without a lock. Rounds are repeated up to about ``total``
    readers per sample.
    """
    sizes = cfg.pick([1, 10, 100, 1_000], [1, 10, 100])
    total = cfg.pick(2_000, 200)
    reps = cfg.pick(7, 2)
    for backend in ("asyncio", "trio"):
        on_trio = backend == "trio"
        fn = _contended_trio if on_trio else _contended_asyncio
        extras = [P.LOCK, P.LOCK_FAST, P.RW_WRITER, P.ANYIO_LOCK]
        extras += [] if on_trio else [P.AIORW_WRITER]
        for tasks in sizes:
            n = max(2, total // tasks)
            compare(
                col,
                name=f"scaling: contended hand-off, {tasks} task{'s' if tasks > 1 else ''}",
                backend=backend,
                reference=P.TRIO_LOCK if on_trio else P.ASYNCIO_LOCK,
                targets=[],
                extras=extras,
                reps=reps,
                sample=lambda c, b=backend, f=fn, t=tasks, k=n: run_on(b, f, P.FACTORIES[c], t, k),
                metrics={"time_per_op": "s"},
                checked="time_per_op",
                stat="min",
                note=f"per acquisition; each task takes the lock {n} times, holding it "
                "across one yield",
                curve="contended",
                x=tasks,
            )

    sizes = cfg.pick([1, 10, 100, 1_000, 10_000], [1, 10, 100])
    total = cfg.pick(4_000, 300)
    reps = cfg.pick(5, 2)
    for backend in ("asyncio", "trio"):
        on_trio = backend == "trio"
        fn = _many_readers_trio if on_trio else _many_readers
        for size in sizes:
            rounds = max(1, total // size)
            compare(
                col,
                name=f"scaling: readers holding at once, n={size}",
                backend=backend,
                reference=P.BARE_TASKS,
                targets=[],
                extras=[P.RWLOCK] + ([] if on_trio else [P.AIORWLOCK]),
                reps=reps,
                sample=lambda c, b=backend, f=fn, s=size, r=rounds: run_on(
                    b, _readers_rounds, f, P.RW_FACTORIES.get(c), s, r
                ),
                metrics={"time_per_reader": "s"},
                checked="time_per_reader",
                stat="min",
                note="per reader (spawn, read lock, wait, release); vs bare tasks waiting on "
                f"an Event; {rounds} round{'s' if rounds > 1 else ''} per sample",
                slow_after=3.0,
                curve="readers",
                x=size,
            )


def cancel_queued(col: Collector, cfg: Config) -> None:
    n = cfg.pick(16_000, 1_000)
    reps = cfg.pick(4, 2)
    name = f"{n} queued waiters cancelled"
    seeds = itertools.count()
    metrics = {"cancel_per_waiter": "s", "total_per_waiter": "s"}
    # The target is checked on the way applications cancel a crowd of waiters: one cancel
    # scope (a task group, a timeout) over all of them, as in the reference figures
    # (asyncio.Lock about 4.6 x, anyio.Lock about 8 x).  Native task.cancel() in shuffled order
    # is reported too: it exposes linear-time queue removal (asyncio.Lock about 10 x).
    compare(
        col,
        name=name,
        backend="asyncio",
        reference=P.BARE_TASKS,
        targets=[(P.RW_WRITER, "<=", 2.0), (P.LOCK, "<=", 2.0)],
        extras=[P.ASYNCIO_LOCK, P.ANYIO_LOCK],
        reps=reps,
        sample=lambda c: run_on("asyncio", _cancel_queued_anyio, P.FACTORIES.get(c), n),
        metrics={"cancel_per_waiter": "s"},
        checked="cancel_per_waiter",
        note="one anyio task group cancel over all waiters; vs bare tasks in the same group",
        slow_after=1.5,
        label="asyncio, anyio TG",
    )
    note = "task.cancel() in shuffled order (info); vs tasks parked on own futures"
    series = compare(
        col,
        name=name,
        backend="asyncio",
        reference=P.BARE_TASKS,
        targets=[],
        extras=[P.RW_WRITER, P.LOCK, P.ASYNCIO_LOCK, P.ANYIO_LOCK, P.AIORW_WRITER],
        reps=reps,
        sample=lambda c: run_on(
            "asyncio", _cancel_queued_asyncio, P.FACTORIES.get(c), n, next(seeds)
        ),
        metrics=metrics,
        checked="cancel_per_waiter",
        note=note,
        slow_after=1.5,
    )
    ref = series.get(P.BARE_TASKS, {}).get("total_per_waiter")
    for cand, ms in series.items():
        if cand == P.BARE_TASKS:
            continue
        xs = ms["total_per_waiter"]
        col.checks.append(
            Check(
                name,
                "asyncio",
                cand,
                "total_per_waiter",
                median(xs),
                "s",
                reference=P.BARE_TASKS,
                reference_value=median(ref) if ref else None,
                ratio=paired_ratio(xs, ref) if ref else None,
                note=f"{note}; median of {reps} runs",
            )
        )
    compare(
        col,
        name=name,
        backend="trio",
        reference=P.BARE_TASKS,
        targets=[],
        extras=[P.RW_WRITER, P.LOCK, P.TRIO_LOCK],
        reps=reps,
        sample=lambda c: run_on("trio", _cancel_queued_trio, P.FACTORIES.get(c), n),
        metrics=metrics,
        checked="cancel_per_waiter",
        note="nursery cancel; vs tasks in trio.sleep_forever()",
        slow_after=1.5,
    )


def condition(col: Collector, cfg: Config) -> None:
    """notify/wait hand-off: aiolocks.Condition against the fastest peer of each backend."""
    turns = cfg.pick(2_000, 300)
    consumers = 10
    items = cfg.pick(2_000, 300)
    reps = cfg.pick(15, 3)
    ping = "condition ping-pong, 2 tasks"
    feed = f"condition producer -> {consumers} consumers, notify() per item"
    for backend in ("asyncio", "uvloop", "trio"):
        on_trio = backend == "trio"
        peers = [P.TRIO_COND, P.ANYIO_COND] if on_trio else [P.ASYNCIO_COND, P.ANYIO_COND]
        for name, fn, args, note in (
            (
                ping,
                _ping_pong_trio if on_trio else _ping_pong_asyncio,
                (turns,),
                "per turn (notify -> wake -> lock hand-off); vs the fastest peer",
            ),
            (
                feed,
                _producer_consumers_trio if on_trio else _producer_consumers_asyncio,
                (consumers, items),
                "per item; producer yields once between items; vs the fastest peer",
            ),
        ):
            # Like for like: asyncio.Condition's lock never checkpoints, so on asyncio the target
            # is checked on a condition over Lock(fast_acquire=True); trio.Condition's lock is a
            # checkpoint, as the default aiolocks.Condition() is.  Both are always shown.
            ours, other = (P.COND, P.COND_FAST) if on_trio else (P.COND_FAST, P.COND)
            compare(
                col,
                name=name,
                backend=backend,
                peers=peers,
                targets=[(ours, "<=", 1.2)],
                extras=[other, P.COND_RW_WRITER],
                reps=reps,
                sample=lambda c, b=backend, f=fn, a=args: run_on(b, f, P.FACTORIES[c], *a),
                metrics={"time_per_op": "s"},
                checked="time_per_op",
                stat="min",
                note=note,
            )


def memory(col: Collector, cfg: Config) -> None:
    n = cfg.pick(10_000, 1_000)
    name = "idle instance memory (tracemalloc)"
    # Lock: 88 B since the thread check (issue 20) added a slot; asyncio.Lock takes 96 B.
    limits = {P.RWLOCK: 160.0, P.RWLOCK_FAST: 160.0, P.LOCK: 88.0, P.LOCK_FAST: 88.0}
    cands = [
        P.RWLOCK,
        P.RWLOCK_FAST,
        P.LOCK,
        P.LOCK_FAST,
        P.AIORWLOCK,
        P.ASYNCIO_LOCK,
        P.ANYIO_LOCK,
    ]
    print(f"  {name}", flush=True)
    for where, label in (("outside", "no loop"), ("inside", "asyncio"), ("used", "asyncio")):
        for cand in cands:
            make = P.MEMORY_FACTORIES.get(cand)
            ours = cand in limits and where != "used"
            value = None
            if make is not None:
                try:
                    if where == "outside":
                        value = _memory(make, n)
                    else:
                        value = run_on("asyncio", _memory_in_loop, make, n, where == "used")
                except Exception as exc:
                    col.error(name, label, cand, exc)
                else:
                    metric = "bytes_per_instance" if where != "used" else "bytes_after_use"
                    col.results.append(Result(name, label, cand, metric, value, "bytes", [value]))
            if value is None and not ours:
                continue
            col.checks.append(
                Check(
                    name,
                    label,
                    cand,
                    "bytes_per_instance" if where != "used" else "bytes_after_use",
                    value,
                    "bytes",
                    op="<=" if ours else None,
                    limit=limits[cand] if ours else None,
                    note=f"{n} instances",
                )
            )


def _extra_ratio(
    col: Collector,
    series: dict[str, dict[str, list[float]]],
    *,
    name: str,
    backend: str,
    candidate: str,
    reference: str,
    metric: str,
    unit: str,
    note: str,
    stat: str,
) -> None:
    """One more info row comparing two candidates of a ``compare()`` run with each other."""
    xs = series.get(candidate, {}).get(metric)
    ref = series.get(reference, {}).get(metric)
    if not xs or not ref:
        return
    agg = min if stat == "min" else median
    col.checks.append(
        Check(
            name,
            backend,
            candidate,
            metric,
            agg(xs),
            unit,
            reference=reference,
            reference_value=agg(ref),
            ratio=_ratio(xs, ref, stat),
            note=note,
        )
    )


def optimistic(col: Collector, cfg: Config) -> None:
    """Optimistic (versioned) reads against lock cycles, uncontended and in a read-mostly mix."""
    n = cfg.pick(10_000, 1_000)
    reps = cfg.pick(21, 4)
    micro = {"time_per_op": "s"}

    name = "optimistic_read() + validate(), uncontended"
    note = "vs one uncontended `async with lock: pass` cycle"
    for backend in ("asyncio", "uvloop", "trio"):
        on_trio = backend == "trio"
        compare(
            col,
            name=name,
            backend=backend,
            reference=P.TRIO_LOCK if on_trio else P.ASYNCIO_LOCK,
            targets=[] if on_trio else [(P.OPT_STAMP, "<=", 0.5)],
            extras=[P.OPT_STAMP] if on_trio else [],
            reps=reps,
            sample=lambda c, b=backend: run_on(
                b,
                *(
                    (_stamp_validate, P.OPTIMISTIC[c])
                    if c == P.OPT_STAMP
                    else (_uncontended, P.FACTORIES[c])
                ),
                n,
            ),
            metrics=micro,
            checked="time_per_op",
            stat="min",
            note=note,
        )

    name = "read_optimistic(fn), uncontended"
    note = "fn a trivial sync function; locks run `async with lock: fn()`"
    for backend in ("asyncio", "trio"):
        on_trio = backend == "trio"
        reference = P.TRIO_LOCK if on_trio else P.ASYNCIO_LOCK
        series = compare(
            col,
            name=name,
            backend=backend,
            reference=reference,
            targets=[],
            extras=[P.OPT_READ, P.RW_READER, P.RW_READER_FAST],
            reps=reps,
            sample=lambda c, b=backend: run_on(
                b,
                *(
                    (_read_optimistic_loop, P.OPTIMISTIC[c])
                    if c in P.OPTIMISTIC
                    else (_locked_fn_loop, P.FACTORIES[c])
                ),
                n,
            ),
            metrics=micro,
            checked="time_per_op",
            stat="min",
            note=note,
        )
        for ref in (P.RW_READER, P.RW_READER_FAST):
            _extra_ratio(
                col,
                series,
                name=name,
                backend=backend,
                candidate=P.OPT_READ,
                reference=ref,
                metric="time_per_op",
                unit="s",
                note=f"{note}; min of {reps} runs, ratio of minima",
                stat="min",
            )

    readers = 100
    duration = cfg.pick(1.0, 0.2)
    pause = 0.001
    mix_reps = cfg.pick(3, 1)
    name = f"optimistic read-mostly mix, {readers} readers + 1 writer"
    note = (
        f"throughput = reader ops/s; {duration:g} s runs; the writer awaits once mid-update "
        f"holding the lock, then pauses {pause * 1e3:g} ms"
    )
    for backend in ("asyncio", "trio"):
        on_trio = backend == "trio"
        series = compare(
            col,
            name=name,
            backend=backend,
            reference=P.RW_READER,
            targets=[],
            extras=[P.OPT_READ, P.RW_READER_FAST, P.OPT_READ_FAST],
            reps=mix_reps,
            sample=lambda c, t=on_trio: run_on(
                "trio" if t else "asyncio", _optimistic_mix, c, t, readers, duration, pause
            ),
            metrics={
                "throughput": "ops/s",
                "writer_ops": "ops",
                "reads_during_write": "ops",
                "worst_reader_wait": "s",
            },
            checked="throughput",
            note=note,
        )
        _extra_ratio(
            col,
            series,
            name=name,
            backend=backend,
            candidate=P.OPT_READ_FAST,
            reference=P.RW_READER_FAST,
            metric="throughput",
            unit="ops/s",
            note=f"{note}; median of {mix_reps} runs",
            stat="median",
        )
        for cand in (P.OPT_READ, P.OPT_READ_FAST, P.RW_READER, P.RW_READER_FAST):
            for metric, unit in (
                ("reads_during_write", "ops"),
                ("writer_ops", "ops"),
                ("worst_reader_wait", "s"),
            ):
                absolute_check(
                    col,
                    series,
                    name=name,
                    backend=backend,
                    candidate=cand,
                    metric=metric,
                    unit=unit,
                    note="reads_during_write = reads begun while the writer held the lock",
                )


def collection(col: Collector, cfg: Config) -> None:
    """LockCollection's two strategies side by side (info rows: there is no target)."""
    if not P.HAS_COLLECTION:
        print("  lock collections: aiolocks.LockCollection missing, skipped", flush=True)
        return
    tasks = 50
    n = cfg.pick(40, 20)
    reps = cfg.pick(5, 2)
    for label, accounts, hot in (
        ("low contention, 1000 accounts", 1_000, False),
        ("medium contention, 64 accounts", 64, False),
        ("high contention, 4 accounts", 4, False),
        ("hot spot, 1000 accounts, every transfer involves account 0", 1_000, True),
    ):
        name = f"collection transfers, {tasks} tasks: {label}"
        note = (
            f"throughput = transfers/s; {n} transfers per task, each holding both account "
            "writers (KeyedRWLock) across one yield; ratio retry/ordered"
        )
        for backend in ("asyncio", "trio"):
            on_trio = backend == "trio"
            taken: collections.Counter[str] = collections.Counter()

            def sample(
                c: str,
                b: str = backend,
                t: bool = on_trio,
                m: int = accounts,
                h: bool = hot,
                seen: collections.Counter[str] = taken,
            ) -> Sample:
                # The k-th sample of every candidate runs the same plan (seeded by k).
                k = seen[c]
                seen[c] += 1
                return run_on(b, _transfers, c, t, _transfer_plans(tasks, m, n, h, k), m)

            series = compare(
                col,
                name=name,
                backend=backend,
                reference=P.COLL_ORDERED,
                targets=[],
                extras=[P.COLL_RETRY],
                reps=reps,
                sample=sample,
                metrics={"throughput": "ops/s", "worst_writer_wait": "s"},
                checked="throughput",
                note=note,
            )
            for cand in (P.COLL_ORDERED, P.COLL_RETRY):
                absolute_check(
                    col,
                    series,
                    name=name,
                    backend=backend,
                    candidate=cand,
                    metric="worst_writer_wait",
                    unit="s",
                    note="worst = median over runs of each run's longest wait for both locks",
                )

    name = "collection of 2 idle Lock()s vs nested async with"
    note = "per lock()+release of both; ratio to nested `async with a: async with b:`"
    for backend in ("asyncio", "trio"):
        compare(
            col,
            name=name,
            backend=backend,
            reference=P.NESTED_2,
            targets=[],
            extras=[P.COLL_ORDERED, P.COLL_RETRY, P.COLL_ORDERED_BUILT, P.COLL_NOWAIT],
            reps=cfg.pick(15, 4),
            sample=lambda c, b=backend: run_on(b, _pair_uncontended, c, cfg.pick(2_000, 500)),
            metrics={"time_per_op": "s"},
            checked="time_per_op",
            stat="min",
            note=note,
        )


SCENARIOS: list[tuple[str, Callable[[Collector, Config], None]]] = [
    ("uncontended_fast", uncontended_fast),
    ("uncontended_default", uncontended_default),
    ("contended", contended),
    ("read_mostly", read_mostly),
    ("many_readers", many_readers),
    ("cancel_queued", cancel_queued),
    ("condition", condition),
    ("memory", memory),
    ("optimistic", optimistic),
    ("collection", collection),
    ("scaling", scaling),
]
