"""RWLock semantics: sharing, exclusion, fairness, re-entrancy, upgrade/downgrade, breakage.

Each scenario is scripted with "actors": tasks that run one call at a time on request, so a test
can say exactly which task holds what and in which order requests were queued. `settle()` waits
until every other task is parked, which is when the lock's decisions can be observed.
"""

from __future__ import annotations

import dataclasses
import inspect

import anyio
import anyio.abc
import pytest
import sniffio

import aiolocks
from _actors import IDLE, Actor, Op, actors, assert_idle, settle, snap  # noqa: F401
from aiolocks import DeadlockError, RWLock
from aiolocks._introspect import check_invariants

pytestmark = pytest.mark.anyio


def me() -> anyio.TaskInfo:
    return anyio.get_current_task()


@pytest.fixture(params=[False, True], ids=["checkpointing", "fast_acquire"])
def rw(request: pytest.FixtureRequest) -> RWLock:
    return RWLock(fast_acquire=request.param)


# --- sharing and exclusion -----------------------------------------------------------------------


async def test_many_readers_hold_at_once(rw: RWLock) -> None:
    async with actors("r1", "r2", "r3", "r4") as crew:
        for actor in crew:
            await actor.run(rw.reader.acquire)
        with anyio.fail_after(1):
            await rw.reader.acquire()
        assert snap(rw) == (5, None, 0, 0)
        check_invariants(rw)
        rw.reader.release()
        for actor in crew:
            await actor.run(rw.reader.release)
    assert_idle(rw)


async def test_writer_excludes_readers_and_writers(rw: RWLock) -> None:
    async with actors("w1", "r", "w2") as (w1, r, w2):
        await w1.run(rw.writer.acquire)
        reading = r.start(rw.reader.acquire)
        writing = w2.start(rw.writer.acquire)
        await settle()
        assert not reading.finished
        assert not writing.finished
        assert snap(rw) == (0, w1.info, 1, 1)
        assert rw.writer.statistics().owner == w1.info
        with pytest.raises(anyio.WouldBlock):
            rw.reader.acquire_nowait()
        with pytest.raises(anyio.WouldBlock):
            rw.writer.acquire_nowait()
        check_invariants(rw)

        await w1.run(rw.writer.release)
        await settle()
        assert reading.ok
        assert not writing.finished
        await r.run(rw.reader.release)
        assert writing.ok
        assert snap(rw) == (0, w2.info, 0, 0)
        await w2.run(rw.writer.release)
    assert_idle(rw)


