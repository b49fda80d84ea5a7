"""An anyio-native PostgreSQL session over psycopg 3's low-level ``psycopg.pq`` API.

Neither asyncpg nor psycopg's ``AsyncConnection`` runs under trio, and the latter closes the
connection on most cancelled queries; this thin session runs on asyncio (also uvloop) and trio.

The connection is in pipeline mode: every statement is sent as Parse/Bind/Execute + Sync, so
a statement can be *sent* at any time without waiting for the results of earlier ones (a
synchronous ``release()`` sends its unlock and returns; whoever uses the session next reads
the result).  Results come back in order; each statement's end is its ``PIPELINE_SYNC``.

A session that backs a held lock is *watched* (:meth:`Session.watch`): whenever nobody awaits
its results, the event loop reads the socket as soon as data arrives (asyncio: a reader
callback; trio: a system task), so a terminated backend or a server shutdown is known within
the loop's latency, not at the next heartbeat.

Connecting, reading results and cancelling a statement are *steps* (:mod:`._steps`): each is
written once, and both the awaiting paths and the blocking ``acquire_nowait()`` drive it.

Invariants:
    _pending holds one entry per statement sent and not yet read, oldest first
    reading is True while a task awaits results; nobody else touches the socket then (the
      watch is disarmed meanwhile, and armed again after)
    _armed is not None only while watched, not reading and not closed
"""

from __future__ import annotations

import selectors
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, final

import anyio
from psycopg import OperationalError, pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .._backend import TRIO
from ._steps import Steps, run_async

__all__ = ["Pending", "ServerError", "Session", "SessionLost"]

_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
_PIPELINE_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
_CONN_OK = pq.ConnStatus.OK
_POLL_OK = pq.PollingStatus.OK
_POLL_READING = pq.PollingStatus.READING
_POLL_FAILED = pq.PollingStatus.FAILED
_SQLSTATE = pq.DiagnosticField.SQLSTATE
_PRIMARY = pq.DiagnosticField.MESSAGE_PRIMARY
_DETAIL = pq.DiagnosticField.MESSAGE_DETAIL
_SEVERITY = pq.DiagnosticField.SEVERITY_NONLOCALIZED
#: Severities with which the server ends the session (the close follows the message).
_SESSION_ENDING = (b"FATAL", b"PANIC")

#: Session settings needing PostgreSQL 14+ (an older server refuses unknown startup options).
_PG14_SETTINGS = ("idle_session_timeout", "client_connection_check_interval")


def _has_nonblocking_cancel() -> bool:
    """libpq >= 17's cancel API (``PQcancelStart``/``PQcancelPoll``) through psycopg >= 3.2.

    The older ``PQcancel`` blocks until the server answers, and psycopg's C implementation
    holds the GIL meanwhile: in a worker thread it still freezes the whole process while the
    network is cut.  Without the new API a running statement is stopped by closing its session.
    """
    try:
        from psycopg import capabilities
    except ImportError:  # psycopg < 3.2
        return False
    return bool(capabilities.has_cancel_safe())


_NONBLOCKING_CANCEL = _has_nonblocking_cancel()


class ServerError(RuntimeError):
    """PostgreSQL answered a statement of a lock session with an error.

    Seen only for unexpected server-side failures (a statement cancelled by an administrator,
    missing privileges for the names table, ...); a deadlock between sessions is reported as
    :class:`aiolocks.DeadlockError` instead.

    Attributes:
        sqlstate: the five-character SQLSTATE code.
        message: the primary error message.
        detail: the error's detail, or "".

    .. versionadded:: 0.1
    """

    def __init__(self, sqlstate: str, message: str, detail: str) -> None:
        super().__init__(f"{message} (SQLSTATE {sqlstate})" + (f": {detail}" if detail else ""))
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


class SessionLost(ConnectionError):
    """A lock session's connection failed: the server is unreachable or ended the session.

    Raised by an acquisition that could not reach the server (nothing is held then); a hold
    whose session is lost is reported with :class:`aiolocks.LockLostError` instead, which
    carries this as its cause.

    .. versionadded:: 0.1
    """


