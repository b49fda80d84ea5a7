"""What OpenTelemetry metrics cost per acquisition, and proof that they cost nothing when off.

Usage::

    python benchmarks/telemetry_bench.py [--quick] [--reps N] [--threadsafe]

Measures ``async with lock: pass`` on an :class:`aiolocks.Lock` (uncontended, on asyncio and
trio) and a hand-off between 10 tasks (contended, asyncio), and on an
:class:`aiolocks.threadsafe.Lock` ``async with lock: pass`` (asyncio) and ``with lock: pass``
(the blocking side, in the main thread; its peer is ``threading.Lock``), in three states,
interleaved sample by sample, each sample in a fresh event loop (``--threadsafe``: only the
thread-safe rows):

* ``off``: not instrumented (never, for the first sample; uninstrumented again after);
* ``noop``: instrumented with the OpenTelemetry API's no-op meter provider (the wrappers'
  own cost);
* ``sdk``: instrumented with the SDK's ``MeterProvider`` and an in-memory reader (what an
  application that exports metrics pays at each acquisition; exporting itself runs elsewhere).

Each sample is followed by one of ``asyncio.Lock`` (``trio.Lock`` on trio), and the ratios are
paired with it.  After every instrumented sample the script checks that the lock classes hold
the very same function objects as before the first ``instrument()``: ``off`` is the code that
never saw the instrumentor, and its ratio to the peer is the one ``run.py`` reports.  Needs the
``bench`` and ``otel`` extras plus ``opentelemetry-sdk``.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from time import perf_counter
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trio
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import aiolocks
import aiolocks.threadsafe as ts
from _harness import median, paired_ratio, run_on
from _scenarios import _contended_asyncio, _uncontended
from aiolocks.telemetry import AiolocksInstrumentor

STATES = ("off", "noop", "sdk")


def _switch(state: str) -> MeterProvider | None:
    """Put the process in ``state``; return the SDK provider to shut down, if any."""
    instrumentor = AiolocksInstrumentor()
    if state == "noop":
        instrumentor.instrument(meter_provider=NoOpMeterProvider())
    elif state == "sdk":
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        instrumentor.instrument(meter_provider=provider)
        return provider
    else:
        instrumentor.uninstrument()
    return None


def _methods() -> dict[tuple[type, str], Any]:
    classes = (aiolocks.Lock, aiolocks.ReadLock, aiolocks.WriteLock, aiolocks.UpgradableLock)
    names = ("__aenter__", "__aexit__", "acquire_nowait", "release")
    out = {(c, m): c.__dict__.get(m) for c in classes for m in names}
    ts_classes = (ts.Lock, ts.ReadLock, ts.WriteLock, ts.UpgradableLock)
    ts_names = (*names, "acquire", "acquire_blocking", "__enter__", "__exit__")
    out.update({(c, m): c.__dict__.get(m) for c in ts_classes for m in ts_names})
    return out


ORIGINAL = _methods()  # before any instrument() in this process


def _measure(
    label: str,
    backend: str,
    run: Callable[[Callable[[], Any]], Any],
    peer: Callable[[], Any],
    make: Callable[[], Any] = aiolocks.Lock,
    runner: Callable[..., Any] = run_on,
) -> dict[str, Any]:
    """Interleave the states of a lock, each sample followed by one of the peer lock."""
    samples: dict[str, list[float]] = {s: [] for s in STATES}
    peers: dict[str, list[float]] = {s: [] for s in STATES}
    for rep in range(REPS):
        for state in STATES[rep % len(STATES) :] + STATES[: rep % len(STATES)]:
            provider = _switch(state)
            try:
                samples[state].append(runner(backend, run, make)["time_per_op"])
            finally:
                if provider is not None:
                    provider.shutdown()
                _switch("off")
            assert _methods() == ORIGINAL  # the very same function objects are back
            peers[state].append(runner(backend, run, peer)["time_per_op"])
    out: dict[str, Any] = {"label": label, "backend": backend}
    for state in STATES:
        out[state] = median(samples[state])
        out[f"{state}/peer"] = paired_ratio(samples[state], peers[state])
    out["peer"] = median([x for s in STATES for x in peers[s]])
    return out


REPS = 9


def _in_this_thread(backend: str, run: Callable[..., Any], make: Callable[[], Any]) -> Any:
    return run(make)


def _blocking(make: Callable[[], Any], n: int) -> dict[str, float]:
    """Per-op time of ``with lock: pass`` in this thread, unrolled ten times."""
    lock = make()
    with lock:
        pass
    loops = max(1, n // 10)
    t0 = perf_counter()
    for _ in range(loops):
        with lock:
            pass
        with lock:
            pass
        with lock:
            pass
        with lock:
            pass
        with lock:
            pass
        with lock:
            pass
        with lock:
            pass
        with lock:
            pass
        with lock:
            pass
        with lock:
            pass
    return {"time_per_op": (perf_counter() - t0) / (loops * 10)}


def main(argv: list[str] | None = None) -> None:
    global REPS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    parser.add_argument("--reps", type=int, default=None, help="samples per state")
    parser.add_argument(
        "--threadsafe", action="store_true", help="only the aiolocks.threadsafe.Lock rows"
    )
    args = parser.parse_args(argv)
    REPS = args.reps or (3 if args.quick else 9)
    n = 2_000 if args.quick else 20_000

    async def uncontended(make: Callable[[], Any]) -> Any:
        return await _uncontended(make, n)

    async def contended(make: Callable[[], Any]) -> Any:
        return await _contended_asyncio(make, 10, n // 20)

    def blocking(make: Callable[[], Any]) -> Any:
        return _blocking(make, n)

    rows = (
        []
        if args.threadsafe
        else [
            _measure("uncontended", "asyncio", uncontended, asyncio.Lock),
            _measure(
                "uncontended, fast_acquire",
                "asyncio",
                uncontended,
                asyncio.Lock,
                lambda: aiolocks.Lock(fast_acquire=True),
            ),
            _measure("uncontended", "trio", uncontended, trio.Lock),
            _measure("contended (10 tasks)", "asyncio", contended, asyncio.Lock),
        ]
    )
    rows += [
        _measure("threadsafe.Lock uncontended", "asyncio", uncontended, asyncio.Lock, ts.Lock),
        _measure(
            "threadsafe.Lock uncontended, blocking",
            "thread",
            blocking,
            threading.Lock,
            ts.Lock,
            _in_this_thread,
        ),
    ]
    print(
        f"aiolocks.telemetry cost per acquisition: {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}, {REPS} samples per state "
        "(medians; ratios are paired with the peer lock's neighbouring sample)"
    )
    print(
        "| scenario | backend | off | noop | sdk | peer | noop - off | sdk - off | off/peer "
        "| sdk/peer |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        ns = {k: r[k] * 1e9 for k in (*STATES, "peer")}
        print(
            f"| {r['label']} | {r['backend']} | {ns['off']:.0f} ns | {ns['noop']:.0f} ns "
            f"| {ns['sdk']:.0f} ns | {ns['peer']:.0f} ns | {ns['noop'] - ns['off']:+.0f} ns "
            f"| {ns['sdk'] - ns['off']:+.0f} ns | {r['off/peer']:.2f} | {r['sdk/peer']:.2f} |"
        )


if __name__ == "__main__":
    main()
