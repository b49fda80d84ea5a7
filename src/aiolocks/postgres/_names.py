"""Names and keys: a lock's advisory-lock key, the owner ids of sessions, the names table.

A lock name maps to a 64-bit key (a keyed blake2b hash of kind, namespace and name), the same
in every process.  :class:`Names` keeps what this process knows of its namespace on the
server: the table ``aiolocks_names`` (it turns the astronomically rare key collision into a
loud error and lets snapshots and deadlock reports show names) and the sequence that draws
fencing tokens.  Statements that set them up or register a name are pipelined in front of a
lock statement (:meth:`Names.prefix`), so they cost no round trip of their own.

Invariants:
    a key in ``registered`` was found in the names table with this namespace, kind and name
    ``setup_done`` is True only after the setup statement succeeded on the current server
      (a lost session or a missing table or sequence sets it back: maybe a new server)
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, final

from .._backend import task_name
from ._session import Pending, ServerError, Session, SessionLost
from ._steps import Steps

if TYPE_CHECKING:
    from ._views import _View

    Members = Sequence[tuple[_View, int]]  # (lock, mode) pairs of one request

__all__ = ["LOCK", "RWLOCK", "Names", "check_text", "lock_key", "owner_id", "owner_prefix"]

LOCK, RWLOCK = "lock", "rwlock"  # the kinds of lock: pg.lock(name), pg.rwlock(name)

_SQL_REGISTER = (
    b"WITH ins AS (INSERT INTO aiolocks_names (key, namespace, kind, name) "
    b"VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING RETURNING namespace, kind, name) "
    b"SELECT namespace, kind, name FROM ins UNION ALL "
    b"SELECT namespace, kind, name FROM aiolocks_names WHERE key = $1"
)
_SQL_NAMES = b"SELECT key, namespace, kind, name FROM aiolocks_names WHERE key = ANY($1::bigint[])"
_SQL_SETUP = """DO $aiolocks$
BEGIN
    PERFORM pg_advisory_xact_lock({setup_key});
    CREATE TABLE IF NOT EXISTS aiolocks_names (
        key bigint PRIMARY KEY, namespace text NOT NULL, kind text NOT NULL, name text NOT NULL
    );
    CREATE SEQUENCE IF NOT EXISTS {sequence};
