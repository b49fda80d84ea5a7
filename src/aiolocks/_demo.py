"""The 60-second tour of aiolocks, run by ``python -m aiolocks [asyncio|trio]``.

Side by side with what goes wrong without it: the nested read that hangs a writer-preferring
lock (Go's ``sync.RWMutex``, aiorwlock) and two tasks taking two locks in opposite orders.
Then the read-to-write upgrade refused at once with the whole ``DeadlockError``, writer
preference, cancellation safety, and ``aiolocks.debug.dump()`` showing who holds what and who
waits.  Every hang is bounded by a short timeout; the tour takes about a second.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio

from . import DeadlockError, LockCollection, RWLock, TaskKey, debug

HANG = 0.3  # seconds a scenario may take before the demo calls it a hang


def say(text: str) -> None:
    print(textwrap.fill(text, width=88, initial_indent="  ", subsequent_indent="  "))


def show(what: str, rw: RWLock) -> None:
    st = rw.statistics()
    writer = st.writer.name if st.writer else None
    print(f"  {what}")
    print(
        f"    readers={st.readers} writer={writer} "
        f"readers_waiting={st.readers_waiting} writers_waiting={st.writers_waiting}"
    )


class NaiveRWLock:
    """Writer-preferring and not re-entrant: the design of Go's RWMutex and of aiorwlock."""

    def __init__(self) -> None:
        self.readers = self.writers_waiting = 0
        self.writing = False
        self._changed = anyio.Event()

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        await self._wait_until(lambda: not (self.writing or self.writers_waiting))
        self.readers += 1
        try:
            yield
        finally:
            self.readers -= 1
            self._notify()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        self.writers_waiting += 1
        try:
            await self._wait_until(lambda: not (self.writing or self.readers))
        finally:
            self.writers_waiting -= 1
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
            self._notify()


class AsyncWith(Protocol):
    def __aenter__(self) -> Awaitable[Any]: ...
    def __aexit__(self, *exc_info: Any) -> Awaitable[Any]: ...


Lockish = Callable[[], AsyncWith]


async def outcome(scenario: Callable[[], Awaitable[None]]) -> str:
    """Run a scenario that may deadlock, cut short after ``HANG`` seconds."""
    with anyio.move_on_after(HANG) as scope:
        await scenario()
    return f"HANGS (cancelled after {HANG} s)" if scope.cancelled_caught else "completes"


async def without_and_with() -> None:
    await nested_read_while_a_writer_waits()
    await opposite_lock_orders()


async def nested_read_while_a_writer_waits() -> None:
    print("1. A nested read while a writer waits")

    def nested_read(read: Lockish, write: Lockish) -> Callable[[], Awaitable[None]]:
        async def writer() -> None:
            async with write():
                pass

        async def reader_calling_a_reader() -> None:
            async with anyio.create_task_group() as tg, read():
                tg.start_soon(writer)
                await anyio.wait_all_tasks_blocked()  # the writer now waits for our read
                async with read():  # the helper's read
                    pass

        return reader_calling_a_reader

    naive, rw = NaiveRWLock(), RWLock()
    print(
        "  writer-preferring RWLock (Go, aiorwlock): "
        f"{await outcome(nested_read(naive.read, naive.write))}"
    )
    print(
        "  aiolocks.RWLock (re-entrant per task):    "
        f"{await outcome(nested_read(lambda: rw.reader, lambda: rw.writer))}"
    )
    say(
        "The writer waits for the outer read; the inner read queues behind the writer: each "
        "waits for the other. aiolocks lets a task that already reads read again."
    )


async def opposite_lock_orders() -> None:
    print("\n2. Two tasks take the same two locks in opposite orders")
    alice, bob = anyio.Lock(), anyio.Lock()

    async def one_then_the_other(first: anyio.Lock, second: anyio.Lock) -> None:
        async with first:
            await anyio.sleep(0.01)
            async with second:
                pass

    async def both_at_once(first: anyio.Lock, second: anyio.Lock) -> None:
        async with LockCollection(first, second).lock(TaskKey.get()):
            await anyio.sleep(0.01)

    def opposite_orders(
        take: Callable[[anyio.Lock, anyio.Lock], Coroutine[Any, Any, None]],
    ) -> Callable[[], Awaitable[None]]:
        async def scenario() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(take, alice, bob)
                tg.start_soon(take, bob, alice)

        return scenario

    print(
        "  async with first: async with second:     "
        f"{await outcome(opposite_orders(one_then_the_other))}"
    )
    print(
        f"  aiolocks.LockCollection(first, second):  {await outcome(opposite_orders(both_at_once))}"
    )
    say(
        "A LockCollection takes all its locks at once, in one global order, so collections "
        "never deadlock each other (any mix of aiolocks, anyio, asyncio and trio locks)."
    )


