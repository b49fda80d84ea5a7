"""``aiolocks.Condition`` over each lock it accepts, on asyncio, asyncio+uvloop and trio.

Most tests run for every kind of lock a condition can use (``KINDS``): the default
``aiolocks.Lock``, ``rw.writer``, ``rw.reader`` and ``anyio.Lock``. Cancellation tests run with
anyio cancel scopes on every backend and with native ``task.cancel()`` on asyncio.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import random
import sys
import weakref
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import sniffio
import trio

import aiolocks
from aiolocks import Condition, RWLock
from aiolocks._introspect import check_invariants

pytestmark = pytest.mark.anyio


# --- kinds of lock under the condition ------------------------------------------------------


class Made(NamedTuple):
    """A condition, the RWLock behind it (if any), and the invariant check of its lock."""

    cond: Condition
    rw: RWLock | None
    check_invariants: Callable[[], None]


class Kind(NamedTuple):
    id: str
    make: Callable[[], Made]
    #: holding the lock excludes every other task that takes it through the same view
    exclusive: bool
    #: the lock notices a holder that exits holding it (anyio.Lock does not)
    detects_owner_exit: bool


def _default() -> Made:
    cond = Condition()
    return Made(cond, None, partial(check_invariants, cond.lock))


def _writer() -> Made:
    rw = RWLock()
    return Made(Condition(rw.writer), rw, partial(check_invariants, rw))


def _reader() -> Made:
    rw = RWLock()
    return Made(Condition(rw.reader), rw, partial(check_invariants, rw))


def _anyio() -> Made:
    return Made(Condition(anyio.Lock()), None, lambda: None)


KINDS = [
    Kind("Lock", _default, exclusive=True, detects_owner_exit=True),
    Kind("RWLock.writer", _writer, exclusive=True, detects_owner_exit=True),
    Kind("RWLock.reader", _reader, exclusive=False, detects_owner_exit=True),
    Kind("anyio.Lock", _anyio, exclusive=True, detects_owner_exit=False),
]


def _params(predicate: Callable[[Kind], bool] = lambda k: True) -> list[Any]:
    return [pytest.param(k, id=k.id) for k in KINDS if predicate(k)]


@pytest.fixture(params=_params())
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=_params(lambda k: k.exclusive))
def exclusive_kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=_params(lambda k: k.exclusive and k.detects_owner_exit))
def breakable_kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


# (backend, cancel mode) pairs: "scope" is an anyio cancel scope, "native" asyncio's task.cancel().
_CANCEL_CASES: list[Any] = [
    pytest.param(("asyncio", {}), "scope", id="asyncio-scope"),
    pytest.param(("asyncio", {}), "native", id="asyncio-native"),
    pytest.param(("trio", {}), "scope", id="trio-scope"),
]
if sys.platform != "win32":
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is in the test extra
        pass
    else:
        _CANCEL_CASES[2:2] = [
            pytest.param(("asyncio", {"use_uvloop": True}), "scope", id="uvloop-scope"),
            pytest.param(("asyncio", {"use_uvloop": True}), "native", id="uvloop-native"),
        ]

every_cancel_mode = pytest.mark.parametrize(("anyio_backend", "cancel_mode"), _CANCEL_CASES)
scope_cancel_only = pytest.mark.parametrize(
    ("anyio_backend", "cancel_mode"), [c for c in _CANCEL_CASES if c.values[1] == "scope"]
)
native_cancel_only = pytest.mark.parametrize(
    ("anyio_backend", "cancel_mode"), [c for c in _CANCEL_CASES if c.values[1] == "native"]
)


# --- helpers ------------------------------------------------------------------------------------


def _parked(task: asyncio.Task[Any]) -> bool:
    waiter = getattr(task, "_fut_waiter", None)
    return waiter is not None and not waiter.done()


async def settle() -> None:
    """Return once every other task is parked (a fast `anyio.wait_all_tasks_blocked()`)."""
    if sniffio.current_async_library() == "trio":
        import trio.testing

        await trio.testing.wait_all_tasks_blocked()
        return
    this = asyncio.current_task()
    for _ in range(10_000):
        await asyncio.sleep(0)
        if all(task is this or _parked(task) for task in asyncio.all_tasks()):
            return
    raise AssertionError("other tasks never parked")


def holds(made: Made) -> bool:
    """Whether the current task holds the condition's lock."""
    if made.rw is not None and made.cond.lock is made.rw.reader:
        # Read holders are not named by the statistics; any read hold and no writer is the best
        # non-destructive check. The callers then release(), which fails for a non-holder.
        stats = made.rw.statistics()
        return stats.readers > 0 and stats.writer is None
    return bool(made.cond.lock.statistics().owner == anyio.get_current_task())


