"""The production deployment of issue 14: ``uvicorn --workers 8`` under 400 concurrent requests.

The app (``tests/postgres/_uvicorn_app.py``) is what the docs recommend: one module-level
``PostgresLocks`` per worker process, used by the request handlers, closed on lifespan
shutdown.  It runs against a server of its own configured like a stock PostgreSQL
(``max_connections=100``, 3 of them reserved for superusers), as an ordinary (non-superuser)
role owning its database, the way an application connects in production.

Run it alone (``-s`` shows the measurements)::

    pytest tests/postgres/test_pg_uvicorn.py -s

``AIOLOCKS_UVICORN_MAX_SESSIONS=N`` runs the app with ``PostgresLocks(max_sessions=N)``;
``AIOLOCKS_UVICORN_LOG=path`` keeps a copy of the app's log (uvicorn's and the handlers' errors).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("psycopg")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from .conftest import APP_PREFIX, _no_server, _query  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKERS = 8
REQUESTS = 4_000
IN_FLIGHT = 400
#: The most lock sessions allowed 10 s after the load: one per worker.
MAX_LOCK_SESSIONS_AFTER = WORKERS
SETTLE = 10.0
STARTUP_DEADLINE = 60.0
LOAD_DEADLINE = 90.0
REQUEST_TIMEOUT = 60.0
#: The app's role: not a superuser, so it cannot use the superuser-reserved connections.
APP_ROLE = "app"

#: Every 8 requests: 5 on the lock, 1 rwlock writer, 1 rwlock reader, 1 ping (no lock).
_PLAN = ["/counter"] * 5 + ["/rw?mode=write", "/rw?mode=read", "/ping"]

#: uvicorn's log lines of a normal start and shutdown (anything else is printed).
_USUAL_LOG = (
    "Uvicorn running on", "Started parent process", "Started server process",
    "Waiting for application startup", "Application startup complete", "Shutting down",
    "Waiting for application shutdown", "Application shutdown complete",
    "Finished server process", "Received SIGTERM", "Terminated child process",
    "Waiting for child process", "Stopping parent process",
)  # fmt: skip

_PER_WORKER_SQL = """
    SELECT split_part(application_name, ':', 3), count(*) FROM pg_stat_activity
    WHERE datname = %s AND application_name LIKE %s GROUP BY 1 ORDER BY 2 DESC
"""
# The server and the database are the app's alone: every aiolocks session in it is the app's.
_COUNT_SQL = """
    SELECT count(*) FILTER (WHERE application_name LIKE %s), count(*)
    FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()
"""


@dataclass
class _Server:
    admin_dsn: str  # superuser, database postgres
    app_dsn: str  # the app's role and database


@pytest.fixture(scope="module")
def stock_server() -> Iterator[_Server]:
    """A server of this module with PostgreSQL's default ``max_connections=100``."""
    try:
        import psycopg

        from aiolocks.postgres.testing import PostgresServer
    except ImportError as exc:
        _no_server(f"cannot import aiolocks.postgres ({exc}); install aiolocks[postgres]")
        return
    try:
        server = PostgresServer.start(fast=True, settings={"max_connections": "100"})
    except Exception as exc:
        _no_server(str(exc))
        return
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
            conn.execute(f"CREATE DATABASE {APP_ROLE} OWNER {APP_ROLE}")
        app_dsn = f"postgresql://{APP_ROLE}@127.0.0.1:{server.port}/{APP_ROLE}"
        yield _Server(admin_dsn=server.dsn, app_dsn=app_dsn)
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


@dataclass
class _App:
    proc: subprocess.Popen[bytes]
    base_url: str
    log: str


