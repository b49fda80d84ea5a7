"""Regression tests: each pins a bug that was found in aiolocks, by the behaviour it broke.

Grouped by bug.  Every async test runs on asyncio, asyncio+uvloop and trio unless it says why
not; scripted scenarios use the "actors" of `_actors.py`; every test that waits has a deadline.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio

import aiolocks
from _actors import actors, settle
from aiolocks import Condition, DeadlockError, Lock, LockCollection, RWLock, TaskKey
from aiolocks import debug as dbg
from aiolocks._introspect import check_invariants

pytestmark = pytest.mark.anyio


_serial = itertools.count()


def me() -> anyio.TaskInfo:
    return anyio.get_current_task()


def unique(name: str) -> str:
    """`name`, made unique in this process (a primitive of a failed test may linger)."""
    return f"{name}-{next(_serial)}"


def entry(name: str) -> dbg.PrimitiveInfo:
    """The one `aiolocks.debug.snapshot()` entry called `name`."""
    gc.collect()  # primitives of earlier tests may linger in reference cycles
    found = [p for p in dbg.snapshot() if p.name == name]
    assert len(found) == 1, found
    return found[0]


def skip_unless_asyncio() -> None:
    if sniffio.current_async_library() != "asyncio":
        pytest.skip("asyncio only: trio has no event loop a foreign thread could share")


# --- 1 + 9: inspection agrees with what each task holds -------------------------------------------


async def test_reader_locked_while_writer_holds_nested_read() -> None:
    name = unique("write-then-read")
    rw = RWLock(name=name)
    with anyio.fail_after(5):
        async with rw.writer:
            async with rw.reader:
                assert rw.reader.locked(), f"reader.locked() is False inside a read block: {rw!r}"
                assert rw.writer.locked()
                stats = rw.statistics()
                assert stats.readers == 1, stats
                assert stats.writer == me()
                modes = {h.mode for h in entry(name).holders if h.task == me().name}
                assert modes == {"write", "read"}
                assert "reader" in repr(rw).replace(me().name, "<this task>")
            assert not rw.reader.locked()
            assert rw.statistics().readers == 0
            assert rw.writer.locked()
        assert not rw.writer.locked()


async def test_reader_locked_while_only_upgradable_held() -> None:
    rw = RWLock()
    with anyio.fail_after(5):
        async with rw.upgradable:
            assert rw.upgradable.locked()
            assert rw.reader.locked(), f"reader.locked() is False while upgradable-held: {rw!r}"
            assert rw.statistics().readers == 1, rw.statistics()
            await rw.upgradable.upgrade()
            assert rw.writer.locked()
            assert not rw.reader.locked()
            assert rw.statistics().readers == 0, rw.statistics()
        assert not rw.writer.locked()
        assert not rw.upgradable.locked()


# --- 2: downgrade() inside a write hold -----------------------------------------------------------


async def _downgrade_in_async_with(rw: RWLock) -> None:
    async with rw.writer:
        rw.writer.downgrade()
        _assert_downgraded(rw)


async def _downgrade_then_release(rw: RWLock) -> None:
    await rw.writer.acquire()
    rw.writer.downgrade()
    _assert_downgraded(rw)
    rw.writer.release()


async def _downgrade_inside_nested_read(rw: RWLock) -> None:
    async with rw.writer, rw.reader:
        rw.writer.downgrade()
        _assert_downgraded(rw)


async def _downgrade_then_nested_read(rw: RWLock) -> None:
    async with rw.writer:
        rw.writer.downgrade()
        _assert_downgraded(rw)
        async with rw.reader:
            _assert_downgraded(rw)
        _assert_downgraded(rw)


def _assert_downgraded(rw: RWLock) -> None:
    assert rw.reader.locked(), repr(rw)
    assert not rw.writer.locked(), repr(rw)
    stats = rw.statistics()
    assert stats.readers == 1, stats
    assert stats.writer is None, stats


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_downgrade_in_async_with, id="async-with-writer"),
        pytest.param(_downgrade_then_release, id="acquire-downgrade-release"),
        pytest.param(_downgrade_inside_nested_read, id="writer-reader-downgrade"),
        pytest.param(_downgrade_then_nested_read, id="writer-downgrade-reader"),
    ],
)
async def test_releasing_a_downgraded_write_hold_releases_the_read_hold(
    body: Callable[[RWLock], Awaitable[None]],
) -> None:
    rw = RWLock()
    async with actors("other") as (other,):
        await body(rw)  # leaving it must not raise: the write hold became a read hold
        assert rw.statistics().readers == 0
        assert not rw.reader.locked()
        assert not rw.writer.locked()
        await other.run(rw.writer.acquire_nowait)  # free at once for another task
        await other.run(rw.writer.release)
    check_invariants(rw)


async def test_downgrade_admits_waiting_readers_and_leaving_the_block_admits_the_writer() -> None:
    rw = RWLock()
    async with actors("reader", "writer") as (r, w):
        async with rw.writer:
            reading = r.start(rw.reader.acquire)
            await settle()
            writing = w.start(rw.writer.acquire)
            await settle()
            assert not reading.finished
            assert not writing.finished
            rw.writer.downgrade()
            await settle()
            assert reading.ok  # admitted at the downgrade
            assert not writing.finished
            await r.run(rw.reader.release)
            assert not writing.finished  # this task still reads
        await settle()
        assert writing.ok  # leaving the block released the read hold it turned into
        assert rw.statistics().writer == w.info
        await w.run(rw.writer.release)
    assert rw.statistics().readers == 0
    assert not rw.writer.locked()


# --- 3: names in diagnostics ----------------------------------------------------------------------


async def test_named_condition_reports_its_contended_lock_under_its_name() -> None:
    cond = Condition(name="jobs")
    async with actors("jobs-holder", "jobs-waiter") as (a, b):
        await a.run(cond.acquire)
        waiting = b.start(cond.acquire)
        await settle()
        gc.collect()
        entries = [p for p in dbg.snapshot() if p.name == "jobs"]
        assert any(
            "jobs-holder" in {h.task for h in p.holders}
            and "jobs-waiter" in {w.task for w in p.waiters}
            for p in entries
        ), [p for p in dbg.snapshot() if p.holders or p.waiters]
        await a.run(cond.release)
        await settle()
        assert waiting.ok
        await b.run(cond.release)


def test_lock_collection_takes_a_name_shown_in_repr() -> None:
    coll = LockCollection(Lock(), Lock(), name="pair")
    assert "pair" in repr(coll)
    with pytest.raises(TypeError):
        LockCollection(Lock(), Lock(), name=42)


# --- 4 + 6: use from another thread is refused and changes nothing --------------------------------

KINDS = ["lock", "reader", "writer", "upgradable", "condition"]


def _make(kind: str, name: str | None = None) -> Any:
    """A fresh lock-like object of `kind` (for the RWLock kinds: that view of a new RWLock)."""
    if kind == "lock":
        return Lock(name=name)
    if kind == "condition":
        return Condition(name=name)
    return getattr(RWLock(name=name), kind)


def _observe(prim: Any) -> tuple[Any, ...]:
    """Everything the public API tells about who holds `prim`."""
    rw = getattr(prim, "_rw", None)
    if rw is not None:
        return (
            rw.reader.locked(),
            rw.writer.locked(),
            rw.upgradable.locked(),
            rw.statistics(),
            rw.writer.statistics(),
        )
    return (prim.locked(), prim.statistics())


def _assert_free(prim: Any) -> None:
    rw = getattr(prim, "_rw", None)
    if rw is not None:
        assert not (rw.reader.locked() or rw.writer.locked() or rw.upgradable.locked())
        assert rw.statistics().readers == 0
        check_invariants(rw)
    else:
        assert not prim.locked()


def _holder_name(prim: Any, name: str) -> str | None:
    """The name of the task holding `prim` (named `name`), from its statistics or the snapshot."""
    if isinstance(prim, Condition):
        owner = prim.statistics().lock_statistics.owner
    elif isinstance(prim, (Lock, aiolocks.WriteLock)):
        owner = prim.statistics().owner
    else:
        holders = entry(name).holders
        assert len(holders) == 1, holders
        return holders[0].task
    return None if owner is None else owner.name


def _misuse(prim: Any, op: str) -> None:
    getattr(prim, op)()


def _run_in_thread_and_join(fn: Callable[[], Any]) -> list[Any]:
    """Run `fn` in a new thread and join it here, blocking this event loop on purpose.

    The calling task stays the "current task" of its loop meanwhile, which is what a lock used
    from the other thread must not mistake for its caller.  Returns ``[result, exception]``.
    """
    out: list[Any] = [None, None]

    def target() -> None:
        try:
            out[0] = fn()
        except BaseException as exc:
            out[1] = exc

    thread = threading.Thread(target=target, name="aiolocks-foreign-thread", daemon=True)
    thread.start()
    thread.join(10)  # the deadline: the loop is blocked, so no cancel scope could fire
    assert not thread.is_alive(), "the foreign thread hung"
    return out


def _run_loop(anyio_backend: Any, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` on a new event loop of the same kind as the test's (asyncio or uvloop)."""
    if anyio_backend[1].get("use_uvloop"):
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