def in_order(made: Made, log: list[str], expected: list[str]) -> bool:
    """Whether the woken tasks ran in the order they were notified (FIFO).

    The first n waiters are the ones woken, always. The order they then *run* in is fixed
    where the lock hands itself over in notify order (aiolocks.Lock, rw.writer) and on
    asyncio; on trio, tasks woken together run in an order trio shuffles on purpose, so for
    rw.reader (all run at once) and anyio.Lock (no hand-off from the condition) only the set
    is fixed.
    """
    ordered = made.rw is None or made.cond.lock is made.rw.writer
    if isinstance(made.cond.lock, anyio.Lock):
        ordered = False
    if ordered or sniffio.current_async_library() == "asyncio":
        return log == expected
    return sorted(log) == sorted(expected)


def owner(made: Made) -> Any:
    return made.cond.lock.statistics().owner


def assert_idle(made: Made) -> None:
    made.check_invariants()
    assert not made.cond.locked()
    assert made.cond.statistics().tasks_waiting == 0
    stats = made.cond.statistics().lock_statistics
    if made.rw is not None:
        rw_stats = made.rw.statistics()
        assert (rw_stats.readers, rw_stats.writer) == (0, None)
        assert rw_stats.readers_waiting == rw_stats.writers_waiting == 0
    else:
        assert (stats.locked, stats.owner, stats.tasks_waiting) == (False, None, 0)


class Sleeper:
    """A task that takes the condition's lock, waits on it, and records how the wait ended.

    It releases the lock afterwards, when it still holds it; ``held_after`` says whether it held
    the lock when ``wait()`` returned or raised.
    """

    def __init__(
        self,
        made: Made,
        name: str,
        log: list[str] | None = None,
        wait: Callable[[], Any] | None = None,
    ) -> None:
        self.made = made
        self.name = name
        self.log = log if log is not None else []
        self.wait = wait if wait is not None else made.cond.wait
        self.native: asyncio.Task[Any] | None = None
        self.info: anyio.TaskInfo | None = None
        self.scope = anyio.CancelScope()
        self.waiting = False
        self.outcome: str | None = None  # "returned", "cancelled", "broken", or an error repr
        self.held_after: bool | None = None
        self.release_error: BaseException | None = None
        self.done = anyio.Event()

    @property
    def woken(self) -> bool:
        return self.outcome == "returned"

    def cancel(self, mode: str) -> None:
        if mode == "native":
            assert self.native is not None
            self.native.cancel()
        else:
            self.scope.cancel()

    async def main(self) -> None:
        self.info = anyio.get_current_task()
        if sniffio.current_async_library() == "asyncio":
            self.native = asyncio.current_task()
        try:
            with self.scope:
                await self.made.cond.acquire()
                self.waiting = True
                try:
                    await self.wait()
                except anyio.get_cancelled_exc_class():
                    self.outcome = "cancelled"
                    self._after()
                    raise
                except anyio.BrokenResourceError:
                    self.outcome = "broken"
                    self._after()
                except Exception as exc:
                    self.outcome = repr(exc)
                    self._after()
                else:
                    self.outcome = "returned"
                    self.log.append(self.name)
                    self._after()
        except anyio.get_cancelled_exc_class():
            if self.outcome != "cancelled" or not self.scope.cancel_called:
                # A native task.cancel(): swallow it here (the scope did not catch it).
                uncancel = getattr(asyncio.current_task(), "uncancel", None)
                if uncancel is not None:
                    uncancel()
            else:  # pragma: no cover - the scope catches its own cancellation
                raise
        finally:
            self.done.set()

    def _after(self) -> None:
        self.held_after = holds(self.made)
        if self.outcome == "broken":
            return  # a broken lock cannot be released by a task that does not hold it
        try:
            self.made.cond.release()
        except RuntimeError as exc:
            self.release_error = exc


async def start_sleepers(
    tg: anyio.abc.TaskGroup, made: Made, n: int, log: list[str] | None = None, **kw: Any
) -> list[Sleeper]:
    """Start ``n`` sleepers one after the other; return once all of them sit in ``wait()``."""
    crew = []
    for i in range(n):
        s = Sleeper(made, f"s{i}", log, **kw)
        tg.start_soon(s.main, name=s.name)
        await settle()
        assert s.waiting, f"{s.name} did not get the lock"
        crew.append(s)
    assert made.cond.statistics().tasks_waiting == n
    return crew


# --- producers and consumers ------------------------------------------------------------------