def _start_app(server: _Server, directory: str, namespace: str) -> _App:
    """Start uvicorn with WORKERS workers; return once every worker's startup is complete."""
    port = _free_port()
    log = os.path.join(directory, "uvicorn.log")
    env = dict(
        os.environ,
        AIOLOCKS_UVICORN_DSN=server.app_dsn,
        AIOLOCKS_UVICORN_NAMESPACE=namespace,
        AIOLOCKS_UVICORN_LOCK="issue-14",
        AIOLOCKS_UVICORN_DIR=directory,
        PYTHONUNBUFFERED="1",
    )
    cmd = [
        sys.executable, "-m", "uvicorn", "tests.postgres._uvicorn_app:app",
        "--workers", str(WORKERS), "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--timeout-graceful-shutdown", "5",
        # Longer than the load: a server closing a keep-alive connection idle for 5 s (the
        # default) races the client reusing it, a rare transport error unrelated to the locks.
        "--timeout-keep-alive", "120",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    app = _App(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + STARTUP_DEADLINE
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"uvicorn exited ({proc.returncode}):\n{_tail(log)}")
            with open(log, errors="replace") as f:
                started = f.read().count("Application startup complete")
            if started >= WORKERS:
                try:
                    if httpx.get(f"{app.base_url}/ping", timeout=2.0).status_code == 200:
                        return app
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"uvicorn not serving after {STARTUP_DEADLINE:.0f} s "
                    f"({started}/{WORKERS} workers started):\n{_tail(log)}"
                )
            time.sleep(0.1)
    except BaseException:
        _stop_app(app)
        raise


def _group_alive(pgid: int) -> bool:
    """True while a process of the group is alive (zombies, which nobody may reap, do not
    count)."""
    if not os.path.isdir("/proc"):  # pragma: no cover - not Linux
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _stop_app(app: _App) -> None:
    """SIGTERM to the whole process group (a graceful shutdown), SIGKILL if it lingers."""
    pgid = app.proc.pid
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait
        while time.monotonic() < end:
            app.proc.poll()
            if not _group_alive(pgid):
                break
            time.sleep(0.05)
        if not _group_alive(pgid):
            break
    app.proc.wait(timeout=5)


class _Sampler:
    """Counts the app's lock sessions (and all its sessions) every 100 ms, in a thread."""

    def __init__(self, admin_dsn: str) -> None:
        self._dsn = admin_dsn
        self._stop = threading.Event()
        self.samples: list[tuple[int, int]] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def count(self) -> tuple[int, int]:
        (row,) = _query(self._dsn, _COUNT_SQL, APP_PREFIX + "%", APP_ROLE)
        return int(row[0]), int(row[1])

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.samples.append(self.count())
            except Exception as exc:
                self.errors[f"{type(exc).__name__}: {str(exc).strip()[:120]}"] += 1

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class _Results:
    status: collections.Counter[int] = field(default_factory=collections.Counter)
    by_path: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    transport: collections.Counter[str] = field(default_factory=collections.Counter)
    tokens: list[int] = field(default_factory=list)
    torn_reads: int = 0
    unanswered: int = 0
    elapsed: float = 0.0


async def _load(base_url: str) -> _Results:
    """REQUESTS requests from IN_FLIGHT tasks, over up to IN_FLIGHT keep-alive connections."""
    import anyio

    results = _Results()
    plan = [_PLAN[i % len(_PLAN)] for i in range(REQUESTS)]
    next_index = iter(range(REQUESTS))
    done = 0
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    timeout = httpx.Timeout(REQUEST_TIMEOUT, pool=REQUEST_TIMEOUT)

    async def client_task(client: Any) -> None:
        nonlocal done
        for i in next_index:
            path = plan[i]
            try:
                response = await client.get(path)
            except httpx.HTTPError as exc:
                results.transport[f"{type(exc).__name__}: {exc}"[:160]] += 1
                done += 1
                continue
            done += 1
            results.status[response.status_code] += 1
            results.by_path[path, response.status_code] += 1
            if response.status_code != 200:
                results.errors[response.text[:300]] += 1
                continue
            body = json.loads(response.content)
            if "token" in body:
                results.tokens.append(body["token"])
            if "a" in body and body["a"] != body["b"]:
                results.torn_reads += 1

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        with anyio.move_on_after(LOAD_DEADLINE):
            async with anyio.create_task_group() as tg:
                for _ in range(IN_FLIGHT):
                    tg.start_soon(client_task, client)
    results.elapsed = time.monotonic() - started
    results.unanswered = REQUESTS - done
    return results


