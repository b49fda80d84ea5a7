"""Optimistic versioned reads on RWLock: `version`, `optimistic_read`/`validate`,
`read_optimistic` and `writer.acquire_if_unchanged` (the seqlock / StampedLock idea).

Scripted scenarios use the actors of `_actors.py`; the torn-snapshot tests are seeded random
schedules in which writers pause (checkpoint) between the fields they update, so an unlocked
reader really does see torn data, and the optimistic paths must never return it.
"""

from __future__ import annotations

import inspect
import operator
import random
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from _actors import actors, assert_idle, settle, snap
from aiolocks import DeadlockError, RWLock, RWLockStatistics
from aiolocks._introspect import check_invariants

pytestmark = pytest.mark.anyio

checkpoint = anyio.lowlevel.checkpoint


def me() -> anyio.TaskInfo:
    return anyio.get_current_task()


@pytest.fixture(params=[False, True], ids=["checkpointing", "fast_acquire"])
def rw(request: pytest.FixtureRequest) -> RWLock:
    return RWLock(fast_acquire=request.param)


@pytest.fixture(params=["scope", "native"])
def cancel_mode(request: pytest.FixtureRequest, anyio_backend: Any) -> str:
    """Cancel by an anyio cancel scope ("scope") or by asyncio's `task.cancel()` ("native")."""
    if request.param == "native" and anyio_backend[0] != "asyncio":
        pytest.skip("native task.cancel() is asyncio's")
    return str(request.param)


