"""The acquire and release paths of a lock space, over its layers.

One task = one server session while it holds or waits on any lock of the space, so the
server's FIFO queue (with writer preference) and its deadlock detector see one task as one
session.  A task that holds nothing first queues in the process per key (the local gate of
:mod:`._state`), then gets a session from the pool (:mod:`._pool`), which is bound to it until
it holds and awaits nothing.  The statements and their clean-up are :mod:`._protocol`'s; a
lost session is :mod:`._watch`'s.  A task that exits holding locks has them released for it.

There is one acquire path: a single lock is a batch of one (:meth:`LockEngine.acquire`), so
re-entry, the local gates, the session binding, the statement and its undo are written once
for ``pg.lock(...)``, ``pg.rwlock(...)`` and ``LockCollection``.  The synchronous
``acquire_nowait()`` drives the same steps (checkout, statement, undo: :mod:`._steps`)
blocking, with a try statement.

Invariants:
    the engine is bound to one event loop (``_loop``) while any task holds or waits
    a task in ``ledger.tasks`` has a session, or waits for one (``waiting > 0``), or all its
      holds are lost (its session was lost; the holds wait for their release)
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel
from anyio import WouldBlock

from .._backend import (
    TRIO,
    asyncio_schedule_point,
    resolve_task,
    task_name,
    task_of,
    thread_mark,
    unwatch,
    watch,
)
from .._common import held_checkpoint
from .._exceptions import DeadlockError, LockLostError
from ._names import LOCK, Names
from ._pool import SessionPool, session_settings
from ._protocol import RECOVERY_TIMEOUT, SQL_UNLOCK_ALL, lock, lock_steps, server_release
from ._session import Pending, Session, SessionLost
from ._state import Hold, Ledger, S, TaskState, X
from ._steps import run_blocking
from ._watch import Watch

if TYPE_CHECKING:
    from ._views import _View

__all__ = ["LockEngine"]

#: acquire_nowait() blocks the event loop for one round trip, at most this long in all.
_NOWAIT_TIMEOUT = 5.0


@final
class LockEngine:
    """The runtime of one :class:`PostgresLocks`: its layers and the paths over them."""

    __slots__ = ("_loop", "_tid", "closed", "ledger", "names", "pool", "watch")

    def __init__(
        self,
        dsn: str,
        namespace: str,
        *,
        max_sessions: int,
        idle_timeout: float,
        heartbeat: float,
        lease: float | None,
        cancel_on_loss: bool,
        max_held_keys: int,
    ) -> None:
        self._loop: Any = None
        self._tid: Any = None
        self.closed = False
        self.names = Names(namespace)
        self.ledger = Ledger(max_held_keys)
        settings = session_settings(heartbeat, lease)
        self.pool = SessionPool(
            dsn, settings, max_sessions, idle_timeout, self.check_open, self._session_idle
        )
        self.watch = Watch(self.ledger, self.pool, self.names, heartbeat, lease, cancel_on_loss)

    def __repr__(self) -> str:
        if self.closed:
            state = "closed"
        else:
            state = f"{self.pool.count} sessions, {len(self.ledger.tasks)} tasks"
        return f"<aiolocks.postgres.PostgresLocks namespace={self.names.namespace!r} {state}>"

    # -- loops and tasks --------------------------------------------------------------------------

    def task(self) -> Any:
        task = task_of(self._loop)
        if task is None or self._tid != thread_mark():
            old = self._loop
            task = resolve_task(self)
            if old is not None and self._loop is not old:
                # moved to a new event loop while idle: the old loop's sessions and task go
                self.pool.reset()
                self.watch.reset()
        return task

    def _in_use(self) -> bool:
        return bool(self.ledger.tasks) or self.pool.in_use

    def check_open(self) -> None:
        if self.closed:
            raise anyio.ClosedResourceError(f"{self!r} is closed")

    def _session_idle(self) -> None:
        if not self.watch.running:
            self.watch.start(self._loop)  # it closes the session after idle_timeout

    # -- sessions of tasks ------------------------------------------------------------------------

    def _bind(self, task: Any, session: Session) -> TaskState:
        ts = TaskState(task, session, self.watch.session_lost)
        self.ledger.tasks[task] = ts
        ts.watch = watch(self._loop, task, self._task_exited)
        return ts

    def _maybe_unbind(self, ts: TaskState) -> None:
        """A task that holds and awaits nothing gives its session back to the pool."""
        if ts.holds or ts.waiting:
            return
        if self.ledger.tasks.get(ts.task) is ts:
            del self.ledger.tasks[ts.task]
        unwatch(ts.task, ts.watch)
        ts.watch = None
        session, ts.session = ts.session, None
        if session is not None:
            self.pool.checkin(session)

    def _task_exited(self, task: Any) -> None:
        """A task exited holding locks without releasing them: they are released now.

        The session is reset (``pg_advisory_unlock_all()``, sent at once) and pooled again.
        """
        ts = self.ledger.tasks.pop(task, None)
        if ts is None:
            return
        ts.watch = None
        for hold in list(ts.holds.values()):
            self.ledger.forget(ts, hold)
        ts.waiting = 0
        session = ts.detach()
        if session is None:
            return
        if not session.closed:
            try:
                session.send(SQL_UNLOCK_ALL, None, partial(_close_on_error, session), prepared=True)
            except SessionLost:
                pass
        self.pool.checkin(session)

    async def _session_for(self, ts: TaskState | None, task: Any) -> TaskState:
        if ts is None:
            session = await self.pool.checkout()
            ts = self.ledger.tasks.get(task)
            if ts is None:
                return self._bind(task, session)
            self.pool.checkin(session)  # pragma: no cover - the task cannot bind twice at once
        if ts.session is None or ts.session.closed:
            self.pool.discard(ts.detach())
            ts.waiting += 1  # while it waits for a new session, it must stay bound
            try:
                ts.session = await self.pool.checkout()
            finally:
                ts.waiting -= 1
        return ts

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """The calling task's session, or one borrowed from the pool meanwhile."""
        self.check_open()
        ts = self.ledger.tasks.get(self.task())
        if ts is not None and ts.session is not None and not ts.session.closed:
            yield ts.session
            return
        session = await self.pool.checkout()
        try:
            yield session
        finally:
            self.pool.checkin(session)

    # -- acquiring --------------------------------------------------------------------------------

    async def acquire(self, members: Sequence[tuple[_View, int]]) -> Any:
        """Take every ``(view, mode)`` of ``members`` for the calling task, all or none, in one
        statement; returns the task.  A single lock is a batch of one.

        Members the task holds already are re-entered client-side (the re-entry rules are
        checked before anything is taken).  Acquiring is a checkpoint: a cancellation at any
        point leaves nothing held, on the server either.
        """
        self.check_open()
        task = self.task()
        ts = self.ledger.tasks.get(task)
        again: Sequence[tuple[Hold, int]] = ()
        if ts is None and len(members) == 1:
            wanted = members  # the common case: a task that holds nothing takes one lock
        else:
            wanted, again = self._request(ts, members)
            if not wanted:
                return await self._reenter_only(task, members, again)
        await anyio.lowlevel.checkpoint_if_cancelled()
        infos, gates = self.ledger.enter(ts, wanted)  # the local queue, then the server's
        try:
            async with gates:
                ts = await self._session_for(ts, task)
                ts.waiting += 1
                session = ts.session
                assert session is not None
                waits = session.waits
                try:
                    tokens = await lock(ts, self.names, wanted)
                except SessionLost:  # the session died, its locks with it: reconnect, once
                    tokens = await self._relock(ts, task, wanted)
                finally:
                    ts.waiting -= 1
        except BaseException:
            if ts is not None:
                self._maybe_unbind(ts)
            raise
        else:
            for (view, mode), token in zip(wanted, tokens, strict=True):
                self._record(ts, view._key, mode, token)
        finally:
            self.ledger.leave(wanted, infos)
        for hold, mode in again:
            hold.add(mode)
        if session.waits != waits and ts.session is session:
            return task  # it waited on the event loop for the answer: a schedule point already
        # The answer arrived before the first wait: keep acquire() a schedule point.  A
        # cancellation delivered there gives the locks back, and the unlocks are awaited before
        # the cancellation propagates: a cancelled acquire never leaves a lock held.
        try:
            await _schedule_point(self._loop)
        except BaseException:
            await self._give_back_awaited(members, task)
            raise
        return task

    def _request(
        self, ts: TaskState | None, members: Sequence[tuple[_View, int]]
    ) -> tuple[Sequence[tuple[_View, int]], Sequence[tuple[Hold, int]]]:
        """``members`` split into what to take from the server (ascending keys) and the levels
        to add to holds of the task; raises (changing nothing) if a re-entry is refused."""
        wanted: dict[int, tuple[_View, int]] = {}
        again: list[tuple[Hold, int]] = []
        for view, mode in members:
            hold = ts.holds.get(view._key) if ts is not None else None
            if hold is not None and (hold.x or hold.s):
                assert ts is not None
                self._reenter(ts, view, hold, mode)
                again.append((hold, mode))
            elif view._key in wanted:
                raise ValueError(f"{view!r} appears twice")
            else:
                wanted[view._key] = (view, mode)
        return [wanted[key] for key in sorted(wanted)], again

    async def _reenter_only(
        self, task: Any, members: Sequence[tuple[_View, int]], again: Sequence[tuple[Hold, int]]
    ) -> Any:
        """Every member is held by the task already: one more level of each, then the
        checkpoint (a cancellation there takes the levels back)."""
        for hold, mode in again:
            hold.add(mode)
        await held_checkpoint(self._loop, partial(self._give_back, members), task)
        return task

    async def _relock(
        self, ts: TaskState, task: Any, wanted: Sequence[tuple[_View, int]]
    ) -> list[int]:
        """The lock statement again, on a new session (the task's died)."""
        await self._session_for(ts, task)
        return await lock(ts, self.names, wanted)

    def _give_back(self, members: Sequence[tuple[_View, int]], task: Any) -> None:
        """Undo re-entrant grants (cancelled at the checkpoint that follows them)."""
        for view, mode in reversed(members):
            try:
                self.release(view, mode)
            except LockLostError:
                pass

    async def _give_back_awaited(self, members: Sequence[tuple[_View, int]], task: Any) -> None:
        """Undo grants of the server (cancelled at the schedule point after them): the unlocks
        are awaited, shielded."""
        with anyio.CancelScope(shield=True):
            for view, mode in reversed(members):
                try:
                    await self.release_and_wait(view, mode, task)
                except LockLostError:
                    pass

    def _reenter(self, ts: TaskState, view: _View, hold: Hold, mode: int) -> None:
        """A task that already holds ``hold`` asks for ``mode``: it gets it at once
        (client-side count), or this raises."""
        self.watch.check_alive(ts)
        if hold.lost is not None:
            raise LockLostError(f"{view!r} was lost before this re-entrant acquire") from hold.lost
        if view._kind == LOCK:
            raise DeadlockError(f"{view!r} is already held by this task (it is not re-entrant)")
        if mode == S or hold.x:
            return  # reads are re-entrant, also on top of a write hold; writes are re-entrant
        raise DeadlockError(
            f"{view!r}: this task holds the read lock and asks for the write lock; a read-to-write "
            "upgrade can deadlock (two readers upgrading wait for each other forever). Release "
            "the read lock first."
        )

    def _record(self, ts: TaskState, key: int, mode: int, token: int) -> None:
        self.ledger.record(ts, key, mode, token)
        session = ts.session
        if session is not None:  # a terminated backend or a shutdown is known at once
            session.watch(self._loop, ts.lost)
        if not self.watch.running:
            self.watch.holding(self._loop)

    def acquire_nowait(self, view: _View, mode: int) -> None:
        """Take (view, mode) if the server grants it at once, blocking for one round trip."""
        self.check_open()
        task = self.task()
        ts = self.ledger.tasks.get(task)
        _, again = self._request(ts, ((view, mode),))
        if again:
            again[0][0].add(mode)
            return
        if self.ledger.would_block(task, view._key, mode):
            raise WouldBlock  # a refusal that needs no round trip
        self.ledger.check_room(1)
        # The steps of acquire(), driven blocking: a session (pooled, else a new one: it never
        # waits for another task's), then a try statement, with its undo.
        deadline = time.monotonic() + _NOWAIT_TIMEOUT
        if ts is None:
            ts = self._bind(task, run_blocking(self.pool.checkout_steps(), deadline))
        elif ts.session is None or ts.session.closed:
            self.pool.discard(ts.detach())
            ts.session = run_blocking(self.pool.checkout_steps(), deadline)
        members = ((view, mode),)
        try:
            tokens = run_blocking(lock_steps(ts, self.names, members, try_only=True), deadline)
            if tokens is None:
                raise WouldBlock
        except BaseException as exc:
            self._maybe_unbind(ts)
            if isinstance(exc, TimeoutError):  # no answer by the deadline: nothing is held
                raise WouldBlock from exc
            raise
        self._record(ts, view._key, mode, tokens[0])

    # -- releasing --------------------------------------------------------------------------------

    def release(self, view: _View, mode: int) -> Pending | None:
        """Release one level; returns the unlock sent to the server, if any (never awaits).

        Raises:
            RuntimeError: the calling task does not hold it (nothing changes).
            LockLostError: the hold had been lost (the local state is cleaned up first).
        """
        task = self.task()
        ts = self.ledger.tasks.get(task)
        pending = self._release_level(task, ts, view, mode)
        assert ts is not None
        self._maybe_unbind(ts)
        return pending

    def _release_level(
        self, task: Any, ts: TaskState | None, view: _View, mode: int
    ) -> Pending | None:
        hold = ts.holds.get(view._key) if ts is not None else None
        if ts is None or hold is None or (hold.x if mode == X else hold.s) == 0:
            raise RuntimeError(
                f"release() of {view!r} by task {task_name(task)!r}: this task does not hold it"
            )
        if mode == X:
            hold.x -= 1
        else:
            hold.s -= 1
        pending: Pending | None = None
        lost = hold.lost
        if lost is None:
            pending = self._sync_server(ts, hold)
            lost = hold.lost
        if not hold.x and not hold.s:
            self.ledger.forget(ts, hold)
        else:
            self.ledger.update(task, hold)
        if lost is not None:
            self._maybe_unbind(ts)
            raise LockLostError(f"{view!r}: the lock was lost while held ({lost})") from lost
        return pending

    def _sync_server(self, ts: TaskState, hold: Hold) -> Pending | None:
        """Bring the server's holds in line with the client's counts after a release."""
        change = server_release(hold)
        if change is None:
            return None
        self.watch.check_alive(ts)  # a hold already known lost is reported as such
        if hold.lost is not None:
            return None
        sql, hold.server_x, hold.server_s = change
        session = ts.session
        if session is None or session.closed:
            hold.lost = SessionLost("the connection to PostgreSQL was lost")
            return None
        on_done = partial(self._unlock_done, ts.task, session)
        try:
            return session.send(sql, [str(hold.key).encode()], on_done, prepared=True)
        except SessionLost as exc:
            hold.lost = exc
            self.watch.session_lost(ts, exc)
            return None

    def _unlock_done(self, task: Any, session: Session, pending: Pending) -> None:
        if pending.error is None:
            return  # false ("was not held") cannot happen on a live session
        # An unlock that failed may have left the lock held: the session must go (the server
        # then drops all it held); whoever still holds something through it lost it.
        if session.closed:
            return
        owner = self.ledger.tasks.get(task)
        if owner is not None and owner.session is session:
            self.watch.session_lost(owner, SessionLost("an unlock failed; the session was closed"))
        else:
            session.close()

    async def release_and_wait(self, view: _View, mode: int, task: Any) -> None:
        """``__aexit__`` of the calling ``task``: release, then await the unlock's answer
        (shielded).

        The task keeps its session until the answer is read, so no other task can take the
        session meanwhile.
        """
        ts = self.ledger.tasks.get(task)
        if ts is not None:
            ts.waiting += 1
        returning = False
        try:
            pending = self._release_level(task, ts, view, mode)
            session = ts.session if ts is not None else None
            if pending is None or session is None:
                return
            assert ts is not None
            if not ts.holds:  # the session goes back to the pool after the answer
                returning = True
                self.pool.returning += 1
                session.unwatch()  # nothing left to watch for: not armed again after the wait
            if not pending.done:
                try:
                    session.poll()  # the answer is often there already: no shield needed
                except SessionLost:
                    pass
            if not pending.done and not session.closed:
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + RECOVERY_TIMEOUT
                    try:
                        await session.wait(pending)
                    except SessionLost:
                        pass
            self._check_unlock(ts, view, pending)
        finally:
            if ts is not None:
                ts.waiting -= 1
                self._maybe_unbind(ts)  # its session to a checkout waiting for it, or pooled
            if returning:
                self.pool.returned()

    def _check_unlock(self, ts: TaskState, view: _View, pending: Pending) -> None:
        """A release's unlock answered true, or its hold was lost: that raises."""
        if not pending.done:
            self.watch.session_lost(ts, SessionLost("no answer from PostgreSQL to an unlock"))
            raise LockLostError(f"{view!r}: no answer from PostgreSQL to its release")
        if pending.error is not None or pending.value(0) != b"t":
            raise LockLostError(
                f"{view!r}: the lock turned out to be lost when it was released"
            ) from pending.error

    # -- inspection and closing -------------------------------------------------------------------

    def hold_of(self, view: _View) -> Hold | None:
        """The calling task's hold of ``view``'s key, if any."""
        ts = self.ledger.tasks.get(self.task())
        return ts.holds.get(view._key) if ts is not None else None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        reason = anyio.ClosedResourceError(f"{self!r} was closed")
        for ts in list(self.ledger.tasks.values()):
            if ts.session is not None:
                self.ledger.mark_lost(ts, reason)
                self.pool.discard(ts.detach())
        self.pool.close()
        self.watch.close()
        await anyio.lowlevel.checkpoint()


def _schedule_point(loop: Any) -> Awaitable[None]:
    """A schedule point and cancel point, as cheap as each backend allows."""
    if loop is TRIO:
        return sys.modules["trio"].lowlevel.checkpoint()  # type: ignore[no-any-return]
    return asyncio_schedule_point()


def _close_on_error(session: Session, pending: Pending) -> None:
    if pending.error is not None:
        session.close()
