"""Helpers for the thread-safe family's tests: event loops and trio runs in threads of their own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import trio

DEADLINE = 10.0  # seconds any single cross-thread step may take before the test fails


class LoopThread:
    """An asyncio event loop running in a thread of its own (optionally uvloop)."""

    def __init__(self, *, uvloop: bool = False) -> None:
        if uvloop:
            import uvloop as _uvloop

            self.loop: asyncio.AbstractEventLoop = _uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.submit(coro).result(DEADLINE)

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "event loop thread did not stop"
        self.loop.close()


class TrioThread:
    """A trio run in a thread of its own, running submitted async functions as tasks."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.token: Any = None
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.thread.start()
        assert self._ready.wait(DEADLINE)

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[Any](100)
        self._send = send
        self._ready.set()
        async with trio.open_nursery() as nursery:
            async for job in receive:
                if job is None:
                    break
                nursery.start_soon(self._run_job, *job)

    async def _run_job(self, fn: Callable[[], Any], fut: concurrent.futures.Future[Any]) -> None:
        try:
            fut.set_result(await fn())
        except BaseException as exc:  # reported to the submitter
            fut.set_exception(exc)

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.token.run_sync_soon(self._send.send_nowait, (fn, fut))
        return fut

    def run(self, fn: Callable[[], Any]) -> Any:
        return self.submit(fn).result(DEADLINE)

    def close(self) -> None:
        self.token.run_sync_soon(self._send.send_nowait, None)
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "trio thread did not stop"


@contextmanager
def loop_threads(n: int, *, uvloop_first: bool = False) -> Iterator[list[LoopThread]]:
    threads = [LoopThread(uvloop=uvloop_first and i == 0) for i in range(n)]
    try:
        yield threads
    finally:
        for t in threads:
            t.close()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Wait for a state no event announces (a thread parked inside the lock), with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.0005)


def start_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, concurrent.futures.Future[Any]]:
    """Run ``fn`` in a new thread; its result or exception lands in the returned future."""
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def main() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:  # reported to the test
            fut.set_exception(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, fut
