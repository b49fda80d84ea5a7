"""Run ``benchmarks/run.py`` on several Pythons, one after another, and put the runs side by side.

Usage::

    python3 benchmarks/versions.py [--quick] [--python PY ...] [--markdown PATH] [--json PATH]
                                   [--venvs DIR] [--no-venv] [--only NAME ...]

Without ``--python`` it runs every CPython from 3.10 to 3.14 it finds, looked for the way
``.ci/run`` does (``pythonX.Y`` on PATH, then pyenv's ``versions/X.Y.*``, ``/usr/bin``,
``/usr/local/bin``); a version that is not installed is listed as not found. ``--python`` takes
interpreter paths or versions (``3.12``, ``3.13t``).

Each interpreter gets its own virtual environment under ``--venvs`` (default ``.bench-venvs/``
at the repository root, ignored by git), made on first use with ``pip install -e '.[bench]'``
and reused while ``pyproject.toml`` is unchanged; the code under test is the working tree's.
``--no-venv`` runs each given interpreter as it is, so its environment must have the ``bench``
extra: CI runs its own ``.venv`` and ``.venv-3.13`` this way.

The report (Markdown, default ``benchmarks/results/versions.md``; JSON, default
``benchmarks/results/versions.json``) lists the interpreters, then one table of every target
check (one row per scenario, backend, candidate; one column per Python, with the ratio and
PASS / MISS), then each run's full tables. Every ratio is computed within one run of one
interpreter: compare ratios across the columns, never absolute times, which on a shared
machine are noise. The JSON is ``{"meta": ..., "runs": [...], "summary": [...]}``; each run
holds ``run.py --json``'s output as ``report``.

A Python that cannot be found, set up or run is reported as such and the others still run;
the exit status is then 1 (a version looked for by default and not installed does not count).
The script needs only the standard library: any Python 3.10 or later can run it.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"
VERSIONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
DEFAULT_VENVS = ROOT / ".bench-venvs"
DEFAULT_MARKDOWN = ROOT / "benchmarks" / "results" / "versions.md"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "versions.json"
STAMP = ".aiolocks-bench"
# A full run takes 2.5 to 6 minutes and a quick one under a minute; a run over these is stuck.
RUN_TIMEOUT = {True: 300.0, False: 1800.0}
SETUP_TIMEOUT = 900.0
JUDGED = ("PASS", "MISS", "n/a")

PROBE = """\
import json, os, platform, sys, sysconfig
print(json.dumps({
    "version": platform.python_version(),
    "implementation": platform.python_implementation(),
    "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    "executable": sys.executable,
    "base": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
    "supported": sys.version_info >= (3, 10),
}))
"""


@dataclass
class Run:
    """One interpreter: how it was found, set up and run, and what its run reported."""

    asked: str  # the version looked for or the --python argument
    label: str = ""  # the column title: "3.12.1", "3.13.0t", "PyPy 3.10.14"
    python: str = ""  # the interpreter the benchmark runs on (in its venv)
    venv: str = ""
    status: str = "not found"  # "ok", "not found", "setup failed", "run failed"
    error: str = ""
    setup_seconds: float = 0.0
    run_seconds: float = 0.0
    report: dict[str, Any] | None = None  # run.py --json
    markdown: str = ""  # run.py --markdown
    explicit: bool = False  # given with --python: not finding it is a failure
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        keys = ("asked", "label", "python", "venv", "status", "error")
        d: dict[str, Any] = {k: getattr(self, k) for k in keys}
        d.update(setup_seconds=self.setup_seconds, run_seconds=self.run_seconds)
        d["report"] = self.report
        return d


# ----------------------------------------------------------------------------- finding


def probe(python: str) -> dict[str, Any] | None:
    """What ``python`` is, or None when it does not run (a pyenv shim of another version)."""
    try:
        done = subprocess.run(
            [python, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
        )
        info: dict[str, Any] = json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return info or None


def _pyenv_root() -> str:
    if shutil.which("pyenv"):
        done = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))


def find_python(version: str) -> tuple[str, dict[str, Any]] | None:
    """``.ci/run``'s ``find_python``: the first of these that runs, with what it is."""
    free = version.endswith("t")
    number = version.removesuffix("t")
    name = f"python{version}"
    candidates = [
        name,
        *sorted(glob.glob(f"{_pyenv_root()}/versions/{number}.*{'t' if free else ''}/bin/{name}")),
        f"/usr/bin/{name}",
        f"/usr/local/bin/{name}",
    ]
    for cand in candidates:
        path = shutil.which(cand)
        if path and (info := probe(path)) is not None:
            return info["executable"], info
    return None