class Probe:
    """Tells whether the current task let any other task run: start it, do the call, check."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self.ran = False
        tg.start_soon(self._run)

    async def _run(self) -> None:
        self.ran = True


# --- version stamps ------------------------------------------------------------------------------


async def test_version_is_even_while_free_and_odd_while_write_held(rw: RWLock) -> None:
    assert rw.version == 0
    assert rw.statistics().version == 0
    async with rw.writer:
        assert rw.version == 1
        assert rw.statistics().version == 1
    assert rw.version == 2
    await rw.writer.acquire()
    assert rw.version == 3
    rw.writer.release()
    assert rw.version == 4
    rw.writer.acquire_nowait()
    assert rw.version == 5
    rw.writer.release()
    assert rw.version == 6
    assert_idle(rw)


async def test_readers_and_upgradable_holders_do_not_move_the_version(rw: RWLock) -> None:
    async with actors("r") as (r,):
        await r.run(rw.reader.acquire)
        async with rw.reader, rw.reader:
            assert rw.version == 0
        async with rw.upgradable:
            assert rw.version == 0
        await r.run(rw.reader.release)
    assert rw.version == 0
    assert_idle(rw)


async def test_version_is_odd_while_a_contended_writer_holds(rw: RWLock) -> None:
    async with actors("r", "w") as (r, w):
        await r.run(rw.reader.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        assert rw.version == 0, "a queued writer does not hold: no move yet"
        await r.run(rw.reader.release)
        assert writing.ok
        assert rw.version == 1
        assert snap(rw) == (0, w.info, 0, 0)
        await w.run(rw.writer.release)
    assert rw.version == 2
    assert_idle(rw)


async def test_reentrant_write_levels_do_not_move_the_version(rw: RWLock) -> None:
    async with rw.writer:
        assert rw.version == 1
        async with rw.writer:
            assert rw.version == 1
            rw.writer.acquire_nowait()
            assert rw.version == 1
            rw.writer.release()
            assert rw.version == 1
        assert rw.version == 1
        async with rw.reader:  # a read level on top of the write hold
            assert rw.version == 1
        assert rw.version == 1
    assert rw.version == 2
    assert_idle(rw)


async def test_cancelled_writer_wait_does_not_move_the_version(rw: RWLock) -> None:
    async with actors("w") as (w,):
        await rw.reader.acquire()
        writing = w.start(rw.writer.acquire)
        await settle()
        writing.cancel()
        await settle()
        assert writing.cancelled
        assert rw.version == 0
        rw.reader.release()
    assert_idle(rw)
    assert rw.version == 0


async def test_downgrade_moves_the_version_to_even(rw: RWLock) -> None:
    await rw.writer.acquire()
    assert rw.version == 1
    stamp_while_written = rw.optimistic_read()
    rw.writer.downgrade()
    assert rw.version == 2
    assert snap(rw) == (1, None, 0, 0)
    assert not rw.validate(stamp_while_written)
    stamp = rw.optimistic_read()
    assert rw.validate(stamp), "a downgraded writer is a reader: reads validate again"
    rw.reader.release()
    assert rw.validate(stamp)
    assert_idle(rw)


async def test_upgrade_and_its_release_and_downgrade_move_the_version(rw: RWLock) -> None:
    async with rw.upgradable:
        stamp = rw.optimistic_read()
        await rw.upgradable.upgrade()
        assert rw.version == 1
        assert not rw.validate(stamp)
        rw.writer.downgrade()  # back to the upgradable hold
        assert rw.version == 2
        rw.upgradable.upgrade_nowait()
        assert rw.version == 3
    assert rw.version == 4
    assert_idle(rw)


# --- validate ------------------------------------------------------------------------------------


async def test_validate_is_true_while_no_writer_came(rw: RWLock) -> None:
    stamp = rw.optimistic_read()
    assert stamp == rw.version
    assert rw.validate(stamp)
    async with actors("r") as (r,):
        await r.run(rw.reader.acquire)
        async with rw.reader:
            assert rw.validate(stamp)
        async with rw.upgradable:
            assert rw.validate(stamp)
        await r.run(rw.reader.release)
    assert rw.validate(stamp)
    assert rw.validate(stamp), "validate does not consume the stamp"


async def test_validate_is_false_after_any_write(rw: RWLock) -> None:
    stamp = rw.optimistic_read()
    async with rw.writer:
        assert not rw.validate(stamp)
    assert not rw.validate(stamp)
    assert rw.validate(rw.optimistic_read())


async def test_stamp_taken_while_another_task_writes_never_validates(rw: RWLock) -> None:
    async with actors("w") as (w,):
        await w.run(rw.writer.acquire)
        stamp = rw.optimistic_read()
        assert stamp % 2 == 1
        assert not rw.validate(stamp)
        await w.run(rw.writer.release)
        assert not rw.validate(stamp)
    assert_idle(rw)


async def test_stamp_taken_by_the_writer_itself_never_validates(rw: RWLock) -> None:
    async with rw.writer:
        stamp = rw.optimistic_read()
        assert not rw.validate(stamp), "the writer may be mid-update: not a snapshot"
    assert not rw.validate(stamp)


async def test_writing_the_same_value_back_still_invalidates(rw: RWLock) -> None:
    data = {"x": 0}
    stamp = rw.optimistic_read()
    async with rw.writer:
        data["x"] = 1
    async with rw.writer:
        data["x"] = 0  # A -> B -> A
    assert data["x"] == 0
    assert not rw.validate(stamp)


async def test_a_stamp_from_another_lock_or_the_future_does_not_validate() -> None:
    a, b = RWLock(), RWLock()
    async with a.writer:
        pass
    assert not b.validate(a.optimistic_read())
    assert not a.validate(a.optimistic_read() + 2)


async def test_optimistic_read_and_validate_are_plain_functions_not_checkpoints() -> None:
    rw = RWLock()
    assert not inspect.iscoroutinefunction(rw.optimistic_read)
    assert not inspect.iscoroutinefunction(rw.validate)
    async with anyio.create_task_group() as tg:
        probe = Probe(tg)
        with anyio.CancelScope() as scope:  # noqa: ASYNC100 - no await is the point
            scope.cancel()
            for _ in range(50):
                stamp = rw.optimistic_read()
                assert isinstance(stamp, int)
                valid = rw.validate(stamp)
                assert valid is True
        assert not scope.cancelled_caught, "not a cancel point"
        assert not probe.ran, "not a schedule point"


# --- read_optimistic -----------------------------------------------------------------------------


async def test_read_optimistic_returns_the_result_of_sync_and_async_functions(
    rw: RWLock,
) -> None:
    async def add(a: int, b: int) -> int:
        await checkpoint()
        return a + b

    with anyio.fail_after(5):
        assert await rw.read_optimistic(operator.add, 2, 3) == 5
        assert await rw.read_optimistic(add, 4, 5) == 9
        assert await rw.read_optimistic(lambda: "x") == "x"
    assert_idle(rw)


async def test_read_optimistic_without_writers_runs_once_and_takes_no_lock(rw: RWLock) -> None:
    before = rw.statistics()
    runs = 0

    async def look() -> str:
        nonlocal runs
        runs += 1
        assert rw.statistics() == before, "the optimistic run must not take the lock"
        await checkpoint()
        assert rw.statistics() == before
        return "seen"

    with anyio.fail_after(5):
        assert await rw.read_optimistic(look) == "seen"
    assert runs == 1
    assert rw.statistics() == before
    assert_idle(rw)


async def test_read_optimistic_sync_fast_path_is_not_a_checkpoint(rw: RWLock) -> None:
    runs: list[RWLockStatistics] = []

    def look() -> int:
        runs.append(rw.statistics())
        return 7

    async with anyio.create_task_group() as tg:
        probe = Probe(tg)
        with anyio.CancelScope() as scope:
            scope.cancel()
            result = await rw.read_optimistic(look)
        assert result == 7
        assert not scope.cancelled_caught
        assert not probe.ran
    assert len(runs) == 1
    assert runs[0].readers == 0


async def test_read_optimistic_does_not_queue_behind_a_waiting_writer(rw: RWLock) -> None:
    async with actors("r", "w") as (r, w):
        await r.run(rw.reader.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        assert snap(rw) == (1, None, 0, 1)
        with anyio.fail_after(1):
            assert await rw.read_optimistic(lambda: "fresh") == "fresh"
        assert snap(rw) == (1, None, 0, 1)
        await r.run(rw.reader.release)
        assert writing.ok
        await w.run(rw.writer.release)
    assert_idle(rw)


async def test_read_optimistic_reruns_under_the_read_lock_when_a_write_interferes(
    rw: RWLock,
) -> None:
    data = {"x": 0}
    gate = anyio.Event()
    seen: list[tuple[int, int, Any]] = []

    async def look() -> int:
        seen.append((data["x"], rw.statistics().readers, rw.statistics().writer))
        if len(seen) == 1:
            await gate.wait()
        return data["x"]

    async with actors("reader", "w") as (reader, w):
        reading = reader.start(lambda: rw.read_optimistic(look))
        await settle()
        assert len(seen) == 1
        # the optimistic run holds nothing: a writer gets in at once
        await w.run(rw.writer.acquire_nowait)
        data["x"] = 1
        await w.run(rw.writer.release)
        gate.set()
        await settle()
        assert reading.ok
        assert reading.result == 1
    assert seen == [(0, 0, None), (1, 1, None)]
    assert_idle(rw)


async def test_locked_rerun_blocks_writers_until_fn_returns(rw: RWLock) -> None:
    gate = anyio.Event()
    inside = anyio.Event()
    leave = anyio.Event()
    runs = 0

    async def look() -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            await gate.wait()
        else:
            inside.set()
            await leave.wait()
        return "done"

    async with actors("reader", "w") as (reader, w):
        reading = reader.start(lambda: rw.read_optimistic(look))
        await settle()
        async with rw.writer:
            pass
        gate.set()
        await settle()
        assert inside.is_set()
        assert snap(rw) == (1, None, 0, 0)
        writing = w.start(rw.writer.acquire)
        await settle()
        assert not writing.finished
        leave.set()
        await settle()
        assert reading.ok
        assert writing.ok
        await w.run(rw.writer.release)
    assert runs == 2
    assert_idle(rw)


async def test_read_optimistic_while_write_held_waits_and_runs_once_under_the_lock(
    rw: RWLock,
) -> None:
    data = {"x": 0}
    runs: list[int] = []

    def look() -> int:
        runs.append(rw.statistics().readers)
        return data["x"]

    async with actors("w", "reader") as (w, reader):
        await w.run(rw.writer.acquire)
        data["x"] = 1  # torn / uncommitted while held
        reading = reader.start(lambda: rw.read_optimistic(look))
        await settle()
        assert not reading.finished, "an odd stamp goes straight to the read lock"
        assert runs == []
        assert snap(rw) == (0, w.info, 1, 0)
        data["x"] = 2
        await w.run(rw.writer.release)
        await settle()
        assert reading.ok
        assert reading.result == 2
    assert runs == [1]
    assert_idle(rw)


async def test_read_optimistic_by_the_write_holder_reads_under_its_own_lock(rw: RWLock) -> None:
    runs: list[int] = []

    def look() -> str:
        runs.append(rw.statistics().readers)
        return "mine"

    async with rw.writer:
        with anyio.fail_after(1):
            result = await rw.read_optimistic(look)
        assert result == "mine"
        assert snap(rw) == (0, me(), 0, 0)
    assert len(runs) == 1
    assert_idle(rw)


async def test_error_from_a_validated_run_propagates_after_one_run(rw: RWLock) -> None:
    runs = 0

    async def boom() -> None:
        nonlocal runs
        runs += 1
        await checkpoint()
        raise KeyError("real")

    def sync_boom() -> None:
        nonlocal runs
        runs += 1
        raise ValueError("real")

    with anyio.fail_after(5):
        with pytest.raises(KeyError, match="real"):
            await rw.read_optimistic(boom)
        assert runs == 1
        with pytest.raises(ValueError, match="real"):
            await rw.read_optimistic(sync_boom)
        assert runs == 2
    assert_idle(rw)


async def _interfered(rw: RWLock, fn: Callable[[int], Any]) -> Any:
    """Run `read_optimistic` on `fn(run_number)` while a writer writes during its first run;
    return the finished Op."""
    gate = anyio.Event()
    runs = 0

    async def wrapped() -> Any:
        nonlocal runs
        runs += 1
        if runs == 1:
            await gate.wait()
        return fn(runs)

    async with actors("reader") as (reader,):
        reading = reader.start(lambda: rw.read_optimistic(wrapped))
        await settle()
        async with rw.writer:
            pass
        gate.set()
        await settle()
        assert reading.finished
    assert runs == 2
    assert_idle(rw)
    return reading


async def test_error_from_an_invalidated_run_is_discarded_for_the_locked_result(
    rw: RWLock,
) -> None:
    def fn(run: int) -> str:
        if run == 1:
            raise ValueError("torn data")
        return "clean"

    reading = await _interfered(rw, fn)
    assert reading.ok
    assert reading.result == "clean"


async def test_error_from_the_locked_rerun_propagates(rw: RWLock) -> None:
    def fn(run: int) -> str:
        if run == 1:
            raise ValueError("torn data")
        raise KeyError("under the lock")

    reading = await _interfered(rw, fn)
    assert isinstance(reading.exc, KeyError)


async def test_result_of_an_invalidated_run_is_discarded(rw: RWLock) -> None:
    reading = await _interfered(rw, lambda run: f"run {run}")
    assert reading.ok
    assert reading.result == "run 2"


async def test_cancelled_optimistic_run_propagates_and_leaves_the_lock_free(
    rw: RWLock, cancel_mode: str
) -> None:
    never = anyio.Event()

    async def look() -> None:
        await never.wait()

    async with actors("reader") as (reader,):
        reading = reader.start(lambda: rw.read_optimistic(look))
        await settle()
        assert snap(rw) == (0, None, 0, 0)
        reading.cancel(cancel_mode)
        await settle()
        assert reading.cancelled
        assert reading.exc is None
    assert_idle(rw)
    assert rw.version == 0


async def test_cancelled_locked_rerun_propagates_and_releases_the_read_lock(
    rw: RWLock, cancel_mode: str
) -> None:
    gate = anyio.Event()
    never = anyio.Event()
    runs = 0

    async def look() -> None:
        nonlocal runs
        runs += 1
        await (gate if runs == 1 else never).wait()

    async with actors("reader", "w") as (reader, w):
        reading = reader.start(lambda: rw.read_optimistic(look))
        await settle()
        async with rw.writer:
            pass
        gate.set()
        await settle()
        assert runs == 2
        assert snap(rw) == (1, None, 0, 0)
        writing = w.start(rw.writer.acquire)
        await settle()
        assert snap(rw) == (1, None, 0, 1)
        reading.cancel(cancel_mode)
        await settle()
        assert reading.cancelled
        assert writing.ok, "the cancelled rerun must hand the lock on"
        await w.run(rw.writer.release)
    assert_idle(rw)


async def test_cancelled_while_waiting_for_the_read_lock_leaves_no_waiter(
    rw: RWLock, cancel_mode: str
) -> None:
    gate = anyio.Event()
    runs = 0

    async def look() -> None:
        nonlocal runs
        runs += 1
        await gate.wait()

    async with actors("reader", "w") as (reader, w):
        reading = reader.start(lambda: rw.read_optimistic(look))
        await settle()
        await w.run(rw.writer.acquire)
        gate.set()
        await settle()
        assert not reading.finished
        assert snap(rw) == (0, w.info, 1, 0)
        reading.cancel(cancel_mode)
        await settle()
        assert reading.cancelled
        assert snap(rw) == (0, w.info, 0, 0)
        check_invariants(rw)
        await w.run(rw.writer.release)
    assert runs == 1
    assert_idle(rw)


async def test_read_optimistic_finishes_under_a_hammering_writer(rw: RWLock) -> None:
    data = [0, 0]
    stop = anyio.Event()
    runs_per_call: list[int] = []
    writes = 0

    async def hammer() -> None:
        nonlocal writes
        while not stop.is_set():
            async with rw.writer:
                data[0] += 1
                await checkpoint()
                data[1] += 1
                writes += 1
            await checkpoint()

    async def look() -> tuple[int, int]:
        first = data[0]
        await checkpoint()
        return first, data[1]

    async def reader(calls: int) -> None:
        for _ in range(calls):
            runs = 0

            async def counted() -> tuple[int, int]:
                nonlocal runs
                runs += 1
                return await look()

            a, b = await rw.read_optimistic(counted)
            assert a == b
            runs_per_call.append(runs)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hammer)
            tg.start_soon(hammer)
            async with anyio.create_task_group() as readers:
                for _ in range(4):
                    readers.start_soon(reader, 50)
            stop.set()
    assert len(runs_per_call) == 200
    assert max(runs_per_call) <= 2, "fn ran more than twice: a retry loop"
    assert 2 in runs_per_call, "the writers never interfered: the test proves nothing"
    assert writes > 0
    assert_idle(rw)


# --- the torn-snapshot property (seeded random schedules) ----------------------------------------

FIELDS = 4


class Tally:
    def __init__(self) -> None:
        self.torn_unlocked = 0
        self.first_run_ok = 0
        self.reran = 0
        self.manual_accepted = 0
        self.manual_rejected = 0
        self.reads = 0


async def _pause(rng: random.Random, most: int) -> None:
    for _ in range(rng.randrange(most + 1)):
        await checkpoint()


async def _torn_round(rw: RWLock, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    data = [0] * FIELDS
    counter = iter(range(1, 1_000_000))

    def consistent(snapshot: list[int]) -> bool:
        return len(set(snapshot)) == 1

    async def writer(wrng: random.Random) -> None:
        for _ in range(wrng.randrange(4, 10)):
            value = next(counter)
            async with rw.writer:
                for k in range(FIELDS):
                    data[k] = value
                    await _pause(wrng, 2)
            await checkpoint()
            await _pause(wrng, 3)

    async def reader(rrng: random.Random) -> None:
        for _ in range(rrng.randrange(5, 12)):
            kind = rrng.randrange(5)
            pauses = random.Random(rrng.random())

            async def read_async(pauses: random.Random = pauses) -> list[int]:
                out = []
                for k in range(FIELDS):
                    out.append(data[k])
                    await _pause(pauses, 1)
                return out

            def read_sync() -> list[int]:
                return list(data)

            if kind == 4:  # control: unlocked reads do see torn data
                if not consistent(await read_async()):
                    tally.torn_unlocked += 1
                continue
            if kind == 3:  # the manual idiom
                stamp = rw.optimistic_read()
                snapshot = await read_async()
                if rw.validate(stamp):
                    assert consistent(snapshot), f"seed {seed}: validated a torn read"
                    tally.manual_accepted += 1
                else:
                    tally.manual_rejected += 1
                continue
            runs = 0

            async def counted(kind: int = kind) -> list[int]:
                nonlocal runs
                runs += 1
                snapshot = await read_async() if kind != 1 else read_sync()
                if kind == 2 and not consistent(snapshot):
                    raise ValueError("torn")  # must be discarded, never propagate
                return snapshot

            snapshot = await rw.read_optimistic(counted)
            assert consistent(snapshot), f"seed {seed}: read_optimistic returned {snapshot}"
            assert runs in (1, 2)
            tally.reads += 1
            if runs == 1:
                tally.first_run_ok += 1
            else:
                tally.reran += 1
            check_invariants(rw)

    async with anyio.create_task_group() as tg:
        for _ in range(rng.randrange(1, 4)):
            tg.start_soon(writer, random.Random(rng.random()))
        for _ in range(rng.randrange(3, 8)):
            tg.start_soon(reader, random.Random(rng.random()))
    assert_idle(rw)


async def test_optimistic_reads_never_return_a_torn_snapshot(anyio_backend: Any) -> None:
    tally = Tally()
    with anyio.fail_after(10):
        for seed in range(300):
            await _torn_round(RWLock(fast_acquire=bool(seed % 2)), seed, tally)
    assert tally.torn_unlocked > 0, "control: unlocked reads never tore, the test is toothless"
    assert tally.first_run_ok > 0
    assert tally.reran > 0
    assert tally.manual_accepted > 0
    assert tally.manual_rejected > 0


# --- writer.acquire_if_unchanged -----------------------------------------------------------------


async def test_acquire_if_unchanged_takes_the_write_lock_when_nothing_changed(
    rw: RWLock,
) -> None:
    stamp = rw.optimistic_read()
    async with rw.reader:
        pass  # reads do not count as changes
    with anyio.fail_after(1):
        assert await rw.writer.acquire_if_unchanged(stamp) is True
    assert rw.version == stamp + 1
    assert rw.version % 2 == 1
    assert snap(rw) == (0, me(), 0, 0)
    assert rw.writer.statistics().owner == me()
    rw.writer.release()
    assert rw.version == stamp + 2
    assert_idle(rw)


async def test_acquire_if_unchanged_fails_holding_nothing_after_a_write(rw: RWLock) -> None:
    stamp = rw.optimistic_read()
    async with rw.writer:
        pass
    version = rw.version
    with anyio.fail_after(1):
        assert await rw.writer.acquire_if_unchanged(stamp) is False
    assert rw.version == version
    assert_idle(rw)
    assert not rw.writer.locked()


async def test_acquire_if_unchanged_fails_at_once_while_another_task_writes(rw: RWLock) -> None:
    async with actors("w") as (w,):
        stamp = rw.optimistic_read()
        await w.run(rw.writer.acquire)
        before = rw.statistics()
        async with anyio.create_task_group() as tg:
            probe = Probe(tg)
            assert await rw.writer.acquire_if_unchanged(stamp) is False
            assert await rw.writer.acquire_if_unchanged(rw.optimistic_read()) is False
            assert not probe.ran, "it waited"
        assert rw.statistics() == before
        await w.run(rw.writer.release)
    assert_idle(rw)


async def test_acquire_if_unchanged_fails_at_once_while_a_writer_is_queued(rw: RWLock) -> None:
    async with actors("r", "w") as (r, w):
        await r.run(rw.reader.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        stamp = rw.optimistic_read()
        assert rw.validate(stamp), "nobody wrote yet"
        before = rw.statistics()
        async with anyio.create_task_group() as tg:
            probe = Probe(tg)
            assert await rw.writer.acquire_if_unchanged(stamp) is False
            assert not probe.ran, "it waited"
        assert rw.statistics() == before
        await r.run(rw.reader.release)
        assert writing.ok
        await w.run(rw.writer.release)
    assert_idle(rw)


async def test_acquire_if_unchanged_fails_at_once_while_an_upgrade_is_pending(
    rw: RWLock,
) -> None:
    # A pending upgrade() counts as a waiting writer (writers_waiting) and will write first,
    # so the contract's "a writer is already queued -> False at once" applies.
    async with actors("u", "r", "a") as (u, r, a):
        await u.run(rw.upgradable.acquire)
        await r.run(rw.reader.acquire)
        upgrading = u.start(rw.upgradable.upgrade)
        await settle()
        assert not upgrading.finished
        assert rw.statistics().writers_waiting == 1
        stamp = rw.optimistic_read()
        attempt = a.start(lambda: rw.writer.acquire_if_unchanged(stamp))
        await settle()
        finished_at_once = attempt.finished
        await r.run(rw.reader.release)
        assert upgrading.ok
        await u.run(rw.upgradable.release)
        await settle()
        assert attempt.ok
        assert attempt.result is False
        assert finished_at_once, "it waited for the upgrader's write phase only to fail"
    assert_idle(rw)


async def test_acquire_if_unchanged_waits_for_readers_then_succeeds(rw: RWLock) -> None:
    async with actors("r1", "r2", "a", "w") as (r1, r2, a, w):
        await r1.run(rw.reader.acquire)
        await r2.run(rw.reader.acquire)
        stamp = rw.optimistic_read()
        attempt = a.start(lambda: rw.writer.acquire_if_unchanged(stamp))
        await settle()
        assert not attempt.finished
        assert snap(rw) == (2, None, 0, 1)
        later = w.start(rw.writer.acquire)
        await settle()
        await r1.run(rw.reader.release)
        assert not attempt.finished
        await r2.run(rw.reader.release)
        assert attempt.ok
        assert attempt.result is True
        assert rw.version == stamp + 1
        assert snap(rw) == (0, a.info, 0, 1)
        assert not later.finished
        await a.run(rw.writer.release)
        assert later.ok
        await w.run(rw.writer.release)
    assert_idle(rw)


async def test_acquire_if_unchanged_fails_when_an_upgrader_writes_first(rw: RWLock) -> None:
    async with actors("u", "a") as (u, a):
        await u.run(rw.upgradable.acquire)
        stamp = rw.optimistic_read()
        attempt = a.start(lambda: rw.writer.acquire_if_unchanged(stamp))
        await settle()
        assert not attempt.finished
        assert snap(rw) == (1, None, 0, 1)
        await u.run(rw.upgradable.upgrade)  # the holder goes first
        assert rw.version == stamp + 1
        await u.run(rw.upgradable.release)
        await settle()
        assert attempt.ok
        assert attempt.result is False
        assert snap(rw) == (0, None, 0, 0), "a failed attempt must hold nothing"
        assert rw.version % 2 == 0
    assert_idle(rw)


async def test_acquire_if_unchanged_cancelled_while_waiting_holds_nothing(
    rw: RWLock, cancel_mode: str
) -> None:
    async with actors("r", "a", "w") as (r, a, w):
        await r.run(rw.reader.acquire)
        stamp = rw.optimistic_read()
        attempt = a.start(lambda: rw.writer.acquire_if_unchanged(stamp))
        await settle()
        assert not attempt.finished
        attempt.cancel(cancel_mode)
        await settle()
        assert attempt.cancelled
        assert snap(rw) == (1, None, 0, 0)
        check_invariants(rw)
        await r.run(rw.reader.release)
        assert_idle(rw)
        assert rw.validate(stamp), "a cancelled attempt wrote nothing"
        await w.run(rw.writer.acquire)  # the lock is really free for writers
        await w.run(rw.writer.release)
    assert_idle(rw)


async def test_acquire_if_unchanged_while_holding_read_is_a_deadlock_error(rw: RWLock) -> None:
    async with rw.reader:
        stamp = rw.optimistic_read()
        with anyio.fail_after(1), pytest.raises(DeadlockError):
            await rw.writer.acquire_if_unchanged(stamp)
        assert snap(rw) == (1, None, 0, 0)
    assert_idle(rw)


async def test_acquire_if_unchanged_while_holding_write_is_false(rw: RWLock) -> None:
    before_own_write = rw.optimistic_read()
    async with rw.writer:
        during_own_write = rw.optimistic_read()
        with anyio.fail_after(1):
            assert await rw.writer.acquire_if_unchanged(before_own_write) is False
            assert await rw.writer.acquire_if_unchanged(during_own_write) is False
        assert snap(rw) == (0, me(), 0, 0)
        assert rw.version == 1
        check_invariants(rw)
    assert_idle(rw)  # exactly one write level was held: no extra level leaked


async def test_downgrade_after_acquire_if_unchanged(rw: RWLock) -> None:
    stamp = rw.optimistic_read()
    with anyio.fail_after(1):
        assert await rw.writer.acquire_if_unchanged(stamp)
    async with actors("r") as (r,):
        reading = r.start(rw.reader.acquire)
        await settle()
        assert not reading.finished
        rw.writer.downgrade()
        assert rw.version == stamp + 2
        await settle()
        assert reading.ok
        assert snap(rw) == (2, None, 0, 0)
        await r.run(rw.reader.release)
    rw.reader.release()
    assert_idle(rw)


async def test_read_modify_write_loop_with_acquire_if_unchanged_loses_no_update(
    anyio_backend: Any,
) -> None:
    rw = RWLock()
    box = {"n": 0}

    async def increment(rng: random.Random) -> None:
        while True:
            stamp = rw.optimistic_read()
            seen = box["n"]
            await _pause(rng, 2)  # compute, holding nothing
            if await rw.writer.acquire_if_unchanged(stamp):
                try:
                    box["n"] = seen + 1
                finally:
                    rw.writer.release()
                return
            await checkpoint()

    rng = random.Random(7)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(60):
                tg.start_soon(increment, random.Random(rng.random()))
    assert box["n"] == 60
    assert_idle(rw)


async def test_acquire_if_unchanged_by_a_reader_raises_deadlock_whatever_the_stamp() -> None:
    rw = RWLock()
    stale = rw.optimistic_read()
    async with rw.writer:
        pass
    with anyio.fail_after(5):
        async with rw.reader:
            for stamp in (stale, rw.optimistic_read()):  # out of date, then current
                with pytest.raises(DeadlockError):
                    await rw.writer.acquire_if_unchanged(stamp)
        async with rw.upgradable:
            with pytest.raises(DeadlockError):
                await rw.writer.acquire_if_unchanged(stale)
    check_invariants(rw)
    assert rw.statistics().readers == 0