@final
class Pending:
    """One statement sent on a session, until its results are read."""

    __slots__ = ("done", "error", "on_done", "prepares", "result")

    def __init__(self, on_done: Callable[[Pending], None] | None) -> None:
        self.prepares: bytes | None = None  # the statement it prepares, until that worked
        self.done = False
        self.result: pq.abc.PGresult | None = None
        self.error: BaseException | None = None
        self.on_done = on_done

    def value(self, col: int = 0) -> bytes | None:
        """The first row's column ``col`` (raises the statement's error)."""
        if self.error is not None:
            raise self.error
        res = self.result
        if res is None or res.ntuples == 0:
            return None
        return res.get_value(0, col)


def build_conninfo(dsn: str, application_name: str, settings: dict[str, str]) -> str:
    """The DSN plus our session settings, all sent in the startup packet (no extra round trip)."""
    params = conninfo_to_dict(dsn)
    options = str(params.get("options") or "")
    ours = " ".join(f"-c {k}={v}" for k, v in settings.items())
    return make_conninfo(
        dsn,
        application_name=application_name,
        options=f"{options} {ours}".strip(),
        keepalives="1",
        keepalives_idle=params.get("keepalives_idle") or "10",
        keepalives_interval=params.get("keepalives_interval") or "5",
        keepalives_count=params.get("keepalives_count") or "3",
    )


