"""Model-based test: aiolocks.threadsafe.RWLock against the fairness model of test_model.py.

The thread-safe RWLock promises the in-process lock's fairness rules (API.md), so the same
reference model, commands and driver (tests/test_model.py) check it: hypothesis draws a list of
commands, actor tasks apply them to a real lock, and after every command the scheduler settles
and holders, waiters, statistics, version and the invariants must agree with the model.

``test_threadsafe_rwlock_matches_the_fairness_model`` runs every actor as a task of one event
loop (asyncio, uvloop, trio).  ``test_threads_and_tasks_match_the_fairness_model`` makes some
actors plain threads on the blocking side (``acquire_blocking()``, ``upgrade_blocking()``, in
the same FIFO as the tasks); settling then also waits, with a deadline, until every thread is
idle or parked in the lock's queue.  A thread's blocking acquire cannot be cancelled, so those
actors are never sent ``cancel``; their cancellation is the timeout, which the ``*_timeout``
commands exercise (timeout 0, or a short one that runs out in the queue).  Both tests draw
``fast_acquire`` too, and re-entrant requests by holders (``reenter_*``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from _actors import Actor, actors, assert_idle, settle
from _threads import DEADLINE
from aiolocks import DeadlockError
from aiolocks._introspect import waiters
from aiolocks.threadsafe import RWLock
from aiolocks.threadsafe._core import owner_info, thread_caller
from test_model import _BACKENDS, ACTORS, COMMANDS, READ, UPGRADED, WRITE, Driver

# An example takes a few milliseconds on one loop (800 per backend: ~2 s), a few more with threads.
EXAMPLES = 800

# Found by this test, each a hang or a reader admitted ahead of a pending upgrade() before the fix.
UPGRADE_BEHIND_A_WAITING_WRITER = [
    ("read", 0, False),
    ("read", 0, False),
    ("upgradable", 0, False),
    ("write", 0, False),
    ("release", 0, False),
    ("upgrade", 0, False),
    ("release", 0, False),
]
READER_AHEAD_OF_A_PENDING_UPGRADE = [
    ("read", 0, False),
    ("read", 1, False),
    ("upgradable", 2, False),
    ("release", 0, False),
    ("write", 0, False),
    ("read", 3, False),
    ("upgrade", 2, False),
]


# A holder asks again, for any mode: a read is granted at once whatever waits (per-owner
# re-entrancy), a write only to the writer, the upgradable lock never (DeadlockError).  A granted
# inner level is released at once; the model says neither step changes anything.
REENTER_COMMANDS = ("reenter_read", "reenter_write", "reenter_upgradable")


def _command_lists(*extra: str) -> st.SearchStrategy[list[tuple[str, int, bool]]]:
    """test_model's command lists, with ``extra`` commands among those drawn."""
    return st.lists(
        st.tuples(st.sampled_from(COMMANDS + extra), st.integers(0, ACTORS - 1), st.booleans()),
        min_size=4,
        max_size=40,
    )


ts_command_lists = _command_lists(*REENTER_COMMANDS)


class ReentrantDriver(Driver):
    """test_model's Driver, plus the re-entrant requests above."""

    async def apply(self, command: str, pick: int, native: bool) -> None:
        if command in REENTER_COMMANDS:
            await self.reenter(command[len("reenter_") :], pick)
        else:
            await super().apply(command, pick, native)

    async def reenter(self, mode: str, pick: int) -> None:
        candidates = [a for a in sorted(self.hold) if a not in self.pending]
        if not candidates:
            return
        actor_id = candidates[pick % len(candidates)]
        held = self.hold[actor_id]
        self.log.append(f"reenter_{mode}({actor_id}, holding {held})")
        actor, view = self.crew[actor_id], self.view(mode)
        if mode == READ or (mode == WRITE and held in (WRITE, UPGRADED)):
            await actor.run(view.acquire)  # (it fails if the call has to wait)
            await actor.run(view.release)
        else:
            with pytest.raises(DeadlockError):
                await actor.run(view.acquire)
        await self.observe()


async def _run_commands(commands: list[tuple[str, int, bool]], fast: bool) -> None:
    rw = RWLock(fast_acquire=fast)
    async with actors(*(f"actor-{i}" for i in range(ACTORS)), timeout=10) as crew:
        driver = ReentrantDriver(rw, crew)  # type: ignore[arg-type]
        for command in commands:
            await driver.apply(*command)
        await driver.wind_down()