def resolve(asked: list[str] | None) -> list[Run]:
    """The interpreters to run: the given paths or versions, else every version found."""
    runs = []
    for spec in asked or VERSIONS:
        run = Run(asked=spec, explicit=asked is not None)
        if os.sep in spec or (shutil.which(spec) and not spec[:1].isdigit()):
            info = probe(shutil.which(spec) or spec)
            found = (info["executable"], info) if info else None
        else:
            found = find_python(spec)
        if found is None:
            run.error = f"no working interpreter for {spec!r}"
        elif not found[1]["supported"]:
            run.status, run.error = "not supported", f"{found[0]}: aiolocks needs Python 3.10+"
        else:
            run.python, run.info = found
            run.status = ""
        runs.append(run)
    seen: collections.Counter[str] = collections.Counter()
    for run in runs:
        if run.info:
            impl = run.info["implementation"]
            label = run.info["version"] + ("t" if run.info["free_threaded"] else "")
            label = label if impl == "CPython" else f"{impl} {label}"
            seen[label] += 1
            run.label = label if seen[label] == 1 else f"{label} ({seen[label]})"
        else:
            run.label = run.asked
    return runs


# ----------------------------------------------------------------------------- setting up


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def setup(run: Run, venvs: Path) -> None:
    """Make or reuse ``run``'s virtual environment with the ``bench`` extra installed."""
    base = run.info["base"]
    venv = venvs / f"{run.label.replace(' ', '-')}-{hashlib.sha1(base.encode()).hexdigest()[:8]}"
    stamp = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + f"\0{base}\0{ROOT}".encode()
    ).hexdigest()
    python = _bin(venv, "python")
    run.venv = str(venv)
    stamp_file = venv / STAMP
    if python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        run.python = str(python)
        print(f"[{run.label}] reusing {venv}", flush=True)
        return
    print(f"[{run.label}] making {venv} (pip install -e '.[bench]')", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [run.python, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "-e", ".[bench]"],
    ]
    for cmd in steps:
        try:
            done = subprocess.run(
                cmd,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=SETUP_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            run.status, run.error = "setup failed", f"{shlex.join(cmd)}: {exc}"
            return
        if done.returncode != 0:
            run.status = "setup failed"
            run.error = f"{shlex.join(cmd)}: exit status {done.returncode}\n"
            run.error += _tail(done.stdout + done.stderr)
            return
    stamp_file.write_text(stamp)
    run.python = str(python)


# ----------------------------------------------------------------------------- running


def bench(run: Run, args: argparse.Namespace, out: Path) -> None:
    """Run ``run.py`` on ``run.python``, its output streamed with the run's label in front."""
    name = re.sub(r"[^\w.]+", "-", run.label)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    cmd = [run.python, str(RUN), "--json", str(json_path), "--markdown", str(md_path)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--only", *args.only] if args.only else []
    print(f"[{run.label}] {shlex.join(cmd)}", flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except OSError as exc:
        run.status, run.error = "run failed", f"{shlex.join(cmd)}: {exc}"
        return
    timer = threading.Timer(RUN_TIMEOUT[args.quick], proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            print(f"[{run.label}] {line}", end="", flush=True)
        rc = proc.wait()
    finally:
        timer.cancel()
    run.run_seconds = time.perf_counter() - started
    if rc != 0 or not json_path.exists():
        killed = run.run_seconds >= RUN_TIMEOUT[args.quick]
        why = f"killed after {RUN_TIMEOUT[args.quick]:.0f} s" if killed else f"exit status {rc}"
        run.status, run.error = "run failed", f"run.py: {why}\n" + "\n".join(list(tail)[-15:])
        return
    run.report = json.loads(json_path.read_text())
    run.markdown = md_path.read_text() if md_path.exists() else ""
    run.status = "ok"


# ----------------------------------------------------------------------------- merging


def _fmt(value: float | None, unit: str) -> str:
    """``_harness.fmt_value`` (which imports trio, so this script cannot import it)."""
    if value is None:
        return "-"
    if unit == "s":
        for scale, suffix in ((1, "s"), (1e-3, "ms"), (1e-6, "us")):
            if value >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value * 1e9:.3g} ns"
    if unit == "bytes":  # 88.1 B misses a target of 88 B: show why
        return f"{value:.4g} B"
    if unit in ("ops/s", "ops"):
        return f"{value:,.0f}" + ("/s" if unit == "ops/s" else "")
    return f"{value:.3g} {unit}"


def summary(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per target check of any run, in first-seen order, with each run's result."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for run in runs:
        for c in (run.report or {}).get("checks", []):
            if c["status"] not in JUDGED:
                continue
            key = (c["name"], c["backend"], c["candidate"], c["metric"], c["reference"])
            row = rows.setdefault(
                key,
                {
                    "name": c["name"],
                    "backend": c["backend"],
                    "candidate": c["candidate"],
                    "metric": c["metric"],
                    "reference": c["reference"],
                    "target": c["target"],
                    "by_python": {},
                },
            )
            row["by_python"][run.label] = {
                k: c[k] for k in ("ratio", "value", "unit", "status", "target", "limit")
            }
    # the metric is named only where one candidate has several targets in one scenario
    metrics = collections.Counter((r["name"], r["backend"], r["candidate"]) for r in rows.values())
    for row in rows.values():
        several = metrics[row["name"], row["backend"], row["candidate"]] > 1
        row["label"] = f"{row['candidate']} ({row['metric'].replace('_', ' ')})" if several else ""
    return list(rows.values())


def _cell(row: dict[str, Any], label: str, markdown: bool) -> str:
    got = row["by_python"].get(label)
    if got is None:
        return "not run"
    ratio, limit = got["ratio"], got["limit"]
    if ratio is None:
        number = _fmt(got["value"], got["unit"])
    else:  # 1.103 x misses 1.1 x: "1.10 x MISS" would not say why
        digits = next(
            (d for d in (2, 3) if limit is None or f"{ratio:.{d}f}" != f"{limit:.{d}f}"), 4
        )
        number = f"{ratio:.{digits}f} x"
    status = "**MISS**" if markdown and got["status"] == "MISS" else got["status"]
    other = f" (target {got['target']})" if got["target"] != row["target"] else ""
    return f"{number} {status}{other}"


def _counts(rows: list[dict[str, Any]], label: str) -> str:
    got = [r["by_python"][label]["status"] for r in rows if label in r["by_python"]]
    return f"{got.count('PASS')} of {len(got)} met"


def side_by_side(rows: list[dict[str, Any]], runs: list[Run], markdown: bool) -> list[list[str]]:
    """The table's rows, header first: scenario, backend, candidate, target, one per Python."""
    labels = [r.label for r in runs if r.status == "ok"]
    table = [["scenario", "backend", "candidate", "target", *labels]]
    for row in rows:
        candidate = row["label"] or row["candidate"]
        target = row["target"] + (f" vs {row['reference']}" if row["reference"] else "")
        if markdown:
            candidate = f"`{row['candidate']}`" + candidate[len(row["candidate"]) :]
            if row["reference"]:
                target = f"{row['target']} vs `{row['reference']}`"
        cells = [row["name"], row["backend"], candidate, target]
        table.append(cells + [_cell(row, label, markdown) for label in labels])
    table.append(["targets", "", "", "", *(_counts(rows, label) for label in labels)])
    return table


def _interpreter(meta: dict[str, Any]) -> str:
    free = meta["free_threaded"]
    gil = meta["gil_enabled"] if meta["gil_enabled"] is not None else not free
    build = "free-threaded build" if free else "default build"
    state = "enabled" if gil else "disabled"
    return f"{meta['implementation']} {meta['python']} ({build}, GIL {state})"


def _load(meta: dict[str, Any]) -> str:
    a, b = meta.get("loadavg_before"), meta.get("loadavg_after")
    return f"{a:.1f}, {b:.1f}" if a is not None and b is not None else "-"


def runs_table(runs: list[Run], markdown: bool) -> list[list[str]]:
    table = [["Python", "interpreter", "sys.version", "run", "load avg before, after"]]
    for run in runs:
        if run.status == "ok" and run.report:
            meta = run.report["meta"]
            full = f"`{meta['python_full']}`" if markdown else meta["python_full"]
            table.append(
                [run.label, _interpreter(meta), full, f"{meta['seconds']:.0f} s", _load(meta)]
            )
        else:
            first = run.error.splitlines()[0] if run.error else ""
            table.append([run.label, run.status, first.replace("|", "\\|"), "", ""])
    return table


def _text_table(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(table: list[list[str]], right_from: int) -> str:
    align = ["---" if i < right_from else "---:" for i in range(len(table[0]))]
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table[1:]]
    return "\n".join(lines)


def _demoted(markdown: str) -> str:
    """``run.py --markdown`` under a heading of this report: its headings one level down."""
    lines, fenced = [], False
    for line in markdown.splitlines()[1:]:  # its title is replaced by the Python's heading
        if line.startswith("```"):
            fenced = not fenced
        lines.append("#" + line if line.startswith("#") and not fenced else line)
    return "\n".join(lines).strip()


def meta_of(
    runs: list[Run], args: argparse.Namespace, argv: list[str], started: datetime.datetime
) -> dict[str, Any]:
    first = next((r.report["meta"] for r in runs if r.report), None)
    return {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python3", "benchmarks/versions.py", *argv]),
        "quick": args.quick,
        "platform": first["platform"] if first else platform.platform(),
        "cpus": first["cpus"] if first else os.cpu_count(),
        "cpu_model": first["cpu_model"] if first else "",
        "aiolocks_commit": args.commit,
    }


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return ""
    return done.stdout.strip()


def render_markdown(runs: list[Run], rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cpu = f" ({meta['cpu_model']})" if meta["cpu_model"] else ""
    out = [
        "# aiolocks benchmarks on several Pythons",
        "",
        f"{meta['date']}; {meta['platform']}, {meta['cpus']} CPUs{cpu}; "
        f"{'quick' if meta['quick'] else 'full'} runs of `benchmarks/run.py`, one after "
        f"another, at aiolocks `{meta['aiolocks_commit']}`. Command: `{meta['command']}`.",
        "",
        "Every ratio is computed within one run of one interpreter, against the peer named in "
        "its target; compare ratios across the columns, never absolute times (noise on a "
        "shared machine).",
        "",
        _md_table(runs_table(runs, markdown=True), right_from=3),
        "",
        "## Targets side by side",
        "",
        _md_table(side_by_side(rows, runs, markdown=True), right_from=4)
        if rows
        else "No run measured a target.",
        "",
    ]
    for run in runs:
        if run.status == "ok" and run.report:
            out += [f"## {_interpreter(run.report['meta'])}", "", _demoted(run.markdown), ""]
        elif run.status != "not found" or run.explicit:
            out += [f"## {run.label}: {run.status}", "", "```", run.error, "```", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run.py --quick on each Python")
    parser.add_argument(
        "--python",
        nargs="+",
        metavar="PY",
        help=f"interpreter paths or versions (default: every one of {', '.join(VERSIONS)} found)",
    )
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        default=str(DEFAULT_MARKDOWN),
        help="the report (default: %(default)s)",
    )
    parser.add_argument(
        "--json", metavar="PATH", default=str(DEFAULT_JSON), help="every number (%(default)s)"
    )
    parser.add_argument(
        "--venvs",
        metavar="DIR",
        default=str(DEFAULT_VENVS),
        help="where the per-Python virtual environments live (default: %(default)s)",
    )
    parser.add_argument(
        "--no-venv",
        action="store_true",
        help="run each --python as it is (its environment needs the bench extra)",
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run.py --only NAME ...")
    args = parser.parse_args(argv)
    if args.no_venv and not args.python:
        parser.error("--no-venv needs --python")

    started = datetime.datetime.now(datetime.timezone.utc)
    args.commit = _git_commit()  # before the runs: the tree may change while they run
    runs = resolve(args.python)
    for run in runs:
        if run.status == "not found":
            print(f"[{run.label}] not found", flush=True)
    with tempfile.TemporaryDirectory(prefix="aiolocks-versions-") as tmp:
        for run in runs:
            if run.status:  # not found, or too old
                continue
            if not args.no_venv:
                t0 = time.perf_counter()
                setup(run, Path(args.venvs))
                run.setup_seconds = time.perf_counter() - t0
                if run.status:
                    print(f"[{run.label}] {run.status}: {run.error}", flush=True)
                    continue
            bench(run, args, Path(tmp))
            if run.status != "ok":
                print(f"[{run.label}] {run.status}: {run.error}", flush=True)

    rows = summary(runs)
    meta = meta_of(runs, args, argv, started)
    print()
    print(_text_table(runs_table(runs, markdown=False)))
    if rows:
        print()
        print(_text_table(side_by_side(rows, runs, markdown=False)))
    data = {"meta": meta, "runs": [r.as_dict() for r in runs], "summary": rows}
    for path, text in (
        (args.markdown, render_markdown(runs, rows, meta)),
        (args.json, json.dumps(data, indent=1)),
    ):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
        print(f"report: {path}")
    failed = [r for r in runs if r.status != "ok" and (r.status != "not found" or r.explicit)]
    return 1 if failed or not any(r.status == "ok" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