@final
class Session:
    """One private server session (connection) in nonblocking pipeline mode."""

    __slots__ = (
        "__weakref__",
        "_armed",
        "_ended",
        "_loop",
        "_on_lost",
        "_pending",
        "_prepared",
        "app_name",
        "closed",
        "fd",
        "needs_flush",
        "owner",
        "pgconn",
        "pid",
        "reading",
        "server_version",
        "waits",
    )

    def __init__(self, pgconn: pq.abc.PGconn, app_name: str) -> None:
        self.pgconn = pgconn
        self.fd = pgconn.socket
        self._pending: deque[Pending] = deque()
        self._prepared: dict[bytes, bytes] = {}  # statement -> name of its prepared form
        self.reading = False
        self.waits = 0  # waits for results on the event loop (or blocking) so far
        self.needs_flush = False
        self.closed = False
        self.app_name = app_name
        self.owner: Any = None  # the task its application_name was last set for
        self.pid = pgconn.backend_pid
        self.server_version = pgconn.server_version
        self._loop: Any = None
        self._on_lost: Callable[[SessionLost], None] | None = None  # set while watched
        self._armed: Any = None  # asyncio: True; trio: the _TrioWatch (or a task's scope)
        # A FATAL that arrived while no statement ran: libpq hands it to the notice handler
        # only (see _notice), and the close that follows may still be in flight.
        self._ended: ServerError | None = None
        pgconn.notice_handler = self._notice

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._pending)} pending"
        return f"<aiolocks.postgres session pid={self.pid} {state}>"

    # -- connecting -----------------------------------------------------------------------------

    @classmethod
    def connect_steps(
        cls, dsn: str, app_name: str, settings: dict[str, str], timeout: float = 30.0
    ) -> Steps[Session]:
        """Open a session: libpq's asynchronous connect, as a step (see :mod:`._steps`), given
        up after ``timeout`` seconds (``SessionLost``).  A server older than 14 is asked again
        without the settings it does not know."""
        try:
            conninfo = build_conninfo(dsn, app_name, settings)
            return (yield from cls._connect(conninfo, app_name, timeout))
        except SessionLost as exc:
            if "unrecognized configuration parameter" not in str(exc):
                raise
        old = {k: v for k, v in settings.items() if k not in _PG14_SETTINGS}
        return (yield from cls._connect(build_conninfo(dsn, app_name, old), app_name, timeout))

    @classmethod
    def _connect(cls, conninfo: str, app_name: str, timeout: float) -> Steps[Session]:
        start = time.monotonic()
        limit = start + timeout
        pgconn = pq.PGconn.connect_start(conninfo.encode())
        try:
            while True:
                status = pgconn.connect_poll()
                if status == pq.PollingStatus.OK:
                    pgconn.nonblocking = 1
                    pgconn.enter_pipeline_mode()
                    return cls(pgconn, app_name)
                if status not in (pq.PollingStatus.READING, pq.PollingStatus.WRITING):
                    raise SessionLost(f"cannot connect to PostgreSQL: {_error_text(pgconn)}")
                # the descriptor may change from one call to the next (another address)
                read = status == pq.PollingStatus.READING
                if not (yield pgconn.socket, read, limit - time.monotonic(), False):
                    waited = time.monotonic() - start
                    raise SessionLost(f"cannot connect to PostgreSQL: no answer in {waited:.3g} s")
        except BaseException:
            pgconn.finish()
            raise

    # -- sending (synchronous, never blocks) ----------------------------------------------------

    def send(
        self,
        sql: bytes,
        params: Sequence[bytes | None] | None = None,
        on_done: Callable[[Pending], None] | None = None,
        *,
        prepared: bool = False,
    ) -> Pending:
        """Send one statement; its results are read later, in order.

        With ``prepared``, the statement is prepared on the session the first time (in the
        same round trip) and then only bound and executed: the server skips parsing and
        planning, which is a large part of a lock statement's cost.

        Raises:
            SessionLost: the connection is closed or broken.
        """
        if self.closed:
            raise SessionLost("the session is closed")
        pgconn = self.pgconn
        pending = Pending(on_done)
        try:
            if prepared:
                name = self._prepared.get(sql)
                if name is None:
                    name = self._prepared[sql] = b"aiolocks_%d" % len(self._prepared)
                    pgconn.send_prepare(name, sql)
                    pending.prepares = sql
                pgconn.send_query_prepared(name, params)
            else:
                pgconn.send_query_params(sql, params)
            pgconn.pipeline_sync()
            self.needs_flush = pgconn.flush() != 0
        except OperationalError as exc:
            self._broken(exc)
            raise SessionLost(str(exc)) from exc
        self._pending.append(pending)
        return pending

    @property
    def oldest(self) -> Pending:
        """The oldest statement still waiting for its results (the session must not be idle)."""
        return self._pending[0]

    @property
    def idle(self) -> bool:
        """No statement awaits its results."""
        return not self._pending

    # -- reading ----------------------------------------------------------------------------------

    def poll(self) -> None:
        """Read whatever results have already arrived, without waiting (zero round trips).

        A terminated backend has sent its FATAL message or closed the socket: that shows here.

        Raises:
            SessionLost: the connection is broken (it is closed; pending statements fail).
        """
        if self.closed:
            raise SessionLost("the session is closed")
        try:
            if self.needs_flush:
                self.needs_flush = self.pgconn.flush() != 0
            pgconn = self.pgconn
            pgconn.consume_input()
            if not self._pending:
                # Nothing runs, so what arrived is a backend ending the session: FATAL, then
                # the close.  libpq parses it only once out of its between-statements pipeline
                # state (get_result() returns None and leaves it), and as a notice (_notice).
                pgconn.get_result()
                pgconn.is_busy()
                pgconn.consume_input()  # a second read sees the close, if it has come
            self._take_results()
            if self._ended is not None:
                raise SessionLost(f"the server ended the session: {self._ended}")
        except OperationalError as exc:
            self._broken(exc)
            raise SessionLost(str(exc)) from exc
        except SessionLost as exc:
            self.close(exc)
            raise
        if self.pgconn.status != _CONN_OK:
            exc2 = SessionLost(_error_text(self.pgconn) or "the connection is broken")
            self._broken(exc2)
            raise exc2

    def _take_results(self) -> None:
        pgconn = self.pgconn
        pending = self._pending
        while pending and not pgconn.is_busy():
            res = pgconn.get_result()
            if res is None:
                continue
            status = res.status
            head = pending[0]
            if status == _PIPELINE_SYNC:
                pending.popleft()
                head.done = True
                if head.prepares is not None:
                    self._prepared.pop(head.prepares, None)  # it failed: prepare it next time
                if head.on_done is not None:
                    head.on_done(head)
            elif status == _FATAL_ERROR:
                error = _server_error(res)
                if res.error_field(_SEVERITY) in _SESSION_ENDING:
                    # the server ends the session (terminated, shut down, idle timeout): the
                    # close follows, but the session is gone now, whatever was pending
                    raise SessionLost(f"the server ended the session: {error}")
                if head.error is None:
                    head.error = error
            elif status == _COMMAND_OK and head.prepares is not None:
                head.prepares = None  # the prepare's own result: it worked
            elif status != _PIPELINE_ABORTED:
                head.result = res

    def _notice(self, res: pq.abc.PGresult) -> None:
        # libpq takes an error message that arrives while no statement runs for a notice: the
        # FATAL of a backend that ends (terminated, idle_session_timeout: the lease) comes so.
        # The backend releases its locks before its socket closes, so another process can
        # hold the lock already while this socket still looks open.
        if res.error_field(_SEVERITY) in _SESSION_ENDING and self._ended is None:
            self._ended = _server_error(res)

    def wait_steps(
        self, target: Pending, limit: float | None = None, *, shielded: bool = False
    ) -> Steps[bool]:
        """Read results until ``target`` (and every statement sent before it) has its own, as
        a step (see :mod:`._steps`); False if ``limit`` (``time.monotonic()``) passed first.

        Cancelled (unless ``shielded``), it leaves the session consistent (unread results stay
        queued) but the statement keeps running on the server; see :meth:`cancel_steps`.

        Raises:
            SessionLost: the connection broke.
        """
        if target.done:
            return True
        self.reading = True
        self._disarm()
        try:
            while True:
                self.poll()
                if target.done:
                    return True
                timeout = None if limit is None else limit - time.monotonic()
                self.waits += 1
                if not (yield self.fd, not self.needs_flush, timeout, shielded):
                    return False
        finally:
            self.reading = False
            if self._on_lost is not None:
                self._arm()

    async def wait(self, target: Pending) -> Pending:
        """Wait until ``target`` (and every statement sent before it) has its results (see
        :meth:`wait_steps`)."""
        if not target.done:
            await run_async(self.wait_steps(target))
        return target

    async def execute(self, sql: bytes, params: Sequence[bytes | None] | None = None) -> Pending:
        """Send a statement and wait for its results (see :meth:`wait`)."""
        return await self.wait(self.send(sql, params))

    def cancel_steps(self, timeout: float) -> Steps[bool]:
        """Ask the server to cancel the statement it is running for us (if any), as a shielded
        step (see :mod:`._steps`); then read the results.

        Never blocks: libpq's non-blocking cancel, on a connection of its own, for at most
        ``timeout`` seconds.

        Returns:
            True when the server took the request (or nothing runs); False when it could not
            be delivered in time (network cut, server gone) or libpq is older than 17.  The
            statement may then still run: close the session (the server drops it).
        """
        if self.closed or not self._pending:
            return True
        if not _NONBLOCKING_CANCEL:
            return False
        limit = time.monotonic() + timeout
        try:
            cancel = self.pgconn.cancel_conn()
        except OperationalError:
            return False
        try:
            cancel.start()
            while (status := cancel.poll()) not in (_POLL_OK, _POLL_FAILED):
                # the descriptor may change from one call to the next (another address)
                read = status == _POLL_READING
                if not (yield cancel.socket, read, limit - time.monotonic(), True):
                    return False
        except OperationalError:  # the request could not even be started
            return False
        finally:
            cancel.finish()
        return status == _POLL_OK

    # -- watching ---------------------------------------------------------------------------------

    def watch(self, loop: Any, on_lost: Callable[[SessionLost], None]) -> None:
        """Read the socket whenever data arrives and nobody awaits results; call ``on_lost``
        (once) when that finds the connection broken.  ``loop``: the asyncio loop, or TRIO."""
        if self._on_lost is None and not self.closed:
            self._loop = loop
            self._on_lost = on_lost
            if not self.reading:
                self._arm()

    def unwatch(self) -> None:
        self._on_lost = None
        self._disarm()

    def _arm(self) -> None:
        if self._armed is not None or self.closed:
            return
        if self._loop is not TRIO:
            self._loop.add_reader(self.fd, self._readable)
            self._armed = True
            return
        watch = _TrioWatch.current()
        if watch is not None:
            watch.selector.register(self.fd, selectors.EVENT_READ, self)
            self._armed = watch
            return
        trio = sys.modules["trio"]  # no selector trio can wait on (Windows): a task each
        scope = self._armed = trio.CancelScope()
        trio.lowlevel.spawn_system_task(self._watch_trio, scope, name="aiolocks-pg-watch")

    def _disarm(self) -> None:
        armed, self._armed = self._armed, None
        if armed is True:
            self._loop.remove_reader(self.fd)
        elif isinstance(armed, _TrioWatch):
            armed.selector.unregister(self.fd)
        elif armed is not None:
            armed.cancel()  # synchronous in trio: the descriptor is free at once

    async def _watch_trio(self, scope: Any) -> None:
        trio = sys.modules["trio"]
        with scope:
            while not scope.cancel_called:
                await trio.lowlevel.wait_readable(self.fd)
                self._readable()

    def _readable(self) -> None:
        on_lost = self._on_lost
        try:
            self.poll()
        except SessionLost as exc:
            self._on_lost = None
            if on_lost is not None:
                on_lost(exc)

    # -- closing ----------------------------------------------------------------------------------

    def _broken(self, exc: BaseException) -> None:
        self.close(SessionLost(f"the connection to PostgreSQL was lost: {exc}"))

    def close(self, reason: BaseException | None = None) -> None:
        """Close the connection (the server then releases everything it held)."""
        if self.closed:
            return
        self._disarm()
        self.closed = True
        error = reason or SessionLost("the session was closed")
        pending, self._pending = self._pending, deque()
        for p in pending:
            p.done = True
            p.error = error
            if p.on_done is not None:
                p.on_done(p)
        if self.reading and hasattr(anyio, "notify_closing"):
            # another task waits on the descriptor (aclose() during an acquire): wake it
            # (ClosedResourceError) before the descriptor goes away under it
            try:
                anyio.notify_closing(self.fd)
            except Exception:  # pragma: no cover - no event loop (closing from elsewhere)
                pass
        self.pgconn.notice_handler = None  # (a cycle: the handler is a method of this session)
        try:
            self.pgconn.finish()
        except Exception:  # pragma: no cover - finishing never fails in practice
            pass