def _read_state(directory: str) -> tuple[int, int, int]:
    def get(name: str, slot: int) -> int:
        try:
            with open(os.path.join(directory, name), "rb") as f:
                f.seek(8 * slot)
                data = f.read(8)
        except FileNotFoundError:
            return 0
        return int.from_bytes(data, "little", signed=True) if len(data) == 8 else 0

    return get("counter", 0), get("rw", 0), get("rw", 1)


def _compress(values: list[int]) -> list[int]:
    """The values without consecutive repeats: the course of a count."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def test_uvicorn_8_workers_400_concurrent_requests_on_a_stock_server(
    stock_server: _Server,
) -> None:
    """4,000 requests, 400 at once, to ``uvicorn --workers 8`` on a 100-connection server.

    Measures: the responses (status per endpoint; the body of every non-200, which the app
    fills with the exception), transport errors of the client, the counter kept under
    ``pg.lock`` against the number of successful ``/counter`` requests (a lost increment
    means two workers were inside the lock at once), the fencing tokens of ``/counter`` and of
    the rwlock writers (all distinct), rwlock readers that saw a writer's half-done update,
    the peak number of the app's lock sessions (``application_name LIKE 'aiolocks:%'``)
    sampled every 100 ms during the load, the course of that number for up to 10 s after the
    load, and whether an ordinary new connection of the app's role still succeeds then.

    Requires: no error of any kind, no lost increment, distinct tokens, no torn read, at most
    8 lock sessions (one per worker) within 10 s after the load, and a new connection
    succeeding.  A deployment where the lock sessions use up the server's connections fails
    here: with the stock ``max_connections=100`` the locks of 8 workers must share 97 slots
    with everything else the application connects for.
    """
    import anyio
    import psycopg

    namespace = f"uvicorn-{uuid.uuid4().hex[:10]}"
    max_sessions = os.environ.get("AIOLOCKS_UVICORN_MAX_SESSIONS")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aiolocks-uvicorn-") as directory:
        app = _start_app(stock_server, directory, namespace)
        startup = time.monotonic() - t0
        try:
            sampler = _Sampler(stock_server.admin_dsn)
            with sampler:
                results = anyio.run(_load, app.base_url, backend="asyncio")
            load_samples = list(sampler.samples)

            # After the load: poll the lock sessions until at most one per worker remains.
            after: list[int] = []
            settle_start = time.monotonic()
            while True:
                try:
                    after.append(sampler.count()[0])
                except Exception as exc:
                    sampler.errors[f"after the load: {type(exc).__name__}: {exc}"[:160]] += 1
                settled = bool(after) and after[-1] <= MAX_LOCK_SESSIONS_AFTER
                if settled or time.monotonic() - settle_start > SETTLE:
                    break
                time.sleep(0.1)
            settle_time = time.monotonic() - settle_start
            try:
                rows = _query(stock_server.admin_dsn, _PER_WORKER_SQL, APP_ROLE, APP_PREFIX + "%")
                per_worker: list[int] | str = [int(n) for _, n in rows]
            except psycopg.Error as exc:
                per_worker = f"{type(exc).__name__}: {exc}"[:120]

            new_connection = "ok"
            try:
                with psycopg.connect(stock_server.app_dsn, connect_timeout=5) as conn:
                    conn.execute("SELECT 1").fetchall()
            except psycopg.Error as exc:
                new_connection = f"{type(exc).__name__}: {str(exc).strip()}"
            counter, rw_a, rw_b = _read_state(directory)
        finally:
            _stop_app(app)
        with open(app.log, errors="replace") as f:
            log = f.read().splitlines()
        log_errors = collections.Counter(
            line.split(": ", 1)[1].strip()[:200] for line in log if line.startswith("aiolocks-app ")
        )
        other_log = [
            line
            for line in log
            if line.strip()
            and not line.startswith("aiolocks-app ")
            and not any(usual in line for usual in _USUAL_LOG)
        ]
        if os.environ.get("AIOLOCKS_UVICORN_LOG"):
            shutil.copyfile(app.log, os.environ["AIOLOCKS_UVICORN_LOG"])

    peak_locks = max((s[0] for s in load_samples), default=-1)
    peak_all = max((s[1] for s in load_samples), default=-1)
    ok_counter = results.by_path["/counter", 200]
    ok_writes = results.by_path["/rw?mode=write", 200]
    non_200 = sum(n for code, n in results.status.items() if code != 200)
    transport = sum(results.transport.values())
    dup_tokens = len(results.tokens) - len(set(results.tokens))

    print(
        f"\nuvicorn --workers {WORKERS}, max_connections=100, "
        f"max_sessions={max_sessions or 'default'}: "
        f"{REQUESTS} requests, {IN_FLIGHT} in flight, load {results.elapsed:.1f} s "
        f"(startup {startup:.1f} s)\n"
        f"  errors: {non_200} non-200, {transport} transport errors, "
        f"{results.unanswered} unanswered; status by endpoint: {dict(results.by_path)}"
    )
    for text, n in results.errors.most_common(5):
        print(f"  {n:5d} x {text}")
    for text, n in results.transport.most_common(5):
        print(f"  {n:5d} x transport: {text}")
    print(
        f"  counter {counter} vs {ok_counter} successful /counter; rw a={rw_a} b={rw_b} vs "
        f"{ok_writes} successful writes; torn reads {results.torn_reads}; "
        f"{len(results.tokens)} tokens, {dup_tokens} duplicates\n"
        f"  aiolocks sessions during the load: peak {peak_locks} (all sessions of the app's "
        f"database: peak {peak_all}; {len(load_samples)} samples)\n"
        f"  aiolocks sessions after the load (every 100 ms for {settle_time:.1f} s): "
        f"{_compress(after)}; per worker at the end: {per_worker}\n"
        f"  new connection after the load: {new_connection}"
    )
    if sampler.errors:
        print(f"  sampler errors: {dict(sampler.errors)}")
    if log_errors:
        print(f"  app log: {sum(log_errors.values())} handler errors, distinct: {len(log_errors)}")
    if other_log:
        print(f"  unusual lines in the app log ({len(other_log)}), first: {other_log[:5]}")
    print(f"  total {time.monotonic() - t0:.1f} s")

    problems = []
    if results.unanswered:
        problems.append(f"{results.unanswered} requests unanswered after {LOAD_DEADLINE:.0f} s")
    if non_200:
        problems.append(f"{non_200} non-200 responses: {results.errors.most_common(3)}")
    if transport:
        problems.append(f"{transport} transport errors: {results.transport.most_common(3)}")
    if counter != ok_counter:
        problems.append(f"counter {counter} != {ok_counter} successful /counter requests")
    if not rw_a == rw_b == ok_writes:
        problems.append(f"rw state a={rw_a} b={rw_b}, {ok_writes} successful writes")
    if results.torn_reads:
        problems.append(f"{results.torn_reads} readers saw a writer's half-done update")
    if dup_tokens:
        problems.append(f"{dup_tokens} duplicate fencing tokens")
    if not after or after[-1] > MAX_LOCK_SESSIONS_AFTER:
        problems.append(
            f"{after[-1] if after else '?'} lock sessions {SETTLE:.0f} s after the load "
            f"(at most {MAX_LOCK_SESSIONS_AFTER} allowed; seen: {_compress(after)})"
        )
    if new_connection != "ok":
        problems.append(f"a new connection after the load failed: {new_connection}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
