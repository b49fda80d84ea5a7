"""Bad input and misuse: each raises at once, says what is wrong, and leaves the lock as it was."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import anyio
import anyio.to_thread
import pytest

import aiolocks
import aiolocks.threadsafe
from aiolocks._introspect import check_invariants

pytestmark = pytest.mark.anyio

# Messages must name the problem; these are the words a reader would look for.
_NOT_HELD = r"(?i)hold|held|own"


class Case(NamedTuple):
    lock: Any
    check_invariants: Callable[[], None]


def _lock(**kwargs: Any) -> Case:
    lock = aiolocks.Lock(**kwargs)
    return Case(lock, partial(check_invariants, lock))


def _writer() -> Case:
    rw = aiolocks.RWLock()
    return Case(rw.writer, partial(check_invariants, rw))


def _reader() -> Case:
    rw = aiolocks.RWLock()
    return Case(rw.reader, partial(check_invariants, rw))


_CASES = [
    pytest.param(_lock, id="Lock"),
    pytest.param(lambda: _lock(fast_acquire=True), id="Lock-fast"),
    pytest.param(_writer, id="RWLock.writer"),
    pytest.param(_reader, id="RWLock.reader"),
]


@pytest.fixture(params=_CASES)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param()  # type: ignore[no-any-return]


def _enter_synchronously(lock: Any) -> None:
    with lock:
        pass  # pragma: no cover - the `with` statement itself must fail


# --- plain `with` -----------------------------------------------------------------------------


def test_plain_with_raises_typeerror_pointing_to_async_with(case: Case) -> None:
    before = case.lock.statistics()
    with pytest.raises(TypeError, match="async with"):
        _enter_synchronously(case.lock)
    assert case.lock.statistics() == before
    assert not case.lock.locked()
    case.check_invariants()


async def test_plain_with_while_held_raises_and_keeps_the_hold(case: Case) -> None:
    async with case.lock:
        before = case.lock.statistics()
        with pytest.raises(TypeError, match="async with"):
            _enter_synchronously(case.lock)
        assert case.lock.statistics() == before
        assert case.lock.locked()
        case.check_invariants()
    assert not case.lock.locked()
    case.check_invariants()


# --- release ----------------------------------------------------------------------------------


async def test_release_of_unheld_lock_says_it_is_not_held(case: Case) -> None:
    before = case.lock.statistics()
    with pytest.raises(RuntimeError, match=_NOT_HELD):
        case.lock.release()
    assert case.lock.statistics() == before
    case.check_invariants()


async def test_release_after_release_says_it_is_not_held(case: Case) -> None:
    await case.lock.acquire()
    case.lock.release()
    before = case.lock.statistics()
    with pytest.raises(RuntimeError, match=_NOT_HELD):
        case.lock.release()
    assert case.lock.statistics() == before
    assert not case.lock.locked()
    case.check_invariants()


async def test_release_by_another_task_says_it_is_not_held(case: Case) -> None:
    lock = case.lock
    holding = anyio.Event()
    done = anyio.Event()

    async def holder() -> None:
        async with lock:
            holding.set()
            await done.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await holding.wait()
            before = lock.statistics()
            with pytest.raises(RuntimeError, match=_NOT_HELD):
                lock.release()
            assert lock.statistics() == before
            assert lock.locked()
            case.check_invariants()
            done.set()
    assert not lock.locked()
    case.check_invariants()


def test_release_outside_any_event_loop_raises_runtimeerror(case: Case) -> None:
    before = case.lock.statistics()
    with pytest.raises(RuntimeError):
        case.lock.release()
    assert case.lock.statistics() == before
    case.check_invariants()


# --- a second event loop --------------------------------------------------------------------


def _attempt_in_other_loop(lock: Any) -> dict[str, Any]:
    """Run acquire() and acquire_nowait() on ``lock`` from a new asyncio loop in a new thread."""
    outcome: dict[str, Any] = {}
    attempted = threading.Event()

    async def take() -> str:
        await lock.acquire()
        lock.release()
        return "acquired"

    async def attempt() -> None:
        try:
            # Its own deadline: a hang here is reported, it does not stall the suite.
            outcome["acquire"] = await asyncio.wait_for(take(), timeout=2)
        except Exception as exc:
            outcome["acquire"] = exc
        try:
            lock.acquire_nowait()
        except Exception as exc:
            outcome["acquire_nowait"] = exc
        else:
            outcome["acquire_nowait"] = "acquired"
            lock.release()

    def run() -> None:
        try:
            asyncio.run(attempt())
        finally:
            attempted.set()

    thread = threading.Thread(target=run, name="second-loop", daemon=True)
    thread.start()
    assert attempted.wait(4), "the second loop's attempt hung"
    thread.join(4)
    assert not thread.is_alive()
    return outcome


async def test_use_from_second_loop_while_held_raises_runtimeerror(case: Case) -> None:
    lock = case.lock
    with anyio.fail_after(10):
        async with lock:
            before = lock.statistics()
            outcome = await anyio.to_thread.run_sync(_attempt_in_other_loop, lock)
            exc = outcome["acquire"]
            assert isinstance(exc, RuntimeError), exc
            assert "loop" in str(exc).lower(), str(exc)
            # The non-blocking form may also just say it would block; it must not acquire.
            assert isinstance(outcome["acquire_nowait"], (RuntimeError, anyio.WouldBlock))
            assert lock.statistics() == before
            assert lock.locked()
            case.check_invariants()
        assert not lock.locked()
        case.check_invariants()
        # Once idle, the lock may move to the other loop.
        outcome = await anyio.to_thread.run_sync(_attempt_in_other_loop, lock)
        assert outcome == {"acquire": "acquired", "acquire_nowait": "acquired"}
        assert not lock.locked()
        case.check_invariants()
        # ... and back again.
        async with lock:
            case.check_invariants()


async def test_use_from_second_loop_while_first_loop_waits_raises_runtimeerror() -> None:
    lock = aiolocks.Lock()
    queued = anyio.Event()

    async def waiter() -> None:
        queued.set()
        async with lock:
            pass

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await lock.acquire()
            tg.start_soon(waiter)
            await queued.wait()
            await anyio.wait_all_tasks_blocked()
            before = lock.statistics()
            outcome = await anyio.to_thread.run_sync(_attempt_in_other_loop, lock)
            assert isinstance(outcome["acquire"], RuntimeError)
            assert lock.statistics() == before
            check_invariants(lock)
            lock.release()
    assert not lock.locked()
    check_invariants(lock)


# --- constructor arguments ------------------------------------------------------------------

_CONSTRUCTORS = pytest.mark.parametrize(
    "cls",
    [aiolocks.Lock, aiolocks.RWLock, aiolocks.threadsafe.Lock, aiolocks.threadsafe.RWLock],
    ids=["Lock", "RWLock", "threadsafe.Lock", "threadsafe.RWLock"],
)


@_CONSTRUCTORS
@pytest.mark.parametrize("value", ["yes", None, 1, 0.0], ids=repr)
def test_fast_acquire_of_wrong_type_raises_typeerror(cls: Any, value: Any) -> None:
    with pytest.raises(TypeError, match="fast_acquire"):
        cls(fast_acquire=value)


@_CONSTRUCTORS
@pytest.mark.parametrize("value", [42, b"db", object()], ids=["int", "bytes", "object"])
def test_name_of_wrong_type_raises_typeerror(cls: Any, value: Any) -> None:
    with pytest.raises(TypeError, match="name"):
        cls(name=value)


@_CONSTRUCTORS
def test_constructor_arguments_are_keyword_only(cls: Any) -> None:
    with pytest.raises(TypeError):
        cls(True)


@_CONSTRUCTORS
def test_unknown_constructor_argument_raises_typeerror(cls: Any) -> None:
    with pytest.raises(TypeError, match="timeout"):
        cls(timeout=1.0)


# --- RWLock misuse ----------------------------------------------------------------------------


async def test_downgrade_without_any_hold_raises_runtimeerror() -> None:
    rw = aiolocks.RWLock()
    before = rw.statistics()
    with pytest.raises(RuntimeError, match=r"(?i)write|hold|held"):
        rw.writer.downgrade()
    assert rw.statistics() == before
    check_invariants(rw)


async def test_downgrade_while_holding_only_read_raises_runtimeerror() -> None:
    rw = aiolocks.RWLock()
    async with rw.reader:
        before = rw.statistics()
        with pytest.raises(RuntimeError, match=r"(?i)write|hold|held"):
            rw.writer.downgrade()
        assert rw.statistics() == before
        check_invariants(rw)
    assert rw.statistics().readers == 0
    check_invariants(rw)


async def test_downgrade_by_task_not_holding_the_write_raises_runtimeerror() -> None:
    rw = aiolocks.RWLock()
    holding = anyio.Event()
    done = anyio.Event()

    async def writer() -> None:
        async with rw.writer:
            holding.set()
            await done.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            await holding.wait()
            before = rw.statistics()
            with pytest.raises(RuntimeError, match=r"(?i)write|hold|held|own"):
                rw.writer.downgrade()
            assert rw.statistics() == before
            check_invariants(rw)
            done.set()
    assert not rw.writer.locked()
    check_invariants(rw)


async def test_downgrade_of_reentrant_write_hold_raises_runtimeerror() -> None:
    rw = aiolocks.RWLock()
    async with rw.writer, rw.writer:
        before = rw.statistics()
        with pytest.raises(RuntimeError):
            rw.writer.downgrade()
        assert rw.statistics() == before
        assert rw.statistics().writer == anyio.get_current_task()
        check_invariants(rw)
    assert rw.statistics().writer is None
    check_invariants(rw)


async def test_read_to_write_upgrade_raises_deadlockerror_and_keeps_read() -> None:
    rw = aiolocks.RWLock()
    async with rw.reader:
        before = rw.statistics()
        with pytest.raises(aiolocks.DeadlockError):
            await rw.writer.acquire()
        with pytest.raises(aiolocks.DeadlockError):
            rw.writer.acquire_nowait()
        assert rw.statistics() == before
        assert rw.statistics().readers == 1
        check_invariants(rw)
    assert rw.statistics().readers == 0
    check_invariants(rw)


# --- messages that say what to write instead -------------------------------------------------


async def test_async_with_on_the_rwlock_itself_says_to_use_reader_or_writer() -> None:
    rw = aiolocks.RWLock()
    with pytest.raises(TypeError, match=r"async with rw\.reader:.*async with rw\.writer:"):
        async with rw:  # type: ignore[attr-defined]
            pass
    with pytest.raises(TypeError, match=r"async with rw\.reader:"), rw:  # type: ignore[attr-defined]
        pass
    assert not rw.reader.locked()
    assert not rw.writer.locked()


async def test_awaiting_collection_lock_says_to_use_async_with() -> None:
    lock = aiolocks.Lock()
    coll = aiolocks.LockCollection(lock)
    key = aiolocks.TaskKey.get()
    with pytest.raises(TypeError, match=r"async with collection\.lock\(key\) as guard"):
        await coll.lock(key)  # type: ignore[misc]
    assert not lock.locked()
    assert not key.in_use


@pytest.mark.parametrize("view", ["lock", "writer", "reader"])
async def test_lock_and_rwlock_word_the_release_error_the_same(view: str) -> None:
    rw = aiolocks.RWLock()
    lock: Any = {"lock": aiolocks.Lock(), "writer": rw.writer, "reader": rw.reader}[view]
    call = {"lock": "release()", "writer": "writer.release()", "reader": "reader.release()"}[view]
    with pytest.raises(RuntimeError, match="^" + re.escape(call) + r" of <aiolocks\.\w+"):
        lock.release()
    with pytest.raises(RuntimeError, match=r"it is not held$"):
        lock.release()
    async with anyio.create_task_group() as tg:
        taken, done = anyio.Event(), anyio.Event()

        async def holder() -> None:
            async with lock:
                taken.set()
                await done.wait()

        tg.start_soon(holder, name="holder")
        with anyio.fail_after(5):
            await taken.wait()
        with pytest.raises(RuntimeError, match="task 'holder' holds it; only the task holding"):
            lock.release()
        done.set()


def test_release_after_wait_for_acquire_names_the_helper_task_and_the_fix() -> None:
    # Before 3.12, asyncio.wait_for(lock.acquire(), t) runs acquire() in a helper task, which
    # then holds the lock; a helper task that finishes holding the lock looks the same on every
    # version, so the hint is tested the same way everywhere.
    async def main() -> None:
        lock = aiolocks.Lock()
        helper = asyncio.ensure_future(lock.acquire())
        await helper
        with pytest.raises(RuntimeError, match=r"has finished without releasing it.*wait_for"):
            lock.release()
        assert lock.locked()

    asyncio.run(main())
