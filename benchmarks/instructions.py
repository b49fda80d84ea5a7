"""Count the instructions one lock operation costs, per Python, under valgrind's callgrind.

Usage::

    python3 benchmarks/instructions.py [--python PY ...] [--only NAME ...] [--markdown PATH]
                                       [--quick]

Wall-clock ratios on a shared machine move by 10 to 15 % from one run to the next; an
instruction count does not (the same binary, input and ``PYTHONHASHSEED`` give the same count,
whatever else the machine does).  So this is where a change of a few percent on a hot path is
measured, and where the limits of a target are shown: besides aiolocks and its asyncio peers it
counts *floors*, minimal locks written here that do only what any lock with aiolocks' contract
must do (record the owner task, check the calling thread, count readers), so that a ratio can be
read against the cheapest code that keeps the contract.

The workloads are ``benchmarks/run.py``'s own (``_scenarios.py``), on asyncio.  Each count is
``(I(2n) - I(n)) / n``: two runs of a scenario, ``n`` and ``2n`` operations long, so that
start-up, imports and the event loop's own setup cancel out.  Instructions are not
time (a cache miss costs more than an add), but on the same machine the two track each other
for code this small.  Needs ``valgrind`` on the ``PATH`` (Debian: ``apt install valgrind``);
each interpreter runs the working tree's ``src/`` (its environment needs the ``bench``
extra).  Without ``--python`` it uses the running interpreter.  About 6 minutes per Python on
2 CPUs.  ``--quick`` runs every scenario once, briefly and without valgrind: a check that the
script still works (CI runs it), not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# -- the scenarios (run in the child process, under callgrind) ----------------------------------


def _floors() -> dict[str, Callable[[], Any]]:
    """Minimal locks with aiolocks' contract on the uncontended path, and nothing else."""
    from aiolocks._backend import READY, task_of, thread_mark

    class OwnerFloor:
        """Records the owner task, after the thread check every aiolocks fast path makes."""

        def __init__(self) -> None:
            self._loop = asyncio.get_running_loop()
            self._tid = thread_mark()
            self._owner: Any = None

        def __aenter__(self) -> Any:
            task = task_of(self._loop)
            if task is None or self._tid != thread_mark():
                raise RuntimeError("not on the bound loop's thread")
            if self._owner is not None:
                raise RuntimeError("held")
            self._owner = task
            return READY

        def __aexit__(self, *exc: object) -> Any:
            if self._owner is not task_of(self._loop):
                raise RuntimeError("not the owner")
            self._owner = None
            return READY

    class ReaderFloor(OwnerFloor):
        """Counts read levels per task (re-entrant reads), with the same thread check."""

        def __init__(self) -> None:
            super().__init__()
            self._writer: Any = None
            self._readers: dict[Any, int] = {}

        def __aenter__(self) -> Any:
            task = task_of(self._loop)
            if task is None or self._tid != thread_mark():
                raise RuntimeError("not on the bound loop's thread")
            if self._writer is not None:
                raise RuntimeError("write-held")
            readers = self._readers
            if task in readers:
                readers[task] += 1
            else:
                readers[task] = 1
            return READY

        def __aexit__(self, *exc: object) -> Any:
            if self._readers.pop(task_of(self._loop), 0) != 1:
                raise RuntimeError("not a one-level reader")
            return READY

    class FlagFloor:
        """``asyncio.Lock``'s contract: a flag, no owner (what ``fast_acquire`` competes with)."""

        def __init__(self) -> None:
            self._locked = False

        def __aenter__(self) -> Any:
            if self._locked:
                raise RuntimeError("held")
            self._locked = True
            return READY

        def __aexit__(self, *exc: object) -> Any:
            self._locked = False
            return READY

    class HandOffFloor(OwnerFloor):
        """OwnerFloor, contended: FIFO hand-off to a future per waiter, the owner watched (a
        done-callback) while tasks wait.  No cancellation handling, no re-entrancy check."""

        def __init__(self) -> None:
            super().__init__()
            self._queue: collections.deque[tuple[asyncio.Future[None], Any]] = collections.deque()
            self._watch: Any = None

        def __aenter__(self) -> Any:
            task = task_of(self._loop)
            if task is None or self._tid != thread_mark():
                raise RuntimeError("not on the bound loop's thread")
            if self._owner is None and not self._queue:
                self._owner = task
                return READY
            return self._wait(task)

        async def _wait(self, task: Any) -> None:
            if self._watch is None:
                self._owner.add_done_callback(cb := self._exited)
                self._watch = cb
            future = self._loop.create_future()
            self._queue.append((future, task))
            await future

        def _exited(self, task: Any) -> None:
            raise AssertionError("an owner exited holding the lock")

        def __aexit__(self, *exc: object) -> Any:
            if self._owner is not task_of(self._loop):
                raise RuntimeError("not the owner")
            if self._watch is not None:
                self._owner.remove_done_callback(self._watch)
                self._watch = None
            if not self._queue:
                self._owner = None
                return READY
            future, task = self._queue.popleft()
            self._owner = task
            if self._queue:
                task.add_done_callback(cb := self._exited)
                self._watch = cb
            future.set_result(None)
            return READY

    return {
        "owner floor": OwnerFloor,
        "reader floor": ReaderFloor,
        "flag floor": FlagFloor,
        "hand-off floor": HandOffFloor,
    }


