"""Cancellation: one named regression test per bug class seen in peer libraries.

Every test runs on asyncio with anyio cancel scopes, on asyncio with native `task.cancel()`, on
asyncio+uvloop (both ways) and on trio with cancel scopes: the `case` fixture below replaces the
conftest's `anyio_backend` so each test sees one (backend, cancel mode) pair.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import sniffio

import aiolocks
from _actors import IDLE, Actor, Op, actors, assert_idle, settle, snap  # noqa: F401
from aiolocks import RWLock
from aiolocks._introspect import check_invariants

pytestmark = pytest.mark.anyio


_CASES: list[Any] = [
    pytest.param(("asyncio", {}, "scope"), id="asyncio-scope"),
    pytest.param(("asyncio", {}, "native"), id="asyncio-native"),
    pytest.param(("trio", {}, "scope"), id="trio-scope"),
]
if sys.platform != "win32":
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is in the test extra
        pass
    else:
        _CASES[2:2] = [
            pytest.param(("asyncio", {"use_uvloop": True}, "scope"), id="uvloop-scope"),
            pytest.param(("asyncio", {"use_uvloop": True}, "native"), id="uvloop-native"),
        ]


_SCOPE_CASES = [c for c in _CASES if c.values[0][2] == "scope"]
scope_cancellation_only = pytest.mark.parametrize("case", _SCOPE_CASES, indirect=True)


@pytest.fixture(params=_CASES)
def case(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def anyio_backend(case: tuple[str, dict[str, Any], str]) -> tuple[str, dict[str, Any]]:
    return case[0], case[1]


@pytest.fixture
def cancel_mode(case: tuple[str, dict[str, Any], str]) -> str:
    """Either "scope": anyio cancel scope (trio's way); "native": asyncio `task.cancel()`."""
    return case[2]


AnyLock = aiolocks.Lock | RWLock

# holder's mode, waiter's mode; "exclusive" means a plain Lock.
KINDS = {
    "lock": ("exclusive", "exclusive"),
    "write-behind-write": ("writer", "writer"),
    "read-behind-write": ("writer", "reader"),
    "write-behind-read": ("reader", "writer"),
    "upgradable-behind-write": ("writer", "upgradable"),
    "upgradable-behind-upgradable": ("upgradable", "upgradable"),
}


def views(kind: str) -> tuple[AnyLock, Any, Any]:
    hold_mode, wait_mode = KINDS[kind]
    if hold_mode == "exclusive":
        lock = aiolocks.Lock()
        return lock, lock, lock
    rw = RWLock()
    return rw, getattr(rw, hold_mode), getattr(rw, wait_mode)


def assert_free(lock: AnyLock) -> None:
    if isinstance(lock, RWLock):
        assert_idle(lock)
        return
    check_invariants(lock)
    stats = lock.statistics()
    assert (stats.locked, stats.owner, stats.tasks_waiting) == (False, None, 0)


def waiting(lock: AnyLock) -> int:
    if isinstance(lock, RWLock):
        stats = lock.statistics()
        return stats.readers_waiting + stats.writers_waiting
    return lock.statistics().tasks_waiting


# --- hand-off: a granted waiter that is cancelled passes the lock on -----------------------------


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "write-behind-read"])
async def test_waiter_granted_then_cancelled_passes_the_lock_on(
    kind: str, cancel_mode: str
) -> None:
    lock, hold, wait = views(kind)
    async with actors("b", "c") as (b, c):
        await hold.acquire()
        first = b.start(wait.acquire)
        await settle()
        second = c.start(wait.acquire)
        await settle()
        assert not first.finished
        assert not second.finished

        hold.release()  # grants b (and, for readers, c) ...
        first.cancel(cancel_mode)  # ... and b is cancelled before it ever runs
        await settle()
        if first.cancelled:
            check_invariants(lock)
        else:
            # A scope cancelled after the grant may come too late (trio's rule; anyio's asyncio
            # scopes skip a task whose wait already completed). A native cancel never is.
            assert cancel_mode != "native", "the CancelledError was swallowed"
            assert first.ok
            await b.run(wait.release)
        assert second.ok, "the grant was lost with the cancelled waiter"
        await c.run(wait.release)
        assert_free(lock)  # so the cancelled task holds nothing


