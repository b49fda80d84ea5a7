"""Protocol steps written once, driven two ways: awaited on the event loop, or blocking.

A step (connect, read a statement's results, cancel it, check a session out of the pool, take
a lock and undo it) is a generator in psycopg's sans-IO style: it does the non-blocking work
itself and *yields* what it must wait for; its driver waits and sends back whether that came in
time.  So the async operations and ``acquire_nowait()`` share one description of each step:

- :func:`run_async` waits on the event loop (anyio's ``wait_readable`` / ``wait_writable``,
  an :class:`anyio.Event`); a cancellation is thrown into the step at its ``yield``, so the
  step's own ``except`` / ``finally`` clean up, and clean-up waits it marks *shielded* run
  shielded;
- :func:`run_blocking` waits in the calling thread with :mod:`selectors` (any descriptor
  number, unlike ``select.select``), never past a deadline; past it, every wait answers "not
  in time" at once, so a step's clean-up ends without waiting.  An Event can only be set by
  another task, and none runs meanwhile: :class:`anyio.WouldBlock` is thrown into the step.

A yielded :data:`Wait` is ``(what, read, timeout, shielded)``: a file descriptor to become
readable (``read`` True) or writable (False), or an Event to be set (``read`` None); at most
``timeout`` seconds (None: no limit of its own); ``shielded``: not cancellable.  The answer
is True when it came, False when ``timeout`` (or the blocking deadline) passed first.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Awaitable, Callable, Generator
from typing import TypeVar

import anyio
from anyio import WouldBlock

__all__ = ["Steps", "Wait", "run_async", "run_blocking", "wait_ready"]

T = TypeVar("T")

#: ``(descriptor or Event, read: True / write: False / Event: None, timeout or None, shielded)``
Wait = tuple[int | anyio.Event, bool | None, float | None, bool]
#: A protocol step: yields what it waits for, is told whether it came, returns its result.
Steps = Generator[Wait, bool, T]


if hasattr(anyio, "wait_readable"):  # anyio >= 4.7 waits on a file descriptor
    _wait_readable: Callable[[int], Awaitable[None]] = anyio.wait_readable
    _wait_writable: Callable[[int], Awaitable[None]] = anyio.wait_writable
else:  # older anyio waits on socket objects only: one over a duplicate of the descriptor

    async def _wait_readable(fd: int) -> None:
        with socket.socket(fileno=os.dup(fd)) as sock:
            await anyio.wait_socket_readable(sock)

    async def _wait_writable(fd: int) -> None:
        with socket.socket(fileno=os.dup(fd)) as sock:
            await anyio.wait_socket_writable(sock)


async def _wait(what: int | anyio.Event, read: bool | None) -> None:
    if read is None:
        assert isinstance(what, anyio.Event)
        await what.wait()
    else:
        assert isinstance(what, int)
        await (_wait_readable(what) if read else _wait_writable(what))


def _resume(steps: Steps[T], reply: bool | None, error: BaseException | None) -> Wait:
    """Run ``steps`` to its next wait: tell it whether the last one came, or raise ``error``
    inside it at its ``yield`` (StopIteration: it returned)."""
    if error is None:
        return steps.send(reply)  # type: ignore[arg-type]  # (None starts it)
    return steps.throw(error)


async def run_async(steps: Steps[T]) -> T:
    """Drive ``steps`` on the event loop; returns what it returns.

    Cancellable at each wait that is not shielded: the cancellation is raised inside the step
    (at its ``yield``), which cleans up and lets it propagate.
    """
    reply: bool | None = None
    error: BaseException | None = None
    while True:
        try:
            what, read, timeout, shielded = _resume(steps, reply, error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        error = None
        try:
            if read and timeout is None and not shielded:  # the hot path: results to read
                await _wait_readable(what)  # type: ignore[arg-type]
                reply = True
            elif timeout is None and not shielded:
                await _wait(what, read)
                reply = True
            else:
                with anyio.CancelScope(shield=shielded) as scope:
                    if timeout is not None:
                        scope.deadline = anyio.current_time() + timeout
                    await _wait(what, read)
                reply = not scope.cancelled_caught
        except BaseException as exc:  # a cancellation, or the descriptor closed under us
            error = exc


def run_blocking(steps: Steps[T], deadline: float) -> T:
    """Drive ``steps`` in the calling thread, waiting until ``deadline`` (``time.monotonic()``)
    at the latest; returns what it returns."""
    reply: bool | None = None
    error: BaseException | None = None
    while True:
        try:
            what, read, timeout, _ = _resume(steps, reply, error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        error = None
        if read is None:
            assert isinstance(what, anyio.Event)
            if what.is_set():
                reply = True
            else:  # only another task could set it, and none runs while this one blocks
                error = WouldBlock()
            continue
        assert isinstance(what, int)
        limit = deadline if timeout is None else min(deadline, time.monotonic() + timeout)
        reply = wait_ready(what, read, limit)


def wait_ready(fd: int, read: bool, limit: float) -> bool:
    """Block the thread until ``fd`` is ready, or ``limit`` (``time.monotonic()``) passed: False
    then.  Any descriptor number (``select.select`` refuses those above 1023)."""
    timeout = limit - time.monotonic()
    if timeout <= 0:
        return False
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ if read else selectors.EVENT_WRITE)
        return bool(sel.select(timeout))