async def _take(prim: Any, kind: str) -> None:
    await prim.acquire()
    if kind == "condition":
        prim.notify()  # the condition has been used from this loop now, not only its lock


MISUSES = [(kind, op) for kind in KINDS for op in ("release", "acquire_nowait")]
MISUSES.append(("condition", "notify"))


@pytest.mark.parametrize(("kind", "op"), MISUSES, ids=[f"{k}-{o}" for k, o in MISUSES])
async def test_use_from_a_thread_without_event_loop_is_refused_while_holder_is_current_task(
    kind: str, op: str
) -> None:
    skip_unless_asyncio()
    prim = _make(kind)
    with anyio.fail_after(5):
        await _take(prim, kind)
        before = _observe(prim)
        _, exc = _run_in_thread_and_join(lambda: _misuse(prim, op))
        assert isinstance(exc, RuntimeError), exc
        assert not isinstance(exc, DeadlockError), exc
        assert _observe(prim) == before
        prim.release()
        _assert_free(prim)


@pytest.mark.parametrize(("kind", "op"), MISUSES, ids=[f"{k}-{o}" for k, o in MISUSES])
async def test_use_from_a_task_of_another_threads_loop_is_refused_while_holder_is_current_task(
    kind: str, op: str, anyio_backend: Any
) -> None:
    skip_unless_asyncio()
    prim = _make(kind)

    async def misuse_there() -> BaseException | None:
        try:
            _misuse(prim, op)
        except BaseException as exc:
            return exc
        return None

    with anyio.fail_after(5):
        await _take(prim, kind)
        before = _observe(prim)
        result, error = _run_in_thread_and_join(lambda: _run_loop(anyio_backend, misuse_there()))
        assert error is None, error
        assert isinstance(result, RuntimeError), result
        assert not isinstance(result, DeadlockError), result
        assert _observe(prim) == before
        prim.release()
        _assert_free(prim)


