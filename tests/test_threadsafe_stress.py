"""Mixed stress: 4 asyncio loops (one uvloop), 1 trio run and 8 plain threads on one lock.

Every holder checks the invariants when it enters and leaves (no writer beside readers, at most
one writer, the write counter exact); requests are cut short at random (cancel scopes on the
async side, timeouts on the blocking side); the GIL switches threads every microsecond so that
interleavings a coarse switch interval hides get their chance.  At the end everything is free.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _threads import DEADLINE, TrioThread, loop_threads, start_thread
from aiolocks._introspect import check_invariants
from aiolocks.threadsafe import Lock, RWLock

ROUNDS = 150


@pytest.fixture
def fast_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class Ledger:
    """Who is inside, checked under a plain lock of its own by every holder."""

    def __init__(self, rw: RWLock) -> None:
        self.rw = rw
        self.guard = threading.Lock()
        self.readers = 0
        self.writers = 0
        self.counter = 0
        self.writes = 0
        self.entries = 0

    def enter(self, kind: str) -> None:
        with self.guard:
            if kind == "w":
                self.writers += 1
            else:
                self.readers += 1
            self.entries += 1
            assert self.writers <= 1, "two writers at once"
            assert self.writers == 0 or self.readers == 0, "a writer beside readers"
        if kind == "w":
            assert self.rw.writer.locked()

    def leave(self, kind: str) -> None:
        with self.guard:
            if kind == "w":
                self.writers -= 1
            else:
                self.readers -= 1

    @contextmanager
    def inside(self, kind: str) -> Iterator[None]:
        self.enter(kind)
        try:
            yield
        finally:
            self.leave(kind)

    def write(self) -> None:
        value = self.counter
        self.counter = value + 1  # a lost update shows if a second writer were in here
        with self.guard:
            self.writes += 1


def _kind(rng: random.Random) -> str:
    roll = rng.random()
    return "w" if roll < 0.2 else "u" if roll < 0.3 else "r"


async def _async_worker(ledger: Ledger, seed: int) -> None:
    rw = ledger.rw
    rng = random.Random(seed)
    for _ in range(ROUNDS):
        kind = _kind(rng)
        with anyio.move_on_after(rng.choice((0, 0.0002, 0.001, 1))):
            if kind == "r":
                async with rw.reader:
                    with ledger.inside("r"):
                        await anyio.lowlevel.checkpoint()
            elif kind == "w":
                async with rw.writer:
                    with ledger.inside("w"):
                        ledger.write()
                        await anyio.lowlevel.checkpoint()
            else:
                async with rw.upgradable:
                    with ledger.inside("r"):
                        await anyio.lowlevel.checkpoint()
                    await rw.upgradable.upgrade()
                    with ledger.inside("w"):
                        ledger.write()
        check_invariants(rw)


def _thread_worker(ledger: Ledger, seed: int) -> None:
    rw = ledger.rw
    rng = random.Random(seed)
    for _ in range(ROUNDS):
        kind = "w" if rng.random() < 0.25 else "r"
        view = rw.writer if kind == "w" else rw.reader
        if not view.acquire_blocking(timeout=rng.choice((0, 0.0005, 0.002, DEADLINE))):
            continue
        try:
            with ledger.inside(kind):
                if kind == "w":
                    ledger.write()
        finally:
            view.release()
        check_invariants(rw)


# fast_acquire=True changes only the uncontended async path: no yield there on asyncio.
FAST = pytest.mark.parametrize("fast", [False, True], ids=["checkpointing", "fast_acquire"])


@FAST
@pytest.mark.usefixtures("fast_switching")
def test_rwlock_shared_by_loops_trio_and_threads_keeps_its_invariants(fast: bool) -> None:
    rw = RWLock(fast_acquire=fast)
    ledger = Ledger(rw)
    trio_thread = TrioThread()
    futs: list[Any] = []
    with loop_threads(4, uvloop_first=True) as loops:
        for n, lt in enumerate(loops * 2):
            futs.append(lt.submit(_async_worker(ledger, n)))
        for n in range(2):
            futs.append(trio_thread.submit(lambda n=n: _async_worker(ledger, 100 + n)))
        for n in range(8):
            futs.append(start_thread(lambda n=n: _thread_worker(ledger, 200 + n))[1])
        for fut in futs:
            fut.result(DEADLINE * 3)
    trio_thread.close()
    assert ledger.counter == ledger.writes > 0
    assert ledger.entries > 0
    assert (ledger.readers, ledger.writers) == (0, 0)
    stats = rw.statistics()
    assert (stats.readers, stats.writer, stats.readers_waiting, stats.writers_waiting) == (
        0,
        None,
        0,
        0,
    )
    check_invariants(rw)


@FAST
@pytest.mark.usefixtures("fast_switching")
def test_lock_shared_by_loops_trio_and_threads_loses_no_update(fast: bool) -> None:
    lock = Lock(fast_acquire=fast)
    counts = {"counter": 0, "done": 0}
    guard = threading.Lock()

    async def task(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(ROUNDS):
            with anyio.move_on_after(rng.choice((0, 0.0002, 1))):
                async with lock:
                    value = counts["counter"]
                    await anyio.lowlevel.checkpoint()
                    counts["counter"] = value + 1
                    with guard:
                        counts["done"] += 1

    def thread(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(ROUNDS):
            if lock.acquire_blocking(timeout=rng.choice((0, 0.0005, DEADLINE))):
                try:
                    value = counts["counter"]
                    counts["counter"] = value + 1
                    with guard:
                        counts["done"] += 1
                finally:
                    lock.release()

    trio_thread = TrioThread()
    with loop_threads(4, uvloop_first=True) as loops:
        futs = [lt.submit(task(n)) for n, lt in enumerate(loops * 2)]
        futs += [trio_thread.submit(lambda n=n: task(100 + n)) for n in range(2)]
        futs += [start_thread(lambda n=n: thread(200 + n))[1] for n in range(8)]
        for fut in futs:
            fut.result(DEADLINE * 3)
    trio_thread.close()
    assert counts["counter"] == counts["done"] > 0
    assert not lock.locked()
    assert lock.statistics().tasks_waiting == 0
    check_invariants(lock)
