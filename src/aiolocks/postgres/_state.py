"""What the client knows: holds per task, tasks and waiters per key, the local per-name queue.

No I/O here.  A :class:`Ledger` keeps, for one lock space, the tasks that hold or wait on its
locks (:class:`TaskState`, with the session serving each and its :class:`Hold` s) and, per
key, which tasks of this process hold or wait for it (:class:`KeyInfo`).  Re-entrancy is
counted here: the server holds each (key, mode) at most once per session.

The local gate of a key is the queue in front of the server's: a task that holds nothing waits
in it (FIFO) for its turn to wait on the server, so a key costs this process at most one
waiting session however many tasks want it.  A task that holds something goes straight to the
server with the session it has: nothing can wait for a task in a gate, so the gates never hide
a deadlock from the server's detector.

Invariants (per lock space):
    tasks[t].session is bound to task t only; a task's session never waits in the pool
    a Hold with server_x / server_s set is held by that task's session on the server, unless
      it is marked lost; a Hold that is not lost has server_x or server_s set
    a Hold in TaskState.holds has x > 0 or s > 0
    held_keys == number of Hold entries over all tasks
    keys[k] exists while a task of this process holds or waits for k (its gate with it)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, final

from .._lock import Lock
from ._session import Pending, Session

if TYPE_CHECKING:
    from ._views import _View

__all__ = ["NO_GATES", "S", "X", "Gates", "Hold", "KeyInfo", "Ledger", "TaskState"]

X, S = 0, 1  # exclusive, shared


@final
class Hold:
    """What one task holds on one key (client-side counts over at most one server hold per
    mode)."""

    __slots__ = ("key", "lost", "s", "server_s", "server_x", "token", "x")

    def __init__(self, key: int) -> None:
        self.key = key
        self.x = 0  # exclusive levels (re-entrant writes)
        self.s = 0  # shared levels (re-entrant reads, also on top of a write hold)
        self.server_x = False  # the session holds the key exclusively on the server
        self.server_s = False  # the session holds the key shared on the server
        self.token = 0  # fencing token of the exclusive hold
        self.lost: BaseException | None = None  # why the hold was lost, once it was

    def add(self, mode: int) -> None:
        """One more level (a re-entrant acquire)."""
        if mode == X:
            self.x += 1
        else:
            self.s += 1


@final
class TaskState:
    """A task that holds or waits on locks of the space, and the session serving it."""

    __slots__ = ("holds", "lost", "ping", "ping_at", "session", "task", "waiting", "watch")

    def __init__(
        self, task: Any, session: Session | None, on_lost: Callable[[TaskState, Any], None]
    ) -> None:
        self.task = task
        self.lost = partial(on_lost, self)  # called with the reason when its session breaks
        self.session = session
        self.holds: dict[int, Hold] = {}
        self.waiting = 0  # statements or checkouts in progress: the session must stay bound
        self.watch: Any = None  # the token of the watch on the task's exit
        self.ping: Pending | None = None
        self.ping_at = 0.0

    def detach(self) -> Session | None:
        """The task's session, no longer the task's."""
        session, self.session = self.session, None
        return session


@final
class KeyInfo:
    """Local knowledge about one key: which tasks of this process hold or wait for it."""

    __slots__ = ("gate", "readers", "s_waiting", "writer", "x_waiting")

    def __init__(self) -> None:
        self.writer: Any = None
        self.readers: dict[Any, None] = {}  # tasks holding only shared
        self.x_waiting = 0
        self.s_waiting = 0
        self.gate: Lock | None = None  # the local queue in front of the server's

    def idle(self) -> bool:
        return (
            self.writer is None and not self.readers and not self.x_waiting and not self.s_waiting
        )


@final
class Gates:
    """Holds the local gates of some keys (core :class:`~aiolocks.Lock` s, so FIFO and
    cancellation-safe) for the body of ``async with``, taken in list order."""

    __slots__ = ("_gates", "_held")

    def __init__(self, gates: list[Lock]) -> None:
        self._gates = gates
        self._held = 0

    async def __aenter__(self) -> None:
        try:
            for gate in self._gates:
                await gate.acquire()
                self._held += 1
        except BaseException:
            self.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        while self._held:
            self._held -= 1
            self._gates[self._held].release()


NO_GATES = Gates([])


@final
class Ledger:
    """The tasks of one lock space and what they hold and wait for (see the module docs)."""

    __slots__ = ("held_keys", "keys", "max_held_keys", "tasks")

    def __init__(self, max_held_keys: int) -> None:
        self.tasks: dict[Any, TaskState] = {}
        self.keys: dict[int, KeyInfo] = {}
        self.held_keys = 0
        self.max_held_keys = max_held_keys

    def key_info(self, key: int) -> KeyInfo:
        info = self.keys.get(key)
        if info is None:
            info = self.keys[key] = KeyInfo()
        return info

    def drop_key_info(self, key: int, info: KeyInfo) -> None:
        if info.idle():
            self.keys.pop(key, None)

    def check_room(self, more: int) -> None:
        """Refuse to hold ``more`` new keys beyond ``max_held_keys``."""
        if self.held_keys + more > self.max_held_keys:
            raise RuntimeError(
                f"this process holds {self.held_keys} PostgreSQL advisory locks already "
                f"(max_held_keys={self.max_held_keys}); more could exhaust the server's "
                "shared lock table and make other sessions fail"
            )

    def would_block(self, task: Any, key: int, mode: int) -> bool:
        """A try of (key, mode) by ``task`` must fail, by what this process knows: another of
        its tasks holds the key, or waits for it in a conflicting mode (never jump the queue)."""
        info = self.keys.get(key)
        if info is None:
            return False
        if info.writer is not None and info.writer is not task:
            return True
        if mode == X:
            return bool(info.readers or info.x_waiting or info.s_waiting)
        return bool(info.x_waiting)

    # -- waiting ----------------------------------------------------------------------------------

    def enter(
        self, ts: TaskState | None, members: Sequence[tuple[_View, int]]
    ) -> tuple[list[KeyInfo], Gates]:
        """The task is to wait for each (view, mode) of ``members`` (ascending keys), each a
        key it does not hold: it is counted as waiting; returns the keys' infos and the local
        gates it is to pass first (none for a task that holds something: see the module docs).

        Raises:
            RuntimeError: the process would hold more than ``max_held_keys`` keys.
        """
        if self.held_keys + len(members) > self.max_held_keys:
            self.check_room(len(members))  # raises
        infos = []
        gates: list[Lock] | None = [] if ts is None or not ts.holds else None
        for view, mode in members:
            info = self.key_info(view._key)
            if mode == X:
                info.x_waiting += 1
            else:
                info.s_waiting += 1
            infos.append(info)
            if gates is not None:
                if info.gate is None:
                    name = f"aiolocks.postgres {view._describe()}"
                    info.gate = Lock(fast_acquire=True, name=name)
                gates.append(info.gate)
        return infos, Gates(gates) if gates is not None else NO_GATES

    def leave(self, members: Sequence[tuple[_View, int]], infos: list[KeyInfo]) -> None:
        """Undo :meth:`enter`."""
        for (view, mode), info in zip(members, infos, strict=True):
            if mode == X:
                info.x_waiting -= 1
            else:
                info.s_waiting -= 1
            self.drop_key_info(view._key, info)

    # -- holding ----------------------------------------------------------------------------------

    def record(self, ts: TaskState, key: int, mode: int, token: int) -> None:
        """The server granted (key, mode) to the task's session."""
        hold = ts.holds.get(key)
        if hold is None:
            hold = ts.holds[key] = Hold(key)
            self.held_keys += 1
        if mode == X:
            hold.x = 1
            hold.server_x = True
            hold.token = token
        else:
            hold.s = 1
            hold.server_s = True
        self.update(ts.task, hold)

    def update(self, task: Any, hold: Hold) -> None:
        """Bring the key's info in line with ``hold`` of ``task``."""
        info = self.key_info(hold.key)
        if hold.lost is not None:  # a lost hold is held by nobody, though not yet released
            if info.writer is task:
                info.writer = None
            info.readers.pop(task, None)
        elif hold.x:
            info.writer = task
            info.readers.pop(task, None)
        else:
            if info.writer is task:
                info.writer = None
            if hold.s:
                info.readers[task] = None
            else:
                info.readers.pop(task, None)
        self.drop_key_info(hold.key, info)

    def forget(self, ts: TaskState, hold: Hold) -> None:
        """The task holds nothing more of ``hold``'s key."""
        hold.x = hold.s = 0
        hold.server_x = hold.server_s = False
        if ts.holds.pop(hold.key, None) is not None:
            self.held_keys -= 1
            if not ts.holds and ts.session is not None:
                ts.session.unwatch()
        self.update(ts.task, hold)

    def mark_lost(self, ts: TaskState, reason: BaseException) -> list[int]:
        """Every hold of the task that the server held is lost; returns their keys."""
        lost = []
        for hold in ts.holds.values():
            if hold.lost is None and (hold.server_x or hold.server_s):
                hold.lost = reason
                hold.server_x = hold.server_s = False
                self.update(ts.task, hold)
                lost.append(hold.key)
        return lost
