"""The backend fast paths agree with the official APIs they stand in for."""

from __future__ import annotations

import asyncio
import threading
from _thread import get_ident
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import aiolocks
from aiolocks._backend import READY, task_of, thread_mark


def test_task_of_agrees_with_asyncio_current_task() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert task_of(loop) is asyncio.current_task()

        async def child() -> Any:
            return task_of(loop)

        task = asyncio.create_task(child())
        assert await task is task

    asyncio.run(main())


def test_task_of_is_none_outside_a_running_task() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert task_of(loop) is None
        assert task_of(None) is None
    finally:
        loop.close()


# Both ways of telling the loop's thread apart, whichever this Python uses (thread_mark): each
# must be equal within the thread running a loop and differ in another thread running its own.
@pytest.mark.parametrize("mark", [get_ident, asyncio._get_running_loop], ids=["ident", "loop"])
def test_thread_mark_tells_the_loops_thread_apart(mark: Callable[[], Any]) -> None:
    seen: dict[str, Any] = {}

    async def record(who: str) -> None:
        seen[who] = mark()
        await asyncio.sleep(0)
        assert mark() == seen[who]  # stable across awaits of one task

    asyncio.run(record("main"))
    thread = threading.Thread(target=lambda: asyncio.run(record("other")))
    thread.start()
    thread.join()
    assert seen["main"] != seen["other"]
    assert thread_mark in (get_ident, asyncio._get_running_loop)


def test_ready_completes_without_yielding() -> None:
    it = READY.__await__()
    with pytest.raises(StopIteration) as done:
        next(it)
    assert done.value.value is None


def _pure_python_tasks(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return asyncio.tasks._PyTask(coro, loop=loop)  # type: ignore[attr-defined]


def test_pure_python_asyncio_tasks_are_supported() -> None:
    """Regression: backports.asyncio.runner (pytest-asyncio on 3.9/3.10) runs pure-Python
    Task subclasses, which are not ``asyncio.Future`` instances; watching an owner for exit
    used to take them for trio tasks and fail with KeyError('trio')."""

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(_pure_python_tasks)
        lock = aiolocks.Lock()
        entered: list[int] = []

        async def take() -> None:
            async with lock:
                entered.append(1)

        async with lock:
            waiter = asyncio.create_task(take())
            while not lock.statistics().tasks_waiting:
                await asyncio.sleep(0)
        await asyncio.wait_for(waiter, 5)
        assert entered == [1]

        async def leak() -> None:
            await lock.acquire()

        await asyncio.create_task(leak())  # exits holding the lock
        with pytest.raises(anyio.BrokenResourceError):
            await asyncio.wait_for(lock.acquire(), 5)

    asyncio.run(main())
