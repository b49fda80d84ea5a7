"""Benchmark aiolocks side by side with its peers and check the performance targets.

Usage::

    python benchmarks/run.py [--quick] [--json PATH] [--markdown PATH] [--report DIR]
                             [--debug] [--instrumented] [--only NAME ...]

Every scenario measures its candidates interleaved, each sample in a fresh event loop, and
reports per-op costs plus ratios against the peer named in the target, computed within this
run (absolute times on a shared machine are noise; ratios of neighbouring samples are not).
``--quick`` shrinks every scenario (a smoke test: about 15 s); the default run takes 2.5 to 6
minutes on a 2-CPU machine.

The JSON output is ``{"meta": ..., "results": [...], "checks": [...], "errors": [...]}``:
``results`` holds one record per (scenario, backend, candidate, metric) with the median
``value``, its ``unit`` and the raw ``samples``; ``checks`` holds the comparison rows shown in
the table (``reference``, ``ratio``, ``target``, ``status`` = PASS / MISS / info / n/a).

``meta`` records what the numbers were measured on: the interpreter (``implementation``,
``python``, the full ``sys.version`` as ``python_full``, ``free_threaded`` for a free-threaded
build and ``gil_enabled`` from ``sys._is_gil_enabled()``, None before 3.13), the machine
(``platform``, ``machine``, ``cpu_model``, ``cpus``), the peers' versions and the load average.
The text table and the Markdown output start with the same facts.

``--report DIR`` writes ``DIR/report.md`` and PNG plots (matplotlib, the ``bench`` extra): cost
per operation against the number of tasks for each scaling series, and every ratio target as
a bar chart (see ``report.py``). ``docs/benchmarks/`` holds one such report.

``versions.py`` runs this script on every installed CPython and puts the runs side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio
import trio

import _peers as P
from _harness import Check, Collector, fmt_value
from _scenarios import SCENARIOS, Config

METRIC_LABELS = {
    "time_per_op": "per op",
    "time_per_reader": "per reader",
    "cancel_per_waiter": "cancel/waiter",
    "total_per_waiter": "spawn+queue+cancel",
    "throughput": "throughput",
    "reader_ops": "reader ops",
    "writer_ops": "writer ops",
    "worst_reader_wait": "worst rd wait",
    "worst_writer_wait": "worst wr wait",
    "bytes_per_instance": "bytes/inst",
    "bytes_after_use": "after 1 use",
}

COLUMNS = (
    "backend",
    "candidate",
    "metric",
    "value",
    "vs",
    "ref value",
    "ratio",
    "target",
    "status",
)


def _row(c: Check) -> list[str]:
    return [
        c.backend,
        c.candidate,
        METRIC_LABELS.get(c.metric, c.metric),
        fmt_value(c.value, c.unit),
        c.reference or "",
        fmt_value(c.reference_value, c.unit) if c.reference else "",
        f"{c.ratio:.2f} x" if c.ratio is not None else ("-" if c.reference else ""),
        c.target,
        c.status if c.status != "info" else "",
    ]


def _groups(checks: list[Check]) -> dict[str, list[Check]]:
    groups: dict[str, list[Check]] = {}
    for c in checks:
        groups.setdefault(c.name, []).append(c)
    return groups


def _notes(checks: list[Check]) -> str:
    """The group's notes, prefixed by backend when they differ between backends."""
    by_backend: dict[str, list[str]] = {}
    for c in checks:
        if c.note and c.note not in by_backend.setdefault(c.backend, []):
            by_backend[c.backend].append(c.note)
    distinct = {tuple(v) for v in by_backend.values() if v}
    if len(distinct) <= 1:
        return "; ".join(next(iter(distinct), ()))
    return "; ".join(f"{b}: {', '.join(v)}" for b, v in by_backend.items() if v)