@pytest.mark.parametrize("kind", list(KINDS))
async def test_waiter_cancelled_just_before_the_release_is_skipped(
    kind: str, cancel_mode: str
) -> None:
    lock, hold, wait = views(kind)
    async with actors("b", "c") as (b, c):
        await hold.acquire()
        first = b.start(wait.acquire)
        await settle()
        second = c.start(wait.acquire)
        await settle()
        first.cancel(cancel_mode)  # b's wake-up with the cancellation is still pending ...
        hold.release()  # ... when the lock is released
        await settle()
        assert first.cancelled
        assert second.ok
        await c.run(wait.release)
        assert_free(lock)


async def test_reader_behind_writer_cancelled_just_before_the_release_is_admitted(
    cancel_mode: str,
) -> None:
    # The release finds the writer's wait already cancelled (its task has not run yet) and
    # drops it; the reader that only waited because of that writer must be admitted then,
    # not stranded on a free lock.
    rw = RWLock()
    async with actors("w", "r") as (w, r):
        await rw.reader.acquire()
        writing = w.start(rw.writer.acquire)
        await settle()
        reading = r.start(rw.reader.acquire)
        await settle()
        writing.cancel(cancel_mode)
        rw.reader.release()
        await settle()
        assert writing.cancelled
        check_invariants(rw)
        assert reading.ok, "a reader was stranded behind an already-cancelled writer"
        await r.run(rw.reader.release)
    assert_idle(rw)


# --- a cancelled or timed-out acquire leaves nothing behind --------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
async def test_cancelled_waiter_leaves_no_state_and_the_next_waiter_is_served(
    kind: str, cancel_mode: str
) -> None:
    lock, hold, wait = views(kind)
    async with actors("b", "c") as (b, c):
        await hold.acquire()
        first = b.start(wait.acquire)
        await settle()
        second = c.start(wait.acquire)
        await settle()
        assert waiting(lock) == 2
        first.cancel(cancel_mode)
        await settle()
        assert first.cancelled
        assert waiting(lock) == 1
        check_invariants(lock)
        hold.release()
        await settle()
        assert second.ok
        await c.run(wait.release)
        assert_free(lock)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_timed_out_acquire_leaves_no_state(kind: str, cancel_mode: str) -> None:
    lock, hold, wait = views(kind)

    async def acquire_with_timeout() -> None:
        if cancel_mode == "native":
            await asyncio.wait_for(wait.acquire(), 0.01)
        else:
            with anyio.fail_after(0.01):
                await wait.acquire()

    async with actors("b") as (b,):
        await hold.acquire()
        attempt = b.start(acquire_with_timeout)
        with anyio.fail_after(5):
            await attempt.done.wait()
        assert isinstance(attempt.exc, (TimeoutError, asyncio.TimeoutError))
        await settle()
        assert waiting(lock) == 0
        check_invariants(lock)
        hold.release()
        assert_free(lock)


@scope_cancellation_only
@pytest.mark.parametrize("kind", list(KINDS))
async def test_acquire_in_an_already_cancelled_scope_takes_nothing(kind: str) -> None:
    lock, _, wait = views(kind)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await wait.acquire()
    assert scope.cancelled_caught
    assert_free(lock)


# --- readers behind a cancelled writer (aiorwlock's bug) -----------------------------------------


async def test_readers_behind_cancelled_writer_are_admitted_while_readers_hold(
    cancel_mode: str,
) -> None:
    rw = RWLock()
    async with actors("r1", "w", "r2", "r3") as (r1, w, r2, r3):
        await r1.run(rw.reader.acquire)
        writing = w.start(rw.writer.acquire)
        await settle()
        blocked = [r2.start(rw.reader.acquire), r3.start(rw.reader.acquire)]
        await settle()
        assert not any(op.finished for op in blocked)
        assert snap(rw) == (1, None, 2, 1)

        writing.cancel(cancel_mode)
        await settle()
        assert writing.cancelled
        assert all(op.ok for op in blocked), "readers stayed parked behind a cancelled writer"
        assert snap(rw) == (3, None, 0, 0)
        for actor in (r1, r2, r3):
            await actor.run(rw.reader.release)
    assert_idle(rw)


