"""Run by ``test_dump_on_signal.py``: a trio run in the main thread, an asyncio loop (uvloop if
installed) in a thread, and a loop blocked by a synchronous call in another thread, each with a
contended lock, and an ``aiolocks.threadsafe.Lock`` one plain thread holds while another waits;
the process signals itself once all are in place, then waits for the dump."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import trio

import aiolocks
import aiolocks.debug
import aiolocks.threadsafe

aiolocks.debug.dump_on_signal(signal.SIGUSR2)
in_place = threading.Barrier(4)
done = threading.Event()


def contended_loop() -> None:
    lock = aiolocks.Lock(name="thread-lock")

    async def main() -> None:
        held = asyncio.Event()

        async def holder() -> None:
            async with lock:
                held.set()
                await asyncio.get_running_loop().run_in_executor(None, done.wait)

        async def waiter() -> None:
            await held.wait()
            async with lock:
                pass

        task = asyncio.ensure_future(asyncio.gather(holder(), waiter()))
        while lock.statistics().tasks_waiting < 1:
            await asyncio.sleep(0.001)
        in_place.wait()
        await task

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        loop = uvloop.new_event_loop()
        loop.run_until_complete(main())
        loop.close()


shared = aiolocks.threadsafe.Lock(name="shared-lock")


def shared_holder() -> None:
    with shared:
        while shared.statistics().tasks_waiting < 1:
            time.sleep(0.001)
        in_place.wait()
        done.wait()


def shared_waiter() -> None:
    while not shared.locked():
        time.sleep(0.001)
    with shared:
        pass


def blocked_loop() -> None:
    lock = aiolocks.Lock(name="blocked-lock")

    async def main() -> None:
        async with lock:
            in_place.wait()
            done.wait()  # a synchronous wait: this loop runs nothing until the end

    asyncio.run(main())


async def trio_main() -> None:
    rw = aiolocks.RWLock(name="trio-rw")
    async with trio.open_nursery() as nursery:
        held = trio.Event()

        async def reader() -> None:
            async with rw.reader:
                held.set()
                await trio.to_thread.run_sync(done.wait)

        async def writer() -> None:
            await held.wait()
            async with rw.writer:
                pass

        nursery.start_soon(reader)
        nursery.start_soon(writer)
        while rw.statistics().writers_waiting < 1:
            await trio.sleep(0.001)
        await trio.to_thread.run_sync(in_place.wait)
        os.kill(os.getpid(), signal.SIGUSR2)
        await trio.sleep(float(os.environ.get("DUMP_WAIT", "5")))
        done.set()


threads = [
    threading.Thread(target=f, daemon=True)
    for f in (contended_loop, blocked_loop, shared_holder, shared_waiter)
]
for t in threads:
    t.start()
trio.run(trio_main)
for t in threads:
    t.join(10)
print("exited normally")
