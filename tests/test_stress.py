"""Stress: hundreds of tasks doing random lock operations under random cancellation.

Every task checks mutual exclusion when it enters and leaves a hold and calls the lock's
`check_invariants()` after each step; a monitor task checks the invariants at every scheduling
round. Runs are seeded: a failure message names the seed, so it can be replayed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aiolocks
from aiolocks import RWLock
from aiolocks._introspect import check_invariants

pytestmark = pytest.mark.anyio

checkpoint = anyio.lowlevel.checkpoint

SEEDS = [1, 2, 3]  # even seeds run with fast_acquire=True
TASKS = 200
OPS_PER_TASK = 5


class Exclusion:
    """Who is inside the lock right now, as the tasks themselves saw it."""

    def __init__(self, rw: RWLock) -> None:
        self.rw = rw
        self.readers = 0
        self.upgradable = 0
        self.writers = 0

    def check(self) -> None:
        assert self.writers <= 1, "two writers"
        assert self.upgradable <= 1, "two upgradable holders"
        if self.writers:
            assert self.readers == 0, "a reader with a writer"
            assert self.upgradable == 0, "an upgradable holder with a writer"
        check_invariants(self.rw)

    def enter(self, mode: str) -> None:
        setattr(self, mode, getattr(self, mode) + 1)
        try:
            self.check()
        except BaseException:
            setattr(self, mode, getattr(self, mode) - 1)  # the caller will not leave()
            raise

    def leave(self, mode: str) -> None:
        setattr(self, mode, getattr(self, mode) - 1)
        self.check()

    def switch(self, old: str, new: str) -> None:
        setattr(self, old, getattr(self, old) - 1)
        setattr(self, new, getattr(self, new) + 1)
        self.check()


async def _pause(rng: random.Random) -> None:
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
        await checkpoint()


async def _read(rw: RWLock, ex: Exclusion, rng: random.Random) -> None:
    async with rw.reader:
        ex.enter("readers")
        try:
            await _pause(rng)
            if rng.random() < 0.3:  # re-entrant read, even while writers wait
                async with rw.reader:
                    await _pause(rng)
        finally:
            ex.leave("readers")


async def _read_nowait(rw: RWLock, ex: Exclusion, rng: random.Random) -> None:
    try:
        rw.reader.acquire_nowait()
    except anyio.WouldBlock:
        return
    ex.enter("readers")
    try:
        await _pause(rng)
    finally:
        ex.leave("readers")
        rw.reader.release()


async def _write(rw: RWLock, ex: Exclusion, rng: random.Random) -> None:
    await rw.writer.acquire()
    mode = "writers"
    ex.enter(mode)
    try:
        version = rw.version
        assert version % 2 == 1
        await _pause(rng)
        if rng.random() < 0.3:
            async with rw.writer:
                await _pause(rng)
        if rng.random() < 0.2:
            async with rw.reader:
                await _pause(rng)
        assert rw.version == version
        if rng.random() < 0.3:
            rw.writer.downgrade()
            ex.switch("writers", "readers")
            mode = "readers"
            await _pause(rng)
    finally:
        ex.leave(mode)
        (rw.writer if mode == "writers" else rw.reader).release()


async def _upgradable(rw: RWLock, ex: Exclusion, rng: random.Random) -> None:
    async with rw.upgradable:
        mode = "upgradable"
        ex.enter(mode)
        try:
            await _pause(rng)
            if rng.random() < 0.6:
                if rng.random() < 0.3:
                    try:
                        rw.upgradable.upgrade_nowait()
                    except anyio.WouldBlock:
                        return
                else:
                    await rw.upgradable.upgrade()
                ex.switch("upgradable", "writers")
                mode = "writers"
                await _pause(rng)
                if rng.random() < 0.5:
                    rw.writer.downgrade()
                    ex.switch("writers", "upgradable")
                    mode = "upgradable"
                    await _pause(rng)
        finally:
            ex.leave(mode)


class Cancellations:
    """Random cancellation: expired deadlines, short deadlines and cancel() from other tasks.

    Short deadlines count scheduling rounds of a ticker task rather than seconds, so a seed
    replays the same run (exactly on asyncio; trio shuffles its run queue).
    """

    def __init__(self) -> None:
        self.active: list[anyio.CancelScope] = []
        self.timers: dict[anyio.CancelScope, int] = {}
        self.finished = False

    @contextmanager
    def scope(self, rng: random.Random) -> Iterator[anyio.CancelScope]:
        kind = rng.choice(("none", "none", "expired", "short", "short"))
        scope = anyio.CancelScope(deadline=-math.inf if kind == "expired" else math.inf)
        if kind == "short":
            self.timers[scope] = rng.randint(1, 30)
        self.active.append(scope)
        try:
            with scope:
                yield scope
        finally:
            self.active.remove(scope)
            self.timers.pop(scope, None)

    def cancel_another(self, rng: random.Random) -> None:
        if self.active and rng.random() < 0.15:
            rng.choice(self.active).cancel()

    async def tick(self, check: Callable[[], None]) -> None:
        """Check `check()` and advance the short deadlines once per scheduling round."""
        while not self.finished:
            check()
            await checkpoint()
            for scope, rounds in list(self.timers.items()):
                if rounds <= 1:
                    del self.timers[scope]
                    scope.cancel()
                else:
                    self.timers[scope] = rounds - 1


RW_OPS = [_read, _read, _read, _read_nowait, _write, _write, _upgradable]


async def _stress_rwlock(seed: int, fast: bool) -> None:
    master = random.Random(seed)
    rw = RWLock(fast_acquire=fast)
    ex = Exclusion(rw)
    cancels = Cancellations()
    initial_version = rw.version

    async def worker(rng: random.Random) -> None:
        for _ in range(OPS_PER_TASK):
            op = rng.choice(RW_OPS)
            with cancels.scope(rng):
                await op(rw, ex, rng)
            ex.check()
            cancels.cancel_another(rng)
            await _pause(rng)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancels.tick, ex.check)
            async with anyio.create_task_group() as workers:
                for i in range(TASKS):
                    workers.start_soon(worker, random.Random(master.random()), name=f"worker-{i}")
            cancels.finished = True

    assert (ex.readers, ex.upgradable, ex.writers) == (0, 0, 0)
    check_invariants(rw)
    stats = rw.statistics()
    assert (stats.readers, stats.writer, stats.readers_waiting, stats.writers_waiting) == (
        0,
        None,
        0,
        0,
    )
    assert rw.version % 2 == 0
    assert rw.version > initial_version, "no writer ever got in"


@pytest.mark.parametrize("seed", SEEDS)
async def test_rwlock_stress_random_operations_and_cancellations(seed: int) -> None:
    fast = seed % 2 == 0
    try:
        await _stress_rwlock(seed, fast)
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"seed={seed} fast_acquire={fast}: {exc!r}") from exc


async def _stress_lock(seed: int, fast: bool) -> None:
    master = random.Random(seed)
    lock = aiolocks.Lock(fast_acquire=fast)
    inside: list[Any] = []
    cancels = Cancellations()
    acquired = 0

    def check() -> None:
        assert len(inside) <= 1, "two tasks inside the lock"
        check_invariants(lock)

    async def worker(rng: random.Random) -> None:
        nonlocal acquired
        for _ in range(OPS_PER_TASK):
            with cancels.scope(rng):
                if rng.random() < 0.2:
                    try:
                        lock.acquire_nowait()
                    except anyio.WouldBlock:
                        continue
                else:
                    await lock.acquire()
                me = anyio.get_current_task()
                inside.append(me)
                acquired += 1
                try:
                    check()
                    assert lock.statistics().owner == me
                    await _pause(rng)
                    check()
                finally:
                    inside.remove(me)
                    lock.release()
            check()
            cancels.cancel_another(rng)
            await _pause(rng)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancels.tick, check)
            async with anyio.create_task_group() as workers:
                for i in range(TASKS):
                    workers.start_soon(worker, random.Random(master.random()), name=f"worker-{i}")
            cancels.finished = True

    check()
    stats = lock.statistics()
    assert (stats.locked, stats.owner, stats.tasks_waiting) == (False, None, 0)
    assert acquired > 0


@pytest.mark.parametrize("seed", SEEDS)
async def test_lock_stress_random_operations_and_cancellations(seed: int) -> None:
    fast = seed % 2 == 0
    try:
        await _stress_lock(seed, fast)
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"seed={seed} fast_acquire={fast}: {exc!r}") from exc