def _make(candidate: str) -> Any:
    import aiolocks

    makers: dict[str, Callable[[], Any]] = {
        "asyncio.Lock()": asyncio.Lock,
        "aiolocks.Lock(fast_acquire=True)": lambda: aiolocks.Lock(fast_acquire=True),
        "aiolocks.Lock()": aiolocks.Lock,
        "RWLock(fast_acquire=True).reader": lambda: aiolocks.RWLock(fast_acquire=True).reader,
        "RWLock(fast_acquire=True).writer": lambda: aiolocks.RWLock(fast_acquire=True).writer,
        "RWLock().writer": lambda: aiolocks.RWLock().writer,
        "asyncio.Condition()": asyncio.Condition,
        "Condition(Lock(fast_acquire=True))": lambda: aiolocks.Condition(
            aiolocks.Lock(fast_acquire=True)
        ),
        **_floors(),
    }
    return makers[candidate]()


def _workloads() -> dict[str, Callable[[Callable[[], Any], int], Any]]:
    """The scenarios' workloads, as ``benchmarks/run.py`` runs them on asyncio (``n`` ops)."""
    import _scenarios as S

    return {
        "uncontended": S._uncontended,
        "contended": lambda make, n: S._contended_asyncio(make, 10, n // 10),
        "ping_pong": S._ping_pong_asyncio,  # n turns of each task: an op is a round
        "producer": lambda make, n: S._producer_consumers_asyncio(make, 10, n),
    }


#: name -> (what one operation is, n, peer, candidates); the workloads are run.py's
SCENARIOS: dict[str, tuple[str, int, str, list[str]]] = {
    "uncontended": (
        "`async with`, uncontended",
        4000,
        "asyncio.Lock()",
        [
            "asyncio.Lock()",
            "aiolocks.Lock(fast_acquire=True)",
            "RWLock(fast_acquire=True).reader",
            "RWLock(fast_acquire=True).writer",
            "flag floor",
            "owner floor",
            "reader floor",
        ],
    ),
    "contended": (
        "acquisition, 10 tasks taking turns (every one a hand-off)",
        4000,
        "asyncio.Lock()",
        ["asyncio.Lock()", "aiolocks.Lock()", "RWLock().writer", "hand-off floor"],
    ),
    "ping_pong": (
        "round of a two-task ping-pong on a condition",
        2000,
        "asyncio.Condition()",
        ["asyncio.Condition()", "Condition(Lock(fast_acquire=True))"],
    ),
    "producer": (
        "item, one producer and 10 consumers, notify() per item",
        2000,
        "asyncio.Condition()",
        ["asyncio.Condition()", "Condition(Lock(fast_acquire=True))"],
    ),
}


def _child(scenario: str, candidate: str, n: int) -> None:
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]
    asyncio.run(_workloads()[scenario](lambda: _make(candidate), n))


# -- the parent ---------------------------------------------------------------------------------


def _count(python: str, scenario: str, candidate: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            python,
            __file__,
            "--child",
            scenario,
            candidate,
            str(n),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"refs:\s*([\d,]+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{python} {scenario} {candidate}: {proc.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def _per_op(python: str, scenario: str, candidate: str) -> int:
    n = SCENARIOS[scenario][1]
    return (
        _count(python, scenario, candidate, 2 * n) - _count(python, scenario, candidate, n)
    ) // n


def _version(python: str) -> str:
    code = "import platform; print(platform.python_version())"
    return subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", nargs="+", default=[sys.executable], metavar="PY")
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), metavar="NAME")
    parser.add_argument("--markdown", metavar="PATH", help="also write the tables here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="run each scenario once, unmeasured")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    if args.quick:
        for py in args.python:
            for scenario in args.only or SCENARIOS:
                for candidate in SCENARIOS[scenario][3]:
                    cmd = [py, __file__, "--child", scenario, candidate, "20"]
                    subprocess.run(cmd, check=True, timeout=60)
        print("every scenario ran (--quick: nothing was measured)")
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind not found (Debian: apt install valgrind)", file=sys.stderr)
        return 2
    versions = [_version(py) for py in args.python]
    jobs = [
        (py, scenario, candidate)
        for py in args.python
        for scenario in args.only or SCENARIOS
        for candidate in SCENARIOS[scenario][3]
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: _per_op(*job), jobs), strict=True))
    lines = ["Instructions per operation (callgrind; ratio to the peer in the same column).", ""]
    for scenario in args.only or SCENARIOS:
        what, _, peer, candidates = SCENARIOS[scenario]
        lines += [f"{scenario}: per {what}", ""]
        lines += ["| candidate | " + " | ".join(f"CPython {v}" for v in versions) + " |"]
        lines += ["|---|" + "---:|" * len(versions)]
        for candidate in candidates:
            cells = []
            for py in args.python:
                value, ref = counts[py, scenario, candidate], counts[py, scenario, peer]
                cells.append(f"{value:,} ({value / ref:.3f} x)")
            lines.append(f"| {candidate} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