async def test_reader_behind_cancelled_writer_still_waits_for_a_later_writer(
    cancel_mode: str,
) -> None:
    rw = RWLock()
    async with actors("r1", "w1", "r2", "w2", "r3") as (r1, w1, r2, w2, r3):
        await r1.run(rw.reader.acquire)
        first_writer = w1.start(rw.writer.acquire)
        await settle()
        before_w2 = r2.start(rw.reader.acquire)
        await settle()
        second_writer = w2.start(rw.writer.acquire)
        await settle()
        after_w2 = r3.start(rw.reader.acquire)
        await settle()

        first_writer.cancel(cancel_mode)
        await settle()
        assert first_writer.cancelled
        assert before_w2.ok
        assert not after_w2.finished, "w2 still waits: readers that came after it queue"
        assert snap(rw) == (2, None, 1, 1)
        await r1.run(rw.reader.release)
        await r2.run(rw.reader.release)
        assert second_writer.ok
        await w2.run(rw.writer.release)
        assert after_w2.ok
        await r3.run(rw.reader.release)
    assert_idle(rw)


async def test_cancelled_writer_behind_readers_lets_next_writer_in_when_readers_leave(
    cancel_mode: str,
) -> None:
    rw = RWLock()
    async with actors("r", "w1", "w2") as (r, w1, w2):
        await r.run(rw.reader.acquire)
        first = w1.start(rw.writer.acquire)
        await settle()
        second = w2.start(rw.writer.acquire)
        await settle()
        first.cancel(cancel_mode)
        await settle()
        assert first.cancelled
        assert not second.finished
        await r.run(rw.reader.release)
        assert second.ok
        await w2.run(rw.writer.release)
    assert_idle(rw)


# --- a reader in a group of readers admitted together --------------------------------------------


async def test_reader_cancelled_as_its_group_is_admitted_holds_nothing(cancel_mode: str) -> None:
    rw = RWLock()
    async with actors("r1", "r2", "r3", "w2") as (r1, r2, r3, w2):
        await rw.writer.acquire()
        group = [actor.start(rw.reader.acquire) for actor in (r1, r2, r3)]
        await settle()
        next_writer = w2.start(rw.writer.acquire)
        await settle()
        assert snap(rw) == (0, anyio.get_current_task(), 3, 1)

        rw.writer.release()  # admits all three readers ...
        group[1].cancel(cancel_mode)  # ... and r2 is cancelled before it runs
        await settle()
        assert group[0].ok
        assert group[2].ok
        if not group[1].cancelled:
            assert cancel_mode != "native", "the CancelledError was swallowed"
            await r2.run(rw.reader.release)
        assert snap(rw) == (2, None, 0, 1)
        await r1.run(rw.reader.release)
        assert not next_writer.finished
        await r3.run(rw.reader.release)
        assert next_writer.ok, "the cancelled reader kept a read hold"
        await w2.run(rw.writer.release)
    assert_idle(rw)


async def test_reader_cancelled_in_a_waiting_group_is_skipped(cancel_mode: str) -> None:
    rw = RWLock()
    async with actors("r1", "r2", "r3") as (r1, r2, r3):
        await rw.writer.acquire()
        group = [actor.start(rw.reader.acquire) for actor in (r1, r2, r3)]
        await settle()
        group[1].cancel(cancel_mode)
        await settle()
        assert group[1].cancelled
        assert snap(rw) == (0, anyio.get_current_task(), 2, 0)
        rw.writer.release()
        await settle()
        assert group[0].ok
        assert group[2].ok
        assert snap(rw) == (2, None, 0, 0)
        await r1.run(rw.reader.release)
        await r3.run(rw.reader.release)
    assert_idle(rw)


# --- a pending upgrade that is cancelled ---------------------------------------------------------


async def test_cancelled_upgrade_admits_queued_readers_and_keeps_the_upgradable_hold(
    cancel_mode: str,
) -> None:
    rw = RWLock()
    async with actors("u", "r1", "r2", "w") as (u, r1, r2, w):
        await u.run(rw.upgradable.acquire)
        await r1.run(rw.reader.acquire)
        upgrading = u.start(rw.upgradable.upgrade)
        await settle()
        reading = r2.start(rw.reader.acquire)
        await settle()
        writing = w.start(rw.writer.acquire)
        await settle()
        assert not reading.finished
        assert snap(rw) == (2, None, 1, 2)

        upgrading.cancel(cancel_mode)
        await settle()
        assert upgrading.cancelled
        assert reading.ok, "readers queued behind the cancelled upgrade must be admitted"
        assert not writing.finished
        assert snap(rw) == (3, None, 0, 1)
        version = rw.version
        assert version % 2 == 0

        with pytest.raises(anyio.WouldBlock):
            await u.run(rw.upgradable.upgrade_nowait)
        await r1.run(rw.reader.release)
        await r2.run(rw.reader.release)
        await u.run(rw.upgradable.upgrade)  # the upgradable hold is still there
        assert rw.statistics().writer == u.info
        assert rw.version == version + 1
        await u.run(rw.upgradable.release)
        assert writing.ok
        await w.run(rw.writer.release)
    assert_idle(rw)


