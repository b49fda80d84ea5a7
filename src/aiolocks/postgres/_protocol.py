"""The statements a task's session runs, and the grant-then-cancel protocol around them.

Re-entrancy is counted in the client (:mod:`._state`): the same (key, mode) is never taken
twice in one server session.  A lock statement takes its keys in ascending order, all in one
statement (all or nothing); a fencing token comes from the namespace's sequence in the same
statement.  After *any* failure of a lock statement (cancellation, deadlock, lost connection)
one shielded unlock of exactly its (key, mode) pairs runs on the same session, so a lock
granted just as the caller was cancelled is never left behind ("grant-then-cancel"); if that
unlock fails, the session is closed and the server drops its locks.

A release never awaits: it sends the statement that brings the server in line with the
client's counts (:func:`server_release`) and reads the answer later.

Invariants:
    a statement is cancelled (cancel request) only while it is the oldest unanswered one on
      its session: earlier statements are waited for, never cancelled
    after a failed lock statement, its session either has run the undo or is closed
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from .._exceptions import DeadlockError
from ._names import Names, owner_id
from ._session import Pending, ServerError, Session, SessionLost
from ._state import Hold, S, TaskState, X

if TYPE_CHECKING:
    from ._views import _View

__all__ = [
    "RECOVERY_TIMEOUT",
    "SQL_UNLOCK_ALL",
    "lock",
    "lock_statement",
    "server_release",
    "try_lock_blocking",
]

#: Bound on the shielded clean-up after a failed lock statement, and on a release's wait.
RECOVERY_TIMEOUT = 10.0
#: Bound on delivering a cancel request for a waiting lock statement; past it the network or
#: the server is taken for gone and the session is closed instead (the server then drops the
#: request).  A waiter timed out during a network cut returns this long after its deadline.
_CANCEL_TIMEOUT = 0.5

_SQL_LOCK_X = b"SELECT pg_advisory_lock($1), nextval($2::regclass)"
_SQL_LOCK_S = b"SELECT pg_advisory_lock_shared($1)"
_SQL_LOCK_X_NAMED = (
    b"SELECT set_config('application_name', $3, false), pg_advisory_lock($1), nextval($2::regclass)"
)
_SQL_LOCK_S_NAMED = b"SELECT set_config('application_name', $2, false), pg_advisory_lock_shared($1)"
_SQL_TRY_X = b"SELECT CASE WHEN pg_try_advisory_lock($1) THEN nextval($2::regclass) END"
_SQL_TRY_S = b"SELECT pg_try_advisory_lock_shared($1)"
_SQL_SET_NAME = b"SELECT set_config('application_name', $1, false)"
_SQL_UNLOCK = (b"SELECT pg_advisory_unlock($1)", b"SELECT pg_advisory_unlock_shared($1)")
_SQL_DOWNGRADE = b"SELECT pg_advisory_lock_shared($1), pg_advisory_unlock($1)"
SQL_UNLOCK_ALL = b"SELECT pg_advisory_unlock_all()"


# -- taking locks ---------------------------------------------------------------------------------


#: (statement, parameters, whether it is prepared, the token column of each lock or None)
Statement = tuple[bytes, list[bytes | None], bool, Sequence[int | None]]


def lock_statement(
    members: Sequence[tuple[_View, int]], seq: bytes, owner: bytes | None
) -> Statement:
    """The one statement that takes every (view, mode) of ``members`` (in their order), after
    naming the session for ``owner`` (an ``application_name``) if given.

    One lock (the common case) is a prepared statement: the server skips parsing and
    planning, a large part of its cost.  Several are built here, with parameters.
    """
    if len(members) == 1:
        view, mode = members[0]
        key = str(view._key).encode()
        if owner is None:
            if mode == X:
                return _SQL_LOCK_X, [key, seq], True, (1,)
            return _SQL_LOCK_S, [key], True, (None,)
        if mode == X:
            return _SQL_LOCK_X_NAMED, [key, seq, owner], True, (2,)
        return _SQL_LOCK_S_NAMED, [key, owner], True, (None,)
    parts: list[str] = []
    params: list[bytes | None] = []
    if owner is not None:
        params.append(owner)
        parts.append("set_config('application_name', $1, false)")
    token_cols: list[int | None] = []
    for view, mode in members:
        params.append(str(view._key).encode())
        if mode == X:
            parts.append(f"pg_advisory_lock(${len(params)})")
            params.append(seq)
            parts.append(f"nextval(${len(params)}::regclass)")
            token_cols.append(len(parts) - 1)
        else:
            parts.append(f"pg_advisory_lock_shared(${len(params)})")
            token_cols.append(None)
    return ("SELECT " + ", ".join(parts)).encode(), params, False, token_cols


def undo_statement(members: Sequence[tuple[_View, int]]) -> tuple[bytes, list[bytes | None], bool]:
    """The statement that gives back every (view, mode) of ``members`` (true: it was held),
    and whether it is prepared."""
    params: list[bytes | None] = [str(view._key).encode() for view, _ in members]
    if len(members) == 1:
        return _SQL_UNLOCK[members[0][1]], params, True
    parts = [
        f"pg_advisory_unlock{'_shared' if mode == S else ''}(${i})"
        for i, (_, mode) in enumerate(members, 1)
    ]
    return ("SELECT " + ", ".join(parts)).encode(), params, False


async def lock(ts: TaskState, names: Names, members: Sequence[tuple[_View, int]]) -> list[int]:
    """Take every (view, mode) of ``members`` on the task's session in one statement; returns
    their fencing tokens (0 for shared).  The grant-then-cancel protocol on any failure."""
    session = ts.session
    assert session is not None
    # Earlier statements (a release's unlock) may still be unanswered: the lock statement
    # is pipelined behind them (one round trip), and their answers are read first.
    registrations = names.prefix(session, members)
    owner = None
    if session.owner is not ts.task:
        session.owner = ts.task
        owner = owner_id(ts.task).encode()
    sql, params, prepared, cols = lock_statement(members, names.sequence_b, owner)
    pending = None
    try:
        pending = session.send(sql, params, prepared=prepared)
        await session.wait(pending)
        tokens = []
        for col in cols:  # (no comprehension: this is the hot path, and one lock is common)
            tokens.append(int(pending.value(col) or 0) if col is not None else 0)
        if registrations is not None:
            names.check(members, registrations)
    except BaseException as exc:
        await undo(ts, members, pending)
        translated = await translate(exc, members[0][0], ts, names)
        if translated is exc:
            raise
        raise translated from exc
    return tokens


async def undo(ts: TaskState, members: Sequence[tuple[_View, int]], target: Pending | None) -> None:
    """After any failure of a lock statement (``target``): one shielded unlock of exactly
    its (key, mode) pairs on the same session (true means it had been granted: now
    undone).  If that fails, the session is closed: the server then drops all it held."""
    session = ts.session
    if session is None or session.closed:
        if session is not None:
            ts.lost(SessionLost("the connection to PostgreSQL was lost"))
        return
    sql, params, prepared = undo_statement(members)
    ok = False
    with anyio.CancelScope(shield=True) as scope:
        scope.deadline = anyio.current_time() + RECOVERY_TIMEOUT
        try:
            await cancel_and_drain(session, target)
            pending = session.send(sql, params, prepared=prepared)
            await session.wait(pending)
            pending.value()
            ok = True
        except Exception:
            ok = False
    if not ok:
        ts.lost(SessionLost("the lock session failed while cleaning up a failed acquire"))


async def translate(exc: BaseException, view: _View, ts: TaskState, names: Names) -> BaseException:
    """The error an acquire raises for ``exc``: a deadlock names the locks of its cycle."""
    names.setup_failed(exc)
    if isinstance(exc, ServerError) and exc.sqlstate == "40P01":
        cycle = await names.cycle_names(exc, ts.session)
        return DeadlockError(
            f"{view!r}: PostgreSQL detected a deadlock between sessions and chose this "
            f"task's request as the victim; locks in the cycle: {cycle}"
        )
    return exc


async def cancel_and_drain(session: Session, target: Pending | None) -> None:
    """Stop the lock statement ``target`` if it still runs and read every result (call it
    shielded).

    A cancel request hits whatever the backend runs when it arrives, so it is sent only while
    ``target`` is the oldest unanswered statement: earlier ones (a release's unlock) are
    waited for, never cancelled.  A request that arrives between statements is ignored by the
    server, hence the retry.
    """
    session.poll()
    silent: Pending | None = None
    while not session.idle:
        head = session.oldest
        if head is target:
            if not await session.cancel_running(_CANCEL_TIMEOUT):
                # Undeliverable (network cut, server gone, libpq < 17): the statement may wait
                # on forever, so the session goes; the server drops the request and any grant.
                reason = SessionLost("a waiting lock statement could not be cancelled in time")
                session.close(reason)
                raise reason
        elif head is silent:
            # An earlier statement (an unlock, a name's registration: none of them waits on
            # the server) is still unanswered after 0.5 s: the network or the server is gone,
            # and the answers may never come.  The session goes, as above.
            reason = SessionLost("the lock session stopped answering")
            session.close(reason)
            raise reason
        silent = head
        with anyio.move_on_after(0.5):
            await session.wait(head)


# -- trying without waiting (acquire_nowait) ------------------------------------------------------


def try_lock_blocking(ts: TaskState, names: Names, view: _View, mode: int, deadline: float) -> int:
    """Try (key, mode) on the task's session, blocking until ``deadline`` at the latest;
    returns the fencing token (0 for shared).

    Raises:
        WouldBlock: not granted, or no answer by ``deadline`` (nothing is held then).
    """
    session = ts.session
    assert session is not None
    k = str(view._key).encode()
    try:
        session.wait_blocking(None, deadline)  # earlier results first
        registrations = names.prefix(session, ((view, mode),))
        if session.owner is not ts.task:
            session.owner = ts.task
            session.send(_SQL_SET_NAME, [owner_id(ts.task).encode()])
        if mode == X:
            pending = session.send(_SQL_TRY_X, [k, names.sequence_b], prepared=True)
        else:
            pending = session.send(_SQL_TRY_S, [k], prepared=True)
        session.wait_blocking(pending, deadline)
        value = pending.value()
        if registrations is not None:
            names.check(((view, mode),), registrations)
    except BaseException as exc:
        _undo_blocking(ts, view._key, mode, deadline)
        if isinstance(exc, TimeoutError):
            raise anyio.WouldBlock from exc
        raise
    if mode == X:
        if value is None:
            raise anyio.WouldBlock
        return int(value)
    if value != b"t":
        raise anyio.WouldBlock
    return 0


def _undo_blocking(ts: TaskState, key: int, mode: int, deadline: float) -> None:
    """After any failure of a try-lock: unlock it on the same session by ``deadline``, or
    close the session (the server then drops all it held)."""
    session = ts.session
    if session is None or session.closed:
        if session is not None:
            ts.lost(SessionLost("the connection to PostgreSQL was lost"))
        return
    try:
        # A try-lock never waits on the server: a statement still unanswered means the
        # server or the network did not answer in time, and a cancel request could only
        # wait for it too.  Closing the session is the undo that never blocks.
        if not session.idle:
            raise TimeoutError
        pending = session.send(_SQL_UNLOCK[mode], [str(key).encode()], prepared=True)
        session.wait_blocking(pending, deadline)
        pending.value()
    except Exception:
        ts.lost(SessionLost("the lock session failed while cleaning up a failed acquire"))


# -- releasing ------------------------------------------------------------------------------------


def server_release(hold: Hold) -> tuple[bytes, bool, bool] | None:
    """After a release: the statement that brings the server in line with ``hold``'s counts,
    and the hold's server flags (exclusive, shared) once it ran; None if nothing is to run."""
    if hold.server_x and not hold.x:
        if hold.s and not hold.server_s:
            return _SQL_DOWNGRADE, False, True  # stay a reader: shared before exclusive goes
        return _SQL_UNLOCK[X], False, hold.server_s
    if hold.server_s and not hold.s and not hold.x:
        return _SQL_UNLOCK[S], hold.server_x, False
    return None