async def test_producers_and_consumers_lose_and_duplicate_nothing(kind: Kind) -> None:
    made = kind.make()
    lock = made.cond.lock
    not_empty = made.cond
    not_full = Condition(lock)  # a second condition over the same lock
    rng = random.Random(20240601)
    producers, consumers, per_producer, capacity = 20, 20, 100, 8
    buffer: deque[int] = deque()
    consumed: list[int] = []
    producing = producers
    per_consumer = [0] * consumers

    async def jitter() -> None:
        for _ in range(rng.choice((0, 0, 1, 2))):
            await anyio.lowlevel.checkpoint()

    async def producer(p: int) -> None:
        nonlocal producing
        for i in range(per_producer):
            async with lock:
                await jitter()  # before the check: a reader lock lets others in at any await
                await not_full.wait_for(lambda: len(buffer) < capacity)
                assert holds(made)
                assert len(buffer) < capacity
                buffer.append(p * per_producer + i)
                if rng.random() < 0.2:
                    not_empty.notify_all()
                else:
                    not_empty.notify()
            await jitter()
        async with lock:
            producing -= 1
            if not producing:
                not_empty.notify_all()

    async def consumer(c: int) -> None:
        while True:
            async with lock:
                await jitter()
                await not_empty.wait_for(lambda: buffer or not producing)
                assert holds(made)
                if not buffer:
                    assert not producing
                    return
                consumed.append(buffer.popleft())
                per_consumer[c] += 1
                not_full.notify()
            await jitter()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for c in range(consumers):
                tg.start_soon(consumer, c)
            for p in range(producers):
                tg.start_soon(producer, p)
    assert sorted(consumed) == list(range(producers * per_producer))
    assert sum(1 for n in per_consumer if n) > 1  # the work was shared
    assert not buffer
    assert not_full.statistics().tasks_waiting == 0
    assert_idle(made)