@pytest.mark.parametrize("kind", KINDS)
async def test_idle_lock_taken_by_a_task_of_another_threads_loop_records_that_task(
    kind: str, anyio_backend: Any
) -> None:
    skip_unless_asyncio()
    name = unique(f"idle-{kind}")
    prim = _make(kind, name)

    async def take_there() -> tuple[str, str | None]:
        here = asyncio.current_task().get_name()  # type: ignore[union-attr]
        await prim.acquire()
        try:
            return here, _holder_name(prim, name)
        finally:
            prim.release()

    with anyio.fail_after(5):
        await _take(prim, kind)  # first used from this loop, then idle
        prim.release()
        result, error = _run_in_thread_and_join(lambda: _run_loop(anyio_backend, take_there()))
        assert error is None, error
        there, recorded = result
        assert recorded != me().name, "recorded the main loop's current task as the holder"
        assert recorded == there
        _assert_free(prim)
        await _take(prim, kind)  # idle again: usable from this loop
        prim.release()
        _assert_free(prim)


async def _release_from_worker(
    prim: Any, outcome: list[BaseException | None], done: anyio.Event
) -> None:
    try:
        await anyio.to_thread.run_sync(prim.release)
    except RuntimeError as exc:
        outcome.append(exc)
    else:
        outcome.append(None)
    done.set()