async def impossible_upgrade() -> None:
    print("\n3. An impossible request is an error at once, never a hang")
    rw = RWLock(name="prices")
    async with rw.reader:
        try:
            await rw.writer.acquire()
        except DeadlockError as exc:
            say(f"DeadlockError: {exc}")


async def writer_preference() -> None:
    print("\n4. Writer preference: a waiting writer holds back readers that arrive after it")
    rw = RWLock(name="cache")
    release_readers = anyio.Event()
    log: list[str] = []

    async def reader(name: str) -> None:
        async with rw.reader:
            log.append(f"{name} reads")
            await release_readers.wait()

    async def writer() -> None:
        async with rw.writer:
            log.append("writer writes")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name in ("reader-1", "reader-2"):  # one at a time: trio shuffles start order
                tg.start_soon(reader, name)
                await anyio.wait_all_tasks_blocked()
            tg.start_soon(writer, name="writer")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(reader, "late-reader")
            await anyio.wait_all_tasks_blocked()
            show("two readers hold, a writer and a late reader wait:", rw)
            release_readers.set()
    print("  order:", " -> ".join(log))
    assert log.index("writer writes") < log.index("late-reader reads")


async def cancellation_safety() -> None:
    print("\n5. Cancellation safety: a timed-out writer leaves nothing behind")
    rw = RWLock()
    admitted, done = anyio.Event(), anyio.Event()

    async def impatient_writer() -> None:
        with anyio.move_on_after(0.1):
            async with rw.writer:
                pass

    async def late_reader() -> None:
        async with rw.reader:
            admitted.set()
            await done.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, rw.reader:
            tg.start_soon(impatient_writer)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(late_reader)  # queues behind the waiting writer
            await anyio.wait_all_tasks_blocked()
            show("a reader holds; a writer (0.1 s timeout) and a late reader wait:", rw)
            await admitted.wait()  # admitted the moment the writer gave up
            show("the writer timed out; the late reader got in:", rw)
            done.set()
    st = rw.statistics()
    assert (st.readers, st.writer, st.readers_waiting, st.writers_waiting) == (0, None, 0, 0)


async def who_holds_what() -> None:
    print("\n6. Who holds what, who waits: aiolocks.debug.dump(), at any time")
    orders = RWLock(name="orders")
    done = anyio.Event()

    async def refresh() -> None:
        async with orders.writer:
            await done.wait()

    async def read() -> None:
        async with orders.reader:
            pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh, name="refresh")
            await anyio.wait_all_tasks_blocked()
            for name in ("request-1", "request-2"):
                tg.start_soon(read, name=name)
                await anyio.wait_all_tasks_blocked()
            debug.dump(file=sys.stdout)
            done.set()


async def main() -> None:
    await without_and_with()
    await impossible_upgrade()
    await writer_preference()
    await cancellation_safety()
    await who_holds_what()
    print("\nAll good. Guides and API: docs/ (or mkdocs serve); tests: pip install -e '.[test]'")


def run(argv: list[str] | None = None) -> int:
    """Parse the command line, run the tour, return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m aiolocks", description=__doc__)
    parser.add_argument("backend", nargs="?", choices=["asyncio", "trio"], help="default asyncio")
    parser.add_argument("--backend", dest="backend_option", choices=["asyncio", "trio"])
    args = parser.parse_args(argv)
    if args.backend and args.backend_option and args.backend != args.backend_option:
        parser.error(f"two backends given: {args.backend} and --backend {args.backend_option}")
    backend = args.backend or args.backend_option or "asyncio"
    print(f"aiolocks demo on {backend}\n")
    anyio.run(main, backend=backend)
    return 0
