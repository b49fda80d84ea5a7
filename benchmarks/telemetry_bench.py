"""What OpenTelemetry metrics cost per acquisition, and proof that they cost nothing when off.

Usage::

    python benchmarks/telemetry_bench.py [--quick] [--reps N]

Measures ``async with lock: pass`` on an :class:`aiolocks.Lock` (uncontended, on asyncio and
trio) and a hand-off between 10 tasks (contended, asyncio), in four states, interleaved sample
by sample, each sample in a fresh event loop:

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trio
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import aiolocks
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
    return {(c, m): c.__dict__.get(m) for c in classes for m in names}


ORIGINAL = _methods()  # before any instrument() in this process


def _measure(
    label: str,
    backend: str,
    run: Callable[[Callable[[], Any]], Any],
    peer: Callable[[], Any],
    make: Callable[[], Any] = aiolocks.Lock,
) -> dict[str, Any]:
    """Interleave the states of aiolocks.Lock, each sample followed by one of the peer lock."""
    samples: dict[str, list[float]] = {s: [] for s in STATES}
    peers: dict[str, list[float]] = {s: [] for s in STATES}
    for rep in range(REPS):
        for state in STATES[rep % len(STATES) :] + STATES[: rep % len(STATES)]:
            provider = _switch(state)
            try:
                samples[state].append(run_on(backend, run, make)["time_per_op"])
            finally:
                if provider is not None:
                    provider.shutdown()
                _switch("off")
            assert _methods() == ORIGINAL  # the very same function objects are back
            peers[state].append(run_on(backend, run, peer)["time_per_op"])
    out: dict[str, Any] = {"label": label, "backend": backend}
    for state in STATES:
        out[state] = median(samples[state])
        out[f"{state}/peer"] = paired_ratio(samples[state], peers[state])
    out["peer"] = median([x for s in STATES for x in peers[s]])
    return out


REPS = 9


def main(argv: list[str] | None = None) -> None:
    global REPS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    parser.add_argument("--reps", type=int, default=None, help="samples per state")
    args = parser.parse_args(argv)
    REPS = args.reps or (3 if args.quick else 9)
    n = 2_000 if args.quick else 20_000

    async def uncontended(make: Callable[[], Any]) -> Any:
        return await _uncontended(make, n)

    async def contended(make: Callable[[], Any]) -> Any:
        return await _contended_asyncio(make, 10, n // 20)

    rows = [
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
