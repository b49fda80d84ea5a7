"""Correctness across separate processes: the locks of ``aiolocks.postgres`` between workers.

Eight worker processes (this file run as a script), each running three tasks on its own event
loop (asyncio or trio) with its own ``PostgresLocks``, do 300 mixed operations each on shared
state kept in files:

- ``inc``: under ``pg.lock("counter-K")``, read a counter, wait a moment, write it plus one;
- ``write``: under ``pg.rwlock("state").writer``, break the invariant ``a == b`` (write ``a``,
  wait, write ``b``, sometimes under a nested read hold), and store the fencing token the way a
  store guarded by tokens does (refusing a token not above the last one);
- ``read``: under ``pg.rwlock("state").reader``, read ``a``, wait, read ``b`` (sometimes under a
  re-entrant read hold), check ``a == b``.

Every hold is recorded as (kind, name, fencing token, start, end) on the system-wide monotonic
clock. The parent then checks: no invariant violation, exact counters, exclusive holds of a
name never overlap each other nor any read hold, and the fencing tokens of a name increase
strictly in acquisition order. The same run without locks must show violations (the control).
"""

from __future__ import annotations

import bisect
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

PROCESSES = 8
TASKS_PER_PROCESS = 3
OPS_PER_PROCESS = 300
COUNTERS = 4
#: Time spent inside a hold between the read and the write, so that unprotected runs interleave.
WINDOW = 0.0003


# ----------------------------------------------------------------------------- the worker


class _State:
    """The shared data, in files: ``counter-K`` (one int each) and ``state`` (a, b)."""

    def __init__(self, directory: str) -> None:
        self.fds = {
            name: os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT, 0o600)
            for name in [f"counter-{k}" for k in range(COUNTERS)] + ["state"]
        }

    def get(self, name: str, slot: int = 0) -> int:
        data = os.pread(self.fds[name], 8, 8 * slot)
        return int.from_bytes(data, "little", signed=True) if len(data) == 8 else 0

    def put(self, name: str, value: int, slot: int = 0) -> None:
        os.pwrite(self.fds[name], value.to_bytes(8, "little", signed=True), 8 * slot)


async def _worker(config: dict[str, Any]) -> dict[str, Any]:
    import anyio

    state = _State(config["directory"])
    use_locks: bool = config["locks"]
    records: list[tuple[str, str, int | None, float, float]] = []
    violations: list[str] = []
    ops: dict[str, int] = {"inc": 0, "write": 0, "read": 0}
    for k in range(COUNTERS):
        ops[f"inc:counter-{k}"] = 0
    clock = time.monotonic

    class _NoLock:
        fencing_token = None

        async def __aenter__(self) -> None:
            pass

        async def __aexit__(self, *exc: object) -> None:
            pass

    async def task(pg: Any, rng: random.Random, n: int) -> None:
        for _ in range(n):
            r = rng.random()
            if r < 0.45:
                name = f"counter-{rng.randrange(COUNTERS)}"
                lock = pg.lock(name) if use_locks else _NoLock()
                async with lock:
                    token = lock.fencing_token
                    t0 = clock()
                    value = state.get(name)
                    await anyio.sleep(WINDOW * rng.random())
                    state.put(name, value + 1)
                    t1 = clock()
                records.append(("x", name, token, t0, t1))
                ops["inc"] += 1
                ops[f"inc:{name}"] += 1
            elif r < 0.65:
                rw = pg.rwlock("state") if use_locks else None
                writer = rw.writer if rw else _NoLock()
                async with writer:
                    token = writer.fencing_token
                    t0 = clock()
                    if token is not None:  # the store of the fencing pattern: no stale token
                        if token <= state.get("state", 2):
                            violations.append(f"stale token {token}")
                        state.put("state", token, 2)
                    a, b = state.get("state", 0), state.get("state", 1)
                    state.put("state", a + 1, 0)
                    await anyio.sleep(WINDOW * rng.random())
                    if rng.random() < 0.25:  # a writer asking to read gets it at once
                        async with rw.reader if rw else _NoLock():
                            state.put("state", b + 1, 1)
                    else:
                        state.put("state", b + 1, 1)
                    t1 = clock()
                records.append(("x", "state", token, t0, t1))
                ops["write"] += 1
            else:
                reader = pg.rwlock("state").reader if use_locks else _NoLock()
                async with reader:
                    t0 = clock()
                    a = state.get("state", 0)
                    await anyio.sleep(WINDOW * rng.random())
                    if rng.random() < 0.25:  # re-entrant read
                        async with reader:
                            b = state.get("state", 1)
                    else:
                        b = state.get("state", 1)
                    t1 = clock()
                if a != b:
                    violations.append(f"reader saw a={a} b={b}")
                records.append(("s", "state", None, t0, t1))
                ops["read"] += 1

    async def run(pg: Any) -> None:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        per_task = config["ops"] // TASKS_PER_PROCESS
        async with anyio.create_task_group() as tg:
            for i in range(TASKS_PER_PROCESS):
                tg.start_soon(task, pg, random.Random(config["seed"] * 100 + i), per_task)

    if not use_locks:
        await run(None)
    else:
        from aiolocks.postgres import PostgresLocks

        async with PostgresLocks(config["dsn"], namespace=config["namespace"]) as pg:
            # open this worker's sessions before the start signal
            async def warm(i: int) -> None:
                async with pg.lock(f"warm-{os.getpid()}-{i}"):
                    pass

            async with anyio.create_task_group() as tg:
                for i in range(TASKS_PER_PROCESS):
                    tg.start_soon(warm, i)
            await run(pg)
    return {"records": records, "violations": violations, "ops": ops}


