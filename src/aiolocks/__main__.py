"""A short live tour of aiolocks: ``python -m aiolocks [--backend asyncio|trio]``.

Shows writer preference, re-entrant reads while a writer waits, the read-to-write upgrade
refused at once, and cancellation safety, printing the lock's statistics at each step.
"""

from __future__ import annotations

import argparse
import sys

import anyio

from . import DeadlockError, RWLock


def show(what: str, rw: RWLock) -> None:
    st = rw.statistics()
    writer = st.writer.name if st.writer else None
    print(
        f"  {what:<52} readers={st.readers} writer={writer} "
        f"readers_waiting={st.readers_waiting} writers_waiting={st.writers_waiting}"
    )


async def writer_preference() -> None:
    print("1. Writer preference: a waiting writer holds back readers that arrive after it")
    rw = RWLock(name="cache")
    release_readers = anyio.Event()
    log: list[str] = []

    async def reader(name: str, hold: anyio.Event) -> None:
        async with rw.reader:
            log.append(f"{name} reads")
            await hold.wait()

    async def writer() -> None:
        async with rw.writer:
            log.append("writer writes")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, "reader-1", release_readers)
            tg.start_soon(reader, "reader-2", release_readers)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(reader, "late-reader", release_readers)
            await anyio.wait_all_tasks_blocked()
            show("two readers hold, a writer and a late reader wait:", rw)
            release_readers.set()
        show("all done:", rw)
    print("  order:", " -> ".join(log))
    assert log.index("writer writes") < log.index("late-reader reads")


async def reentrant_reads() -> None:
    print("2. Re-entrant reads: a nested read while a writer waits does not hang")
    rw = RWLock()

    async def writer() -> None:
        async with rw.writer:
            pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, rw.reader:
            tg.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            async with rw.reader:  # a lock without per-task re-entrancy deadlocks right here
                show("nested read taken while a writer waits:", rw)
    print("3. An impossible request is an error at once, never a hang")
    async with rw.reader:
        try:
            await rw.writer.acquire()
        except DeadlockError as exc:
            reason = str(exc).split(":", 1)[1].strip()
            print(f"  read -> write upgrade: DeadlockError: {reason[:70]}...")


async def cancellation_safety() -> None:
    print("4. Cancellation safety: a timed-out writer leaves nothing behind")
    rw = RWLock()
    admitted, done = anyio.Event(), anyio.Event()

    async def impatient_writer() -> None:
        with anyio.move_on_after(0.2):
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
            show("a reader holds; a writer (0.2 s timeout), a reader wait:", rw)
            await admitted.wait()  # admitted the moment the writer gave up
            show("the writer timed out; the late reader got in:", rw)
            done.set()
    show("afterwards:", rw)
    st = rw.statistics()
    assert (st.readers, st.writer, st.readers_waiting, st.writers_waiting) == (0, None, 0, 0)


async def main() -> None:
    await writer_preference()
    await reentrant_reads()
    await cancellation_safety()
    print("All good.")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiolocks", description=__doc__)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    print(f"aiolocks demo on {args.backend}\n")
    anyio.run(main, backend=args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(run())
