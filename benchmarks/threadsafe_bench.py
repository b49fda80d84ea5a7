"""aiolocks.threadsafe side by side with aiologic, threading and the in-process aiolocks locks.

Run from the repository root (standalone; aiologic and uvloop are in the ``bench`` extra)::

    python benchmarks/threadsafe_bench.py [--quick]

Uncontended figures are the best of several repeats (the least disturbed run on a shared
machine), in nanoseconds per acquire/release cycle.  Contended figures (cycles per second) are
medians of interleaved pairs, ours and aiologic's back to back, and their ratio is the median
of the per-pair ratios (see :func:`paired`).  A ratio below 1.0 in a "time" row, or above 1.0
in a "throughput" row, means aiolocks.threadsafe wins.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import aiologic

import aiolocks
import aiolocks.threadsafe as ts


def best(fn: Callable[[], float], repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def paired(ours: Callable[[], float], theirs: Callable[[], float], pairs: int) -> Paired:
    """Interleaved samples of two throughputs and the median of the per-pair ratios.

    The contended scenarios swing with whatever else the machine runs; a best-of per side
    compares two different moments.  Each pair runs both sides back to back (alternating who
    goes first, so a slow drift favours neither), and the median ratio ignores the pairs that
    an outside burst hit.
    """
    a: list[float] = []
    b: list[float] = []
    for i in range(pairs):
        if i % 2:
            b.append(theirs())
            a.append(ours())
        else:
            a.append(ours())
            b.append(theirs())
    ratios = sorted(x / y for x, y in zip(a, b, strict=True))
    return Paired(statistics.median(a), statistics.median(b), ratios)


class Paired(NamedTuple):
    ours: float  # median of our samples
    theirs: float  # median of theirs
    ratios: list[float]  # ours / theirs per pair, sorted

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def spread(self) -> str:
        """The middle half of the per-pair ratios (the inter-quartile range)."""
        q = statistics.quantiles(self.ratios, n=4) if len(self.ratios) > 1 else self.ratios * 3
        return f"{q[0]:.2f}-{q[2]:.2f}"


# -- uncontended -----------------------------------------------------------------------------


def async_cycle_ns(make: Callable[[], Any], n: int) -> float:
    async def main() -> float:
        lock = make()
        async with lock:  # bind / warm up
            pass
        start = time.perf_counter()
        for _ in range(n):
            async with lock:
                pass
        return (time.perf_counter() - start) / n * 1e9

    return asyncio.run(main())


def aiologic_checkpointed_ns(n: int, repeats: int) -> float:
    """aiologic.Lock with its asyncio checkpoints on (off by default, where its uncontended
    acquire never yields): measured in a child process, as the switch is read at import."""
    code = (
        "import aiologic, threadsafe_bench as b; "
        f"print(b.best(lambda: b.async_cycle_ns(aiologic.Lock, {n}), {repeats}))"
    )
    env = {**os.environ, "AIOLOGIC_ASYNCIO_CHECKPOINTS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    return float(out.stdout)


def blocking_cycle_ns(make: Callable[[], Any], n: int) -> float:
    lock = make()
    with lock:
        pass
    start = time.perf_counter()
    for _ in range(n):
        with lock:
            pass
    return (time.perf_counter() - start) / n * 1e9


# -- contended -------------------------------------------------------------------------------


def threads_handoff_per_s(make: Callable[[], Any], threads: int, n: int) -> float:
    """``threads`` threads each take the lock ``n`` times: cycles per second over all."""
    lock = make()
    counter = [0]
    go = threading.Barrier(threads + 1)

    def worker() -> None:
        go.wait()
        for _ in range(n):
            with lock:
                counter[0] += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    assert counter[0] == threads * n
    return threads * n / elapsed


def loops_handoff_per_s(make: Callable[[], Any], loops: int, tasks: int, n: int) -> float:
    """``loops`` event loops in threads, ``tasks`` tasks each, every task takes the lock ``n``
    times, yielding inside: cycles per second over all."""
    lock = make()
    counter = [0]
    go = threading.Barrier(loops + 1)

    async def task() -> None:
        for _ in range(n):
            async with lock:
                counter[0] += 1
                await asyncio.sleep(0)

    async def loop_main() -> None:
        await asyncio.gather(*(task() for _ in range(tasks)))

    def thread() -> None:
        go.wait()
        asyncio.run(loop_main())

    pool = [threading.Thread(target=thread) for _ in range(loops)]
    for t in pool:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    assert counter[0] == loops * tasks * n
    return loops * tasks * n / elapsed


def read_mostly_per_s(rw: Any, exclusive: bool, n: int) -> float:
    """4 loops (2 tasks each) and 4 threads, 1 write in 20: acquisitions per second."""
    reader = rw if exclusive else rw.reader
    writer = rw if exclusive else rw.writer
    go = threading.Barrier(9)
    done = [0]

    async def task(i: int) -> None:
        for j in range(n):
            async with writer if (i + j) % 20 == 0 else reader:
                await asyncio.sleep(0)
        done[0] += 1

    def loop_thread(i: int) -> None:
        go.wait()

        async def main() -> None:
            await asyncio.gather(task(i), task(i + 1))

        asyncio.run(main())

    def plain_thread(i: int) -> None:
        go.wait()
        for j in range(n):
            with writer if (i + j) % 20 == 0 else reader:
                time.sleep(0)

    pool = [threading.Thread(target=loop_thread, args=(i,)) for i in range(4)]
    pool += [threading.Thread(target=plain_thread, args=(i,)) for i in range(4)]
    for t in pool:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return (8 + 4) * n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args()
    n, repeats, contended = (20_000, 3, 2_000) if args.quick else (200_000, 5, 20_000)
    pairs = 4 if args.quick else 15

    print(
        f"Python {sys.version.split()[0]} on {platform.machine()}, aiologic "
        f"{aiologic.__version__}; uncontended: best of {repeats}; contended: medians of "
        f"{pairs} interleaved pairs"
    )
    rows: list[tuple[str, float, str, float]] = []

    fast = best(lambda: async_cycle_ns(lambda: ts.Lock(fast_acquire=True), n), repeats)
    logic = best(lambda: async_cycle_ns(aiologic.Lock, n), repeats)
    ours = best(lambda: async_cycle_ns(ts.Lock, n), repeats)
    logic_cp = aiologic_checkpointed_ns(n, repeats)
    local = best(lambda: async_cycle_ns(aiolocks.Lock, n), repeats)
    local_fast = best(lambda: async_cycle_ns(lambda: aiolocks.Lock(fast_acquire=True), n), repeats)
    print("\nuncontended async cycle (asyncio), ns (time: lower is better)")
    print("  no yield (like for like: neither acquire yields to the loop)")
    print(f"    threadsafe.Lock(fast_acquire=True) {fast:8.0f}")
    print(
        f"    aiologic.Lock (default)            {logic:8.0f}   "
        f"ratio ours/aiologic {fast / logic:.2f}"
    )
    print("  yielding (like for like: both acquires are a checkpoint)")
    print(f"    threadsafe.Lock (default)          {ours:8.0f}")
    print(
        f"    aiologic.Lock (checkpoints on)     {logic_cp:8.0f}   "
        f"ratio ours/aiologic {ours / logic_cp:.2f}"
    )
    print("  the in-process lock, for scale")
    print(
        f"    aiolocks.Lock (default)            {local:8.0f}   "
        f"ratio ours/aiolocks {ours / local:.2f}"
    )
    print(
        f"    aiolocks.Lock(fast_acquire=True)   {local_fast:8.0f}   "
        f"ratio ours/aiolocks {fast / local_fast:.2f}"
    )
    rows.append(("async uncontended, no yield", fast / logic, "time", 1.0))
    rows.append(("async uncontended, yielding", ours / logic_cp, "time", 1.0))

    ours_b = best(lambda: blocking_cycle_ns(ts.Lock, n), repeats)
    logic_b = best(lambda: blocking_cycle_ns(aiologic.Lock, n), repeats)
    th = best(lambda: blocking_cycle_ns(threading.Lock, n), repeats)
    rth = best(lambda: blocking_cycle_ns(threading.RLock, n), repeats)
    print("\nuncontended blocking cycle (with lock:), ns")
    print(f"  aiolocks.threadsafe.Lock       {ours_b:8.0f}")
    print(f"  aiologic.Lock                  {logic_b:8.0f}   ratio {ours_b / logic_b:.2f}")
    print(f"  threading.Lock                 {th:8.0f}   ratio {ours_b / th:.2f}")
    print(f"  threading.RLock                {rth:8.0f}   ratio {ours_b / rth:.2f}")
    rows.append(("blocking uncontended vs aiologic", ours_b / logic_b, "time", 1.0))

    t = paired(
        lambda: threads_handoff_per_s(ts.Lock, 4, contended),
        lambda: threads_handoff_per_s(aiologic.Lock, 4, contended),
        pairs,
    )
    print(f"\n4 threads on one lock, cycles/s (throughput: higher is better), {pairs} pairs")
    print(f"  aiolocks.threadsafe.Lock       {t.ours:10.0f}")
    print(
        f"  aiologic.Lock                  {t.theirs:10.0f}   "
        f"median ratio {t.ratio:.2f} (middle half {t.spread()})"
    )
    rows.append(("threads hand-off vs aiologic", t.ratio, "throughput", 1.0))

    m = contended // 10
    lp = paired(
        lambda: loops_handoff_per_s(ts.Lock, 4, 4, m),
        lambda: loops_handoff_per_s(aiologic.Lock, 4, 4, m),
        pairs,
    )
    print(f"\n4 asyncio loops in threads x 4 tasks on one lock, cycles/s, {pairs} pairs")
    print(f"  aiolocks.threadsafe.Lock       {lp.ours:10.0f}")
    print(
        f"  aiologic.Lock                  {lp.theirs:10.0f}   "
        f"median ratio {lp.ratio:.2f} (middle half {lp.spread()})"
    )
    rows.append(("loops hand-off vs aiologic", lp.ratio, "throughput", 1.0))

    rw = best(lambda: read_mostly_per_s(ts.RWLock(), False, m), repeats)
    ex = best(lambda: read_mostly_per_s(ts.Lock(), True, m), repeats)
    lg = best(lambda: read_mostly_per_s(aiologic.Lock(), True, m), repeats)
    print("\nread-mostly (1 write in 20), 4 loops x 2 tasks + 4 threads, acquisitions/s")
    print(f"  aiolocks.threadsafe.RWLock     {rw:10.0f}")
    print(f"  aiolocks.threadsafe.Lock       {ex:10.0f}   ratio RWLock/Lock {rw / ex:.2f}")
    print(f"  aiologic.Lock (no RW lock)     {lg:10.0f}   ratio RWLock/aiologic {rw / lg:.2f}")

    print("\nsummary (target: time <= 1.0, throughput >= 1.0)")
    for what, ratio, kind, target in rows:
        ok = ratio <= target if kind == "time" else ratio >= target
        print(f"  {what:34s} {ratio:5.2f}  {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
