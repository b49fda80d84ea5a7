"""Pieces shared by every lock-like primitive: the held checkpoint and misuse errors."""

from __future__ import annotations

import sys
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any, NoReturn
from weakref import WeakKeyDictionary, WeakSet

from ._backend import READY, TRIO, task_name

__all__ = [
    "AsyncOnly",
    "add_sleeper",
    "check_flag",
    "lock_broken",
    "held_checkpoint",
    "name_of",
    "repr_name",
    "no_sync_with",
    "not_holding",
    "set_name",
    "who",
]


@types.coroutine
def _asyncio_held_checkpoint(undo: Callable[[Any], None], task: Any) -> Generator[None, None, None]:
    try:
        yield  # schedule point + cancel point for asyncio tasks
    except BaseException:
        undo(task)
        raise


async def _trio_held_checkpoint(undo: Callable[[Any], None], task: Any) -> None:
    try:
        await _trio_checkpoint()
    except BaseException:
        undo(task)
        raise


async def _trio_held_cancel_point(undo: Callable[[Any], None], task: Any) -> None:
    try:
        await sys.modules["trio"].lowlevel.checkpoint_if_cancelled()
    except BaseException:
        undo(task)
        raise


def _trio_checkpoint() -> Awaitable[None]:
    global _trio_checkpoint
    _trio_checkpoint = sys.modules["trio"].lowlevel.checkpoint  # resolved once, on first use
    return _trio_checkpoint()


def held_checkpoint(
    loop: Any, undo: Callable[[Any], None], task: Any, fast: bool | None = False
) -> Awaitable[None]:
    """The checkpoint of an acquire that got the lock without waiting.

    The lock is taken first and the checkpoint follows: if the task is cancelled there, ``undo``
    gives the lock back before the cancellation propagates, so the caller never holds it.  One
    yield to the event loop gives both the schedule point and the cancel point.  With ``fast``
    (``fast_acquire=True``) there is no schedule point: nothing at all on asyncio (as
    ``asyncio.Lock``), a cancel point on trio (as trio's conventions require).  ``fast`` may be
    a primitive's ``_fast`` slot as it is: ``None`` there means ``fast_acquire`` too (see
    ``_backend.Bindable``); only ``False`` means without it.
    """
    if loop is TRIO:
        if fast is not False:
            return _trio_held_cancel_point(undo, task)
        return _trio_held_checkpoint(undo, task)
    if fast is not False:
        return READY
    return _asyncio_held_checkpoint(undo, task)


def no_sync_with(prim: object) -> NoReturn:
    raise TypeError(
        f"{type(prim).__name__} is an async lock: use 'async with', not 'with' "
        "(a plain 'with' cannot wait for it)"
    )


class AsyncOnly:
    """Base of the async locks: a plain ``with lock:`` raises a TypeError naming ``async with``."""

    __slots__ = ()

    def __enter__(self) -> None:
        no_sync_with(self)

    def __exit__(self, *args: object) -> None:
        no_sync_with(self)


def who(task: Any) -> str:
    return "no task" if task is None else f"task {task_name(task)!r}"


def not_holding(call: str, prim: object, task: Any, holders: Any = ()) -> RuntimeError:
    """The error for a release (or downgrade) by a task that does not hold what it releases.

    One wording for every primitive: ``call`` of ``prim`` by the task, then who holds it.  A
    holder that has finished is how ``asyncio.wait_for(lock.acquire(), t)`` shows up before
    Python 3.12 (it acquires in a helper task, which then owns the lock): say so.
    """
    holders = [h for h in holders if h is not None and h is not task]
    if not holders:
        return RuntimeError(f"{call} of {prim!r} by {who(task)}: it is not held")
    verb = call.split("(")[0].rsplit(".", 1)[-1]  # "release", "downgrade"
    message = (
        f"{call} of {prim!r} by {who(task)}: {who(holders[0])} holds it; only the task "
        f"holding it may {verb} it"
    )
    finished = [h for h in holders if getattr(h, "done", lambda: False)()]
    if finished:
        message += (
            f" ({who(finished[0])} has finished without releasing it: on Python < 3.12, "
            "asyncio.wait_for(lock.acquire(), t) acquires in a helper task, which then holds "
            "the lock; wrap acquire() in asyncio.timeout() or anyio.fail_after() instead)"
        )
    return RuntimeError(message)


# Names live outside the primitives: most locks have none, and a slot costs every instance.
_NAMES: WeakKeyDictionary[Any, str] = WeakKeyDictionary()


def set_name(prim: object, name: str | None) -> None:
    """Record ``name=`` for ``prim`` (validated: a str or None)."""
    if name is None:
        return
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {type(name).__name__}")
    _NAMES[prim] = name


def name_of(prim: object) -> str | None:
    """The name given to ``prim``, if any."""
    return _NAMES.get(prim)


def repr_name(prim: object) -> str:
    """``prim``'s name as its ``repr`` shows it: ``" 'name'"``, or ``""`` if it has none."""
    name = _NAMES.get(prim)
    return f" {name!r}" if name else ""


# Conditions with tasks sleeping over a lock, by the lock's underlying primitive: when the lock
# breaks (a holder exited holding it), they must fail their sleepers, who could never be
# notified.  Consulted only on that rare path; weak on both sides.
_SLEEPERS: WeakKeyDictionary[Any, WeakSet[Any]] = WeakKeyDictionary()


def add_sleeper(prim: object, cond: object) -> None:
    """Register ``cond`` to hear ``cond._lock_broken(write_held)`` when ``prim`` breaks."""
    conds = _SLEEPERS.get(prim)
    if conds is None:
        conds = _SLEEPERS[prim] = WeakSet()
    conds.add(cond)


def lock_broken(prim: object, write_held: bool) -> None:
    """``prim`` broke: a holder exited holding it (``write_held``: it held it exclusively)."""
    for cond in list(_SLEEPERS.get(prim, ())):
        cond._lock_broken(write_held)


def check_flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, not {type(value).__name__}")
    return value
