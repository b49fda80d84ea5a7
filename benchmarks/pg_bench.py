"""Benchmark ``aiolocks.postgres`` against raw advisory-lock statements and redis-py's lock.

Usage::

    python benchmarks/pg_bench.py [--quick] [--json PATH] [--markdown PATH]

Starts a throwaway server (``aiolocks.postgres.testing.PostgresServer``), or uses the one named
by the environment variable ``AIOLOCKS_PG_DSN``. For the redis-py rows it also starts a
throwaway ``redis-server`` (no persistence) on a free port of 127.0.0.1 if the program is on
``PATH`` and the ``redis`` package is installed, or uses the server named by
``AIOLOCKS_REDIS_URL``; otherwise it prints a note and leaves those rows out. Two scenarios:

- ``uncontended round trip``: one task takes and releases a lock nobody else wants, over and
  over: ``pg.lock(n)``, ``pg.rwlock(n).reader`` and ``.writer`` (``async with``), next to a raw
  ``pg_advisory_lock``/``pg_advisory_unlock`` pair sent by asyncpg (the reference; target:
  aiolocks within 1.2 x of it), by a bare ``psycopg.pq`` session (a second reference, which
  runs on trio too), and redis-py's ``Lock`` (``async with redis.asyncio.Redis().lock(n)``:
  ``SET NX`` to take, a Lua script to release; the lock people reach for instead, asyncio
  only). Candidates are sampled interleaved, each sample in a fresh event loop on a fresh
  connection, and compared by the median of per-repetition ratios (see ``_harness.py``).
  asyncpg does not run on trio: the trio rows are compared with the asyncpg pair measured on
  asyncio in the same run.
- ``processes``: N worker processes (N = 1, 2, 4, 8), one task each, take and release a lock
  in a loop for a fixed time, all on ONE name, then each on a random name out of MANY; the
  table gives the total operations per second and, on one name, the fairness: the fewest
  acquisitions of a process divided by the most (1 = even shares). Once with ``pg.lock(...)``,
  once with redis-py's ``Lock`` (asyncio), whose waiters poll every 0.1 s (redis-py's default)
  instead of queueing.

``--quick`` shrinks everything (< 60 s; CI runs it, and installs no redis-server).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Check, Collector, Result, interleave, paired_ratio, run_on
from run import markdown_tables, render_text

try:
    import uvloop
except ImportError:  # pragma: no cover - not on Windows / PyPy
    uvloop = None

try:
    import asyncpg
except ImportError:  # pragma: no cover - the bench extra installs it
    asyncpg = None

try:
    import redis
    import redis.asyncio
except ImportError:  # pragma: no cover - the bench extra installs it
    redis = None

import anyio
import psycopg
from psycopg import pq

ASYNCPG_PAIR = "asyncpg: pg_advisory_lock + pg_advisory_unlock"
PQ_PAIR = "psycopg.pq: pg_advisory_lock + pg_advisory_unlock"
PG_LOCK = "pg.lock(n)"
PG_LOCK_TOKEN = "pg.lock(n) + .fencing_token"
#: ``release()`` only sends the unlock; the next acquire reads its result (pipelined).
PG_LOCK_BARE = "pg.lock(n): await acquire(); release()"
PG_READER = "pg.rwlock(n).reader"
PG_WRITER = "pg.rwlock(n).writer"
REDIS_LOCK = "redis-py Lock (SET NX + Lua release)"
#: The raw pairs use a key of their own, far from anything aiolocks hashes to.
RAW_KEY = 0x5EED_0000_0001
TARGET = 1.2


# ----------------------------------------------------------------------------- raw sessions


async def _wait_readable(fd: int) -> None:
    if hasattr(anyio, "wait_readable"):  # anyio >= 4.7
        await anyio.wait_readable(fd)
    else:  # pragma: no cover - older anyio
        import socket

        with socket.socket(fileno=os.dup(fd)) as sock:
            await anyio.wait_socket_readable(sock)


class PqSession:
    """A bare libpq session (``psycopg.pq``) driven by anyio: what any driver must at least do."""

    def __init__(self, pgconn: Any) -> None:
        self.pgconn = pgconn

    @classmethod
    async def connect(cls, dsn: str) -> PqSession:
        conninfo = psycopg.conninfo.make_conninfo(dsn, application_name="aiolocks-bench")
        pgconn = await anyio.to_thread.run_sync(pq.PGconn.connect, conninfo.encode())
        if pgconn.status != pq.ConnStatus.OK:
            raise ConnectionError(pgconn.error_message.decode(errors="replace"))
        pgconn.nonblocking = 1
        return cls(pgconn)

    async def execute(self, sql: bytes, param: bytes) -> None:
        conn = self.pgconn
        conn.send_query_params(sql, [param])
        while conn.flush():  # pragma: no cover - a few bytes never fill the socket buffer
            await anyio.wait_writable(conn.socket)
        while True:
            while conn.is_busy():
                await _wait_readable(conn.socket)
                conn.consume_input()
            res = conn.get_result()
            if res is None:
                return
            if res.status != pq.ExecStatus.TUPLES_OK:
                raise RuntimeError(res.error_message.decode(errors="replace"))

    def close(self) -> None:
        self.pgconn.finish()


class RedisServer:
    """A throwaway ``redis-server`` on a free port of 127.0.0.1, without persistence."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url

    @classmethod
    def start(cls, program: str) -> RedisServer:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen(
            [program, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        server = cls(proc, f"redis://127.0.0.1:{port}/0")
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        server.stop()
                        raise RuntimeError(f"{program} did not start on port {port}") from None
                    time.sleep(0.02)
                else:
                    return server
        finally:
            client.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _redis(col: Collector) -> tuple[str | None, RedisServer | None]:
    """The URL of a Redis server for the redis-py rows, and the server if we started it."""
    note = None
    url = os.environ.get("AIOLOCKS_REDIS_URL")
    program = shutil.which("redis-server")
    if redis is None:
        note = "the redis package is not installed (pip install 'redis>=5')"
    elif url:
        return url, None
    elif program is None:
        note = "no redis-server on PATH (apt-get install redis-server)"
    else:
        try:
            server = RedisServer.start(program)
        except Exception as exc:
            col.error("redis", "-", "redis-server", exc)
            return None, None
        return server.url, server
    print(f"  (redis-py rows left out: {note})", flush=True)
    return None, None


# ----------------------------------------------------------------------------- samples


async def _sample_asyncpg(dsn: str, n: int, warm: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:

        async def pair() -> None:
            await conn.execute("SELECT pg_advisory_lock($1)", RAW_KEY)
            await conn.execute("SELECT pg_advisory_unlock($1)", RAW_KEY)

        for _ in range(warm):
            await pair()
        t0 = time.perf_counter()
        for _ in range(n):
            await pair()
        return (time.perf_counter() - t0) / n
    finally:
        await conn.close()


async def _sample_pq(dsn: str, n: int, warm: int) -> float:
    session = await PqSession.connect(dsn)
    key = str(RAW_KEY + 1).encode()
    try:

        async def pair() -> None:
            await session.execute(b"SELECT pg_advisory_lock($1::bigint)", key)
            await session.execute(b"SELECT pg_advisory_unlock($1::bigint)", key)

        for _ in range(warm):
            await pair()
        t0 = time.perf_counter()
        for _ in range(n):
            await pair()
        return (time.perf_counter() - t0) / n
    finally:
        session.close()


async def _sample_redis(url: str, name: str, n: int, warm: int) -> float:
    client = redis.asyncio.Redis.from_url(url)
    try:
        lock = client.lock(name)

        async def once() -> None:
            async with lock:
                pass

        for _ in range(warm):
            await once()
        t0 = time.perf_counter()
        for _ in range(n):
            await once()
        return (time.perf_counter() - t0) / n
    finally:
        await client.aclose()


async def _sample_aiolocks(dsn: str, namespace: str, candidate: str, n: int, warm: int) -> float:
    from aiolocks.postgres import PostgresLocks

    async with PostgresLocks(dsn, namespace=namespace) as pg:
        if candidate == PG_READER:
            view = pg.rwlock("uncontended").reader
        elif candidate == PG_WRITER:
            view = pg.rwlock("uncontended").writer
        else:
            view = pg.lock("uncontended")

        if candidate == PG_LOCK_BARE:

            async def once() -> None:
                await view.acquire()
                view.release()

        elif candidate == PG_LOCK_TOKEN:

            async def once() -> None:
                async with view:
                    view.fencing_token  # noqa: B018

        else:

            async def once() -> None:
                async with view:
                    pass

        for _ in range(warm):
            await once()
        t0 = time.perf_counter()
        for _ in range(n):
            await once()
        return (time.perf_counter() - t0) / n


def uncontended(col: Collector, dsn: str, redis_url: str | None, quick: bool) -> None:
    name = "uncontended round trip"
    n, warm, reps = (200, 20, 7) if quick else (500, 50, 11)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    backends = ["asyncio", "trio"] if quick or uvloop is None else ["asyncio", "uvloop", "trio"]
    ours = [PG_LOCK, PG_READER, PG_WRITER, PG_LOCK_TOKEN, PG_LOCK_BARE]
    samples: dict[tuple[str, str], list[float]] = {}
    for backend in backends:
        candidates = [PQ_PAIR, *ours]
        if backend != "trio" and asyncpg is not None:
            candidates.insert(0, ASYNCPG_PAIR)
        elif backend == "trio" and asyncpg is not None:
            candidates.insert(0, ASYNCPG_PAIR + " [asyncio]")
        if backend != "trio" and redis_url is not None:  # redis.asyncio runs on asyncio only
            candidates.append(REDIS_LOCK)

        def sample(cand: str, backend: str = backend) -> float:
            if cand.startswith(ASYNCPG_PAIR):
                on = "asyncio" if backend == "trio" else backend
                return float(run_on(on, _sample_asyncpg, dsn, n, warm))
            if cand == PQ_PAIR:
                return float(run_on(backend, _sample_pq, dsn, n, warm))
            if cand == REDIS_LOCK:
                assert redis_url is not None
                lock_name = f"{namespace}:uncontended"
                return float(run_on(backend, _sample_redis, redis_url, lock_name, n, warm))
            return float(run_on(backend, _sample_aiolocks, dsn, namespace, cand, n, warm))

        def on_error(cand: str, exc: BaseException, backend: str = backend) -> None:
            col.error(name, backend, cand, exc)

        got = interleave(candidates, reps, sample, on_error)
        for cand, values in got.items():
            samples[(backend, cand)] = values
            col.results.append(
                Result(name, backend, cand, "time_per_op", statistics_median(values), "s", values)
            )
        ref = next((c for c in got if c.startswith(ASYNCPG_PAIR)), None)
        for cand in [c for c in candidates if c in got]:
            value = statistics_median(got[cand])
            if ref is None or cand == ref:
                col.checks.append(Check(name, backend, cand, "time_per_op", value, "s"))
                continue
            judged = cand in (PG_LOCK, PG_READER, PG_WRITER)
            col.checks.append(
                Check(
                    name,
                    backend,
                    cand,
                    "time_per_op",
                    value,
                    "s",
                    reference=ref,
                    reference_value=statistics_median(got[ref]),
                    ratio=paired_ratio(got[cand], got[ref]),
                    op="<=" if judged else None,
                    limit=TARGET if judged else None,
                    note="lock+unlock, one task, no contention",
                )
            )

    # the library's own cost: the same candidates against the bare pair over the same driver
    for backend in backends:
        ref_samples = samples.get((backend, PQ_PAIR))
        if not ref_samples:
            continue
        for cand in ours:
            got_samples = samples.get((backend, cand))
            if not got_samples:
                continue
            col.checks.append(
                Check(
                    "uncontended: cost over the bare psycopg.pq pair",
                    backend,
                    cand,
                    "time_per_op",
                    statistics_median(got_samples),
                    "s",
                    reference=PQ_PAIR,
                    reference_value=statistics_median(ref_samples),
                    ratio=paired_ratio(got_samples, ref_samples),
                    note="aiolocks.postgres runs over psycopg.pq on every backend",
                )
            )

    # against the lock people reach for instead
    for backend in backends:
        ref_samples = samples.get((backend, REDIS_LOCK))
        if not ref_samples:
            continue
        for cand in [PG_LOCK, PG_WRITER, PG_LOCK_BARE]:
            got_samples = samples.get((backend, cand))
            if not got_samples:
                continue
            col.checks.append(
                Check(
                    "uncontended: against redis-py's Lock",
                    backend,
                    cand,
                    "time_per_op",
                    statistics_median(got_samples),
                    "s",
                    reference=REDIS_LOCK,
                    reference_value=statistics_median(ref_samples),
                    ratio=paired_ratio(got_samples, ref_samples),
                    note="one redis-server on loopback, no persistence; same run, interleaved",
                )
            )


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


# ----------------------------------------------------------------------------- processes


async def _worker(config: dict[str, Any]) -> None:
    rng = random.Random(os.getpid())
    if config["kind"] == "redis":
        client = redis.asyncio.Redis.from_url(config["redis_url"])
        prefix = config["namespace"]
        many = [client.lock(f"{prefix}:many-{i}") for i in range(config["names"])]
        one = client.lock(f"{prefix}:one")
        try:
            await _worker_loop(config, one, many, rng)
        finally:
            await client.aclose()
        return

    from aiolocks.postgres import PostgresLocks

    async with PostgresLocks(config["dsn"], namespace=config["namespace"]) as pg:
        many = [pg.lock(f"many-{i}") for i in range(config["names"])]
        one = pg.lock("one")
        await _worker_loop(config, one, many, rng)


async def _worker_loop(config: dict[str, Any], one: Any, many: list[Any], rng: Any) -> None:
    for lock in [one, *many]:  # connect, and register every name once
        async with lock:
            pass
    print("ready", flush=True)
    while True:
        command = (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()
        if command not in ("one", "many"):
            return
        deadline = time.perf_counter() + config["seconds"]
        count = 0
        if command == "one":
            while time.perf_counter() < deadline:
                async with one:
                    count += 1
        else:
            while time.perf_counter() < deadline:
                async with many[rng.randrange(len(many))]:
                    count += 1
        print(count, flush=True)


def _worker_main(arg: str) -> None:
    config = json.loads(arg)
    anyio.run(_worker, config, backend=config["backend"])


def processes(col: Collector, dsn: str, redis_url: str | None, quick: bool) -> None:
    name = "processes contending"
    seconds = 0.6 if quick else 2.0
    counts = [1, 2, 4, 8]
    runs = [("aiolocks", "asyncio")] + ([] if quick else [("aiolocks", "trio")])
    if redis_url is not None:
        runs.append(("redis", "asyncio"))  # redis.asyncio runs on asyncio only
    note = f"lock+unlock, one task per process, {seconds} s; pg.lock(...) unless named"
    for kind, backend in runs:
        for nproc in counts:
            config = {
                "kind": kind,
                "dsn": dsn,
                "redis_url": redis_url,
                "namespace": f"bench-{uuid.uuid4().hex[:8]}",
                "backend": backend,
                "seconds": seconds,
                "names": 64,
            }
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", json.dumps(config)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(nproc)
            ]
            label = f"{nproc} process{'es' if nproc > 1 else ''}"
            if kind == "redis":
                label = f"{REDIS_LOCK}: {label}"
            try:
                for p in procs:
                    line = p.stdout.readline() if p.stdout else ""
                    if line.strip() != "ready":
                        raise RuntimeError(f"worker failed to start: {line!r}")
                for phase in ("one", "many"):
                    for p in procs:
                        assert p.stdin is not None
                        p.stdin.write(phase + "\n")
                        p.stdin.flush()
                    done = [int(p.stdout.readline()) for p in procs if p.stdout]
                    rate = sum(done) / seconds
                    cand = f"{label}, {phase} name" + ("s" if phase == "many" else "")
                    series = f"{backend}:{phase}" if kind == "aiolocks" else f"redis-py:{phase}"
                    col.results.append(
                        Result(name, backend, cand, "throughput", rate, "ops/s", [rate],
                               series=series, x=nproc)
                    )  # fmt: skip
                    col.checks.append(
                        Check(name, backend, cand, "throughput", rate, "ops/s", note=note)
                    )
                    if phase == "one" and nproc > 1:
                        fairness = min(done) / max(done) if max(done) else 0.0
                        col.results.append(
                            Result(name, backend, cand, "fairness", fairness, "min/max",
                                   [float(c) for c in done])
                        )  # fmt: skip
                        col.checks.append(
                            Check(name, backend, cand, "fairness", fairness, "min/max",
                                  note="fairness: fewest / most acquisitions of a process")
                        )  # fmt: skip
            except Exception as exc:
                col.error(name, backend, label, exc)
            finally:
                for p in procs:
                    if p.stdin is not None:
                        try:
                            p.stdin.write("quit\n")
                            p.stdin.close()
                        except OSError:
                            pass
                for p in procs:
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                    if p.stdout is not None:
                        p.stdout.close()


# ----------------------------------------------------------------------------- output


def render_markdown(col: Collector, meta: dict[str, Any]) -> str:
    header = (
        f"{meta['implementation']} {meta['python']}, {meta['platform']}, {meta['cpus']} CPUs; "
        f"PostgreSQL {meta['server_version']}; {'quick' if meta['quick'] else 'full'} run, "
        f"{meta['seconds']:.0f} s."
    )
    return f"# aiolocks.postgres benchmarks\n\n{header}\n\n{markdown_tables(col)}"


def _server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker_main(argv[1])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrink everything (< 60 s)")
    parser.add_argument("--json", metavar="PATH", help="write every raw number as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    server = None
    dsn = os.environ.get("AIOLOCKS_PG_DSN")
    if not dsn:
        from aiolocks.postgres.testing import PostgresServer

        server = PostgresServer.start(fast=True)
        dsn = server.dsn
    col = Collector()
    scenarios: list[tuple[str, Callable[[Collector, str, str | None, bool], None]]] = [
        ("uncontended", uncontended),
        ("processes", processes),
    ]
    redis_server = None
    try:
        version = _server_version(dsn)
        redis_url, redis_server = _redis(col)
        for scenario, fn in scenarios:
            t0 = time.perf_counter()
            fn(col, dsn, redis_url, args.quick)
            print(f"  ({scenario}: {time.perf_counter() - t0:.1f} s)", flush=True)
    finally:
        if redis_server is not None:
            redis_server.stop()
        if server is not None:
            server.stop()
    seconds = time.perf_counter() - started
    meta = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "server_version": version,
        "asyncpg": getattr(asyncpg, "__version__", None),
        "psycopg": psycopg.__version__,
        "redis": getattr(redis, "__version__", None),
        "quick": args.quick,
        "seconds": seconds,
    }
    print()
    print(render_text(col))
    print(f"({seconds:.1f} s)")
    if args.json:
        data = {
            "meta": meta,
            "results": [r.as_dict() for r in col.results],
            "checks": [c.as_dict() for c in col.checks],
            "errors": col.errors,
        }
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(col, meta))
    return 1 if col.errors else 0


if __name__ == "__main__":
    sys.exit(main())