@pytest.mark.parametrize("backend", _BACKENDS)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=ts_command_lists, fast=st.booleans())
@example(commands=UPGRADE_BEHIND_A_WAITING_WRITER, fast=False)
@example(commands=READER_AHEAD_OF_A_PENDING_UPGRADE, fast=False)
def test_threadsafe_rwlock_matches_the_fairness_model(
    backend: tuple[str, dict[str, Any]], commands: list[tuple[str, int, bool]], fast: bool
) -> None:
    name, options = backend
    anyio.run(_run_commands, commands, fast, backend=name, backend_options=options)


# --- some actors are threads --------------------------------------------------------------------

THREAD_EXAMPLES = 500
BLOCKING_TWIN = {"acquire": "acquire_blocking", "upgrade": "upgrade_blocking"}
# A thread's blocking acquire with a timeout that runs out whenever it has to wait: at once
# (``native`` drawn True: timeout 0, it never queues) or after a few milliseconds in the queue,
# during which nothing else happens (so whether it is granted is the model's to say).  Leaving
# the queue on timeout is the blocking side's cancellation: it may admit those behind it.
TIMED_OUT_WAIT = 0.005
TIMEOUT_COMMANDS = ("read_timeout", "write_timeout", "upgradable_timeout")
mixed_command_lists = _command_lists(*REENTER_COMMANDS, *TIMEOUT_COMMANDS)