async def test_upgrade_granted_then_cancelled_leaves_a_consistent_hold(cancel_mode: str) -> None:
    rw = RWLock()
    async with actors("u", "r1", "r2") as (u, r1, r2):
        await u.run(rw.upgradable.acquire)
        await r1.run(rw.reader.acquire)
        upgrading = u.start(rw.upgradable.upgrade)
        await settle()
        reading = r2.start(rw.reader.acquire)
        await settle()

        def release_and_cancel() -> None:
            rw.reader.release()  # grants the upgrade ...
            upgrading.cancel(cancel_mode)  # ... which is cancelled before u runs

        await r1.run(release_and_cancel)
        await settle()
        check_invariants(rw)
        if upgrading.cancelled:
            assert reading.ok, "the upgrade was undone, so queued readers come in"
            assert snap(rw) == (2, None, 0, 0)
            assert rw.version % 2 == 0
            await r2.run(rw.reader.release)
        else:
            assert cancel_mode != "native", "the CancelledError was swallowed"
            assert rw.statistics().writer == u.info
            assert not reading.finished
        await u.run(rw.upgradable.release)
        if not upgrading.cancelled:
            assert reading.ok
            await r2.run(rw.reader.release)
    assert_idle(rw)


# --- release is synchronous ----------------------------------------------------------------------


@scope_cancellation_only
@pytest.mark.parametrize("kind", list(KINDS))
async def test_release_works_inside_a_cancelled_or_shielded_scope(kind: str) -> None:
    for shield in (False, True):
        lock, hold, wait = views(kind)
        async with actors("next") as (nxt,):
            await hold.acquire()
            queued = nxt.start(wait.acquire)
            await settle()
            assert not queued.finished
            # No await inside on purpose: release() must work without one.
            with anyio.CancelScope() as outer:  # noqa: ASYNC100
                outer.cancel()
                with anyio.CancelScope(shield=shield):  # noqa: ASYNC100
                    assert not inspect.iscoroutinefunction(hold.release)
                    assert hold.release() is None
            assert not outer.cancelled_caught, "release() must not be a checkpoint"
            await settle()
            assert queued.ok
            await nxt.run(wait.release)
        assert_free(lock)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("shield", [False, True], ids=["plain-finally", "shielded-finally"])
async def test_release_in_finally_after_cancellation(
    kind: str, shield: bool, cancel_mode: str
) -> None:
    lock, hold, wait = views(kind)

    async def hold_forever() -> None:
        await hold.acquire()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=shield):  # noqa: ASYNC100
                hold.release()

    async with actors("holder", "next") as (holder, nxt):
        holding = holder.start(hold_forever)
        await settle()
        queued = nxt.start(wait.acquire)
        await settle()
        assert not queued.finished
        holding.cancel(cancel_mode)
        await settle()
        assert holding.cancelled
        assert queued.ok
        await nxt.run(wait.release)
    assert_free(lock)


# --- cancellation at every await point -----------------------------------------------------------

checkpoint = anyio.lowlevel.checkpoint


async def _reader(rw: RWLock, mutex: aiolocks.Lock) -> None:
    async with rw.reader:
        check_invariants(rw)
        await checkpoint()


async def _nested_reader(rw: RWLock, mutex: aiolocks.Lock) -> None:
    async with rw.reader:
        await checkpoint()
        async with rw.reader:
            await checkpoint()


async def _writer(rw: RWLock, mutex: aiolocks.Lock) -> None:
    async with rw.writer:
        check_invariants(rw)
        await checkpoint()
        async with rw.reader:
            await checkpoint()


async def _upgrader(rw: RWLock, mutex: aiolocks.Lock) -> None:
    async with rw.upgradable:
        await checkpoint()
        await rw.upgradable.upgrade()
        check_invariants(rw)
        await checkpoint()
        rw.writer.downgrade()
        await checkpoint()


async def _downgrader(rw: RWLock, mutex: aiolocks.Lock) -> None:
    await rw.writer.acquire()
    downgraded = False
    try:
        await checkpoint()
        rw.writer.downgrade()
        downgraded = True
        await checkpoint()
    finally:
        (rw.reader if downgraded else rw.writer).release()