def interpreter_meta() -> dict[str, Any]:
    """The interpreter and the machine the numbers are measured on (part of ``meta``)."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "python_full": " ".join(sys.version.split()),
        "executable": sys.executable,
        "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        "gil_enabled": is_gil_enabled() if is_gil_enabled is not None else None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
    }


def interpreter_text(meta: dict[str, Any]) -> str:
    """``CPython 3.13.0 (free-threaded build, GIL disabled)``: the column title of a run."""
    free = meta["free_threaded"]
    gil = meta["gil_enabled"] if meta["gil_enabled"] is not None else not free
    build = "free-threaded build" if free else "default build"
    return (
        f"{meta['implementation']} {meta['python']} "
        f"({build}, GIL {'enabled' if gil else 'disabled'})"
    )


def machine_text(meta: dict[str, Any], cpus: bool = True) -> str:
    """``Linux-6.1-x86_64, 2 CPUs (AMD EPYC)``; without the count when ``cpus`` is false."""
    model = meta["cpu_model"]
    if not cpus:
        return f"{meta['platform']}, {model}" if model else meta["platform"]
    return f"{meta['platform']}, {meta['cpus']} CPUs" + (f" ({model})" if model else "")


def header_lines(meta: dict[str, Any]) -> list[str]:
    return [
        f"Python:  {interpreter_text(meta)}",
        f"         {meta['python_full']}",
        f"machine: {machine_text(meta)}",
    ]


def render_text(col: Collector, meta: dict[str, Any] | None = None) -> str:
    rows = [_row(c) for c in col.checks]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(COLUMNS)]

    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=False)).rstrip()

    out = [*header_lines(meta), ""] if meta else []
    out += [line(COLUMNS), line(["-" * w for w in widths])]
    for name, checks in _groups(col.checks).items():
        notes = _notes(checks)
        out.append(f"== {name}" + (f"  ({notes})" if notes else ""))
        out.extend(line(_row(c)) for c in checks)
    out.append(_summary(col))
    return "\n".join(out)


def render_markdown(col: Collector, meta: dict[str, Any]) -> str:
    return markdown_header(meta) + "\n\n" + markdown_tables(col)


def markdown_header(meta: dict[str, Any]) -> str:
    versions = ", ".join(
        f"{k} {meta[k]}" for k in ("aiolocks", "anyio", "trio", "aiorwlock", "uvloop") if meta[k]
    )
    return "\n".join(
        [
            "# aiolocks benchmarks",
            "",
            f"{interpreter_text(meta)}, `{meta['python_full']}`; {machine_text(meta, cpus=False)}; "
            f"{versions}; {'quick' if meta['quick'] else 'full'} run of "
            f"{', '.join(meta['scenarios'])}, {meta['seconds']:.0f} s; {_load_text(meta)}.",
        ]
    )


def markdown_tables(col: Collector, level: int = 2) -> str:
    """One table per scenario group, under headings of the given level, then the summary."""
    out: list[str] = []
    for name, checks in _groups(col.checks).items():
        notes = _notes(checks)
        out += [f"{'#' * level} {name}", ""]
        if notes:
            out += [f"_{notes}_", ""]
        out.append("| " + " | ".join(COLUMNS) + " |")
        out.append("|" + "---|" * len(COLUMNS))
        for c in checks:
            cells = [x.replace("|", "\\|") for x in _row(c)]
            cells[1] = f"`{cells[1]}`"
            if cells[4]:
                cells[4] = f"`{cells[4]}`"
            if cells[8] == "MISS":
                cells[8] = "**MISS**"
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += ["```", _summary(col), "```", ""]
    return "\n".join(out)


def _summary(col: Collector) -> str:
    judged = [c for c in col.checks if c.status in ("PASS", "MISS", "n/a")]
    passed = sum(c.status == "PASS" for c in judged)
    missed = [c for c in judged if c.status == "MISS"]
    unknown = [c for c in judged if c.status == "n/a"]
    lines = [f"targets: {passed} PASS, {len(missed)} MISS, {len(unknown)} not measured"]
    for c in missed:
        got = f"{c.ratio:.2f} x" if c.ratio is not None else fmt_value(c.value, c.unit)
        lines.append(f"  MISS  {c.name} [{c.backend}] {c.candidate}: {got}, target {c.target}")
    if P.AIOLOCKS_IMPORT_ERROR:
        lines.append(f"aiolocks not measured: {P.AIOLOCKS_IMPORT_ERROR}")
    elif P.MISSING:
        lines.append(f"not in aiolocks yet: {', '.join(P.MISSING)}")
    for e in col.errors:
        lines.append(f"  error {e['name']} [{e['backend']}] {e['candidate']}: {e['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrink everything (< 20 s)")
    parser.add_argument("--json", metavar="PATH", help="write every raw number as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write DIR/report.md and PNG plots (needs matplotlib)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="measure aiolocks with aiolocks.debug.enable() on (lock-order checking, cycles)",
    )
    parser.add_argument(
        "--instrumented",
        action="store_true",
        help="measure aiolocks with OpenTelemetry metrics on (aiolocks.telemetry, SDK meter "
        "provider with an in-memory reader; see telemetry_bench.py for the cost per acquisition)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=[n for n, _ in SCENARIOS],
        help="run only these scenarios",
    )
    args = parser.parse_args(argv)

    cfg = Config(quick=args.quick)
    if args.debug:
        import aiolocks.debug

        aiolocks.debug.enable()
    if args.instrumented:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from aiolocks.telemetry import AiolocksInstrumentor

        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        AiolocksInstrumentor().instrument(meter_provider=provider)
    scenarios = [n for n, _ in SCENARIOS if not args.only or n in args.only]
    machine = interpreter_meta()
    print("\n".join(header_lines(machine)), flush=True)
    load_before = _loadavg()
    col = Collector()
    started = time.perf_counter()
    if P.AIOLOCKS_IMPORT_ERROR:
        print(
            f"note: aiolocks not importable ({P.AIOLOCKS_IMPORT_ERROR}); peers only",
            file=sys.stderr,
        )
    for scenario, fn in SCENARIOS:
        if scenario not in scenarios:
            continue
        t0 = time.perf_counter()
        fn(col, cfg)
        print(f"  ({scenario}: {time.perf_counter() - t0:.1f} s)", flush=True)
    seconds = time.perf_counter() - started
    load_after = _loadavg()

    meta = {
        **machine,
        "anyio": anyio.__version__ if hasattr(anyio, "__version__") else _version("anyio"),
        "trio": trio.__version__,
        "aiolocks": _version("aiolocks"),
        "aiorwlock": _version("aiorwlock"),
        "uvloop": _version("uvloop"),
        "quick": cfg.quick,
        "aiolocks_debug": bool(args.debug),
        "aiolocks_instrumented": bool(args.instrumented),
        "scenarios": scenarios,
        "seconds": seconds,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    print()
    print(render_text(col, meta))
    print(f"({seconds:.1f} s; {_load_text(meta)})")
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
    if args.report:
        from report import fmt_size, write_report

        paths = write_report(Path(args.report), col, markdown_header(meta), markdown_tables(col, 3))
        print(f"report: {', '.join(f'{p} ({fmt_size(p)})' for p in paths)}")
    return 0


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _load_text(meta: dict[str, Any]) -> str:
    """Other processes competing for the CPUs distort everything, worst waits above all."""
    a, b = meta["loadavg_before"], meta["loadavg_after"]
    if a is None or b is None:
        return f"{meta['cpus']} CPUs"
    return f"{meta['cpus']} CPUs, 1-min load average {a:.1f} before, {b:.1f} after"


def _cpu_model() -> str:
    """The CPU's marketing name where the OS tells it (Linux), else whatever platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model"):
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor()


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
