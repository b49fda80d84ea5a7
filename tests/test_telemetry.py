"""aiolocks.telemetry: metrics read back through the OpenTelemetry SDK's in-memory reader."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio import BrokenResourceError
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import aiolocks
from _metrics import ACQ, HOLD, WAIT, Metrics
from aiolocks import (
    Condition,
    DeadlockError,
    KeyedRWLock,
    Lock,
    ReadLock,
    RWLock,
    UpgradableLock,
    WriteLock,
    telemetry,
)
from aiolocks import debug as dbg
from aiolocks.telemetry import AiolocksInstrumentor

pytestmark = pytest.mark.anyio

# -- what is measured ----------------------------------------------------------------------------


async def test_contended_run_counts_every_outcome_exactly(metrics: Metrics) -> None:
    lock = Lock(name="jobs")
    started = time.perf_counter()
    holding, release = anyio.Event(), anyio.Event()
    body_times: list[float] = []

    async def holder() -> None:
        async with lock:
            t0 = time.perf_counter()
            holding.set()
            await release.wait()
            body_times.append(time.perf_counter() - t0)

    async def waiter() -> None:
        async with lock:
            t0 = time.perf_counter()
            await anyio.lowlevel.checkpoint()
            body_times.append(time.perf_counter() - t0)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await holding.wait()
            scopes = []
            for i in range(10):
                scope = anyio.CancelScope()
                scopes.append(scope)

                async def run(scope: anyio.CancelScope = scope) -> None:
                    with scope:
                        await waiter()

                tg.start_soon(run, name=f"waiter-{i}")
            while lock.statistics().tasks_waiting < 10:
                await anyio.lowlevel.checkpoint()
            assert metrics.waiting() == {"jobs": 10}
            for scope in scopes[::3]:  # 4 of them give up
                scope.cancel()
            while lock.statistics().tasks_waiting > 6:
                await anyio.lowlevel.checkpoint()
            release.set()
        # The holder asking again is refused
        async with lock:
            with pytest.raises(DeadlockError):
                async with lock:
                    pass
    wall = time.perf_counter() - started

    assert metrics.count("jobs", "exclusive", "acquired") == 1 + 6 + 1
    assert metrics.count("jobs", "exclusive", "cancelled") == 4
    assert metrics.count("jobs", "exclusive", "deadlock") == 1
    assert metrics.waiting() == {"jobs": 0}
    wait = metrics.histogram(WAIT, "jobs", "exclusive")
    assert wait.count == 8 + 4 + 1
    assert 0 <= wait.sum <= 11 * wall and wait.max <= wall
    hold = metrics.histogram(HOLD, "jobs", "exclusive")
    assert hold.count == 8
    # Holds of one lock never overlap: they fit in the run, and cover the bodies measured
    assert sum(body_times) <= hold.sum <= wall


async def test_broken_lock_counts_its_waiters_as_broken(metrics: Metrics) -> None:
    lock = Lock(name="broken")
    holding, leave = anyio.Event(), anyio.Event()
    outcomes: list[str] = []

    async def leaves_holding() -> None:
        await lock.acquire()
        holding.set()
        await leave.wait()  # and returns without releasing

    async def waiter() -> None:
        try:
            async with lock:
                outcomes.append("acquired")
        except BrokenResourceError:
            outcomes.append("broken")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(leaves_holding)
            await holding.wait()
            for _ in range(3):
                tg.start_soon(waiter)
            while lock.statistics().tasks_waiting < 3:
                await anyio.lowlevel.checkpoint()
            leave.set()
    assert outcomes == ["broken"] * 3
    assert metrics.count("broken", "exclusive", "broken") == 3
    assert metrics.count("broken", "exclusive", "acquired") == 1
    assert metrics.waiting() == {"broken": 0}


async def test_rwlock_views_report_their_modes(metrics: Metrics) -> None:
    rw = RWLock(name="cache")
    with anyio.fail_after(10):
        for _ in range(3):
            async with rw.reader, rw.reader:  # re-entrant: a second acquisition, a second hold
                pass
        async with rw.writer:
            pass
        rw.writer.acquire_nowait()
        rw.writer.release()
        async with rw.upgradable:
            await rw.upgradable.upgrade()
    assert metrics.count("cache", "read", "acquired", kind="RWLock") == 6
    assert metrics.count("cache", "write", "acquired", kind="RWLock") == 2
    assert metrics.count("cache", "upgradable", "acquired", kind="RWLock") == 1
    assert metrics.histogram(HOLD, "cache", "read").count == 6
    assert metrics.histogram(HOLD, "cache", "write").count == 2
    assert metrics.histogram(WAIT, "cache", "write").count == 1  # acquire_nowait never waits
    assert metrics.waiting() == {"cache": 0}


async def test_unnamed_locks_are_aggregated_under_their_kind(metrics: Metrics) -> None:
    with anyio.fail_after(10):
        for _ in range(5):
            async with Lock():
                pass
            async with RWLock().writer:
                pass
    assert metrics.count("Lock", "exclusive", "acquired", kind="Lock") == 5
    assert metrics.count("RWLock", "write", "acquired", kind="RWLock") == 5
    assert len(metrics.points(ACQ)) == 2


async def test_keyed_entries_report_under_the_table_name(metrics: Metrics) -> None:
    table: KeyedRWLock[int] = KeyedRWLock(name="accounts")
    unnamed: KeyedRWLock[int] = KeyedRWLock()
    with anyio.fail_after(10):
        for key in range(20):
            async with table[key].writer:
                pass
            async with unnamed[key].reader:
                pass
    assert metrics.count("accounts", "write", "acquired") == 20
    assert metrics.count("RWLock", "read", "acquired") == 20
    assert len(metrics.points(ACQ)) == 2


async def test_condition_lock_reports_under_its_name_and_wait_ends_the_hold(
    metrics: Metrics,
) -> None:
    cond = Condition(name="queue")
    items: list[int] = []
    asleep = anyio.Event()
    slept: list[float] = []

    async def consumer() -> None:
        async with cond:
            t0 = time.perf_counter()
            asleep.set()
            await cond.wait_for(lambda: items)
            slept.append(time.perf_counter() - t0)

    started = time.perf_counter()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            await asleep.wait()
            await anyio.sleep(0.05)  # something to leave out of the hold times
            async with cond:
                items.append(1)
                cond.notify()
    wall = time.perf_counter() - started
    # the consumer and the producer; the notified consumer was moved into the lock's queue
    # and woke up holding it (no second acquire)
    assert metrics.count("queue", "exclusive", "acquired", kind="Lock") == 2
    hold = metrics.histogram(HOLD, "queue", "exclusive")
    # the consumer's hold before and after its sleep, and the producer's; the sleep is not in
    assert hold.count == 3
    assert hold.max < slept[0]  # with the sleep in, the consumer's hold would be longer
    assert hold.sum <= wall
    assert metrics.waiting() == {"queue": 0}


async def test_random_cancellations_leave_exact_counts(metrics: Metrics) -> None:
    rng = random.Random(18)
    lock = Lock(name="random")
    rw = RWLock(name="rrandom")
    tally = {"acquired": 0, "cancelled": 0, "racq": 0, "rcan": 0, "wacq": 0, "wcan": 0}

    async def worker(i: int) -> None:
        for _ in range(20):
            with anyio.CancelScope() as scope:
                if rng.random() < 0.3:
                    scope.deadline = anyio.current_time() + rng.random() * 0.002
                which = rng.random()
                acquired = False
                try:
                    if which < 0.4:
                        async with lock:
                            acquired = True
                            await anyio.lowlevel.checkpoint()
                    elif which < 0.7:
                        async with rw.reader:
                            acquired = True
                            await anyio.lowlevel.checkpoint()
                    else:
                        async with rw.writer:
                            acquired = True
                            await anyio.lowlevel.checkpoint()
                finally:
                    kind = "" if which < 0.4 else ("r" if which < 0.7 else "w")
                    if acquired:
                        tally[kind + ("acquired" if not kind else "acq")] += 1
            if scope.cancelled_caught and not acquired:
                tally[kind + ("cancelled" if not kind else "can")] += 1
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(30):
        for _ in range(20):  # rounds until every case happened (the timing decides which)
            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(worker, i)
            if min(tally.values()) > 0:
                break
    assert min(tally.values()) > 0, tally  # every case happened
    assert metrics.count("random", "exclusive", "acquired") == tally["acquired"]
    assert metrics.count("random", "exclusive", "cancelled") == tally["cancelled"]
    assert metrics.count("rrandom", "read", "acquired") == tally["racq"]
    assert metrics.count("rrandom", "read", "cancelled") == tally["rcan"]
    assert metrics.count("rrandom", "write", "acquired") == tally["wacq"]
    assert metrics.count("rrandom", "write", "cancelled") == tally["wcan"]
    assert metrics.histogram(HOLD, "random", "exclusive").count == tally["acquired"]
    assert set(metrics.waiting().values()) == {0}
    assert telemetry._meters is not None
    assert telemetry._meters.holds == {}  # every hold that began has ended: nothing kept


# -- the switch ----------------------------------------------------------------------------------

PATCHED = [
    (cls, name)
    for cls in (Lock, ReadLock, WriteLock, UpgradableLock)
    for name in ("__aenter__", "__aexit__", "acquire_nowait", "release")
] + [(Condition, "wait")]
try:
    from aiolocks.postgres import PostgresLock, PostgresReadLock, PostgresWriteLock
except ImportError:  # pragma: no cover - psycopg is in the test extra
    pass
else:
    PATCHED += [
        (cls, name)
        for cls in (PostgresLock, PostgresReadLock, PostgresWriteLock)
        for name in ("acquire", "__aenter__", "__aexit__", "acquire_nowait", "release")
    ]


def class_dicts() -> dict[tuple[type, str], Any]:
    return {(cls, name): cls.__dict__.get(name) for cls, name in PATCHED}


def test_uninstrument_restores_the_exact_methods(debug_off: None) -> None:
    before = class_dicts()
    instrumentor = AiolocksInstrumentor()
    instrumentor.instrument(meter_provider=MeterProvider())
    assert instrumentor.is_instrumented_by_opentelemetry
    during = class_dicts()
    assert all(during[k] is not before[k] for k in before)
    instrumentor.uninstrument()
    assert not instrumentor.is_instrumented_by_opentelemetry
    after = class_dicts()
    assert all(after[k] is before[k] for k in before)
    assert "__aenter__" not in UpgradableLock.__dict__  # inherited before, inherited again
    assert all(name not in PostgresLock.__dict__ for name in ("acquire", "release"))


@pytest.mark.parametrize("order", ["debug-first", "metrics-first"])
@pytest.mark.parametrize("off", ["debug-first", "metrics-first"])
async def test_composes_with_debug_mode_and_restores_exactly(
    debug_off: None, order: str, off: str
) -> None:
    before = class_dicts()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentor = AiolocksInstrumentor()
    switches = [lambda: dbg.enable(), lambda: instrumentor.instrument(meter_provider=provider)]
    for on in switches if order == "debug-first" else switches[::-1]:
        on()
    metrics = Metrics(reader)
    a, b = Lock(name="a"), Lock(name="b")
    try:
        with anyio.fail_after(10):
            # debug mode works: an order inversion is refused ...
            async with a, b:
                pass
            async with b:
                with pytest.raises(aiolocks.LockOrderError):
                    async with a:
                        pass
            # ... and the metrics count it, with the acquisitions
            assert metrics.count("a", "exclusive", "deadlock") == 1
            assert metrics.count("a", "exclusive", "acquired") == 1
            assert metrics.count("b", "exclusive", "acquired") == 2
            assert metrics.waiting() == {"a": 0, "b": 0}
    finally:
        offs = [dbg.disable, instrumentor.uninstrument]
        for switch_off in offs if off == "debug-first" else offs[::-1]:
            switch_off()
            # the other layer still works alone
            async with a:
                pass
        provider.shutdown()
    after = class_dicts()
    assert all(after[k] is before[k] for k in before)


def test_telemetry_without_opentelemetry_says_which_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if it were not installed\n"
        "try:\n"
        "    import aiolocks.telemetry\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'aiolocks[otel]'" in proc.stdout
