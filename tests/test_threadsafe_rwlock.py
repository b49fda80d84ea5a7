"""aiolocks.threadsafe.RWLock: the in-process RWLock's behaviour suite, then threads and loops.

The scripted scenarios of tests/test_rwlock.py (fairness, re-entrancy, upgrade, downgrade,
statistics, version, owner exit) run here unchanged over the thread-safe lock: they are imported
below and pick up this module's ``rw`` fixture.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio

import aiolocks
from _actors import actors, assert_idle, settle
from _threads import DEADLINE, TrioThread, loop_threads, start_thread, wait_until
from aiolocks import DeadlockError
from aiolocks._introspect import check_invariants
from aiolocks.threadsafe import RWLock
from test_rwlock import (  # noqa: F401 - collected here, over the thread-safe lock
    test_acquire_nowait_never_jumps_a_waiting_writer,
    test_acquire_nowait_succeeds_on_a_free_lock,
    test_downgrade_admits_waiting_readers_but_no_writer,
    test_downgrade_after_upgrade_returns_to_the_upgradable_hold,
    test_downgrade_by_another_task_raises_runtime_error,
    test_downgrade_of_reentrant_write_raises_runtime_error,
    test_downgrade_without_write_hold_raises_runtime_error,
    test_many_readers_hold_at_once,
    test_owner_exiting_with_read_breaks_writers_but_not_readers,
    test_owner_exiting_with_write_breaks_readers_and_writers,
    test_read_to_write_upgrade_raises_deadlock_at_once_leaving_state_untouched,
    test_reader_phase_ends_with_next_writer_admitted,
    test_reentrant_read_while_writer_waits_does_not_hang,
    test_reentrant_write_needs_one_release_per_acquire,
    test_release_is_synchronous,
    test_release_without_holding_raises_runtime_error_leaving_state_untouched,
    test_statistics_follow_a_scenario,
    test_upgradable_coexists_with_readers,
    test_upgradable_excludes_writers_and_other_upgradables,
    test_upgradable_is_not_reentrant,
    test_upgradable_request_while_holding_read_or_write_raises_deadlock,
    test_upgrade_nowait_raises_would_block_while_readers_hold,
    test_upgrade_waits_for_readers_while_new_readers_queue_behind_it,
    test_upgrade_while_also_holding_plain_read_raises_deadlock,
    test_upgrade_without_other_readers_is_immediate,
    test_version_moves_only_at_outermost_write_acquire_and_final_release,
    test_version_through_upgrade_and_downgrade,
    test_waiting_upgradable_does_not_block_new_readers,
    test_waiting_writer_blocks_readers_that_arrive_after_it,
    test_writer_excludes_readers_and_writers,
    test_writer_excludes_upgradable,
    test_writer_holding_may_take_read_and_write_nowait,
    test_writer_release_admits_every_waiting_reader_even_behind_a_later_writer,
    test_writer_taking_read_stays_reader_after_write_release,
    test_writer_view_statistics_have_anyio_lock_shape,
    test_writer_waits_until_last_reader_leaves,
    test_writers_are_served_first_come_first_served,
)

pytestmark = pytest.mark.anyio  # the imported async tests' marker (sync tests ignore it)


@pytest.fixture
def rw() -> RWLock:
    return RWLock()


def _snap(rw: RWLock) -> tuple[int, Any, int, int]:
    s = rw.statistics()
    return (s.readers, s.writer, s.readers_waiting, s.writers_waiting)


# --- the blocking side ---------------------------------------------------------------------------


def test_threads_read_together_and_write_alone() -> None:
    rw = RWLock()
    inside = {"r": 0, "w": 0}
    guard = threading.Lock()
    counter = 0

    def enter(kind: str) -> None:
        with guard:
            inside[kind] += 1
            assert inside["w"] <= 1
            assert inside["w"] == 0 or inside["r"] == 0

    def leave(kind: str) -> None:
        with guard:
            inside[kind] -= 1

    def worker(i: int) -> None:
        nonlocal counter
        for j in range(200):
            if (i + j) % 4 == 0:
                with rw.writer:
                    enter("w")
                    value = counter
                    counter = value + 1
                    leave("w")
            else:
                with rw.reader:
                    enter("r")
                    leave("r")

    futs = [start_thread(lambda i=i: worker(i))[1] for i in range(8)]
    for fut in futs:
        fut.result(DEADLINE)
    assert counter == sum(1 for i in range(8) for j in range(200) if (i + j) % 4 == 0)
    assert _snap(rw) == (0, None, 0, 0)
    check_invariants(rw)


def test_thread_read_to_write_upgrade_raises_deadlock() -> None:
    rw = RWLock()
    with rw.reader:
        with pytest.raises(DeadlockError):
            rw.writer.acquire_blocking()
        with rw.reader:  # re-entrant read
            pass
    assert _snap(rw) == (0, None, 0, 0)


def test_thread_writer_times_out_behind_a_reader_and_readers_behind_it_go() -> None:
    rw = RWLock()
    rw.reader.acquire_blocking()
    _, writer = start_thread(lambda: rw.writer.acquire_blocking(timeout=0.05))
    wait_until(lambda: _snap(rw)[3] == 1, "the writer queued")

    def read() -> bool:
        got = rw.reader.acquire_blocking(timeout=DEADLINE)
        rw.reader.release()
        return got

    _, reader = start_thread(read)  # queued behind the waiting writer ...
    assert writer.result(DEADLINE) is False
    assert reader.result(DEADLINE) is True  # ... and admitted once it timed out
    rw.reader.release()
    assert _snap(rw) == (0, None, 0, 0)
    check_invariants(rw)


def test_thread_downgrade_admits_waiting_readers() -> None:
    rw = RWLock()
    rw.writer.acquire_blocking()
    _, reader = start_thread(lambda: (rw.reader.acquire_blocking(DEADLINE), rw.reader.release()))
    wait_until(lambda: _snap(rw)[2] == 1, "the reader queued")
    rw.writer.downgrade()
    reader.result(DEADLINE)
    rw.reader.release()
    assert _snap(rw) == (0, None, 0, 0)


def test_thread_exiting_with_write_breaks_waiting_readers() -> None:
    rw = RWLock()
    thread, fut = start_thread(rw.writer.acquire_blocking)
    assert fut.result(DEADLINE)
    thread.join(DEADLINE)
    with pytest.raises(anyio.BrokenResourceError):
        rw.reader.acquire_blocking(timeout=DEADLINE)
    with pytest.raises(anyio.WouldBlock):
        rw.reader.acquire_nowait()


def test_thread_exiting_with_read_breaks_writers_not_readers() -> None:
    rw = RWLock()
    thread, fut = start_thread(rw.reader.acquire_blocking)
    assert fut.result(DEADLINE)
    thread.join(DEADLINE)
    with pytest.raises(anyio.BrokenResourceError):
        rw.writer.acquire_blocking(timeout=DEADLINE)
    with rw.reader:
        pass


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["threadsafe", "in-process"])
async def test_dead_upgradable_holder_breaks_writers_and_upgradables_not_readers(
    anyio_backend: Any, kind: str
) -> None:
    """API.md's break rule, the same for both families: requests that conflict with the dead
    upgradable hold (write, upgradable) fail from then on; reads still go."""
    rw: Any = RWLock() if kind == "threadsafe" else aiolocks.RWLock()
    async with actors("dying", "late") as (dying, late):
        await dying.run(rw.upgradable.acquire)
        await dying.exit()
        for view in (rw.upgradable, rw.writer, rw.upgradable):  # once detected, and after
            op = late.start(view.acquire)
            with anyio.fail_after(DEADLINE):
                await op.done.wait()
            assert isinstance(op.exc, anyio.BrokenResourceError)
            with pytest.raises(anyio.WouldBlock):
                await late.run(view.acquire_nowait)
        await late.run(rw.reader.acquire)
        await late.run(rw.reader.release)
        check_invariants(rw)


def test_thread_exiting_with_upgradable_breaks_writers_and_upgradables_not_readers() -> None:
    rw = RWLock()
    thread, fut = start_thread(rw.upgradable.acquire_blocking)
    assert fut.result(DEADLINE)
    thread.join(DEADLINE)
    for view in (rw.upgradable, rw.writer, rw.upgradable):
        with pytest.raises(anyio.BrokenResourceError):
            view.acquire_blocking(timeout=DEADLINE)
        with pytest.raises(anyio.WouldBlock):
            view.acquire_nowait()
    with rw.reader:
        pass


@pytest.mark.anyio
async def test_blocking_acquire_in_a_running_loop_is_refused(anyio_backend: Any) -> None:
    rw = RWLock()
    for view in (rw.reader, rw.writer, rw.upgradable):
        with pytest.raises(RuntimeError, match="async with"):
            view.acquire_blocking()
    assert _snap(rw) == (0, None, 0, 0)


# --- loops and threads together ---------------------------------------------------------------


def test_readers_on_four_loops_and_threads_share_while_writers_exclude() -> None:
    rw = RWLock()
    counter = 0
    writes = 0

    async def task_worker(i: int) -> None:
        nonlocal counter, writes
        for j in range(60):
            if (i + j) % 5 == 0:
                async with rw.writer:
                    value = counter
                    await anyio.lowlevel.checkpoint()
                    counter = value + 1
                    writes += 1
            else:
                async with rw.reader:
                    assert rw.statistics().writer is None
                    await anyio.lowlevel.checkpoint()

    def thread_worker(i: int) -> None:
        nonlocal counter, writes
        for j in range(60):
            if (i + j) % 5 == 0:
                with rw.writer:
                    value = counter
                    counter = value + 1
                    writes += 1
            else:
                with rw.reader:
                    assert rw.statistics().writer is None

    trio_thread = TrioThread()
    with loop_threads(4, uvloop_first=True) as loops:
        futs = [lt.submit(task_worker(n)) for n, lt in enumerate(loops * 2)]
        futs += [trio_thread.submit(lambda n=n: task_worker(n)) for n in range(2)]
        futs += [start_thread(lambda n=n: thread_worker(n))[1] for n in range(4)]
        for fut in futs:
            fut.result(DEADLINE * 3)
    trio_thread.close()
    assert counter == writes > 0
    assert _snap(rw) == (0, None, 0, 0)
    check_invariants(rw)


def test_trio_writer_hands_off_to_thread_readers() -> None:
    rw = RWLock()
    trio_thread = TrioThread()
    proceed = threading.Event()

    async def write() -> None:
        async with rw.writer:
            await trio.to_thread.run_sync(proceed.wait, DEADLINE)

    fut = trio_thread.submit(write)
    wait_until(rw.writer.locked, "the trio task took write")
    readers = [
        start_thread(lambda: (rw.reader.acquire_blocking(DEADLINE), rw.reader.release()))[1]
        for _ in range(3)
    ]
    wait_until(lambda: _snap(rw)[2] == 3, "the readers queued")
    proceed.set()
    fut.result(DEADLINE)
    for r in readers:
        r.result(DEADLINE)
    trio_thread.close()
    assert _snap(rw) == (0, None, 0, 0)


# --- found by the model test (tests/test_threadsafe_model.py) ---------------------------------


@pytest.mark.anyio
async def test_upgrade_queued_behind_a_writer_that_waits_for_it_completes(
    anyio_backend: Any,
) -> None:
    """The writer waits for the upgradable holder, which waits in upgrade() for the last
    reader: once that reader leaves, the upgrade must go first (it used to wait behind the
    writer in queue order, and both waited for ever)."""
    rw = RWLock()
    async with actors("reader", "upgrader", "writer") as (reader, upgrader, writer):
        await reader.run(rw.reader.acquire)
        await upgrader.run(rw.upgradable.acquire)
        writing = writer.start(rw.writer.acquire)
        await settle()
        upgrading = upgrader.start(rw.upgradable.upgrade)
        await settle()
        assert not upgrading.finished
        await reader.run(rw.reader.release)
        assert upgrading.ok, "the pending upgrade was not granted when the last reader left"
        assert not writing.finished
        check_invariants(rw)
        await upgrader.run(rw.upgradable.release)
        assert writing.ok
        await writer.run(rw.writer.release)
        assert_idle(rw)


@pytest.mark.anyio
async def test_pending_upgrade_holds_back_a_reader_queued_before_it(anyio_backend: Any) -> None:
    """A reader queued behind a writer, before the upgrade: when the writer leaves, the pending
    upgrade still holds it back (it used to be admitted, and the upgrade waited for it too)."""
    rw = RWLock()
    async with actors("r1", "upgrader", "writer", "r2") as (r1, upgrader, writer, r2):
        await r1.run(rw.reader.acquire)
        await upgrader.run(rw.upgradable.acquire)
        writing = writer.start(rw.writer.acquire)
        await settle()
        reading = r2.start(rw.reader.acquire)
        await settle()
        upgrading = upgrader.start(rw.upgradable.upgrade)
        await settle()
        writing.cancel()
        await settle()
        assert writing.cancelled
        assert not reading.finished, "a reader went ahead of a pending upgrade"
        check_invariants(rw)
        await r1.run(rw.reader.release)
        assert upgrading.ok
        assert not reading.finished
        await upgrader.run(rw.upgradable.release)
        assert reading.ok
        await r2.run(rw.reader.release)
        assert_idle(rw)


def test_thread_upgrade_queued_behind_a_waiting_writer_completes() -> None:
    rw = RWLock()
    rw.reader.acquire_blocking()
    writer_queued = threading.Event()

    def upgrade() -> bool:
        with rw.upgradable:
            assert writer_queued.wait(DEADLINE)
            return rw.upgradable.upgrade_blocking(DEADLINE)

    _, upgrader = start_thread(upgrade)
    wait_until(rw.upgradable.locked, "the upgradable lock taken")
    _, writer = start_thread(lambda: (rw.writer.acquire_blocking(DEADLINE), rw.writer.release()))
    wait_until(lambda: _snap(rw)[3] == 1, "the writer queued")
    writer_queued.set()
    wait_until(lambda: _snap(rw)[3] == 2, "the upgrade queued behind the writer")
    rw.reader.release()
    assert upgrader.result(DEADLINE) is True
    assert writer.result(DEADLINE)[0] is True
    assert _snap(rw) == (0, None, 0, 0)
    check_invariants(rw)