@pytest.mark.parametrize("kind", KINDS)
async def test_release_from_worker_thread_is_refused_every_time(kind: str) -> None:
    """300 releases from a worker thread, timed at random against the holder's own steps.

    The holder yields a random number of times (so the worker gets the call at a varying
    moment) and then keeps its loop busy for a random while, so the worker acts sometimes
    while the loop is idle, sometimes while another task runs, sometimes while the holder is
    the current task.  The switch interval is shortened so the worker gets the GIL meanwhile.
    """
    skip_unless_asyncio()
    prim = _make(kind)
    rng = random.Random(20)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for trial in range(300):
                    await _take(prim, kind)
                    before = _observe(prim)
                    outcome: list[BaseException | None] = []
                    done = anyio.Event()
                    tg.start_soon(_release_from_worker, prim, outcome, done)
                    for _ in range(rng.randint(1, 3)):
                        await anyio.lowlevel.checkpoint()
                    end = time.perf_counter() + rng.uniform(0, 300e-6)
                    while time.perf_counter() < end:
                        pass
                    await done.wait()
                    assert isinstance(outcome[0], RuntimeError), f"trial {trial}: released"
                    assert _observe(prim) == before, f"trial {trial}"
                    prim.release()
                    _assert_free(prim)
    finally:
        sys.setswitchinterval(old_interval)


# --- 5: cancelled waiters are not kept alive by the lock ------------------------------------------


class Payload:
    """Stands for whatever a waiting task has on its stack."""

    __slots__ = ("__weakref__",)


WAITERS = 20


def _contended(kind: str) -> tuple[Any, Callable[[], Awaitable[Any]], Callable[[], Any], Any]:
    """(what the holder takes, what the waiters call, how they release, how many wait)."""
    if kind == "lock":
        lock = Lock()
        return lock, lock.acquire, lock.release, lambda: lock.statistics().tasks_waiting
    if kind == "condition":
        cond = Condition()
        return (
            cond,
            cond.acquire,
            cond.release,
            lambda: cond.statistics().lock_statistics.tasks_waiting,
        )
    rw = RWLock()
    view = rw.writer if kind == "writer" else rw.reader
    waiting = (
        (lambda: rw.statistics().writers_waiting)
        if kind == "writer"
        else (lambda: rw.statistics().readers_waiting)
    )
    return rw.writer, view.acquire, view.release, waiting


def _current_task_object() -> Any:
    if sniffio.current_async_library() == "asyncio":
        return asyncio.current_task()
    import trio

    return trio.lowlevel.current_task()


@pytest.mark.parametrize("cancel", ["scope", "native"])
@pytest.mark.parametrize("kind", ["lock", "writer", "reader", "condition"])
async def test_cancelled_waiters_are_not_kept_alive_by_the_lock(kind: str, cancel: str) -> None:
    """20 waiters cancelled behind a holder, one more still waiting: nothing of theirs survives.

    With a cancel scope each waiter swallows its cancellation and returns; natively (asyncio's
    ``Task.cancel()``) the CancelledError ends the task, which then keeps it and, through its
    traceback, the waiter's frame and its `payload`.  Only weak references are kept here, and
    the native waiters are plain asyncio tasks, so no task group holds their exceptions.
    """
    native = cancel == "native"
    if native and sniffio.current_async_library() != "asyncio":
        pytest.skip("native cancellation is asyncio's Task.cancel()")
    held, acquire, release, waiting = _contended(kind)
    refs: list[weakref.ref[Any]] = []  # each waiter's payload and task
    natives: list[weakref.ref[Any]] = []
    scopes: list[anyio.CancelScope] = []
    finished = anyio.Event()
    count = 0

    async def wait_with_payload() -> None:
        payload = Payload()
        refs.append(weakref.ref(payload))
        refs.append(weakref.ref(_current_task_object()))
        if native:
            await acquire()  # cancelled: the CancelledError ends the task
        else:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                await acquire()
            one_finished()
        assert payload is not None  # alive in this frame until the very end

    def one_finished(_: object = None) -> None:
        nonlocal count
        count += 1
        if count == WAITERS:
            finished.set()

    async def keep_waiting() -> None:
        await acquire()
        release()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await held.acquire()
            tg.start_soon(keep_waiting)
            await settle()
            for _ in range(WAITERS):
                if native:
                    task = asyncio.get_running_loop().create_task(wait_with_payload())
                    task.add_done_callback(one_finished)
                    natives.append(weakref.ref(task))
                    del task
                else:
                    tg.start_soon(wait_with_payload)
            await settle()
            assert waiting() == WAITERS + 1
            for ref in natives:
                ref().cancel()
            for scope in scopes:
                scope.cancel()
            scopes.clear()
            await finished.wait()
            await settle()
            assert waiting() == 1  # still held and contended
            gc.collect()
            alive = sum(ref() is not None for ref in refs)
            assert alive == 0, f"{alive} of the cancelled waiters' payloads and tasks survive"
            held.release()