def _worker_main(argv: list[str]) -> None:
    import anyio

    config = json.loads(argv[0])
    result = anyio.run(_worker, config, backend=config["backend"])
    with open(config["out"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
    sys.exit(0)


# ----------------------------------------------------------------------------- the tests

import itertools  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("psycopg")


def _run_workers(dsn: str, backend: str, locks: bool, ops: int, deadline: float) -> dict[str, Any]:
    """Start the workers, release them together, gather their records."""
    namespace = f"procs-{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="aiolocks-procs-") as directory:
        procs = []
        try:
            for i in range(PROCESSES):
                config = {
                    "dsn": dsn,
                    "namespace": namespace,
                    "backend": backend,
                    "locks": locks,
                    "ops": ops,
                    "seed": i + 1,
                    "directory": directory,
                    "out": os.path.join(directory, f"w{i}.json"),
                }
                procs.append(
                    subprocess.Popen(
                        [sys.executable, __file__, json.dumps(config)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            end = time.monotonic() + deadline
            for p in procs:
                assert p.stdout is not None
                line = _readline(p, end)
                assert line == "ready\n", f"worker {p.pid} did not start: {line!r}"
            started = time.monotonic()
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            for p in procs:
                rc = p.wait(timeout=max(0.1, end - time.monotonic()))
                assert rc == 0, f"worker {p.pid} failed with exit code {rc}"
            elapsed = time.monotonic() - started
            results = []
            for i in range(PROCESSES):
                with open(os.path.join(directory, f"w{i}.json")) as f:
                    results.append(json.load(f))
            state = _State(directory)
            final = {name: state.get(name) for name in state.fds if name != "state"}
            final["state.a"], final["state.b"] = state.get("state", 0), state.get("state", 1)
            for fd in state.fds.values():
                os.close(fd)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                for stream in (p.stdin, p.stdout):
                    if stream is not None:
                        stream.close()
    return {"results": results, "final": final, "elapsed": elapsed}


def _readline(p: subprocess.Popen[str], end: float) -> str:
    import selectors

    assert p.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=max(0.0, end - time.monotonic())):
            raise AssertionError(f"worker {p.pid} not ready in time")
    return p.stdout.readline()


def _check(run: dict[str, Any]) -> dict[str, Any]:
    """Every violation of the locks' promises found in a run's records, by kind."""
    results = run["results"]
    final = run["final"]
    records = [tuple(r) for res in results for r in res["records"]]
    ops: dict[str, int] = {}
    for res in results:
        for k, v in res["ops"].items():
            ops[k] = ops.get(k, 0) + v
    found: dict[str, Any] = {
        "reader violations": sum(
            not v.startswith("stale") for res in results for v in res["violations"]
        ),
        "stale tokens": sum(v.startswith("stale") for res in results for v in res["violations"]),
        "lost increments": sum(
            ops[f"inc:counter-{k}"] - final[f"counter-{k}"] for k in range(COUNTERS)
        ),
        "lost writes": (ops["write"] - final["state.a"]) + (ops["write"] - final["state.b"]),
        "overlapping holds": 0,
        "token order breaks": 0,
    }
    for name in {r[1] for r in records}:
        exclusive = sorted((r for r in records if r[1] == name and r[0] == "x"), key=lambda r: r[3])
        for prev, nxt in itertools.pairwise(exclusive):
            if nxt[3] <= prev[4]:
                found["overlapping holds"] += 1
            if prev[2] is not None and not nxt[2] > prev[2]:
                found["token order breaks"] += 1
        shared = sorted((r for r in records if r[1] == name and r[0] == "s"), key=lambda r: r[3])
        # a read hold overlaps a write hold: some write starts before the read ends and ends
        # after the read starts
        starts = [r[3] for r in exclusive]
        for r in shared:
            i = bisect.bisect_left(starts, r[4])  # writes starting before the read ends
            if i and exclusive[i - 1][4] >= r[3]:
                found["overlapping holds"] += 1
    found["ops"] = ops
    found["tokens"] = sorted(r[2] for r in records if r[2] is not None)
    return found


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_processes_keep_mutual_exclusion_counters_and_token_order(
    pg_dsn: str, backend: str
) -> None:
    run = _run_workers(pg_dsn, backend, locks=True, ops=OPS_PER_PROCESS, deadline=60)
    found = _check(run)
    ops = found.pop("ops")
    tokens = found.pop("tokens")
    total = ops["inc"] + ops["write"] + ops["read"]
    dense = tokens == list(range(tokens[0], tokens[0] + len(tokens))) if tokens else False
    print(
        f"\nprocesses [{backend}]: {PROCESSES} processes x {OPS_PER_PROCESS} ops = {total} "
        f"({ops['inc']} inc, {ops['write']} write, {ops['read']} read) in {run['elapsed']:.2f} s; "
        f"{len(tokens)} fencing tokens, dense across the namespace: {dense}; violations: {found}"
    )
    assert total == PROCESSES * (OPS_PER_PROCESS // TASKS_PER_PROCESS) * TASKS_PER_PROCESS
    assert found == {
        "reader violations": 0,
        "stale tokens": 0,
        "lost increments": 0,
        "lost writes": 0,
        "overlapping holds": 0,
        "token order breaks": 0,
    }
    assert len(set(tokens)) == len(tokens)


def test_processes_without_locks_show_violations(pg_dsn: str) -> None:
    """The control: the same workload without locks breaks every check above."""
    run = _run_workers(pg_dsn, "asyncio", locks=False, ops=OPS_PER_PROCESS, deadline=60)
    found = _check(run)
    found.pop("ops")
    found.pop("tokens")
    print(f"\nprocesses without locks [asyncio]: violations: {found}")
    assert found["reader violations"] > 0
    assert found["lost increments"] > 0
    assert found["overlapping holds"] > 0
