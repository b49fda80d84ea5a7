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
import textwrap
from pathlib import Path
from typing import Any

import _peers as P
from _harness import Check, Collector, Result, fmt_value
from _scenarios import SCALING

# Sized for the docs page: a figure FIG_WIDTH inches wide is shown about 750 px wide in the
# content column of a 1280 px window, so a FONT_SIZE pt label shows at about
# FONT_SIZE * 750 / (72 * FIG_WIDTH) px: 12 pt at 7 in is 18 px, a little over the body text's
# 16 px.
# DPI 160 (1,120 px wide) keeps the text sharp when the browser scales it down.
FIG_WIDTH = 7.0
FONT_SIZE = 12
DPI = 160

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
        1,
        len(backends),
        figsize=(FIG_WIDTH, 6.2),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    values = [r.value for b in data.values() for pts in b.values() for _, r in pts]
    ratio = max(values) / min(values) if values and min(values) > 0 else 1.0
    legend: dict[str, Any] = {}  # label -> line, one entry per candidate over all panels
    for ax, backend in zip(axes[0], backends, strict=False):
        ref = _reference_of(col, series, backend)
        for cand, pts in data[backend].items():
            xs = [x for x, _ in pts]
            ys = [r.value * 1e6 for _, r in pts]
            label = _label(cand, series) + (" (reference)" if cand == ref else "")
            (line,) = ax.plot(
                xs,
                ys,
                marker="o",
                markersize=5,
                linewidth=2.4 if _ours(cand) else 1.6,
                linestyle="--" if cand in (ref, P.BARE_TASKS) else "-",
                color=COLOURS.get(cand),
                label=label,
            )
            legend.setdefault(label, line)
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
        ax.set_xlabel("readers" if series == "readers" else "tasks")
        ax.set_title(backend, fontweight="bold")
        ax.grid(True, which="major", alpha=0.3)
    unit = "reader" if series == "readers" else "acquisition"
    axes[0][0].set_ylabel(f"µs per {unit} (lower is better)")
    # One legend under the panels: inside a panel it would hide the lines it explains.
    fig.legend(
        list(legend.values()),
        list(legend),
        loc="outside lower center",
        ncol=1,
        frameon=False,
        handlelength=2.6,
    )
    fig.get_layout_engine().set(wspace=0.06)  # keeps "10,000" clear of the next panel's "1"
    fig.suptitle(_wrap(SCALING.get(series, series), 48), fontweight="bold")
    _save(fig, path, plt)


def target_checks(col: Collector) -> list[Check]:
    """The ratio targets of the run (candidate vs a peer), in table order."""
    return [c for c in col.checks if c.reference and c.op and c.limit is not None]


def _save(fig: Any, path: Path, plt: Any) -> None:
    """Save at ``DPI``, then re-encode with a small palette: plots have few colours, and
    this keeps each PNG under about 200 KB (the docs include them)."""
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    try:
        from PIL import Image  # matplotlib depends on Pillow
    except ImportError:  # pragma: no cover
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=96, dither=0)
    small.save(path, optimize=True)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width))


def _short(cand: str) -> str:
    """A candidate as a row label of the targets plot: every row there is aiolocks."""
    cand = cand.replace("fast_acquire=True", "fast").removeprefix("aiolocks.")
    return cand.replace("rw.optimistic_read() + rw.validate(stamp)", "optimistic_read")


def _target_text(c: Check) -> str:
    ratio = f"{c.ratio:.2f} x" if c.ratio is not None else "n/a"
    return f"{ratio}  (target {c.target.replace('<=', '≤').replace('>=', '≥')})"


def plot_targets(checks: list[Check], path: Path, plt: Any) -> None:
    """One group per scenario (a bold heading naming the peer), one bar per target."""
    groups: dict[str, list[Check]] = {}
    for c in checks:
        groups.setdefault(c.name, []).append(c)
    headings = {name: _wrap(f"{name} vs {_peers(g)}", 56).split("\n") for name, g in groups.items()}
    rows = len(checks) + sum(len(h) for h in headings.values())
    fig, ax = plt.subplots(figsize=(FIG_WIDTH, rows * 0.32 + 1.4), layout="constrained")
    peak = max([c.ratio or 0 for c in checks] + [c.limit or 0 for c in checks] + [1.0])
    xmax = peak * 2.1  # room for the value after the longest bar
    y = rows - 1
    ys, labels = [], []
    for name, group in groups.items():
        for line in headings[name]:
            text = ax.annotate(
                line,
                xy=(0.01, y),
                xycoords=("figure fraction", "data"),
                va="center",
                fontweight="bold",
                # over the axis line and the 1.0 line, which would cross it
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
                zorder=5,
            )
            text.set_in_layout(False)  # it spans the labels' column and the bars
            y -= 1
        for c in group:
            colour = {"PASS": "#2ca02c", "MISS": "#d62728"}.get(c.status, "#bbbbbb")
            ax.barh(y, c.ratio or 0, color=colour, height=0.62)
            ax.plot([c.limit, c.limit], [y - 0.42, y + 0.42], color="black", linewidth=2.2)
            ax.text(max(c.ratio or 0, c.limit or 0) + xmax * 0.02, y, _target_text(c), va="center")
            ys.append(y)
            labels.append(f"{c.backend}: {_short(c.candidate)}")
            y -= 1
    ax.set_yticks(ys)
    ax.set_yticklabels(labels)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_ylim(-0.6, rows - 0.4)
    ax.axvline(1.0, color="#888888", linewidth=1, linestyle=":")
    ax.set_xlim(0, xmax)
    ax.set_xlabel("ratio to the peer\n(bar: measured, black tick: target)")
    fig.suptitle(
        "Performance targets: aiolocks vs its peers,\nmeasured in one run", fontweight="bold"
    )
    _save(fig, path, plt)


def _peers(group: list[Check]) -> str:
    return " / ".join(dict.fromkeys(c.reference or "" for c in group))


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


def _image(alt: str, name: str) -> str:
    """An image that links to itself: on a phone, a tap shows the plot at full size."""
    return f"[![{alt}]({name})]({name})"


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
        plt.rcParams.update(
            {
                "font.size": FONT_SIZE,
                "axes.titlesize": FONT_SIZE + 1,
                "figure.titlesize": FONT_SIZE + 1,
                "axes.labelsize": FONT_SIZE,
                "xtick.labelsize": FONT_SIZE,
                "ytick.labelsize": FONT_SIZE,
                "legend.fontsize": FONT_SIZE,
            }
        )
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
            md += [_image(SCALING.get(s, s), name), ""]
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
            md += [_image("Performance targets: measured ratio vs target", "targets.png"), ""]
    md += ["## Every measurement of the run", "", tables]
    path = out_dir / "report.md"
    path.write_text("\n".join(md).rstrip() + "\n")
    written.insert(0, path)
    return written


def fmt_size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1024:.0f} KB" if size >= 1024 else f"{size} B"
