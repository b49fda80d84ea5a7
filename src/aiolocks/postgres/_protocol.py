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

Taking, undoing and cancelling are steps (:mod:`._steps`), written once: :func:`lock` awaits
them, and ``acquire_nowait()`` drives them blocking, with a try statement (``try_only``).

Invariants:
    a statement is cancelled (cancel request) only while it is the oldest unanswered one on
      its session: earlier statements are waited for, never cancelled
    after a failed lock statement, its session either has run the undo or is closed
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._exceptions import DeadlockError
from ._names import Names, owner_id
from ._session import Pending, ServerError, Session, SessionLost
from ._state import Hold, S, TaskState, X
from ._steps import Steps, run_async

if TYPE_CHECKING:
    from ._views import _View

__all__ = [
    "RECOVERY_TIMEOUT",
    "SQL_UNLOCK_ALL",
    "lock",
    "lock_statement",
    "lock_steps",
    "server_release",
]

#: Bound on the shielded clean-up after a failed lock statement, and on a release's wait.
RECOVERY_TIMEOUT = 10.0
#: Bound on delivering a cancel request for a waiting lock statement; past it the network or
#: the server is taken for gone and the session is closed instead (the server then drops the
#: request).  A waiter timed out during a network cut returns this long after its deadline.
_CANCEL_TIMEOUT = 0.5

_SQL_UNLOCK = (b"SELECT pg_advisory_unlock($1)", b"SELECT pg_advisory_unlock_shared($1)")
_SQL_DOWNGRADE = b"SELECT pg_advisory_lock_shared($1), pg_advisory_unlock($1)"
SQL_UNLOCK_ALL = b"SELECT pg_advisory_unlock_all()"


# -- taking locks ---------------------------------------------------------------------------------


#: (statement, parameters, whether it is prepared, the token column of each lock or None)
Statement = tuple[bytes, list[bytes | None], bool, Sequence[int | None]]


def _select(modes: Sequence[int], named: bool, try_only: bool) -> tuple[bytes, list[int | None]]:
    """The statement taking one lock per mode of ``modes``, and its token columns.

    Parameters: the ``application_name`` first if ``named``, then each lock's key, followed by
    the sequence for an exclusive one.  Waiting: a shared lock has no token column.  With
    ``try_only``, each lock's column is NULL when it was not granted (else its token, or 0).
    """
    parts: list[str] = []
    cols: list[int | None] = []
    n = 0
    if named:
        n += 1
        parts.append(f"set_config('application_name', ${n}, false)")
    for mode in modes:
        n += 1
        fn = ("pg_try_advisory_lock" if try_only else "pg_advisory_lock") + (
            "" if mode == X else "_shared"
        )
        take = f"{fn}(${n})"
        then = "0"
        if mode == X:
            n += 1
            then = f"nextval(${n}::regclass)"
        if try_only:
            parts.append(f"CASE WHEN {take} THEN {then} END")
        elif mode == X:
            parts += (take, then)
        else:
            parts.append(take)
        cols.append(len(parts) - 1 if try_only or mode == X else None)
    return ("SELECT " + ", ".join(parts)).encode(), cols


#: One lock (the common case) is a prepared statement: the server skips parsing and planning,
#: a large part of its cost.  By (mode, named, try_only).
_ONE = {
    (mode, named, try_only): _select((mode,), named, try_only)
    for mode in (X, S)
    for named in (False, True)
    for try_only in (False, True)
}


def lock_statement(
    members: Sequence[tuple[_View, int]], seq: bytes, owner: bytes | None, try_only: bool = False
) -> Statement:
    """The one statement that takes every (view, mode) of ``members`` (in their order), after
    naming the session for ``owner`` (an ``application_name``) if given; with ``try_only``,
    only what is granted at once (a token column is NULL for a lock that was not)."""
    params: list[bytes | None] = [] if owner is None else [owner]
    for view, mode in members:
        params.append(str(view._key).encode())
        if mode == X:
            params.append(seq)
    if len(members) == 1:
        sql, cols = _ONE[members[0][1], owner is not None, try_only]
        return sql, params, True, cols
    sql, cols = _select([mode for _, mode in members], owner is not None, try_only)
    return sql, params, False, cols


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
    """Take every (view, mode) of ``members`` on the task's session, waiting (see
    :func:`lock_steps`); returns their fencing tokens (0 for shared)."""
    tokens = await run_async(lock_steps(ts, names, members))
    assert tokens is not None
    return tokens