@final
class _TrioWatch:
    """trio: one system task per run reads the socket of every watched session when data
    arrives.  Their descriptors are in a selector (epoll, kqueue) of our own, whose descriptor
    trio waits on; so watching a session and stopping are a system call each, not a task
    spawned and cancelled on every acquisition."""

    __slots__ = ("selector",)
    _var: Any = None  # trio.lowlevel.RunVar, made on first use (trio is optional)

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector

    @classmethod
    def current(cls) -> _TrioWatch | None:
        """The current trio run's watch (started on first use), or None if the platform has
        no selector with a descriptor."""
        trio = sys.modules["trio"]
        if cls._var is None:
            cls._var = trio.lowlevel.RunVar("aiolocks_pg_watch")
        try:
            return cls._var.get()  # type: ignore[no-any-return]
        except LookupError:
            pass
        selector = selectors.DefaultSelector()
        watch = cls(selector) if hasattr(selector, "fileno") else None
        cls._var.set(watch)
        if watch is not None:
            trio.lowlevel.spawn_system_task(watch._run, name="aiolocks-pg-watch")
        else:
            selector.close()
        return watch

    async def _run(self) -> None:
        trio = sys.modules["trio"]
        fd = self.selector.fileno()  # type: ignore[attr-defined]
        while True:
            await trio.lowlevel.wait_readable(fd)
            for key, _ in self.selector.select(0):
                session = key.data
                if session._armed is self:  # not disarmed by one before it in this batch
                    session._readable()


def _server_error(res: pq.abc.PGresult) -> ServerError:
    return ServerError(
        (res.error_field(_SQLSTATE) or b"").decode(),
        (res.error_field(_PRIMARY) or b"").decode(errors="replace"),
        (res.error_field(_DETAIL) or b"").decode(errors="replace"),
    )


def _error_text(pgconn: pq.abc.PGconn) -> str:
    # PGconn.error_message (bytes) exists in every psycopg 3; get_error_message() only in 3.2+
    return pgconn.error_message.decode("utf-8", "replace").strip()