async def test_waits_randomly_cancelled_always_end_holding_the_lock(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond
    rng = random.Random(7)
    total = 300
    items: deque[int] = deque()
    taken: list[int] = []
    scopes: dict[int, anyio.CancelScope] = {}
    cancelled = 0
    bad: list[str] = []
    done = False

    async def consumer(n: int) -> None:
        nonlocal cancelled
        while True:
            async with cond:
                with anyio.CancelScope() as scope:
                    scopes[n] = scope
                    try:
                        await cond.wait_for(lambda: items or done)
                    finally:
                        del scopes[n]
                        if not holds(made):
                            bad.append(f"consumer {n} left wait() without the lock")
                if scope.cancelled_caught:
                    cancelled += 1
                made.check_invariants()
                if items:
                    taken.append(items.popleft())
                elif done:
                    return
            await anyio.lowlevel.checkpoint()

    async def producer() -> None:
        nonlocal done
        for i in range(total):
            async with cond:
                items.append(i)
                if rng.random() < 0.8:
                    cond.notify(rng.randrange(1, 3))
                else:
                    cond.notify_all()
            for _ in range(rng.randrange(0, 3)):
                await anyio.lowlevel.checkpoint()
        async with cond:
            done = True
            cond.notify_all()

    async def chaos() -> None:
        while not done:
            if scopes:
                scopes[rng.choice(sorted(scopes))].cancel()
            for _ in range(rng.randrange(1, 4)):
                await anyio.lowlevel.checkpoint()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(consumer, n)
            tg.start_soon(producer)
            tg.start_soon(chaos)
    assert not bad
    assert cancelled > 0
    assert sorted(taken) == list(range(total))
    assert_idle(made)


# --- misuse -------------------------------------------------------------------------------------


async def test_wait_without_holding_the_lock_raises_runtimeerror_and_changes_nothing(
    kind: Kind,
) -> None:
    made = kind.make()
    cond = made.cond
    before = cond.statistics()
    with pytest.raises(RuntimeError):
        await cond.wait()
    with pytest.raises(RuntimeError):
        await cond.wait_for(lambda: False)
    assert cond.statistics() == before
    assert_idle(made)
    # Still fully usable.
    async with cond:
        cond.notify()
    assert_idle(made)


async def test_wait_while_another_task_holds_the_lock_raises_runtimeerror(
    exclusive_kind: Kind,
) -> None:
    made = exclusive_kind.make()
    cond = made.cond
    release = anyio.Event()

    async def hold() -> None:
        async with cond:
            await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await settle()
            before = cond.statistics()
            with pytest.raises(RuntimeError):
                await cond.wait()
            with pytest.raises(RuntimeError):
                cond.notify()
            with pytest.raises(RuntimeError):
                cond.notify_all()
            assert cond.statistics() == before
            made.check_invariants()
            release.set()
    assert_idle(made)


async def test_notify_without_holding_the_lock_raises_runtimeerror(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond
    with pytest.raises(RuntimeError):
        cond.notify()
    with pytest.raises(RuntimeError):
        cond.notify(0)
    with pytest.raises(RuntimeError):
        cond.notify_all()
    assert_idle(made)


async def test_notify_rejects_a_negative_or_non_int_count(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond
    async with cond:
        with pytest.raises(ValueError, match="-1"):
            cond.notify(-1)
        with pytest.raises(TypeError):
            cond.notify("x")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            cond.notify(1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            cond.notify(None)  # type: ignore[arg-type]
        cond.notify(0)
        cond.notify(5)  # more than the waiters: fine
    assert_idle(made)


async def _an_asyncio_lock() -> asyncio.Lock:
    return asyncio.Lock()  # made in a loop: on Python 3.9 asyncio.Lock() needs one


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: asyncio.run(_an_asyncio_lock()), id="asyncio.Lock"),
        pytest.param(lambda: "x", id="str"),
        pytest.param(lambda: RWLock(), id="RWLock"),
        pytest.param(lambda: RWLock().upgradable, id="RWLock.upgradable"),
        pytest.param(lambda: trio.Lock(), id="trio.Lock"),
        pytest.param(lambda: Condition(), id="Condition"),
        pytest.param(lambda: anyio.Semaphore(1), id="anyio.Semaphore"),
    ],
)
def test_non_lock_argument_raises_typeerror_naming_the_type(bad: Callable[[], Any]) -> None:
    obj = bad()
    with pytest.raises(TypeError, match=type(obj).__name__):
        Condition(obj)


async def test_plain_with_raises_and_says_async_with() -> None:
    cond = Condition()
    with pytest.raises((TypeError, RuntimeError), match="async with"), cond:  # type: ignore[attr-defined]
        pass  # pragma: no cover
    assert not cond.locked()


# --- wait() gives the lock back ----------------------------------------------------------------


async def test_wait_returns_holding_the_lock(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            (sleeper,) = await start_sleepers(tg, made, 1)
            assert not cond.locked() or not kind.exclusive
            made.check_invariants()
            async with cond:
                cond.notify()
                assert cond.statistics().tasks_waiting == 0
            await settle()
            assert sleeper.woken
            assert sleeper.held_after
            assert sleeper.release_error is None
    assert_idle(made)


async def test_wait_releases_the_lock_so_others_can_take_it(exclusive_kind: Kind) -> None:
    made = exclusive_kind.make()
    cond = made.cond
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            (sleeper,) = await start_sleepers(tg, made, 1)
            assert not cond.locked()
            cond.acquire_nowait()
            assert owner(made) == anyio.get_current_task()
            cond.notify()
            await settle()
            assert not sleeper.done.is_set()  # woken, but the lock is ours
            cond.release()
            await settle()
            assert sleeper.woken
            assert sleeper.held_after
    assert_idle(made)


async def test_reentrant_writer_wait_releases_every_level_and_restores_them() -> None:
    rw = RWLock()
    cond = Condition(rw.writer)
    me = anyio.get_current_task()
    got_in = anyio.Event()

    async def other() -> None:
        async with rw.writer:  # only possible if wait() let go of both levels
            got_in.set()
            cond.notify()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await rw.writer.acquire()
            await rw.writer.acquire()
            tg.start_soon(other)
            await cond.wait()
            assert got_in.is_set()
            assert rw.statistics().writer == me
            check_invariants(rw)
            rw.writer.release()
            assert rw.statistics().writer == me  # the second level came back too
            rw.writer.release()
            assert rw.statistics().writer is None
            with pytest.raises(RuntimeError):
                rw.writer.release()
    check_invariants(rw)
    assert rw.version % 2 == 0


async def test_reentrant_reader_wait_releases_every_level_and_restores_them() -> None:
    rw = RWLock()
    cond = Condition(rw.reader)
    wrote = anyio.Event()
    second_write = anyio.Event()

    async def writer(done: anyio.Event) -> None:
        async with rw.writer:
            done.set()

    async def notifier() -> None:
        await wrote.wait()
        async with rw.reader:
            cond.notify()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await rw.reader.acquire()
            await rw.reader.acquire()
            tg.start_soon(writer, wrote)  # only gets in if wait() let go of both read levels
            tg.start_soon(notifier)
            await cond.wait()
            assert wrote.is_set()
            check_invariants(rw)
            # Both levels are back: a writer has to wait until both are released.
            tg.start_soon(writer, second_write)
            await settle()
            assert not second_write.is_set()
            rw.reader.release()
            await settle()
            assert not second_write.is_set()
            rw.reader.release()
            await settle()
            assert second_write.is_set()
    with pytest.raises(RuntimeError):
        rw.reader.release()
    check_invariants(rw)
    assert rw.statistics().readers == 0


async def test_reader_condition_wakes_many_readers_that_then_read_together() -> None:
    rw = RWLock()
    cond = Condition(rw.reader)
    ready = False
    inside = 0
    go = anyio.Event()

    async def reader() -> None:
        nonlocal inside
        async with cond:
            await cond.wait_for(lambda: ready)
            inside += 1
            await go.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(reader)
            await settle()
            assert cond.statistics().tasks_waiting == 10
            assert rw.statistics().readers == 0
            async with cond:  # a reader notifies the other readers
                ready = True
                cond.notify_all()
            await settle()
            assert inside == 10
            assert rw.statistics().readers == 10  # all of them hold read at once
            check_invariants(rw)
            go.set()
    check_invariants(rw)
    assert rw.statistics().readers == 0


# --- cancellation -------------------------------------------------------------------------------


@every_cancel_mode
async def test_wait_cancelled_while_waiting_exits_holding_the_lock(
    kind: Kind, cancel_mode: str
) -> None:
    made = kind.make()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            (sleeper,) = await start_sleepers(tg, made, 1)
            sleeper.cancel(cancel_mode)
            await settle()
            assert sleeper.outcome == "cancelled"
            assert sleeper.held_after
            assert sleeper.release_error is None
    assert_idle(made)


@every_cancel_mode
async def test_wait_cancelled_while_the_lock_is_held_waits_for_it_then_holds_it(
    exclusive_kind: Kind, cancel_mode: str
) -> None:
    made = exclusive_kind.make()
    cond = made.cond
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            (sleeper,) = await start_sleepers(tg, made, 1)
            await cond.acquire()
            sleeper.cancel(cancel_mode)
            await settle()
            # Re-acquisition is shielded: it waits for the lock despite the cancellation.
            assert not sleeper.done.is_set()
            assert cond.statistics().tasks_waiting == 0
            assert owner(made) == anyio.get_current_task()
            made.check_invariants()
            cond.release()
            await settle()
            assert sleeper.outcome == "cancelled"
            assert sleeper.held_after
            assert sleeper.release_error is None
    assert_idle(made)


async def _cancel_while_reacquiring_after_notify(
    made: Made, cancel_mode: str
) -> tuple[Sleeper, Sleeper, bool]:
    """Two sleepers; notify(1) while we hold the lock; cancel the notified one while it is
    queued for (or waiting to take back) the lock; then release. Returns both sleepers and
    whether the second had been woken before the clean-up wakes everyone."""
    cond = made.cond
    async with anyio.create_task_group() as tg:
        first, second = await start_sleepers(tg, made, 2)
        await cond.acquire()
        cond.notify()
        await settle()  # first is woken and queued for (or waiting to take) the lock
        assert not first.done.is_set()
        first.cancel(cancel_mode)
        await settle()
        assert not first.done.is_set()  # re-acquisition is shielded
        made.check_invariants()
        cond.release()
        await settle()
        assert first.done.is_set()
        second_woken = second.woken
        tg.start_soon(_wake_all_later, made, second)
    return first, second, second_woken


async def _wake_all_later(made: Made, sleeper: Sleeper) -> None:
    """Let ``sleeper`` leave, whether or not it was woken, so the test can end."""
    if not sleeper.done.is_set():
        async with made.cond:
            made.cond.notify_all()


@every_cancel_mode
async def test_wait_cancelled_while_reacquiring_after_notify_ends_holding_the_lock(
    exclusive_kind: Kind, cancel_mode: str
) -> None:
    made = exclusive_kind.make()
    with anyio.fail_after(5):
        first, second, _ = await _cancel_while_reacquiring_after_notify(made, cancel_mode)
    assert first.outcome in ("cancelled", "returned")
    assert first.held_after
    assert first.release_error is None
    assert second.held_after
    assert_idle(made)


@every_cancel_mode
async def test_waiter_cancelled_while_reacquiring_passes_wakeup_on_cpython_lost_wakeup_bug(
    exclusive_kind: Kind, cancel_mode: str
) -> None:
    # gh-112202 (fixed in CPython 3.13): a wait() that ends in an exception after it was
    # notified never acted on the notification, so it must go to another waiter (a spurious
    # wake-up is allowed, a lost one is not). Here the cancellation hits while the notified
    # task waits to take the lock back.
    made = exclusive_kind.make()
    with anyio.fail_after(5):
        first, _, second_woken = await _cancel_while_reacquiring_after_notify(made, cancel_mode)
    if first.outcome == "cancelled":
        assert second_woken, "the wake-up was lost with the cancelled waiter"
    assert_idle(made)


async def _cancel_reader_while_reacquiring_behind_a_writer(
    made: Made, cancel_mode: str
) -> tuple[Sleeper, Sleeper, bool]:
    """Over rw.reader: two sleepers; notify(1); a writer goes in before the woken reader can
    take read back; cancel that reader there; let the writer go. Returns both sleepers and
    whether the second had been woken before the clean-up wakes everyone."""
    rw = made.rw
    assert rw is not None
    cond = made.cond
    writer_in = anyio.Event()
    writer_out = anyio.Event()

    async def writer() -> None:
        async with rw.writer:
            writer_in.set()
            await writer_out.wait()

    async with anyio.create_task_group() as tg:
        first, second = await start_sleepers(tg, made, 2)
        await rw.reader.acquire()
        tg.start_soon(writer)
        await settle()  # the writer queues behind our read hold
        cond.notify()
        rw.reader.release()  # the writer goes in; the woken reader must wait for it
        await settle()
        assert writer_in.is_set()
        assert not first.done.is_set()
        first.cancel(cancel_mode)
        await settle()
        assert not first.done.is_set()  # re-acquisition is shielded
        writer_out.set()
        await settle()
        assert first.done.is_set()
        second_woken = second.woken
        tg.start_soon(_wake_all_later, made, second)
    return first, second, second_woken


@every_cancel_mode
async def test_reader_wait_cancelled_while_reacquiring_behind_a_writer_ends_holding_read(
    cancel_mode: str,
) -> None:
    made = _reader()
    with anyio.fail_after(5):
        first, second, _ = await _cancel_reader_while_reacquiring_behind_a_writer(made, cancel_mode)
    assert first.outcome in ("cancelled", "returned")
    assert first.held_after
    assert first.release_error is None
    assert second.held_after
    assert_idle(made)


@every_cancel_mode
async def test_reader_cancelled_while_reacquiring_passes_wakeup_on_cpython_lost_wakeup_bug(
    cancel_mode: str,
) -> None:
    # As test_waiter_cancelled_while_reacquiring_passes_wakeup_on_cpython_lost_wakeup_bug, for
    # a condition over rw.reader, whose woken waiters take read back themselves.
    made = _reader()
    with anyio.fail_after(5):
        first, _, second_woken = await _cancel_reader_while_reacquiring_behind_a_writer(
            made, cancel_mode
        )
    if first.outcome == "cancelled":
        assert second_woken, "the wake-up was lost with the cancelled waiter"
    assert_idle(made)


@every_cancel_mode
async def test_wait_in_an_already_cancelled_scope_ends_holding_the_lock(
    kind: Kind, cancel_mode: str
) -> None:
    made = kind.make()
    cond = made.cond
    await cond.acquire()
    if cancel_mode == "scope":
        with anyio.CancelScope() as scope:
            scope.cancel()
            await cond.wait()
        assert scope.cancelled_caught
    else:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cond.wait()
        uncancel = getattr(task, "uncancel", None)
        if uncancel is not None:
            uncancel()
    assert holds(made)
    assert cond.statistics().tasks_waiting == 0
    cond.release()
    assert_idle(made)


async def _notified_then_cancelled(kind: Kind, cancel_mode: str) -> None:
    made = kind.make()
    cond = made.cond
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            first, second = await start_sleepers(tg, made, 2)
            async with cond:
                cond.notify(1)
                first.cancel(cancel_mode)  # before first ever runs again
            await settle()
            made.check_invariants()
            if first.outcome == "cancelled":
                assert second.woken, "the wake-up was lost with the cancelled waiter"
            else:
                # A scope cancelled after the wake-up may come too late (anyio's asyncio scopes
                # skip a task whose wait already completed): then first used the wake-up.
                assert cancel_mode != "native", "the CancelledError was swallowed"
                assert first.woken
                assert not second.done.is_set()
                async with cond:
                    cond.notify()
                await settle()
                assert second.woken
            assert first.held_after
            assert second.held_after
            assert first.release_error is None
            assert second.release_error is None
    assert_idle(made)


@scope_cancel_only
async def test_notified_waiter_cancelled_passes_wakeup_on_trio_lost_wakeup_bug(
    kind: Kind, cancel_mode: str
) -> None:
    # trio's Condition (and anyio's on trio) drops the notification when the notified task is
    # cancelled before it runs; notify(1) then wakes nobody.
    await _notified_then_cancelled(kind, cancel_mode)


@native_cancel_only
async def test_notified_waiter_task_cancelled_passes_wakeup_on_cpython_lost_wakeup_bug(
    kind: Kind, cancel_mode: str
) -> None:
    # CPython < 3.13: asyncio.Condition.wait() cancelled right after notify() swallowed the
    # notification (gh-112202); the second waiter slept on.
    await _notified_then_cancelled(kind, cancel_mode)


@every_cancel_mode
async def test_waiter_cancelled_before_notify_does_not_absorb_it(
    kind: Kind, cancel_mode: str
) -> None:
    made = kind.make()
    cond = made.cond
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            first, second = await start_sleepers(tg, made, 2)
            async with cond:
                first.cancel(cancel_mode)  # its cancellation is still pending ...
                cond.notify(1)  # ... when the notification is given out
            await settle()
            assert first.outcome == "cancelled"
            assert second.woken
            assert first.held_after
            assert second.held_after
    assert_idle(made)


@every_cancel_mode
async def test_notify_all_then_cancel_wakes_everyone_else(kind: Kind, cancel_mode: str) -> None:
    made = kind.make()
    cond = made.cond
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            crew = await start_sleepers(tg, made, 4)
            async with cond:
                cond.notify_all()
                crew[1].cancel(cancel_mode)
            await settle()
            assert crew[1].outcome in ("cancelled", "returned")
            assert all(s.woken for i, s in enumerate(crew) if i != 1)
            assert all(s.held_after for s in crew)
            assert cond.statistics().tasks_waiting == 0
    assert_idle(made)


# --- notify counts and order -------------------------------------------------------------------


async def test_notify_n_wakes_exactly_n_in_fifo_order(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond
    log: list[str] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            crew = await start_sleepers(tg, made, 6, log)
            async with cond:
                cond.notify(0)
                assert cond.statistics().tasks_waiting == 6
                cond.notify(2)
                assert cond.statistics().tasks_waiting == 4
            await settle()
            assert in_order(made, log, ["s0", "s1"])
            assert [s.woken for s in crew] == [True, True] + [False] * 4
            async with cond:
                cond.notify()
                cond.notify(2)
            await settle()
            assert in_order(made, log[2:], ["s2", "s3", "s4"])
            assert cond.statistics().tasks_waiting == 1
            async with cond:
                cond.notify(10)
            await settle()
            assert log[5:] == ["s5"]
            assert all(s.woken and s.held_after for s in crew)
    assert_idle(made)


async def test_notify_all_wakes_every_waiter_in_fifo_order(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond
    log: list[str] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            crew = await start_sleepers(tg, made, 8, log)
            async with cond:
                cond.notify_all()
                assert cond.statistics().tasks_waiting == 0
                cond.notify_all()  # nobody left: a no-op
            await settle()
            assert in_order(made, log, [f"s{i}" for i in range(8)])
            assert all(s.woken and s.held_after for s in crew)
    assert_idle(made)


async def test_notify_wakes_only_tasks_already_waiting(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            async with cond:
                cond.notify_all()  # nobody waits: the notification is not stored
            (sleeper,) = await start_sleepers(tg, made, 1)
            await settle()
            assert not sleeper.done.is_set()
            async with cond:
                cond.notify()
            await settle()
            assert sleeper.woken
    assert_idle(made)


# --- wait_for ------------------------------------------------------------------------------------


async def test_wait_for_returns_the_predicates_value_and_rechecks_on_every_wakeup(
    kind: Kind,
) -> None:
    made = kind.make()
    cond = made.cond
    value: list[int] = []
    calls = 0
    result: Any = None
    done = anyio.Event()

    def predicate() -> list[int]:
        nonlocal calls
        calls += 1
        assert holds(made), "the predicate ran without the lock"
        return value

    async def waiter() -> None:
        nonlocal result
        async with cond:
            result = await cond.wait_for(predicate)
            assert holds(made)
        done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await settle()
            assert calls == 1
            for expected in (2, 3):  # spurious wake-ups: the predicate is still false
                async with cond:
                    cond.notify_all()
                await settle()
                assert calls == expected
                assert not done.is_set()
            async with cond:
                value.append(42)
                cond.notify()
            await settle()
            assert done.is_set()
    assert calls == 4
    assert result is value  # the predicate's own truthy value, not True
    assert_idle(made)


async def test_wait_for_with_a_true_predicate_returns_at_once(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond
    async with cond:
        assert await cond.wait_for(lambda: "yes") == "yes"
        assert holds(made)
    assert_idle(made)


async def test_wait_for_propagates_the_predicates_exception_holding_the_lock(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond

    def predicate() -> bool:
        raise KeyError("boom")

    async with cond:
        with pytest.raises(KeyError):
            await cond.wait_for(predicate)
        assert holds(made)
    assert_idle(made)


# --- a lock whose holder exited holding it -----------------------------------------------------


async def _exit_holding(made: Made, leave: anyio.Event) -> None:
    await made.cond.acquire()
    await leave.wait()
    # Returns holding the lock: the bug the condition's sleepers must hear about.


async def test_owner_exit_with_lock_waiters_breaks_sleepers_at_once(
    breakable_kind: Kind,
) -> None:
    made = breakable_kind.make()
    cond = made.cond
    leave = anyio.Event()
    acquire_error: list[BaseException] = []

    async def acquirer() -> None:
        try:
            await cond.acquire()
        except anyio.BrokenResourceError as exc:
            acquire_error.append(exc)
        else:  # pragma: no cover - the failure this test exists to catch
            cond.release()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            crew = await start_sleepers(tg, made, 2)
            tg.start_soon(_exit_holding, made, leave)
            await settle()
            tg.start_soon(acquirer)
            await settle()
            assert cond.statistics().lock_statistics.tasks_waiting == 1
            leave.set()
            for s in crew:  # the exit is seen in a done-callback on asyncio: wait for them
                await s.done.wait()
            assert [s.outcome for s in crew] == ["broken", "broken"]
            assert not any(s.held_after for s in crew)
            assert len(acquire_error) == 1
            assert cond.statistics().tasks_waiting == 0
            made.check_invariants()
    with pytest.raises(anyio.BrokenResourceError):
        await cond.acquire()
    made.check_invariants()


async def test_owner_exit_without_lock_waiters_breaks_sleepers_at_next_acquire(
    breakable_kind: Kind,
) -> None:
    made = breakable_kind.make()
    cond = made.cond
    leave = anyio.Event()
    leave.set()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            crew = await start_sleepers(tg, made, 2)
            tg.start_soon(_exit_holding, made, leave)
            await settle()
            with pytest.raises(anyio.BrokenResourceError):
                await cond.acquire()  # notices the dead owner ...
            for s in crew:
                await s.done.wait()
            # ... and the sleepers, whom nobody could ever notify, hear of it.
            assert [s.outcome for s in crew] == ["broken", "broken"]
            assert not any(s.held_after for s in crew)
            assert cond.statistics().tasks_waiting == 0
            made.check_invariants()


async def test_writer_exit_breaks_sleepers_of_a_reader_condition() -> None:
    made = _reader()
    rw = made.rw
    assert rw is not None
    leave = anyio.Event()

    async def exit_holding_write() -> None:
        await rw.writer.acquire()
        await leave.wait()

    async def late_reader() -> None:
        with pytest.raises(anyio.BrokenResourceError):
            await rw.reader.acquire()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            crew = await start_sleepers(tg, made, 2)
            tg.start_soon(exit_holding_write)
            await settle()
            tg.start_soon(late_reader)  # queued: the exit is seen at once
            await settle()
            leave.set()
            for s in crew:  # the exit is seen in a done-callback on asyncio: wait for them
                await s.done.wait()
            assert [s.outcome for s in crew] == ["broken", "broken"]
            assert not any(s.held_after for s in crew)
            check_invariants(rw)


async def test_reader_exit_does_not_break_a_reader_condition() -> None:
    # A dead reader's hold does not conflict with other readers: they can still notify.
    made = _reader()
    rw = made.rw
    assert rw is not None
    cond = made.cond
    leave = anyio.Event()
    leave.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            crew = await start_sleepers(tg, made, 2)
            tg.start_soon(_exit_holding, made, leave)
            await settle()
            async with cond:
                cond.notify_all()
            await settle()
            assert [s.outcome for s in crew] == ["returned", "returned"]
            assert all(s.held_after for s in crew)
            assert all(s.release_error is None for s in crew)
            check_invariants(rw)


# --- where and when the condition is made ------------------------------------------------------

_MODULE_LEVEL = Condition()


async def _ping_pong(cond: Condition) -> None:
    """One wait / notify round trip in the current event loop."""
    flag = False

    async def waiter() -> None:
        async with cond:
            await cond.wait_for(lambda: flag)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await settle()
            assert cond.statistics().tasks_waiting == 1
            async with cond:
                flag = True
                cond.notify()
    assert not cond.locked()
    assert cond.statistics().tasks_waiting == 0


async def test_module_level_condition_works_in_each_new_loop() -> None:
    await _ping_pong(_MODULE_LEVEL)


@pytest.mark.parametrize("make", [k.make for k in KINDS], ids=[k.id for k in KINDS])
def test_condition_made_before_any_loop_works_in_successive_loops(
    make: Callable[[], Made],
) -> None:
    made = make()
    asyncio.run(_ping_pong(made.cond))
    asyncio.run(_ping_pong(made.cond))
    if not isinstance(made.cond.lock, anyio.Lock):
        # anyio.Lock made outside a loop binds to the first backend that uses it (anyio's rule).
        trio.run(_ping_pong, made.cond)
        asyncio.run(_ping_pong(made.cond))
    made.check_invariants()


# --- shape: lock delegation, statistics, weakref, repr -----------------------------------------


async def test_condition_delegates_the_lock_shape(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond
    assert cond.locked() is False
    await cond.acquire()
    assert cond.locked() is True
    assert cond.lock.locked() is True
    assert holds(made)
    cond.release()
    assert cond.lock.locked() is False
    assert cond.acquire_nowait() is None
    assert holds(made)
    cond.release()
    async with cond as entered:
        assert entered is None
        assert holds(made)
    with pytest.raises(RuntimeError):
        cond.release()
    assert_idle(made)


async def test_default_lock_is_a_new_aiolocks_lock() -> None:
    a, b = Condition(), Condition()
    assert isinstance(a.lock, aiolocks.Lock)
    assert a.lock is not b.lock
    lock = aiolocks.Lock()
    assert Condition(lock).lock is lock


async def test_statistics_count_waiters_and_show_the_lock_statistics(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond
    stats = cond.statistics()
    assert isinstance(stats, aiolocks.ConditionStatistics)
    assert dataclasses.is_dataclass(stats)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.tasks_waiting = 3  # type: ignore[misc]
    assert stats.tasks_waiting == 0
    assert stats.lock_statistics == cond.lock.statistics()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for expected in (1, 2, 3):
                s = Sleeper(made, f"s{expected}")
                tg.start_soon(s.main)
                await settle()
                assert cond.statistics().tasks_waiting == expected
            async with cond:
                stats = cond.statistics()
                assert stats.lock_statistics == cond.lock.statistics()
                if kind.exclusive:
                    assert stats.lock_statistics.owner == anyio.get_current_task()
                cond.notify()
                assert cond.statistics().tasks_waiting == 2  # notified ones no longer count
                cond.notify_all()
                assert cond.statistics().tasks_waiting == 0
    assert_idle(made)


async def test_condition_is_weak_referenceable_and_not_kept_alive(kind: Kind) -> None:
    made = kind.make()
    cond = made.cond
    ref = weakref.ref(cond)
    assert ref() is cond
    async with cond:
        cond.notify()
    # A full wait / notify cycle must not leave references behind either.
    await _ping_pong(cond)
    del made, cond
    gc.collect()
    assert ref() is None


async def test_repr_is_readable_and_shows_waiters_and_name() -> None:
    cond = Condition(name="jobs")
    free = repr(cond)
    assert free.startswith("<")
    assert free.endswith(">")
    assert "\n" not in free
    assert "Condition" in free
    assert "jobs" in free
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            made = Made(cond, None, partial(check_invariants, cond.lock))
            await start_sleepers(tg, made, 2)
            waiting = repr(cond)
            assert waiting != free
            assert "2" in waiting
            async with cond:
                held = repr(cond)
                assert held != waiting
                cond.notify_all()
    assert repr(cond) == free
