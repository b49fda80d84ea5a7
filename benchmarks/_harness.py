"""Measurement plumbing shared by the benchmark scenarios.

Absolute times on a small shared machine are noise, so every scenario measures its candidates
interleaved (A B C, B C A, C A B, ...), each sample in a fresh event loop, and compares them by
the median of per-repetition ratios: a sample is only ever compared with samples taken moments
before or after it.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import trio

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional (not on Windows / PyPy)
    uvloop = None

T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """One measured number: the median over repetitions, with the spread kept for plots."""

    name: str  # scenario, e.g. "uncontended"
    backend: str  # "asyncio", "uvloop", "trio"
    candidate: str  # e.g. "aiolocks.RWLock(fast_acquire=True).reader"
    metric: str  # e.g. "time_per_op"
    value: float
    unit: str  # "s", "ops/s", "ops", "bytes"
    samples: list[float] = field(default_factory=list)
    stat: str = "median"  # how ``value`` summarises ``samples``: "median" or "min"
    series: str = ""  # a scaling series this point belongs to (see ``_scenarios.SCALING``)
    x: float | None = None  # its abscissa in that series (the number of tasks)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """A comparison row: a candidate's value, optionally as a ratio to a peer, and its target.

    ``ratio`` is the median of per-repetition ratios candidate/reference (None for absolute
    checks). ``limit``/``op`` describe the target (None when the row is for reference only);
    the compared quantity is ``ratio`` when a reference is given, else ``value``.
    """

    name: str
    backend: str
    candidate: str
    metric: str
    value: float | None
    unit: str
    reference: str | None = None
    reference_value: float | None = None
    ratio: float | None = None
    op: str | None = None  # "<=" or ">="
    limit: float | None = None
    note: str = ""

    @property
    def compared(self) -> float | None:
        return self.ratio if self.reference is not None else self.value

    @property
    def status(self) -> str:
        if self.limit is None or self.op is None:
            return "info"
        got = self.compared
        if got is None:
            return "n/a"
        ok = got <= self.limit if self.op == "<=" else got >= self.limit
        return "PASS" if ok else "MISS"

    @property
    def target(self) -> str:
        if self.limit is None or self.op is None:
            return ""
        if self.reference is not None:
            return f"{self.op} {self.limit:g} x"
        return f"{self.op} {fmt_value(self.limit, self.unit)}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = self.target
        d["status"] = self.status
        return d


@dataclass
class Collector:
    """Accumulates results, checks and failures of one benchmark run."""

    results: list[Result] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def error(self, name: str, backend: str, candidate: str, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        self.errors.append(
            {"name": name, "backend": backend, "candidate": candidate, "error": msg[:300]}
        )
        print(f"  ! {name}/{backend}/{candidate}: {msg[:200]}", file=sys.stderr)


# ----------------------------------------------------------------------------- event loops


def run_asyncio(fn: Callable[..., Any], *args: Any, use_uvloop: bool = False) -> Any:
    """Run ``fn(*args)`` in a fresh asyncio loop (or a fresh uvloop loop)."""
    if not use_uvloop:
        return asyncio.run(fn(*args))
    if uvloop is None:
        raise RuntimeError("uvloop is not installed")
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(fn(*args))
    loop = uvloop.new_event_loop()  # pragma: no cover - Python < 3.11
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(fn(*args))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def run_trio(fn: Callable[..., Any], *args: Any) -> Any:
    return trio.run(fn, *args)


def run_on(backend: str, fn: Callable[..., Any], *args: Any) -> Any:
    if backend == "trio":
        return run_trio(fn, *args)
    return run_asyncio(fn, *args, use_uvloop=backend == "uvloop")


# ----------------------------------------------------------------------------- statistics


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(num: list[float], den: list[float]) -> float | None:
    """Median of per-repetition ratios (samples of the same repetition are neighbours)."""
    pairs = [a / b for a, b in zip(num, den, strict=False) if b > 0]
    return statistics.median(pairs) if pairs else None


def interleave(
    candidates: list[str],
    reps: int,
    sample: Callable[[str], T | None],
    on_error: Callable[[str, BaseException], None],
    slow_after: float = float("inf"),
    keep: frozenset[str] | set[str] = frozenset(),
) -> dict[str, list[T]]:
    """Take ``reps`` samples of every candidate, rotating the order each repetition.

    A candidate that raises is reported once through ``on_error`` and dropped. A candidate
    whose sample took longer than ``slow_after`` seconds is not sampled again (a quadratic
    peer must not eat the time budget), unless it is in ``keep``.
    """
    samples: dict[str, list[T]] = {c: [] for c in candidates}
    alive = list(candidates)
    for rep in range(reps):
        k = rep % len(alive) if alive else 0
        for cand in alive[k:] + alive[:k]:
            gc.collect()
            t0 = time.perf_counter()
            try:
                value = sample(cand)
            except Exception as exc:
                on_error(cand, exc)
                alive.remove(cand)
                samples.pop(cand, None)
                continue
            if value is not None:
                samples[cand].append(value)
            if time.perf_counter() - t0 > slow_after and cand not in keep:
                alive.remove(cand)
    return {c: v for c, v in samples.items() if v}


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        if value >= 1e-3:
            return f"{value * 1e3:.3g} ms"
        if value >= 1e-6:
            return f"{value * 1e6:.3g} us"
        return f"{value * 1e9:.3g} ns"
    if unit == "ops/s":
        return f"{value:,.0f}/s"
    if unit == "ops":
        return f"{value:,.0f}"
    if unit == "bytes":
        return f"{value:.0f} B"
    return f"{value:.3g} {unit}"
