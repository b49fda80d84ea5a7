"""Model-based test: RWLock against a small reference model of its fairness rules.

Hypothesis draws a list of commands (request read / write / upgradable, try-lock, release,
cancel a waiter, downgrade, upgrade). Each example runs in its own event loop: the commands are
applied both to a real RWLock, through actor tasks, and to the model; after each command the
scheduler settles and who holds what, who waits, the statistics and the version must agree.

Model rules (API.md): a waiting writer or a pending upgrade blocks readers that arrive after it; a
waiting upgradable request does not; writers and upgradable requests are served FIFO; when a
write hold ends (release or downgrade) every waiting reader is admitted (phase-fair); a pending
upgrade completes as soon as the other readers have left.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import anyio.abc
import pytest
import sniffio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _actors import IDLE, Actor, Op, actors, assert_idle, settle, snap  # noqa: F401
from aiolocks import RWLock
from aiolocks._introspect import check_invariants

ACTORS = 6

_BACKENDS: list[Any] = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("trio", {}), id="trio"),
]
if sys.platform != "win32":
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is in the test extra
        pass
    else:
        _BACKENDS.insert(1, pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"))


# --- the reference model -------------------------------------------------------------------------

READ, WRITE, UPGRADABLE, UPGRADED = "read", "write", "upgradable", "upgraded"


class Model:
    """Who holds what and who waits, by the fairness rules alone."""

    def __init__(self) -> None:
        self.hold: dict[int, str] = {}
        self.queue: list[tuple[int, str]] = []  # blocked acquire() calls, arrival order
        self.upgrading: int | None = None  # the upgradable holder blocked in upgrade()
        self.version = 0

    def writer(self) -> int | None:
        return next((a for a, m in self.hold.items() if m in (WRITE, UPGRADED)), None)

    def upgradable_holder(self) -> int | None:
        return next((a for a, m in self.hold.items() if m in (UPGRADABLE, UPGRADED)), None)

    def waiting(self) -> set[int]:
        actors = {a for a, _ in self.queue}
        if self.upgrading is not None:
            actors.add(self.upgrading)
        return actors

    def can_take(self, mode: str) -> bool:
        queued = {m for _, m in self.queue}
        if mode == READ:
            return self.writer() is None and WRITE not in queued and self.upgrading is None
        if mode == WRITE:
            return not self.hold and not self.queue
        return (
            self.writer() is None
            and self.upgradable_holder() is None
            and WRITE not in queued
            and UPGRADABLE not in queued
        )

    def can_upgrade(self, actor: int) -> bool:
        return not any(m == READ for a, m in self.hold.items() if a != actor)

    def request(self, actor: int, mode: str) -> None:
        if self.can_take(mode):
            self._grant(actor, mode)
        else:
            self.queue.append((actor, mode))

    def try_take(self, actor: int, mode: str) -> bool:
        if self.can_take(mode):
            self._grant(actor, mode)
            return True
        return False

    def upgrade(self, actor: int) -> None:
        if self.can_upgrade(actor):
            self._grant(actor, UPGRADED)
        else:
            self.upgrading = actor

    def release(self, actor: int) -> None:
        mode = self.hold.pop(actor)
        if mode in (WRITE, UPGRADED):
            self.version += 1
        self._pump(phase_fair=mode in (WRITE, UPGRADED))

    def downgrade(self, actor: int) -> None:
        self.hold[actor] = READ if self.hold[actor] == WRITE else UPGRADABLE
        self.version += 1
        self._pump(phase_fair=True)

    def cancel(self, actor: int) -> None:
        if self.upgrading == actor:
            self.upgrading = None
        else:
            self.queue = [(a, m) for a, m in self.queue if a != actor]
        self._pump(phase_fair=False)

    def _grant(self, actor: int, mode: str) -> None:
        self.hold[actor] = mode
        if mode in (WRITE, UPGRADED):
            self.version += 1

    def _pump(self, *, phase_fair: bool) -> None:
        if phase_fair:
            for actor, mode in self.queue:
                if mode == READ:
                    self._grant(actor, READ)
            self.queue = [(a, m) for a, m in self.queue if m != READ]
        if self.upgrading is not None and self.can_upgrade(self.upgrading):
            self._grant(self.upgrading, UPGRADED)
            self.upgrading = None
        readers_blocked = self.writer() is not None or self.upgrading is not None
        exclusive_blocked = False
        still_waiting = []
        for actor, mode in self.queue:
            if mode == READ and not readers_blocked:
                self._grant(actor, READ)
                continue
            if mode == WRITE:
                if not exclusive_blocked and not self.hold:
                    self._grant(actor, WRITE)
                    readers_blocked = exclusive_blocked = True
                    continue
                readers_blocked = exclusive_blocked = True
            elif mode == UPGRADABLE:
                if (
                    not exclusive_blocked
                    and self.writer() is None
                    and self.upgradable_holder() is None
                ):
                    self._grant(actor, UPGRADABLE)
                    exclusive_blocked = True
                    continue
                exclusive_blocked = True
            still_waiting.append((actor, mode))
        self.queue = still_waiting


# --- driving the real lock -----------------------------------------------------------------------

ACQUIRE_KINDS = (READ, WRITE, UPGRADABLE)
# Weighted: acquisitions and releases dominate so queues build up and drain.
COMMANDS = (
    *("read", "write") * 3,
    "upgradable",
    "upgradable",
    "read_nowait",
    "write_nowait",
    "upgradable_nowait",
    *("release",) * 4,
    "cancel",
    "downgrade",
    "upgrade",
    "upgrade_nowait",
)
command_lists = st.lists(
    st.tuples(st.sampled_from(COMMANDS), st.integers(0, ACTORS - 1), st.booleans()),
    min_size=4,
    max_size=40,
)


class Driver:
    def __init__(self, rw: RWLock, crew: list[Actor]) -> None:
        self.rw = rw
        self.crew = crew
        self.model = Model()
        self.version0 = rw.version
        self.hold: dict[int, str] = {}  # what the real lock granted, as the actors saw it
        self.pending: dict[int, tuple[Op, str]] = {}  # blocked calls: op, mode they ask for
        self.cancelled: set[int] = set()
        self.native = sniffio.current_async_library() == "asyncio"
        self.log: list[str] = []

    def view(self, mode: str) -> Any:
        return {
            READ: self.rw.reader,
            WRITE: self.rw.writer,
            UPGRADABLE: self.rw.upgradable,
            UPGRADED: self.rw.upgradable,
        }[mode]

    def idle(self) -> list[int]:
        return [a for a in range(ACTORS) if a not in self.hold and a not in self.pending]

    async def apply(self, command: str, pick: int, native: bool) -> None:
        model = self.model
        if command in ACQUIRE_KINDS or (
            command.endswith("_nowait") and command != "upgrade_nowait"
        ):
            candidates = self.idle()
        elif command == "release":
            candidates = [a for a in self.hold if a not in self.pending]
        elif command == "cancel":
            candidates = sorted(self.pending)
        elif command == "downgrade":
            candidates = [a for a, m in self.hold.items() if m in (WRITE, UPGRADED)]
        else:
            candidates = [
                a for a, m in self.hold.items() if m == UPGRADABLE and a not in self.pending
            ]
        if not candidates:
            return
        actor_id = candidates[pick % len(candidates)]
        actor = self.crew[actor_id]
        self.log.append(f"{command}({actor_id})")

        if command in ACQUIRE_KINDS:
            self.pending[actor_id] = (actor.start(self.view(command).acquire), command)
            model.request(actor_id, command)
        elif command == "upgrade":
            self.pending[actor_id] = (actor.start(self.rw.upgradable.upgrade), UPGRADED)
            model.upgrade(actor_id)
        elif command.endswith("_nowait"):
            mode = command[: -len("_nowait")]
            if mode == "upgrade":
                fn, expected = self.rw.upgradable.upgrade_nowait, model.can_upgrade(actor_id)
                if expected:
                    model.upgrade(actor_id)
                mode = UPGRADED
            else:
                fn, expected = self.view(mode).acquire_nowait, model.try_take(actor_id, mode)
            op = actor.start(fn)
            await settle()
            assert op.finished
            if expected:
                assert op.exc is None, f"{command} by {actor_id} failed: {op.exc!r}"
                self.hold[actor_id] = mode
            else:
                assert isinstance(op.exc, anyio.WouldBlock), f"{command} by {actor_id} succeeded"
        elif command == "release":
            mode = self.hold.pop(actor_id)
            await actor.run(self.view(mode).release)
            model.release(actor_id)
        elif command == "downgrade":
            await actor.run(self.rw.writer.downgrade)
            self.hold[actor_id] = READ if self.hold[actor_id] == WRITE else UPGRADABLE
            model.downgrade(actor_id)
        elif command == "cancel":
            op, _ = self.pending[actor_id]
            op.cancel("native" if native and self.native else "scope")
            self.cancelled.add(actor_id)
            model.cancel(actor_id)
        await self.observe()

    async def observe(self) -> None:
        await settle()
        for actor_id, (op, mode) in list(self.pending.items()):
            if not op.finished:
                continue
            del self.pending[actor_id]
            if actor_id in self.cancelled:
                self.cancelled.discard(actor_id)
                assert op.cancelled, f"cancelled waiter {actor_id} ended with {op.exc!r}"
                continue
            assert op.exc is None, f"{actor_id}: {mode} failed with {op.exc!r}"
            self.hold[actor_id] = mode
        self.compare()

    def compare(self) -> None:
        model, rw = self.model, self.rw
        where = " -> ".join(self.log)
        check_invariants(rw)
        assert self.hold == model.hold, f"holders differ after {where}"
        assert set(self.pending) == model.waiting(), f"waiters differ after {where}"
        stats = rw.statistics()
        writer = model.writer()
        expected_writer = None if writer is None else self.crew[writer].info
        queued = [m for _, m in model.queue]
        assert stats.writer == expected_writer, where
        assert stats.readers_waiting == queued.count(READ), where
        waiting_writers = len(queued) - queued.count(READ) + (model.upgrading is not None)
        assert stats.writers_waiting == waiting_writers, where
        if UPGRADED not in model.hold.values():
            readers = sum(m in (READ, UPGRADABLE) for m in model.hold.values())
            assert stats.readers == readers, where
        assert rw.version == self.version0 + model.version, where
        assert stats.version == rw.version

    async def wind_down(self) -> None:
        while self.pending:  # one at a time: a cancellation may admit the next waiter
            actor_id = min(self.pending)
            self.pending[actor_id][0].cancel()
            self.cancelled.add(actor_id)
            self.model.cancel(actor_id)
            await self.observe()
        while self.hold:
            actor_id = min(self.hold)
            mode = self.hold.pop(actor_id)
            await self.crew[actor_id].run(self.view(mode).release)
            self.model.release(actor_id)
            await self.observe()
        assert_idle(self.rw)


async def _run_commands(commands: list[tuple[str, int, bool]], fast: bool) -> None:
    rw = RWLock(fast_acquire=fast)
    async with actors(*(f"actor-{i}" for i in range(ACTORS)), timeout=10) as crew:
        driver = Driver(rw, crew)
        for command in commands:
            await driver.apply(*command)
        await driver.wind_down()


@pytest.mark.parametrize("backend", _BACKENDS)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(commands=command_lists, fast=st.booleans())
def test_rwlock_matches_the_fairness_model(
    backend: tuple[str, dict[str, Any]], commands: list[tuple[str, int, bool]], fast: bool
) -> None:
    name, options = backend
    anyio.run(_run_commands, commands, fast, backend=name, backend_options=options)


def test_model_is_phase_fair_and_writer_preferring() -> None:
    """The model itself, on the scenario the API describes."""
    model = Model()
    model.request(0, WRITE)
    model.request(1, READ)
    model.request(2, WRITE)
    model.request(3, READ)
    assert model.queue == [(1, READ), (2, WRITE), (3, READ)]
    model.release(0)
    assert model.hold == {1: READ, 3: READ}
    assert model.queue == [(2, WRITE)]
    model.request(4, READ)
    assert model.queue == [(2, WRITE), (4, READ)]
    model.release(1)
    model.release(3)
    assert model.hold == {2: WRITE}
    model.release(2)
    assert model.hold == {4: READ}
    assert model.version == 4