class ThreadOp:
    """What an Actor's Op shows the driver, for a call made by a ThreadActor's thread."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.exc: BaseException | None = None
        self.cancelled = False

    @property
    def finished(self) -> bool:
        return self.done.is_set()

    def cancel(self, mode: str = "scope") -> None:
        raise AssertionError("a thread's blocking acquire cannot be cancelled")


class ThreadActor:
    """An actor that is a plain thread: it makes the blocking twin of each call it is given
    (``acquire`` -> ``acquire_blocking``, ``upgrade`` -> ``upgrade_blocking``, the others as
    they are) and keeps whatever they took.  Calls that never wait are made to completion by
    :meth:`start`; ``busy`` says a call is under way (or queued) in the thread."""

    def __init__(self, name: str, stage: Stage) -> None:
        self.name = name
        self.stage = stage
        self.busy = False
        self.completed = 0
        self._jobs: queue.SimpleQueue[ThreadOp | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()
        assert self._ready.wait(DEADLINE)

    def _main(self) -> None:
        self.owner = thread_caller()
        self.info = owner_info(self.owner)
        self._ready.set()
        while (op := self._jobs.get()) is not None:
            try:
                op.result = op.fn()
            except Exception as exc:
                op.exc = exc
            self.completed += 1
            self.busy = False
            op.done.set()

    def start(self, fn: Callable[[], Any]) -> ThreadOp:
        twin = BLOCKING_TWIN.get(fn.__name__)
        if twin is None:
            call = fn
        else:
            blocking = getattr(fn.__self__, twin)

            def call() -> None:
                if not blocking(DEADLINE):
                    raise TimeoutError(f"{self.name}: {twin}() timed out")

        op = ThreadOp(call)
        self.busy = True
        self._jobs.put(op)
        if twin is None:  # never waits: made before the driver looks
            assert op.done.wait(DEADLINE), f"{self.name}: {fn!r} blocked"
        return op

    async def run(self, fn: Callable[[], Any]) -> Any:
        op = self.start(fn)
        await self.stage.settle()
        assert op.finished, f"{self.name}: {fn!r} blocked"
        if op.exc is not None:
            raise op.exc
        return op.result

    def quiet(self, parked: set[Any]) -> bool:
        """Idle, or parked in the lock's queue (where only others' actions move it)."""
        return not self.busy or self.owner in parked

    def stop(self) -> None:
        self._jobs.put(None)
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), f"{self.name} did not stop"


class Stage:
    """The lock and the thread actors, for settling tasks and threads together."""

    def __init__(self, rw: RWLock) -> None:
        self.rw = rw
        self.threads: list[ThreadActor] = []

    def _threads_quiet(self) -> bool:
        parked = {w.owner for w, _ in waiters(self.rw)}
        return all(t.quiet(parked) for t in self.threads)

    async def settle(self) -> None:
        """Return once every thread is quiet and every task parked, with no thread call
        completed meanwhile (a completed call may have woken a task, and the reverse)."""
        with anyio.fail_after(DEADLINE):
            while True:
                before = sum(t.completed for t in self.threads)
                while not self._threads_quiet():
                    await anyio.sleep(0.0002)  # a poll, under the deadline above
                await settle()
                if self._threads_quiet() and sum(t.completed for t in self.threads) == before:
                    return


class MixedDriver(ReentrantDriver):
    """test_model's Driver over tasks and threads: threads are never cancelled, and every
    observation settles the threads too."""

    def __init__(self, rw: RWLock, crew: list[Any], stage: Stage) -> None:
        super().__init__(rw, crew)  # type: ignore[arg-type]
        self.stage = stage

    def is_thread(self, actor_id: int) -> bool:
        return isinstance(self.crew[actor_id], ThreadActor)

    async def apply(self, command: str, pick: int, native: bool) -> None:
        if command in TIMEOUT_COMMANDS:
            await self.timed_acquire(command[: -len("_timeout")], pick, native)
            return
        if command == "cancel":
            pending = sorted(self.pending)
            tasks = [a for a in pending if not self.is_thread(a)]
            if not tasks:
                return
            pick = pending.index(tasks[pick % len(tasks)])
        await super().apply(command, pick, native)

    async def timed_acquire(self, mode: str, pick: int, native: bool) -> None:
        candidates = [a for a in self.idle() if self.is_thread(a)]
        if not candidates:
            return
        actor_id = candidates[pick % len(candidates)]
        timeout = 0.0 if native else TIMED_OUT_WAIT
        self.log.append(f"{mode}_timeout({actor_id}, {timeout})")
        view = self.view(mode)
        granted = self.model.can_take(mode)
        got = await self.crew[actor_id].run(lambda: view.acquire_blocking(timeout))
        assert got is granted, f"{mode} with timeout {timeout} by {actor_id}: {got}"
        if granted:
            self.model.request(actor_id, mode)
            self.hold[actor_id] = mode
        elif timeout > 0:  # it queued, then left
            self.model.request(actor_id, mode)
            self.model.cancel(actor_id)
        await self.observe()

    async def observe(self) -> None:
        await self.stage.settle()
        await super().observe()

    async def wind_down(self) -> None:
        # The tasks' requests are cancelled; the threads' are granted as the holders leave.
        while self.pending or self.hold:
            tasks = sorted(a for a in self.pending if not self.is_thread(a))
            if tasks:
                self.pending[tasks[0]][0].cancel()
                self.cancelled.add(tasks[0])
                self.model.cancel(tasks[0])
            else:
                leaving = [a for a in sorted(self.hold) if a not in self.pending]
                assert leaving, f"threads wait behind nobody: {self.pending}"
                mode = self.hold.pop(leaving[0])
                await self.crew[leaving[0]].run(self.view(mode).release)
                self.model.release(leaving[0])
            await self.observe()
        assert_idle(self.rw)


async def _run_mixed(commands: list[tuple[str, int, bool]], threads: set[int], fast: bool) -> None:
    rw = RWLock(fast_acquire=fast)
    stage = Stage(rw)
    async with actors(*(f"actor-{i}" for i in range(ACTORS)), timeout=3 * DEADLINE) as tasks:
        crew: list[Actor | ThreadActor] = list(tasks)
        try:
            for i in sorted(threads):
                crew[i] = ThreadActor(f"thread-{i}", stage)
                stage.threads.append(crew[i])  # type: ignore[arg-type]
            driver = MixedDriver(rw, crew, stage)
            for command in commands:
                await driver.apply(*command)
            await driver.wind_down()
        finally:
            for t in stage.threads:
                t.stop()


@pytest.mark.parametrize("backend", _BACKENDS)
@settings(max_examples=THREAD_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    commands=mixed_command_lists,
    threads=st.sets(st.integers(0, ACTORS - 1), min_size=1, max_size=4),
    fast=st.booleans(),
)
def test_threads_and_tasks_match_the_fairness_model(
    backend: tuple[str, dict[str, Any]],
    commands: list[tuple[str, int, bool]],
    threads: set[int],
    fast: bool,
) -> None:
    name, options = backend
    anyio.run(_run_mixed, commands, threads, fast, backend=name, backend_options=options)
