"""Code as a user writes it, checked by mypy --strict and pyright strict (tests/test_typing.py).

``assert_type`` pins what each public name gives a type checker; a ``# type: ignore`` marks a
mistake both must catch (both report an ignore that is not needed, so it proves the error).
It is only type-checked, never run.
"""

# pyright: strict, reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

from typing import Literal

import anyio
from typing_extensions import assert_type

import aiolocks
from aiolocks import (
    CollectionGuard,
    Condition,
    KeyedLock,
    KeyedRWLock,
    LockCollection,
    LockLike,
    RWLock,
    TaskKey,
)


def total(a: int, b: int) -> int:
    return a + b


async def fetch(key: str) -> bytes:
    return key.encode()


async def collections(rw: RWLock) -> None:
    coll = LockCollection(rw.reader, aiolocks.Lock(), anyio.Lock(), strategy="retry", name="c")
    assert_type(coll.strategy, Literal["ordered", "retry"])
    LockCollection(rw.writer, strategy="retyr")  # type: ignore[arg-type]
    LockCollection(42)  # type: ignore[arg-type]
    async with coll.lock(TaskKey.get()) as guard:
        assert_type(guard, CollectionGuard)
        assert_type(guard.locks, tuple[LockLike, ...])
    await coll.lock(TaskKey.get())  # type: ignore[misc]
    with coll.lock_nowait(TaskKey.get()) as held:
        assert_type(held, CollectionGuard)


async def optimistic(rw: RWLock) -> None:
    assert_type(await rw.read_optimistic(total, 1, 2), int)
    assert_type(await rw.read_optimistic(fetch, "k"), bytes)
    await rw.read_optimistic(total, 1, "2")  # type: ignore[arg-type, call-arg]
    await rw.read_optimistic(fetch)  # type: ignore[arg-type, call-arg]


async def conditions(rw: RWLock) -> None:
    cond = Condition(name="jobs")
    assert_type(cond.lock, "aiolocks.Lock | aiolocks.WriteLock | aiolocks.ReadLock | anyio.Lock")
    async with cond as entered:
        assert_type(entered, None)
        cond.notify()
    Condition(rw.reader)
    Condition(rw.upgradable)  # type: ignore[arg-type]


async def keyed() -> None:
    users: KeyedRWLock[int] = KeyedRWLock()
    assert_type(users[1], RWLock)
    users["ann"]  # type: ignore[index]
    for user in users:
        assert_type(user, int)
    anything = KeyedRWLock()  # any hashable key
    async with anything[("a", 1)].writer:
        pass
    carts = KeyedLock[str](name="carts")
    assert_type(carts["x"], aiolocks.Lock)


async def views(rw: RWLock) -> None:
    async with rw.reader, rw.writer:
        pass
    async with rw:  # type: ignore[attr-defined]
        pass


def diagnostics() -> None:
    import signal
    import sys

    import aiolocks.debug
    from aiolocks.telemetry import AiolocksInstrumentor

    aiolocks.debug.dump_on_signal(signal.SIGUSR2, file=sys.stderr)
    aiolocks.debug.dump_on_signal("USR1")  # type: ignore[arg-type]
    instrumentor = AiolocksInstrumentor()
    instrumentor.instrument()
    assert_type(instrumentor.is_instrumented_by_opentelemetry, bool)
    instrumentor.uninstrument()