# --- 7: trio guest mode on an asyncio loop --------------------------------------------------------


async def _guest_lock(trio: Any) -> None:
    lock = Lock()
    order: list[str] = []

    async def second() -> None:
        async with lock:
            order.append("second")

    async with trio.open_nursery() as nursery:
        await lock.acquire()
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert lock.statistics().tasks_waiting == 1
        order.append("first")
        lock.release()
    assert order == ["first", "second"]
    assert not lock.locked()


async def _guest_rwlock(trio: Any) -> None:
    rw = RWLock()
    order: list[str] = []

    async def reader() -> None:
        async with rw.reader:
            order.append("reader")

    async with trio.open_nursery() as nursery:
        await rw.writer.acquire()
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert rw.statistics().readers_waiting == 1
        order.append("writer")
        rw.writer.release()
    assert order == ["writer", "reader"]
    assert rw.statistics().readers == 0
    assert not rw.writer.locked()


async def _guest_condition(trio: Any) -> None:
    cond = Condition()
    ready: list[bool] = []

    async def consumer() -> None:
        async with cond:
            await cond.wait_for(lambda: ready)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert cond.statistics().tasks_waiting == 1
        async with cond:
            ready.append(True)
            cond.notify()
    assert not cond.locked()


@pytest.mark.parametrize(
    "case", [_guest_lock, _guest_rwlock, _guest_condition], ids=["lock", "rwlock", "condition"]
)
def test_primitives_work_in_trio_guest_mode_on_asyncio(case: Callable[[Any], Any]) -> None:
    import trio
    import trio.testing

    async def trio_main() -> None:
        with trio.fail_after(5):
            await case(trio)

    async def host() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=done.set_result,
        )
        outcome = await asyncio.wait_for(done, 10)
        outcome.unwrap()

    asyncio.run(host())


# --- 8: a collection guard released from another task releases nothing ----------------------------


def _leave_with(guard: aiolocks.CollectionGuard) -> None:
    with guard:
        pass


async def _leave_async_with(guard: aiolocks.CollectionGuard) -> None:
    async with guard:
        pass


@pytest.mark.parametrize(
    "leave",
    [
        pytest.param(lambda guard: guard.release(), id="release"),
        pytest.param(_leave_with, id="with"),
        pytest.param(_leave_async_with, id="async-with"),
    ],
)
async def test_collection_guard_released_by_another_task_releases_nothing(
    leave: Callable[[aiolocks.CollectionGuard], Any],
) -> None:
    locks = [Lock() for _ in range(5)]
    coll = LockCollection(*locks)
    async with actors("owner", "intruder") as (a, b):
        key = await a.run(TaskKey.get)
        guard = await a.run(lambda: coll.lock_nowait(key))
        with pytest.raises(RuntimeError):
            await b.run(lambda: leave(guard))
        assert [lock.locked() for lock in locks] == [True] * 5
        assert all(lock.statistics().owner == a.info for lock in locks)
        assert key.in_use
        await a.run(guard.release)
        assert not any(lock.locked() for lock in locks)
        assert not key.in_use


# --- 10: trio's StrictFIFOLock in a LockCollection ------------------------------------------------


async def test_collection_takes_trio_strict_fifo_lock() -> None:
    if sniffio.current_async_library() != "trio":
        pytest.skip("trio.StrictFIFOLock needs trio")
    import trio

    fifo = trio.StrictFIFOLock()
    lock = Lock()
    coll = LockCollection(fifo, lock)
    key = TaskKey.get()
    with anyio.fail_after(5):
        async with coll.lock(key):
            assert fifo.locked()
            assert lock.locked()
        assert not fifo.locked()
        assert not lock.locked()
        guard = coll.lock_nowait(key)
        assert fifo.locked()
        assert lock.locked()
        guard.release()
        async with actors("fifo-holder") as (other,):
            await other.run(fifo.acquire)
            with pytest.raises(anyio.WouldBlock):
                coll.lock_nowait(key)
            assert not lock.locked()
            assert not key.in_use
            await other.run(fifo.release)
        assert not fifo.locked()
