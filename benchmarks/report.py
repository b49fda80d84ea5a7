"""The ``--report DIR`` output of ``run.py``: ``DIR/report.md`` and PNG plots (matplotlib, Agg).

* ``scaling_<series>.png``: one per scaling series of the run (cost per operation against the
  number of tasks, log-log, one panel per backend, one line per candidate);
* ``targets.png``: every ratio target of the run, the measured ratio as a bar and the target
  as a tick, green when met and red when missed.

``report.md`` shows the plots, a compact table per scaling series (candidates x number of
tasks) and then the full table of the run. Without matplotlib only ``report.md`` is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import _peers as P
from _harness import Check, Collector, Result, fmt_value
from _scenarios import SCALING

DPI = 100

# One colour per candidate in every plot: aiolocks in blues/purples, peers in their own colours.
COLOURS = {
    P.LOCK: "#1f4e9c",
    P.LOCK_FAST: "#5b8fd9",
    P.RW_WRITER: "#7b3fa0",
    P.RWLOCK: "#1f4e9c",
    P.ASYNCIO_LOCK: "#2ca02c",
    P.TRIO_LOCK: "#2ca02c",
    P.ANYIO_LOCK: "#ff7f0e",
    P.AIORW_WRITER: "#d62728",
    P.AIORWLOCK: "#d62728",
    P.BARE_TASKS: "#555555",
}


def _label(cand: str, series: str = "") -> str:
    if series == "readers" and cand in (P.RWLOCK, P.AIORWLOCK):
        return f"{cand}.{'reader' if cand == P.RWLOCK else 'reader_lock'}"
    return cand


def _ours(cand: str) -> bool:
    return cand.startswith("aiolocks")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def scaling_points(col: Collector) -> dict[str, dict[str, dict[str, list[tuple[float, Result]]]]]:
    """``{series: {backend: {candidate: [(x, result), ...]}}}``, x ascending."""
    out: dict[str, dict[str, dict[str, list[tuple[float, Result]]]]] = {}
    for r in col.results:
        if r.series and r.x is not None:
            by_cand = out.setdefault(r.series, {}).setdefault(r.backend, {})
            by_cand.setdefault(r.candidate, []).append((r.x, r))
    for by_backend in out.values():
        for by_cand in by_backend.values():
            for pts in by_cand.values():
                pts.sort(key=lambda p: p[0])
    return out


def _reference_of(col: Collector, series: str, backend: str) -> str | None:
    for r in col.results:
        if r.series == series and r.backend == backend:
            for c in col.checks:
                if c.name == r.name and c.backend == backend and c.reference:
                    return c.reference
    return None


def plot_scaling(col: Collector, series: str, path: Path, plt: Any) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    data = scaling_points(col)[series]
    backends = list(data)
    fig, axes = plt.subplots(
        1, len(backends), figsize=(5.2 * len(backends), 4.2), sharey=True, squeeze=False
    )
    values = [r.value for b in data.values() for pts in b.values() for _, r in pts]
    ratio = max(values) / min(values) if values and min(values) > 0 else 1.0
    for ax, backend in zip(axes[0], backends, strict=False):
        ref = _reference_of(col, series, backend)
        for cand, pts in data[backend].items():
            xs = [x for x, _ in pts]
            ys = [r.value * 1e6 for _, r in pts]
            ax.plot(
                xs,
                ys,
                marker="o",
                markersize=4,
                linewidth=2.2 if _ours(cand) else 1.4,
                linestyle="--" if cand in (ref, P.BARE_TASKS) else "-",
                color=COLOURS.get(cand),
                label=_label(cand, series) + (" (reference)" if cand == ref else ""),
            )
        ax.set_xscale("log")
        if ratio > 20:  # a peer that degrades with the number of tasks: keep all in view
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            ax.set_ylim(0, max(values) * 1e6 * 1.08)
        xs_all = sorted({x for pts in data[backend].values() for x, _ in pts})
        ax.set_xticks(xs_all)
        ax.set_xticklabels([f"{x:,.0f}" for x in xs_all])
        ax.minorticks_off()
        ax.set_xlabel("number of readers" if series == "readers" else "number of tasks")
        ax.set_title(backend, fontsize=11)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7.5, loc="best")
    unit = "reader" if series == "readers" else "acquisition"
    axes[0][0].set_ylabel(f"µs per {unit} (lower is better)")
    fig.suptitle(SCALING.get(series, series), fontsize=11)
    fig.tight_layout()
    _save(fig, path, plt)


def target_checks(col: Collector) -> list[Check]:
    """The ratio targets of the run (candidate vs a peer), in table order."""
    return [c for c in col.checks if c.reference and c.op and c.limit is not None]


def _save(fig: Any, path: Path, plt: Any) -> None:
    """Save at ``DPI``, then re-encode with a small palette: plots have few colours, and
    this keeps each PNG well under 150 KB (the docs include them)."""
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    try:
        from PIL import Image  # matplotlib depends on Pillow
    except ImportError:  # pragma: no cover
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=96, dither=0)
    small.save(path, optimize=True)


def _short(cand: str) -> str:
    return cand.replace("fast_acquire=True", "fast")


def plot_targets(checks: list[Check], path: Path, plt: Any) -> None:
    n = len(checks)
    fig, ax = plt.subplots(figsize=(10, 0.3 * n + 1.3))
    ys = list(range(n))[::-1]
    ratios = [c.ratio if c.ratio is not None else float("nan") for c in checks]
    colours = [
        "#2ca02c" if c.status == "PASS" else "#d62728" if c.status == "MISS" else "#bbbbbb"
        for c in checks
    ]
    ax.barh(ys, [r if r == r else 0 for r in ratios], color=colours, height=0.6, left=0)
    for y, c in zip(ys, checks, strict=False):
        ax.plot([c.limit, c.limit], [y - 0.4, y + 0.4], color="black", linewidth=2)
        text = f"{c.ratio:.2f} x" if c.ratio is not None else "n/a"
        ax.text(
            max(c.ratio or 0, c.limit or 0) * 1.03 + 0.02,
            y,
            f"{text} {_short(c.reference or '')}  (target {c.target})",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(ys)
    ax.set_yticklabels(
        [f"{c.name} [{c.backend}]  {_short(c.candidate)}" for c in checks], fontsize=7
    )
    ax.axvline(1.0, color="#888888", linewidth=0.8, linestyle=":")
    top = max([r for r in ratios if r == r] + [c.limit or 0 for c in checks] + [1.0])
    ax.set_xlim(0, top * 1.7)
    ax.set_xlabel("ratio to the peer named in the target (bar: measured; black tick: target)")
    ax.set_title("Performance targets: aiolocks vs its peers, measured in one run", fontsize=11)
    fig.tight_layout()
    _save(fig, path, plt)


def _scaling_table(col: Collector, series: str) -> list[str]:
    """Candidates x number of tasks, cost per op and ratio to the reference, per backend."""
    out: list[str] = []
    for backend, by_cand in scaling_points(col)[series].items():
        ref = _reference_of(col, series, backend)
        xs = sorted({x for pts in by_cand.values() for x, _ in pts})
        ref_at = {x: r.value for x, r in by_cand.get(ref or "", [])}
        out += [
            f"**{backend}** (ratio to `{_label(ref or '', series)}`, measured side by side)",
            "",
            "| candidate \\ tasks | " + " | ".join(f"{x:,.0f}" for x in xs) + " |",
            "|---|" + "---:|" * len(xs),
        ]
        for cand, pts in by_cand.items():
            at = {x: r for x, r in pts}
            cells = []
            for x in xs:
                r = at.get(x)
                if r is None:
                    cells.append("-")
                    continue
                cell = fmt_value(r.value, r.unit)
                if cand != ref and ref_at.get(x):
                    cell += f" ({r.value / ref_at[x]:.2f} x)"
                cells.append(cell)
            out.append(f"| `{_label(cand, series)}` | " + " | ".join(cells) + " |")
        out.append("")
    return out


def write_report(out_dir: Path, col: Collector, header: str, tables: str) -> list[Path]:
    """Write ``report.md`` and the plots into ``out_dir``; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    missing = ""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        plt = None
        missing = f"matplotlib not installed ({exc}): no plots"
        print(f"note: {missing}")
    series = list(scaling_points(col))
    checks = target_checks(col)
    images: list[tuple[str, str]] = []
    if plt is not None:
        plt.rcParams.update({"font.size": 9})
        for s in series:
            path = out_dir / f"scaling_{_slug(s)}.png"
            plot_scaling(col, s, path, plt)
            written.append(path)
            images.append((path.name, SCALING.get(s, s)))
        if checks:
            path = out_dir / "targets.png"
            plot_targets(checks, path, plt)
            written.append(path)
            images.append((path.name, "Performance targets: measured ratio vs target"))

    md = [header, ""]
    if plt is None:
        md += [f"_{missing}._", ""]
    for s in series:
        md += [f"## {SCALING.get(s, s)}", ""]
        name = f"scaling_{_slug(s)}.png"
        if any(img == name for img, _ in images):
            md += [f"![{SCALING.get(s, s)}]({name})", ""]
        md += _scaling_table(col, s)
    if checks:
        passed = sum(c.status == "PASS" for c in checks)
        md += [
            "## Performance targets",
            "",
            f"{passed} of {len(checks)} ratio targets met in this run "
            "(absolute targets, such as bytes per instance and worst waits, are in the "
            "tables below).",
            "",
        ]
        if any(img == "targets.png" for img, _ in images):
            md += ["![Performance targets: measured ratio vs target](targets.png)", ""]
    md += ["## Every measurement of the run", "", tables]
    path = out_dir / "report.md"
    path.write_text("\n".join(md).rstrip() + "\n")
    written.insert(0, path)
    return written


def fmt_size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1024:.0f} KB" if size >= 1024 else f"{size} B"