async def _mutex_user(rw: RWLock, mutex: aiolocks.Lock) -> None:
    async with mutex:
        check_invariants(mutex)
        await checkpoint()
        async with rw.reader:
            await checkpoint()


WORKERS: list[Callable[[RWLock, aiolocks.Lock], Any]] = [
    _reader,
    _writer,
    _reader,
    _upgrader,
    _mutex_user,
    _nested_reader,
    _writer,
    _downgrader,
    _mutex_user,
    _reader,
]


class _Slot:
    """One scenario task: its scope and native task, so a killer can cancel it either way."""

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None
        self.task: asyncio.Task[Any] | None = None
        self.cancel_early = False
        self.native_cancelled = False
        self.finished = False

    def cancel(self, mode: str) -> None:
        if self.finished:
            return
        if mode == "native":
            if self.task is not None:
                self.native_cancelled = True
                self.task.cancel()
        elif self.scope is None:
            self.cancel_early = True
        else:
            self.scope.cancel()

    async def run(self, worker: Callable[[RWLock, aiolocks.Lock], Any], *args: Any) -> None:
        if sniffio.current_async_library() == "asyncio":
            self.task = asyncio.current_task()
        try:
            with anyio.CancelScope() as self.scope:
                if self.cancel_early:
                    self.scope.cancel()
                await worker(*args)
        except anyio.get_cancelled_exc_class():
            if not self.native_cancelled:
                raise
            uncancel = getattr(asyncio.current_task(), "uncancel", None)
            if uncancel is not None:
                uncancel()
        finally:
            self.finished = True


async def _scenario_cancelled_at(
    k: int, victims: list[int] | None, mode: str, fast: bool
) -> tuple[bool, RWLock, aiolocks.Lock]:
    """Run the scenario; after `k` checkpoints of a killer task, cancel `victims` (None: all).

    Returns whether the killer fired before the scenario had finished.
    """
    rw = RWLock(fast_acquire=fast)
    mutex = aiolocks.Lock(fast_acquire=fast)
    slots = [_Slot() for _ in WORKERS]
    fired = False
    with anyio.fail_after(5):
        async with anyio.create_task_group() as outer:
            scenario_scope = anyio.CancelScope()

            async def scenario() -> None:
                with scenario_scope:
                    async with anyio.create_task_group() as tg:
                        for slot, worker in zip(slots, WORKERS, strict=False):
                            tg.start_soon(slot.run, worker, rw, mutex)

            async def killer() -> None:
                nonlocal fired
                for _ in range(k):
                    await checkpoint()
                if all(slot.finished for slot in slots):
                    return
                fired = True
                if victims is None and mode == "scope":
                    scenario_scope.cancel()
                else:
                    for i in range(len(slots)) if victims is None else victims:
                        slots[i].cancel(mode)

            outer.start_soon(scenario)
            outer.start_soon(killer)
    return fired, rw, mutex


@pytest.mark.parametrize("fast", [False, True], ids=["checkpointing", "fast_acquire"])
async def test_cancelling_everything_at_every_await_point_leaves_locks_free(
    cancel_mode: str, fast: bool
) -> None:
    for k in range(500):
        fired, rw, mutex = await _scenario_cancelled_at(k, None, cancel_mode, fast)
        try:
            assert_free(rw)
            assert_free(mutex)
        except AssertionError as exc:
            raise AssertionError(f"cancelled at checkpoint {k}: {exc}") from exc
        if not fired:
            break
    else:
        pytest.fail("the scenario never finished before the killer")
    assert k > 3, "the scenario should span several checkpoints"


@pytest.mark.parametrize("fast", [False, True], ids=["checkpointing", "fast_acquire"])
async def test_cancelling_one_task_at_every_await_point_leaves_locks_free(
    cancel_mode: str, fast: bool
) -> None:
    for k in range(500):
        any_fired = False
        n = len(WORKERS)
        for victim in sorted({k % n, (k + n // 2) % n, (3 * k + 1) % n}):
            fired, rw, mutex = await _scenario_cancelled_at(k, [victim], cancel_mode, fast)
            any_fired = any_fired or fired
            try:
                assert_free(rw)
                assert_free(mutex)
            except AssertionError as exc:
                msg = f"task {victim} ({WORKERS[victim].__name__}) cancelled at checkpoint {k}"
                raise AssertionError(f"{msg}: {exc}") from exc
        if not any_fired:
            break
    else:
        pytest.fail("the scenario never finished before the killer")
