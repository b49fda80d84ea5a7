"""Scripted "actors" for lock tests: tasks that run one call at a time on request.

A test can then say exactly which task holds what and in which order requests were queued;
`settle()` waits until every other task is parked, which is when a lock's decisions can be
observed.  Shared by the RWLock, cancellation and model tests.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import sniffio

from aiolocks import RWLock
from aiolocks._introspect import check_invariants

IDLE = (0, None, 0, 0)


def _parked(task: asyncio.Task[Any]) -> bool:
    waiter = getattr(task, "_fut_waiter", None)
    return waiter is not None and not waiter.done()


async def settle() -> None:
    """Return once every other task is parked.

    Same contract as `anyio.wait_all_tasks_blocked()`, which on asyncio polls every 0.1 s;
    this polls every loop turn so scripted tests stay fast.
    """
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


class Op:
    """One call made by an Actor in its own task; cancellable by scope or (asyncio) natively."""

    def __init__(self, actor: Actor, fn: Callable[[], Any]) -> None:
        self.actor = actor
        self.fn = fn
        self.done = anyio.Event()
        self.result: Any = None
        self.exc: BaseException | None = None
        self.cancelled = False
        self._scope: anyio.CancelScope | None = None
        self._cancel_early = False
        self._native_cancel = False

    @property
    def finished(self) -> bool:
        return self.done.is_set()

    @property
    def ok(self) -> bool:
        return self.finished and self.exc is None and not self.cancelled

    def cancel(self, mode: str = "scope") -> None:
        if mode == "native":
            assert self.actor.native is not None
            self._native_cancel = True
            self.actor.native.cancel()
        elif self._scope is None:
            self._cancel_early = True
        else:
            self._scope.cancel()

    async def run(self) -> None:
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._cancel_early:
                    scope.cancel()
                result = self.fn()
                if inspect.isawaitable(result):
                    result = await result
                self.result = result
            self.cancelled = scope.cancelled_caught
        except anyio.get_cancelled_exc_class():
            if not self._native_cancel:
                raise
            self.cancelled = True
            uncancel = getattr(asyncio.current_task(), "uncancel", None)
            if uncancel is not None:
                uncancel()
        except Exception as exc:
            self.exc = exc
        finally:
            self.done.set()


class Actor:
    """A task that performs calls on request and keeps whatever locks they took."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.info: anyio.TaskInfo | None = None
        self.native: asyncio.Task[Any] | None = None
        self.exited = anyio.Event()
        self._send, self._receive = anyio.create_memory_object_stream[Op](100)

    async def main(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        self.info = anyio.get_current_task()
        if sniffio.current_async_library() == "asyncio":
            self.native = asyncio.current_task()
        try:
            task_status.started()
            async with self._receive:
                async for op in self._receive:
                    await op.run()
        finally:
            self.exited.set()

    def start(self, fn: Callable[[], Any]) -> Op:
        """Queue a call; it may block. Inspect the returned Op after `settle()`."""
        op = Op(self, fn)
        self._send.send_nowait(op)
        return op

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Make a call that must complete once the other tasks settle; re-raise its error."""
        op = self.start(fn)
        await settle()
        assert op.finished, f"{self.name}: {fn!r} blocked"
        if op.exc is not None:
            raise op.exc
        assert not op.cancelled, f"{self.name}: {fn!r} was cancelled"
        return op.result

    async def exit(self) -> None:
        """End the task, holding whatever it holds."""
        self._send.close()
        await self.exited.wait()


@asynccontextmanager
async def actors(*names: str, timeout: float = 5) -> AsyncIterator[list[Actor]]:
    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            crew = [Actor(name) for name in names]
            for actor in crew:
                await tg.start(actor.main, name=actor.name)
            try:
                yield crew
            finally:
                for actor in crew:
                    actor._send.close()
                tg.cancel_scope.cancel()


def snap(rw: RWLock) -> tuple[int, anyio.TaskInfo | None, int, int]:
    s = rw.statistics()
    return (s.readers, s.writer, s.readers_waiting, s.writers_waiting)


def assert_idle(rw: RWLock) -> None:
    check_invariants(rw)
    assert snap(rw) == IDLE
    assert rw.version % 2 == 0
