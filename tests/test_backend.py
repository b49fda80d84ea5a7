"""The backend fast paths agree with the official APIs they stand in for."""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
import types
from _thread import get_ident
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import aiolocks
from aiolocks._backend import READY, TASK_OF_PATH, TRIO, _make_task_of, task_of, thread_mark


class _Without:
    """``asyncio.tasks`` as CPython 3.14 has it: ``current_task`` but no ``_current_tasks``."""

    current_task = staticmethod(asyncio.current_task)


# Every current-task path, each forced on every Python (3.14's cannot be had here): the one
# this interpreter uses, and the documented public one.
PATHS = {"this Python": task_of, "public (3.14+)": _make_task_of(tasks=_Without())[1]}


def test_each_python_takes_its_current_task_path() -> None:
    assert ("dict" if sys.version_info < (3, 14) else "public") == TASK_OF_PATH
    assert _make_task_of(tasks=_Without())[0] == "public"
    # a dict nobody reads is never trusted
    fake = types.SimpleNamespace(current_task=lambda loop=None: None, _current_tasks={})
    assert _make_task_of(tasks=fake)[0] == "public"


@pytest.mark.parametrize("task_of", PATHS.values(), ids=PATHS.keys())
def test_task_of_agrees_with_asyncio_current_task(task_of: Callable[[Any], Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert task_of(loop) is asyncio.current_task()

        async def child() -> Any:
            return task_of(loop)

        task = asyncio.create_task(child())
        assert await task is task

    asyncio.run(main())


@pytest.mark.parametrize("task_of", PATHS.values(), ids=PATHS.keys())
def test_task_of_is_none_outside_a_running_task(task_of: Callable[[Any], Any]) -> None:
    loop = asyncio.new_event_loop()
    try:
        assert task_of(loop) is None
        assert task_of(None) is None
        assert task_of(TRIO) is None
    finally:
        loop.close()
    assert task_of(loop) is None  # closed


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
    async def twice() -> list[None]:
        return [await READY, await READY]  # one shared object, awaited again and again

    coro = twice()
    with pytest.raises(StopIteration) as done:
        coro.send(None)  # no yield to the event loop
    assert done.value.value == [None, None]
    assert inspect.isawaitable(READY)

    async def wrapped() -> None:  # asyncio can also wrap it in a task (wait_for, gather)
        await asyncio.gather(asyncio.ensure_future(READY))

    asyncio.run(wrapped())


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