async def test_writer_waits_until_last_reader_leaves(rw: RWLock) -> None:
    async with actors("r1", "r2", "w") as (r1, r2, w):
        await r1.run(rw.reader.acquire)
        await r2.run(rw.reader.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        await r1.run(rw.reader.release)
        assert not writing.finished
        await r2.run(rw.reader.release)
        assert writing.ok
        await w.run(rw.writer.release)
    assert_idle(rw)


# --- fairness ------------------------------------------------------------------------------------


async def test_waiting_writer_blocks_readers_that_arrive_after_it(rw: RWLock) -> None:
    async with actors("r1", "w", "r2") as (r1, w, r2):
        await r1.run(rw.reader.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        late_read = r2.start(rw.reader.acquire)
        await settle()
        assert not late_read.finished
        assert snap(rw) == (1, None, 1, 1)
        with pytest.raises(anyio.WouldBlock):
            rw.reader.acquire_nowait()

        await r1.run(rw.reader.release)
        assert writing.ok
        assert not late_read.finished
        await w.run(rw.writer.release)
        assert late_read.ok
        await r2.run(rw.reader.release)
    assert_idle(rw)


async def test_writer_release_admits_every_waiting_reader_even_behind_a_later_writer(
    rw: RWLock,
) -> None:
    async with actors("w1", "r1", "w2", "r2", "r3") as (w1, r1, w2, r2, r3):
        await w1.run(rw.writer.acquire)
        early_read = r1.start(rw.reader.acquire)
        await settle()
        next_write = w2.start(rw.writer.acquire)
        await settle()
        queued_read = r2.start(rw.reader.acquire)
        await settle()
        assert snap(rw) == (0, w1.info, 2, 1)

        await w1.run(rw.writer.release)
        assert early_read.ok
        assert queued_read.ok, "phase-fair: a reader behind the next writer joins this phase"
        assert not next_write.finished
        assert snap(rw) == (2, None, 0, 1)

        # The writer now waits; readers arriving from here on queue behind it.
        late_read = r3.start(rw.reader.acquire)
        await settle()
        assert not late_read.finished
        await r1.run(rw.reader.release)
        await r2.run(rw.reader.release)
        assert next_write.ok
        assert not late_read.finished
        await w2.run(rw.writer.release)
        assert late_read.ok
        await r3.run(rw.reader.release)
    assert_idle(rw)


async def test_reader_phase_ends_with_next_writer_admitted(rw: RWLock) -> None:
    # R holds; W1, R2, W2, R3 queue. Last reader out -> W1; W1 out -> R2 and R3 together; then W2.
    async with actors("r1", "w1", "r2", "w2", "r3") as (r1, w1, r2, w2, r3):
        await r1.run(rw.reader.acquire)
        ops = {}
        for actor, view in ((w1, rw.writer), (r2, rw.reader), (w2, rw.writer), (r3, rw.reader)):
            ops[actor.name] = actor.start(view.acquire)
            await settle()
        await r1.run(rw.reader.release)
        assert [name for name, op in ops.items() if op.finished] == ["w1"]
        await w1.run(rw.writer.release)
        assert [name for name, op in ops.items() if op.finished] == ["w1", "r2", "r3"]
        await r2.run(rw.reader.release)
        assert not ops["w2"].finished
        await r3.run(rw.reader.release)
        assert ops["w2"].ok
        await w2.run(rw.writer.release)
    assert_idle(rw)


async def test_writers_are_served_first_come_first_served(rw: RWLock) -> None:
    async with actors("w0", "w1", "w2", "w3", "w4") as crew:
        await crew[0].run(rw.writer.acquire)
        ops = []
        for actor in crew[1:]:
            ops.append(actor.start(rw.writer.acquire))
            await settle()
        assert snap(rw) == (0, crew[0].info, 0, 4)
        for i, actor in enumerate(crew[:-1]):
            await actor.run(rw.writer.release)
            assert [op.finished for op in ops] == [j <= i for j in range(4)]
            assert rw.statistics().writer == crew[i + 1].info
        await crew[-1].run(rw.writer.release)
    assert_idle(rw)


# --- re-entrancy ---------------------------------------------------------------------------------


async def test_reentrant_read_while_writer_waits_does_not_hang(rw: RWLock) -> None:
    async with actors("r", "w") as (r, w):
        await r.run(rw.reader.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        await r.run(rw.reader.acquire)  # the classic nested-read hang: must not wait for w
        await r.run(rw.reader.acquire_nowait)
        assert snap(rw) == (1, None, 0, 1), "readers counts tasks, not levels"
        await r.run(rw.reader.release)
        await r.run(rw.reader.release)
        assert not writing.finished, "each acquire needs its own release"
        await r.run(rw.reader.release)
        assert writing.ok
        await w.run(rw.writer.release)
    assert_idle(rw)


async def test_reentrant_write_needs_one_release_per_acquire(rw: RWLock) -> None:
    async with actors("w", "r") as (w, r):
        await w.run(rw.writer.acquire)
        await w.run(rw.writer.acquire)
        await w.run(rw.writer.acquire_nowait)
        reading = r.start(rw.reader.acquire)
        await w.run(rw.writer.release)
        await w.run(rw.writer.release)
        assert not reading.finished
        assert rw.statistics().writer == w.info
        await w.run(rw.writer.release)
        assert reading.ok
        await r.run(rw.reader.release)
    assert_idle(rw)


async def test_writer_taking_read_stays_reader_after_write_release(rw: RWLock) -> None:
    async with actors("w", "w2") as (w, w2):
        await w.run(rw.writer.acquire)
        await w.run(rw.reader.acquire)  # at once: the writer may read
        await w.run(rw.writer.release)
        assert snap(rw) == (1, None, 0, 0)
        writing = w2.start(rw.writer.acquire)
        await settle()
        assert not writing.finished
        await w.run(rw.reader.release)
        assert writing.ok
        await w2.run(rw.writer.release)
    assert_idle(rw)


async def test_read_to_write_upgrade_raises_deadlock_at_once_leaving_state_untouched(
    rw: RWLock,
) -> None:
    async with actors("r", "w") as (r, w):
        await r.run(rw.reader.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        before = snap(rw), rw.version
        with pytest.raises(DeadlockError):
            await r.run(rw.writer.acquire)
        assert (snap(rw), rw.version) == before
        check_invariants(rw)
        await r.run(rw.reader.release)
        assert writing.ok
        await w.run(rw.writer.release)
    assert_idle(rw)


def test_deadlock_error_is_a_runtime_error() -> None:
    assert issubclass(DeadlockError, RuntimeError)


# --- downgrade -----------------------------------------------------------------------------------


async def test_downgrade_admits_waiting_readers_but_no_writer(rw: RWLock) -> None:
    async with actors("w", "r1", "w2", "r2", "r3") as (w, r1, w2, r2, r3):
        await w.run(rw.writer.acquire)
        early_read = r1.start(rw.reader.acquire)
        await settle()
        writing = w2.start(rw.writer.acquire)
        await settle()
        queued_read = r2.start(rw.reader.acquire)
        await settle()

        await w.run(rw.writer.downgrade)
        await settle()
        assert early_read.ok
        assert queued_read.ok
        assert not writing.finished
        assert snap(rw) == (3, None, 0, 1)
        assert rw.version % 2 == 0
        late_read = r3.start(rw.reader.acquire)
        await settle()
        assert not late_read.finished, "the waiting writer still blocks newcomers"

        for actor in (w, r1, r2):
            await actor.run(rw.reader.release)
        assert writing.ok
        await w2.run(rw.writer.release)
        assert late_read.ok
        await r3.run(rw.reader.release)
    assert_idle(rw)


async def test_downgrade_without_write_hold_raises_runtime_error(rw: RWLock) -> None:
    with anyio.fail_after(5):
        with pytest.raises(RuntimeError):
            rw.writer.downgrade()
        assert_idle(rw)
        await rw.reader.acquire()
        with pytest.raises(RuntimeError):
            rw.writer.downgrade()
        assert snap(rw) == (1, None, 0, 0)
        rw.reader.release()
    assert_idle(rw)


async def test_downgrade_of_reentrant_write_raises_runtime_error(rw: RWLock) -> None:
    with anyio.fail_after(5):
        await rw.writer.acquire()
        await rw.writer.acquire()
        version = rw.version
        with pytest.raises(RuntimeError):
            rw.writer.downgrade()
        assert snap(rw) == (0, me(), 0, 0)
        assert rw.version == version
        rw.writer.release()
        rw.writer.downgrade()  # one level now: allowed
        assert snap(rw) == (1, None, 0, 0)
        rw.reader.release()
    assert_idle(rw)


async def test_downgrade_by_another_task_raises_runtime_error(rw: RWLock) -> None:
    async with actors("w", "other") as (w, other):
        await w.run(rw.writer.acquire)
        with pytest.raises(RuntimeError):
            await other.run(rw.writer.downgrade)
        assert snap(rw) == (0, w.info, 0, 0)
        await w.run(rw.writer.release)
    assert_idle(rw)


# --- upgradable ----------------------------------------------------------------------------------


async def test_upgradable_coexists_with_readers(rw: RWLock) -> None:
    async with actors("r1", "u", "r2") as (r1, u, r2):
        await r1.run(rw.reader.acquire)
        await u.run(rw.upgradable.acquire)
        await r2.run(rw.reader.acquire)
        assert snap(rw) == (3, None, 0, 0), "the upgradable holder counts as a reader"
        assert rw.upgradable.statistics() == rw.statistics()
        assert rw.reader.statistics() == rw.statistics()
        for actor, view in ((r1, rw.reader), (u, rw.upgradable), (r2, rw.reader)):
            await actor.run(view.release)
    assert_idle(rw)


async def test_upgradable_excludes_writers_and_other_upgradables(rw: RWLock) -> None:
    async with actors("u1", "w", "u2", "r") as (u1, w, u2, r):
        await u1.run(rw.upgradable.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        second = u2.start(rw.upgradable.acquire)
        await settle()
        assert not writing.finished
        assert not second.finished
        with pytest.raises(anyio.WouldBlock):
            rw.upgradable.acquire_nowait()
        assert snap(rw) == (1, None, 0, 2)

        await u1.run(rw.upgradable.release)
        assert writing.ok, "first come, first served among writers and upgradables"
        assert not second.finished
        await w.run(rw.writer.release)
        assert second.ok
        await r.run(rw.reader.acquire)
        await r.run(rw.reader.release)
        await u2.run(rw.upgradable.release)
    assert_idle(rw)


async def test_writer_excludes_upgradable(rw: RWLock) -> None:
    async with actors("w", "u") as (w, u):
        await w.run(rw.writer.acquire)
        wanting = u.start(rw.upgradable.acquire)
        await settle()
        assert not wanting.finished
        await w.run(rw.writer.release)
        assert wanting.ok
        await u.run(rw.upgradable.release)
    assert_idle(rw)


async def test_waiting_upgradable_does_not_block_new_readers(rw: RWLock) -> None:
    async with actors("u1", "u2", "r") as (u1, u2, r):
        await u1.run(rw.upgradable.acquire)
        waiting = u2.start(rw.upgradable.acquire)
        await settle()
        await r.run(rw.reader.acquire)
        await r.run(rw.reader.release)
        await u1.run(rw.upgradable.release)
        assert waiting.ok
        await u2.run(rw.upgradable.release)
    assert_idle(rw)


async def test_upgrade_waits_for_readers_while_new_readers_queue_behind_it(rw: RWLock) -> None:
    async with actors("u", "r1", "r2") as (u, r1, r2):
        await u.run(rw.upgradable.acquire)
        await r1.run(rw.reader.acquire)
        version = rw.version
        upgrading = u.start(rw.upgradable.upgrade)
        await settle()
        assert not upgrading.finished
        assert snap(rw) == (2, None, 0, 1), "a pending upgrade counts as a waiting writer"
        late_read = r2.start(rw.reader.acquire)
        await settle()
        assert not late_read.finished
        with pytest.raises(anyio.WouldBlock):
            rw.reader.acquire_nowait()

        await r1.run(rw.reader.release)
        assert upgrading.ok
        assert rw.statistics().writer == u.info
        assert rw.version == version + 1
        assert not late_read.finished

        await u.run(rw.upgradable.release)  # releases the write hold it became
        assert late_read.ok
        assert snap(rw) == (1, None, 0, 0)
        assert rw.version == version + 2
        await r2.run(rw.reader.release)
    assert_idle(rw)


async def test_upgrade_without_other_readers_is_immediate(rw: RWLock) -> None:
    with anyio.fail_after(5):
        async with rw.upgradable:
            await rw.upgradable.upgrade()
            assert rw.statistics().writer == me()
            assert rw.version % 2 == 1
    assert_idle(rw)


async def test_upgrade_nowait_raises_would_block_while_readers_hold(rw: RWLock) -> None:
    async with actors("u", "r") as (u, r):
        await u.run(rw.upgradable.acquire)
        await r.run(rw.reader.acquire)
        with pytest.raises(anyio.WouldBlock):
            await u.run(rw.upgradable.upgrade_nowait)
        assert snap(rw) == (2, None, 0, 0)
        await r.run(rw.reader.release)
        await u.run(rw.upgradable.upgrade_nowait)
        assert snap(rw)[1] == u.info
        await u.run(rw.upgradable.release)
    assert_idle(rw)


async def test_upgradable_is_not_reentrant(rw: RWLock) -> None:
    with anyio.fail_after(5):
        await rw.upgradable.acquire()
        with pytest.raises(DeadlockError):
            await rw.upgradable.acquire()
        with pytest.raises(DeadlockError):
            rw.upgradable.acquire_nowait()
        assert snap(rw) == (1, None, 0, 0)
        rw.upgradable.release()
    assert_idle(rw)


async def test_upgrade_while_also_holding_plain_read_raises_deadlock(rw: RWLock) -> None:
    with anyio.fail_after(5):
        await rw.upgradable.acquire()
        await rw.reader.acquire()  # at once: the upgradable holder may read
        with pytest.raises(DeadlockError):
            await rw.upgradable.upgrade()
        assert snap(rw)[1:] == (None, 0, 0)
        rw.reader.release()
        rw.upgradable.release()
    assert_idle(rw)


async def test_upgradable_request_while_holding_read_or_write_raises_deadlock(rw: RWLock) -> None:
    with anyio.fail_after(5):
        await rw.reader.acquire()
        with pytest.raises(DeadlockError):
            await rw.upgradable.acquire()
        rw.reader.release()
        await rw.writer.acquire()
        with pytest.raises(DeadlockError):
            await rw.upgradable.acquire()
        rw.writer.release()
        assert_idle(rw)
        await rw.upgradable.acquire()
        with pytest.raises(DeadlockError):
            await rw.writer.acquire()  # use upgrade() instead
        rw.upgradable.release()
    assert_idle(rw)


async def test_downgrade_after_upgrade_returns_to_the_upgradable_hold(rw: RWLock) -> None:
    async with actors("u", "r", "w", "u2") as (u, r, w, u2):
        await u.run(rw.upgradable.acquire)
        await u.run(rw.upgradable.upgrade)
        reading = r.start(rw.reader.acquire)
        await settle()
        assert not reading.finished
        await u.run(rw.writer.downgrade)
        assert reading.ok
        assert snap(rw) == (2, None, 0, 0)
        assert rw.version % 2 == 0

        writing = w.start(rw.writer.acquire)
        await settle()
        other = u2.start(rw.upgradable.acquire)
        await settle()
        assert not writing.finished, "still the upgradable hold: excludes writers"
        assert not other.finished, "still the upgradable hold: excludes upgradables"
        await r.run(rw.reader.release)
        await u.run(rw.upgradable.upgrade_nowait)  # it is still upgradable
        await u.run(rw.upgradable.release)
        assert writing.ok
        await w.run(rw.writer.release)
        assert other.ok
        await u2.run(rw.upgradable.release)
    assert_idle(rw)


# --- acquire_nowait ------------------------------------------------------------------------------


async def test_acquire_nowait_succeeds_on_a_free_lock(rw: RWLock) -> None:
    for view in (rw.reader, rw.writer, rw.upgradable):
        view.acquire_nowait()
        check_invariants(rw)
        view.release()
        assert_idle(rw)


async def test_acquire_nowait_never_jumps_a_waiting_writer(rw: RWLock) -> None:
    async with actors("r", "w", "other") as (r, w, other):
        await r.run(rw.reader.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        before = snap(rw)
        for view in (rw.reader, rw.writer, rw.upgradable):
            with pytest.raises(anyio.WouldBlock):
                await other.run(view.acquire_nowait)
        assert snap(rw) == before
        await r.run(rw.reader.acquire_nowait)  # re-entrant: succeeds at once
        await r.run(rw.reader.release)
        await r.run(rw.reader.release)
        assert writing.ok
        await w.run(rw.writer.release)
    assert_idle(rw)


async def test_writer_holding_may_take_read_and_write_nowait(rw: RWLock) -> None:
    async with actors("w", "w2") as (w, w2):
        await w.run(rw.writer.acquire)
        waiting = w2.start(rw.writer.acquire)
        await settle()
        await w.run(rw.writer.acquire_nowait)
        await w.run(rw.reader.acquire_nowait)
        await w.run(rw.reader.release)
        await w.run(rw.writer.release)
        await w.run(rw.writer.release)
        assert waiting.ok
        await w2.run(rw.writer.release)
    assert_idle(rw)


# --- release misuse ------------------------------------------------------------------------------


async def test_release_without_holding_raises_runtime_error_leaving_state_untouched(
    rw: RWLock,
) -> None:
    async with actors("r", "w", "u", "other") as (r, w, u, other):
        for view in (rw.reader, rw.writer, rw.upgradable):
            with pytest.raises(RuntimeError):
                view.release()
        await r.run(rw.reader.acquire)
        await u.run(rw.upgradable.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        before = snap(rw)
        for view in (rw.reader, rw.writer, rw.upgradable):
            with pytest.raises(RuntimeError):
                await other.run(view.release)
        with pytest.raises(RuntimeError):
            await r.run(rw.writer.release)
        with pytest.raises(RuntimeError):
            await r.run(rw.upgradable.release)
        assert snap(rw) == before
        check_invariants(rw)
        await r.run(rw.reader.release)
        await u.run(rw.upgradable.release)
        assert writing.ok
        await w.run(rw.writer.release)
    assert_idle(rw)


# --- statistics and version ----------------------------------------------------------------------


def test_statistics_is_a_frozen_dataclass_with_documented_fields() -> None:
    rw = RWLock()
    stats = rw.statistics()
    assert isinstance(stats, aiolocks.RWLockStatistics)
    assert [f.name for f in dataclasses.fields(stats)] == [
        "readers",
        "writer",
        "readers_waiting",
        "writers_waiting",
        "version",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.readers = 1  # type: ignore[misc]
    assert snap(rw) == IDLE
    assert stats.version == rw.version


async def test_writer_view_statistics_have_anyio_lock_shape(rw: RWLock) -> None:
    async with actors("w", "w2") as (w, w2):
        stats = rw.writer.statistics()
        assert (stats.locked, stats.owner, stats.tasks_waiting) == (False, None, 0)
        await w.run(rw.writer.acquire)
        w2.start(rw.writer.acquire)
        await settle()
        stats = rw.writer.statistics()
        assert (stats.locked, stats.owner, stats.tasks_waiting) == (True, w.info, 1)
        assert rw.writer.locked()
        await w.run(rw.writer.release)
        await w2.run(rw.writer.release)
    assert not rw.writer.locked()
    assert_idle(rw)


async def test_statistics_follow_a_scenario(rw: RWLock) -> None:
    async with actors("r1", "r2", "w", "r3") as (r1, r2, w, r3):
        await r1.run(rw.reader.acquire)
        await r2.run(rw.reader.acquire)
        await r2.run(rw.reader.acquire)
        assert rw.statistics() == aiolocks.RWLockStatistics(2, None, 0, 0, rw.version)
        w.start(rw.writer.acquire)
        await settle()
        r3.start(rw.reader.acquire)
        await settle()
        assert snap(rw) == (2, None, 1, 1)
        await r1.run(rw.reader.release)
        await r2.run(rw.reader.release)
        assert snap(rw) == (1, None, 1, 1)
        await r2.run(rw.reader.release)
        assert snap(rw) == (0, w.info, 1, 0)
        await w.run(rw.writer.release)
        assert snap(rw) == (1, None, 0, 0)
        await r3.run(rw.reader.release)
    assert_idle(rw)


async def test_version_moves_only_at_outermost_write_acquire_and_final_release(
    rw: RWLock,
) -> None:
    with anyio.fail_after(5):
        v0 = rw.version
        assert isinstance(v0, int)
        assert v0 % 2 == 0
        async with rw.reader:
            assert rw.version == v0
        async with rw.upgradable:
            assert rw.version == v0
        await rw.writer.acquire()
        assert rw.version == v0 + 1
        await rw.writer.acquire()
        rw.writer.acquire_nowait()
        async with rw.reader:
            assert rw.version == v0 + 1
        rw.writer.release()
        rw.writer.release()
        assert rw.version == v0 + 1
        assert rw.statistics().version == v0 + 1
        rw.writer.release()
        assert rw.version == v0 + 2
        async with rw.writer:
            assert rw.version == v0 + 3
        assert rw.version == v0 + 4
        assert rw.statistics().version == v0 + 4
    assert_idle(rw)


async def test_version_through_upgrade_and_downgrade(rw: RWLock) -> None:
    with anyio.fail_after(5):
        v0 = rw.version
        await rw.upgradable.acquire()
        await rw.upgradable.upgrade()
        assert rw.version == v0 + 1
        rw.writer.downgrade()
        assert rw.version == v0 + 2
        rw.upgradable.release()
        assert rw.version == v0 + 2
        await rw.writer.acquire()
        rw.writer.downgrade()
        assert rw.version == v0 + 4
        rw.reader.release()
    assert_idle(rw)


# --- a task that exits while holding -------------------------------------------------------------


async def test_owner_exiting_with_read_breaks_writers_but_not_readers(rw: RWLock) -> None:
    async with actors("dying", "w", "r", "late") as (dying, w, r, late):
        await dying.run(rw.reader.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        await dying.exit()
        await settle()
        assert writing.finished, "a waiting writer must not hang on a dead reader"
        assert isinstance(writing.exc, anyio.BrokenResourceError)
        assert rw.statistics().writer is None

        await r.run(rw.reader.acquire)  # does not conflict with the dead reader's hold
        await r.run(rw.reader.release)
        with pytest.raises(anyio.BrokenResourceError):
            await late.run(rw.writer.acquire)
        with pytest.raises(anyio.WouldBlock):
            await late.run(rw.writer.acquire_nowait)
        check_invariants(rw)


async def test_owner_exiting_with_write_breaks_readers_and_writers(rw: RWLock) -> None:
    async with actors("dying", "w", "r", "u", "late") as (dying, w, r, u, late):
        await dying.run(rw.writer.acquire)
        writing = w.start(rw.writer.acquire)
        reading = r.start(rw.reader.acquire)
        wanting = u.start(rw.upgradable.acquire)
        await settle()
        await dying.exit()
        await settle()
        for op in (writing, reading, wanting):
            assert op.finished, "waiters must not hang on a dead writer"
            assert isinstance(op.exc, anyio.BrokenResourceError)
        for view in (rw.reader, rw.writer, rw.upgradable):
            with pytest.raises(anyio.BrokenResourceError):
                await late.run(view.acquire)
            with pytest.raises(anyio.WouldBlock):
                await late.run(view.acquire_nowait)
        check_invariants(rw)


# --- checkpoints and fast_acquire ----------------------------------------------------------------


async def test_uncontended_acquire_is_a_cancel_point_by_default() -> None:
    rw = RWLock()
    for view in (rw.reader, rw.writer, rw.upgradable):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await view.acquire()
            view.release()
            pytest.fail("acquire() did not check for cancellation")
        assert scope.cancelled_caught
        assert_idle(rw)


async def test_fast_acquire_skips_the_cancel_point_on_asyncio_only() -> None:
    rw = RWLock(fast_acquire=True)
    on_trio = sniffio.current_async_library() == "trio"
    for view in (rw.reader, rw.writer, rw.upgradable):
        got = False
        with anyio.CancelScope() as scope:
            scope.cancel()
            await view.acquire()
            got = True
            view.release()
        assert got is not on_trio
        assert scope.cancelled_caught is on_trio
        assert_idle(rw)


async def test_contended_fast_acquire_still_waits_and_is_cancellable() -> None:
    rw = RWLock(fast_acquire=True)
    async with actors("w", "r") as (w, r):
        await w.run(rw.writer.acquire)
        reading = r.start(rw.reader.acquire)
        await settle()
        assert not reading.finished
        reading.cancel()
        await settle()
        assert reading.cancelled
        await w.run(rw.writer.release)
    assert_idle(rw)


# --- misc shape ----------------------------------------------------------------------------------


async def test_plain_with_raises_and_says_use_async_with(rw: RWLock) -> None:
    for view in (rw.reader, rw.writer, rw.upgradable):
        with pytest.raises((TypeError, RuntimeError), match="async with"), view:
            pass  # pragma: no cover
    assert_idle(rw)


async def test_release_is_synchronous(rw: RWLock) -> None:
    for view in (rw.reader, rw.writer, rw.upgradable):
        assert not inspect.iscoroutinefunction(view.release)
        await view.acquire()
        assert view.release() is None
    assert not inspect.iscoroutinefunction(rw.writer.downgrade)
    assert not inspect.iscoroutinefunction(rw.upgradable.upgrade_nowait)
    assert_idle(rw)