def lock_steps(
    ts: TaskState, names: Names, members: Sequence[tuple[_View, int]], try_only: bool = False
) -> Steps[list[int] | None]:
    """Take every (view, mode) of ``members`` on the task's session in one statement, as a
    step (see :mod:`._steps`); returns their fencing tokens (0 for shared), or, with
    ``try_only``, None if the server did not grant them all at once (nothing is held then).
    The grant-then-cancel protocol on any failure.

    Raises:
        TimeoutError: the blocking driver's deadline passed first (nothing is held then).
    """
    session = ts.session
    assert session is not None
    assert not try_only or len(members) == 1
    # Earlier statements (a release's unlock) may still be unanswered: the lock statement
    # is pipelined behind them (one round trip), and their answers are read first.
    registrations = names.prefix(session, members)
    owner = None
    if session.owner is not ts.task:
        session.owner = ts.task
        owner = owner_id(ts.task).encode()
    sql, params, prepared, cols = lock_statement(members, names.sequence_b, owner, try_only)
    pending = None
    try:
        pending = session.send(sql, params, prepared=prepared)
        if not (yield from session.wait_steps(pending)):
            raise TimeoutError("no answer from PostgreSQL in time")
        tokens: list[int] = []
        for col in cols:  # (no comprehension: this is the hot path, and one lock is common)
            value = pending.value(col) if col is not None else b"0"
            if value is None:  # try_only, and not granted (a try is of one lock)
                break
            tokens.append(int(value))
        if registrations is not None:
            names.check(members, registrations)
    except BaseException as exc:
        # A try statement never waits on the server, so it is never cancelled: it is waited
        # for, like an earlier statement.
        yield from undo_steps(ts, members, None if try_only else pending)
        translated = yield from translate_steps(exc, members[0][0], ts, names)
        if translated is exc:
            raise
        raise translated from exc
    return tokens if len(tokens) == len(cols) else None


def undo_steps(
    ts: TaskState, members: Sequence[tuple[_View, int]], target: Pending | None
) -> Steps[None]:
    """After any failure of a lock statement (``target``, None for a try statement): one
    shielded unlock of exactly its (key, mode) pairs on the same session (true means it had
    been granted: now undone), as a step (see :mod:`._steps`).  If that fails, or takes over
    :data:`RECOVERY_TIMEOUT`, the session is closed: the server then drops all it held."""
    session = ts.session
    if session is None or session.closed:
        if session is not None:
            ts.lost(SessionLost("the connection to PostgreSQL was lost"))
        return
    sql, params, prepared = undo_statement(members)
    limit = time.monotonic() + RECOVERY_TIMEOUT
    ok = False
    try:
        yield from cancel_and_drain_steps(session, target, limit)
        pending = session.send(sql, params, prepared=prepared)
        if (yield from session.wait_steps(pending, limit, shielded=True)):
            pending.value()
            ok = True
    except Exception:
        ok = False
    if not ok:
        ts.lost(SessionLost("the lock session failed while cleaning up a failed acquire"))


def translate_steps(
    exc: BaseException, view: _View, ts: TaskState, names: Names
) -> Steps[BaseException]:
    """The error an acquire raises for ``exc``: a deadlock names the locks of its cycle."""
    names.setup_failed(exc)
    if isinstance(exc, ServerError) and exc.sqlstate == "40P01":
        cycle = yield from names.cycle_names_steps(exc, ts.session)
        return DeadlockError(
            f"{view!r}: PostgreSQL detected a deadlock between sessions and chose this "
            f"task's request as the victim; locks in the cycle: {cycle}"
        )
    return exc


def cancel_and_drain_steps(session: Session, target: Pending | None, limit: float) -> Steps[None]:
    """Stop the lock statement ``target`` if it still runs and read every result, as a
    shielded step (see :mod:`._steps`), by ``limit`` (``time.monotonic()``) at the latest.

    A cancel request hits whatever the backend runs when it arrives, so it is sent only while
    ``target`` is the oldest unanswered statement: earlier ones (a release's unlock) are
    waited for, never cancelled.  A request that arrives between statements is ignored by the
    server, hence the retry.

    Raises:
        SessionLost: the session was closed (the server then drops the request and any grant).
    """
    session.poll()
    silent: Pending | None = None
    while not session.idle:
        head = session.oldest
        if head is target:
            if not (
                yield from session.cancel_steps(min(_CANCEL_TIMEOUT, limit - time.monotonic()))
            ):
                # Undeliverable (network cut, server gone, libpq < 17): the statement may wait
                # on forever, so the session goes; the server drops the request and any grant.
                reason = SessionLost("a waiting lock statement could not be cancelled in time")
                session.close(reason)
                raise reason
        elif head is silent:
            # An earlier statement (an unlock, a name's registration, a try statement: none of
            # them waits on the server) is still unanswered after 0.5 s: the network or the
            # server is gone, and the answers may never come.  The session goes, as above.
            reason = SessionLost("the lock session stopped answering")
            session.close(reason)
            raise reason
        silent = head
        yield from session.wait_steps(
            head, min(time.monotonic() + _CANCEL_TIMEOUT, limit), shielded=True
        )


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