END
$aiolocks$"""

_DEADLOCK_LOCK_RE = re.compile(rb"advisory lock \[\d+,(\d+),(\d+),1\]")


def check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must be a non-empty str")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters (PostgreSQL text cannot)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode (it contains a lone surrogate)") from None
    return value


def digest(*parts: str, size: int = 8) -> bytes:
    h = hashlib.blake2b(digest_size=size, person=b"aiolocks-pg")
    for part in parts:
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(4, "big"))
        h.update(b)
    return h.digest()


def lock_key(kind: str, namespace: str, name: str) -> int:
    """The 64-bit signed advisory-lock key of a lock (the same in every process)."""
    return int.from_bytes(digest(kind, namespace, name), "big", signed=True)


_prefix_cache: tuple[int, str] = (-1, "")


def owner_prefix() -> str:
    """The ``application_name`` prefix of this process's lock sessions: ``aiolocks:HOST:PID:``.

    Each lock session's ``application_name`` is this prefix followed by the name of the task it
    serves (cut to PostgreSQL's 63 bytes), so ``pg_stat_activity`` and
    :meth:`PostgresLocks.snapshot` show who holds what.

    .. versionadded:: 0.1
    """
    global _prefix_cache
    pid = os.getpid()
    if _prefix_cache[0] != pid:  # recomputed after a fork
        host = socket.gethostname().split(".")[0][:20]
        _prefix_cache = (pid, f"aiolocks:{host}:{pid}:")
    return _prefix_cache[1]


def owner_id(task: Any) -> str:
    # application_name keeps 63 bytes: keep the tail of long (trio) task names
    prefix = owner_prefix()
    room = 63 - len(prefix.encode("utf-8"))
    name = task_name(task).encode("utf-8")[-room:].decode("utf-8", "ignore")
    return prefix + name


@final
class Names:
    """The namespace's names and keys, and its table and token sequence on the server."""

    __slots__ = ("known", "namespace", "registered", "sequence", "sequence_b", "setup_done")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.sequence = "aiolocks_fence_" + digest(namespace, size=8).hex()
        self.sequence_b = self.sequence.encode()
        self.known: dict[int, tuple[str, str]] = {}  # key -> (kind, name), for messages
        self.registered: set[int] = set()  # keys checked against the names table
        self.setup_done = False

    def key_for(self, kind: str, name: str) -> int:
        key = lock_key(kind, self.namespace, name)
        if key not in self.known:
            if len(self.known) > 100_000:  # a process with endless dynamic names
                self.known = {k: self.known[k] for k in self.registered if k in self.known}
                self.registered = set(self.known)
            self.known[key] = (kind, name)
        return key

    # -- the statements in front of a lock statement ----------------------------------------------

    def prefix(self, session: Session, members: Members) -> list[Pending | None] | None:
        """Send what must run before the first lock statement of these names (pipelined).

        Returns the pending registrations (one per member, or None when none was sent), to be
        checked with :meth:`check` once the lock statement has its answer.
        """
        if not self.setup_done:
            # every task that finds the setup unconfirmed sends it (it is idempotent, and
            # serialized on the server): a lock statement must never run before it
            session.send(self.setup_sql(), None, self.setup_finished)
        registered = self.registered
        for view, _ in members:
            if view._key not in registered:
                return [self._register(session, v) for v, _ in members]
        return None

    def _register(self, session: Session, view: _View) -> Pending | None:
        if view._key in self.registered:
            return None
        return session.send(
            _SQL_REGISTER,
            [str(view._key).encode(), self.namespace.encode(), view._kind.encode(),
             view._name.encode()],
            prepared=True,
        )  # fmt: skip

    def check(self, members: Members, registrations: list[Pending | None]) -> None:
        """Check the answers of :meth:`prefix`'s registrations (a collision raises)."""
        for (view, _), pending in zip(members, registrations, strict=True):
            if pending is not None:
                self._check_one(view, pending)

    def _check_one(self, view: _View, pending: Pending) -> None:
        if pending.error is not None:
            raise pending.error
        res = pending.result
        if res is not None and res.ntuples:
            got = tuple((res.get_value(0, c) or b"").decode() for c in range(3))
            want = (self.namespace, view._kind, view._name)
            if got != want:
                raise RuntimeError(
                    f"lock key collision: {view._kind} {view._name!r} in namespace "
                    f"{self.namespace!r} has the same 64-bit key ({view._key}) as {got[1]} "
                    f"{got[2]!r} in namespace {got[0]!r}; rename one of them"
                )
        self.registered.add(view._key)

    def setup_sql(self) -> bytes:
        setup_key = lock_key("setup", "", "aiolocks_names")
        return _SQL_SETUP.format(setup_key=setup_key, sequence=self.sequence).encode()

    def setup_finished(self, pending: Pending) -> None:
        if pending.error is None:
            self.setup_done = True

    def setup_failed(self, exc: BaseException) -> None:
        """A statement failed: if the names table or the token sequence is gone (a restore, a
        failover, a dropped schema), the next acquisition sets them up again."""
        if isinstance(exc, ServerError) and exc.sqlstate in ("42P01", "3F000"):
            self.setup_done = False
            self.registered.clear()

    # -- names in messages ------------------------------------------------------------------------

    def cycle_names_steps(self, exc: ServerError, session: Session | None) -> Steps[str]:
        """The locks named in a deadlock report (keys of other processes from the table), as
        a step (see :mod:`._steps`)."""
        keys: list[int] = []
        for hi, lo in _DEADLOCK_LOCK_RE.findall(exc.detail.encode()):
            key = int.from_bytes(((int(hi) << 32) | int(lo)).to_bytes(8, "big"), "big", signed=True)
            if key not in keys:
                keys.append(key)
        unknown = [key for key in keys if key not in self.known]
        if unknown and session is not None and not session.closed:
            try:
                yield from self._look_up(session, unknown)
            except SessionLost:
                pass
        names = []
        for key in keys:
            known = self.known.get(key)
            names.append(f"{known[0]} {known[1]!r}" if known else f"advisory key {key}")
        return ", ".join(names) or exc.detail or "(unknown)"

    def _look_up(self, session: Session, keys: list[int]) -> Steps[None]:
        array = "{" + ",".join(map(str, keys)) + "}"
        pending = session.send(_SQL_NAMES, [array.encode()])
        if not (yield from session.wait_steps(pending, time.monotonic() + 2)):
            return  # no answer in 2 s: the message names keys instead
        res = pending.result
        for r in range(res.ntuples if res is not None and not pending.error else 0):
            assert res is not None
            key_b, ns_b, kind_b, name_b = (res.get_value(r, c) for c in range(4))
            if (ns_b or b"").decode() == self.namespace:
                self.known[int(key_b or 0)] = ((kind_b or b"").decode(), (name_b or b"").decode())
