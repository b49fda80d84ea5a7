"""A trio pipeline on aiolocks: producers -> bounded buffer -> workers -> shared stats table.

* The buffer is a classic bounded queue: one ``aiolocks.Lock`` and two ``aiolocks.Condition``
  objects over it (``not_full`` for producers, ``not_empty`` for workers).
* The stats table is guarded by an ``aiolocks.RWLock``: workers update it under ``writer`` with an
  await between the two halves of the update; auditors check its invariant under ``reader``,
  and a dashboard reads it optimistically (``read_optimistic``) without blocking anyone.

Run it with ``python examples/trio_pipeline.py``; it prints a short summary and exits 0 when
every check passed.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import NamedTuple

import trio
import trio.lowlevel

import aiolocks

N_PRODUCERS = 3
JOBS_PER_PRODUCER = 200
N_WORKERS = 4
N_AUDITORS = 2
CAPACITY = 8


class Job(NamedTuple):
    producer: int
    seq: int

    @property
    def value(self) -> int:
        return self.producer * 1000 + self.seq


def expected_total() -> int:
    return sum(Job(p, s).value for p in range(N_PRODUCERS) for s in range(JOBS_PER_PRODUCER))


class BoundedBuffer:
    """A FIFO of at most ``capacity`` jobs; ``get()`` returns None once closed and drained."""

    def __init__(self, capacity: int) -> None:
        self._items: deque[Job] = deque()
        self._capacity = capacity
        self._closed = False
        self._lock = aiolocks.Lock(name="buffer")
        self._not_full = aiolocks.Condition(self._lock, name="not_full")
        self._not_empty = aiolocks.Condition(self._lock, name="not_empty")
        self.max_depth = 0

    async def put(self, job: Job) -> None:
        async with self._lock:
            await self._not_full.wait_for(lambda: len(self._items) < self._capacity)
            self._items.append(job)
            self.max_depth = max(self.max_depth, len(self._items))
            self._not_empty.notify()

    async def get(self) -> Job | None:
        async with self._lock:
            await self._not_empty.wait_for(lambda: self._items or self._closed)
            if not self._items:
                return None
            self._not_full.notify()
            return self._items.popleft()

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            self._not_empty.notify_all()


class Stats:
    """Per-producer sums plus their grand total; invariant: ``sum(per_producer) == total``."""

    def __init__(self) -> None:
        self.lock = aiolocks.RWLock(name="stats")
        self.per_producer = [0] * N_PRODUCERS
        self.total = 0
        self.jobs = 0

    def consistent(self) -> bool:
        return sum(self.per_producer) == self.total


async def producer(pid: int, buffer: BoundedBuffer) -> None:
    for seq in range(JOBS_PER_PRODUCER):
        await buffer.put(Job(pid, seq))


async def worker(buffer: BoundedBuffer, stats: Stats) -> None:
    while (job := await buffer.get()) is not None:
        async with stats.lock.writer:
            stats.per_producer[job.producer] += job.value
            await trio.lowlevel.checkpoint()  # e.g. an audit-log write: no reader sees half of it
            stats.total += job.value
            stats.jobs += 1


async def auditor(stats: Stats, done: trio.Event, counts: list[int]) -> None:
    while not done.is_set():
        async with stats.lock.reader:
            counts[0 if stats.consistent() else 1] += 1
        await trio.lowlevel.checkpoint()


async def dashboard(stats: Stats, done: trio.Event, counts: list[int]) -> None:
    def snapshot() -> tuple[int, int]:
        return sum(stats.per_producer), stats.total

    while not done.is_set():
        left, right = await stats.lock.read_optimistic(snapshot)
        counts[0 if left == right else 1] += 1
        await trio.lowlevel.checkpoint()


async def main() -> bool:
    buffer, stats, done = BoundedBuffer(CAPACITY), Stats(), trio.Event()
    audits = [0, 0]  # [consistent, torn] snapshots seen under the read lock
    views = [0, 0]  # the same for the optimistic dashboard
    with trio.fail_after(30):  # a hang is a failure, never a stuck program
        async with trio.open_nursery() as observers:
            for _ in range(N_AUDITORS):
                observers.start_soon(auditor, stats, done, audits)
            observers.start_soon(dashboard, stats, done, views)
            async with trio.open_nursery() as workers:
                for _ in range(N_WORKERS):
                    workers.start_soon(worker, buffer, stats)
                async with trio.open_nursery() as producers:
                    for pid in range(N_PRODUCERS):
                        producers.start_soon(producer, pid, buffer)
                await buffer.close()
            done.set()

    produced = N_PRODUCERS * JOBS_PER_PRODUCER
    print(f"jobs: produced {produced}, processed {stats.jobs}")
    print(f"buffer: max depth {buffer.max_depth} (capacity {CAPACITY})")
    print(f"table: total {stats.total} (expected {expected_total()})")
    print(f"per producer: {stats.per_producer}")
    print(f"audits: {audits[0]} consistent, {audits[1]} torn")
    print(f"dashboard: {views[0]} consistent, {views[1]} torn")
    ok = (
        stats.jobs == produced
        and stats.total == expected_total()
        and stats.consistent()
        and buffer.max_depth <= CAPACITY
        and audits[1] == 0
        and views[1] == 0
    )
    print("OK" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    sys.exit(0 if trio.run(main) else 1)
