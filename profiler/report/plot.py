"""PNG plot of a profile report.

Panels: median latency against batch size (with the median's 95 % CI), throughput against batch size
and, when the report compares targets against a baseline, the speedup over that baseline per target
and batch size with its 95 % CI: the number the profiler exists to measure. Axes carry plain numbers
(batch sizes 1, 2, 8 ...; milliseconds; images/s), never ``2^3`` or ``2x10^1``.

`figure` builds the matplotlib Figure; `write` renders it to a PNG through `save_png` (atomic).
The small axis helpers (`plain_number`, `log_ticks`, `plain_log_axis`) are shared with the benchmark
page's charts.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from autotimm_deploy.exporter.core.files import file_mode

FONT = 9  # tick labels; titles and labels are derived from it
SPEEDUP_TITLE = "speedup over "


def write(report: dict, path: str) -> None:
    save_png(figure(report), Path(path))


# -- axis helpers ------------------------------------------------------------------------------------

def plain_number(v: float, suffix: str = "") -> str:
    """``1``, ``2.5``, ``0.05``, ``1,200``: no exponents, no mathtext."""
    if v == 0:
        return "0" + suffix
    a = abs(v)
    if a >= 1000:
        text = f"{v:,.0f}"
    elif a >= 1:
        text = f"{v:.2f}".rstrip("0").rstrip(".")
    else:
        digits = max(2, 1 - math.floor(math.log10(a)) + 1)
        text = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return text + suffix


def log_ticks(lo: float, hi: float, most: int = 7) -> list[float]:
    """Round values (1-2-5 style) covering [lo, hi] on a log axis, at least two, at most ``most``."""
    lo, hi = min(lo, hi), max(lo, hi)
    if lo <= 0:
        raise ValueError("log_ticks needs positive bounds")
    best: list[float] = []
    for mantissas in ((1, 1.5, 2, 3, 4, 5, 7), (1, 1.5, 2, 3, 5, 7), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0**e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                 for m in mantissas]
        ticks = [float(f"{t:.6g}") for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if len(ticks) <= most:
            best = ticks
            if len(ticks) >= 2:
                return ticks
            break
        best = ticks
    if len(best) < 2:  # a narrow range: the bounds themselves, rounded
        best = sorted({float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    return best


def plain_log_axis(axis, ticks: list[float], suffix: str = "") -> None:
    """Major ticks exactly at ``ticks`` with plain labels; minor ticks unlabelled."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: plain_number(v, suffix)))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def plain_linear_axis(axis, suffix: str = "", nbins: int = 6) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    axis.set_major_locator(MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: plain_number(v, suffix)))
    axis.set_minor_formatter(NullFormatter())


def value_axis(ax, which: str, lo: float, hi: float, suffix: str = "") -> None:
    """A log axis with plain ticks when the values span more than 6x, else a linear one from 0."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    if lo > 0 and hi / lo > 6:
        (ax.set_yscale if which == "y" else ax.set_xscale)("log")
        pad = (hi / lo) ** 0.06
        (ax.set_ylim if which == "y" else ax.set_xlim)(lo / pad, hi * pad)
        plain_log_axis(axis, log_ticks(lo / pad, hi * pad), suffix)
    else:
        (ax.set_ylim if which == "y" else ax.set_xlim)(0, hi * 1.12 if hi > 0 else 1)
        plain_linear_axis(axis, suffix)


def short_label(label: str, width: int = 40) -> str:
    """``a_very_long_model_name.onnx [onnxruntime]`` -> ``a_very_long_mo….onnx [onnxruntime]``."""
    if len(label) <= width:
        return label
    name, tag = label, ""
    if label.endswith("]") and " [" in label:
        name, tag = label[: label.rindex(" [")], label[label.rindex(" ["):]
    room = max(8, width - len(tag) - 1)
    if len(name) > room:
        stem, dot, ext = name.rpartition(".")
        keep_ext = dot and 0 < len(ext) <= 8 and room > len(ext) + 6
        tail = dot + ext if keep_ext else ""
        name = name[: room - len(tail)] + "…" + tail
    return name + tag


# -- the report figure -------------------------------------------------------------------------------

def _ok(points: list[dict]) -> list[dict]:
    return sorted((p for p in points if not p.get("error") and p.get("stats_ms")), key=lambda p: p["batch"])


def _title(report: dict) -> str:
    env = report.get("environment") or {}
    parts = [env.get("cpu") or "unknown CPU"]
    if env.get("threads"):
        parts[0] += f", {env['threads']} threads"
    gpu = env.get("gpu")
    if gpu and gpu.get("name"):
        parts.append(f"GPU {gpu['name']}")
    devices = sorted({r.get("device") for r in report.get("runs", []) if r.get("device")})
    head = "autotimm-profile" + (f" on {'/'.join(devices)}" if devices else "")
    return f"{head}: " + " | ".join(parts)


def _footnote(report: dict, failed: list[str], with_speedup: bool) -> str:
    s = report.get("settings") or {}
    notes = []
    if "copies_timed" in s:
        notes.append("host↔device copies timed" if s["copies_timed"]
                     else "host↔device copies NOT timed (compute only, --device-io)")
    notes.append("bands / whiskers: 95% CI of the median")
    if with_speedup:
        notes.append("speedup = baseline median / target median per interleaved round; pale bar: CI includes 1.0x")
    if failed:
        shown = ", ".join(failed[:4]) + (f" (+{len(failed) - 4} more)" if len(failed) > 4 else "")
        notes.append(f"failed: {shown}")
    return "; ".join(notes)


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display); shared with the benchmark page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(report: dict):
    """The report's chart as a matplotlib Figure (not saved, not closed)."""
    plt = pyplot()
    runs = report.get("runs") or []
    series, failed = _series(runs, plt.get_cmap("tab10").colors)
    if not series:
        return _empty_figure(plt, report, runs, failed)
    speed = [(run, c, [p for p in pts if p.get("vs_baseline")]) for run, c, pts in series if run.get("baseline")]
    speed = [s for s in speed if s[2]]
    fig, ax_legend, ax_lat, ax_tp, ax_sp = _grid(plt, series, speed)
    handles = _draw_batch_panels(ax_lat, ax_tp, series)
    if ax_sp is not None:
        _speedup_panel(ax_sp, speed)
    fig.suptitle(_title(report), fontsize=FONT + 3)
    ax_legend.legend(handles=handles, loc="center", ncol=min(len(handles), 3), fontsize=FONT + 1, frameon=False,
                     borderaxespad=0, handlelength=2.5)
    fig.supxlabel(_footnote(report, failed, bool(speed)), fontsize=FONT - 1, color="0.35", wrap=True)
    return fig


def _series(runs: list[dict], colors) -> tuple[list, list[str]]:
    """``[(run, colour, ok points)]`` for the runs with a measurement, and ``label @ batch N`` for
    every failed point; a run keeps its colour (by position) whether or not it is drawn."""
    series, failed = [], []
    for i, run in enumerate(runs):
        label = short_label(run["target"]["label"])
        failed += [f"{label} @ batch {p['batch']}" for p in run["points"] if p.get("error")]
        pts = _ok(run["points"])
        if pts:
            series.append((run, colors[i % len(colors)], pts))
    return series, failed


def _empty_figure(plt, report: dict, runs: list[dict], failed: list[str]):
    """Nothing measured: the title, "no measurements" and the first errors."""
    fig = plt.figure(figsize=(8, 3), layout="constrained")
    fig.suptitle(_title(report), fontsize=FONT + 2)
    fig.text(0.5, 0.55, "no measurements", ha="center", va="center", fontsize=FONT + 7, color="0.35")
    if failed:
        errs = [f"{short_label(r['target']['label'])} @ batch {p['batch']}: {p['error'][:60]}"
                for r in runs for p in r["points"] if p.get("error")]
        fig.text(0.5, 0.32, "\n".join(errs[:4] + ([f"... {len(errs) - 4} more"] if len(errs) > 4 else [])),
                 ha="center", va="center", fontsize=FONT - 1, color="0.45")
    return fig


def _grid(plt, series: list, speed: list):
    """The figure and its axes: a legend row, latency | throughput, and the speedup panel (``None``
    without a baseline), its height growing with the number of bars."""
    n_bars = sum(len(pts) + 1 for _, _, pts in speed)
    top_h = 4.3
    bottom_h = (1.0 + 0.3 * n_bars) if speed else 0.0
    fig = plt.figure(figsize=(12, top_h + bottom_h + 1.2), layout="constrained")
    legend_h = 0.3 * math.ceil(len(series) / 3)
    grid = fig.add_gridspec(3 if speed else 2, 2, height_ratios=[legend_h, top_h] + ([bottom_h] if speed else []))
    ax_legend = fig.add_subplot(grid[0, :])
    ax_legend.set_axis_off()
    ax_lat, ax_tp = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    ax_sp = fig.add_subplot(grid[2, :]) if speed else None
    return fig, ax_legend, ax_lat, ax_tp, ax_sp


def _draw_batch_panels(ax_lat, ax_tp, series: list) -> list:
    """Latency (median, its CI as a band and whiskers) and throughput against batch size, one line
    per run; returns the latency lines, the legend's handles."""
    handles = []
    for run, c, pts in series:
        b = [p["batch"] for p in pts]
        med = [p["stats_ms"]["p50"] for p in pts]
        # no CI under 6 samples: the whisker shrinks to the median
        lo = [m if p["stats_ms"].get("ci_low") is None else p["stats_ms"]["ci_low"] for p, m in zip(pts, med)]
        hi = [m if p["stats_ms"].get("ci_high") is None else p["stats_ms"]["ci_high"] for p, m in zip(pts, med)]
        ax_lat.fill_between(b, lo, hi, color=c, alpha=0.22, lw=0)
        h = ax_lat.errorbar(b, med, yerr=[[m - l for m, l in zip(med, lo)], [h_ - m for m, h_ in zip(med, hi)]],
                            color=c, marker="o", ms=5, lw=1.8, capsize=3,
                            label=short_label(run["target"]["label"]))
        handles.append(h)
        ax_tp.plot(b, [p["images_per_s"] for p in pts], color=c, marker="o", ms=5, lw=1.8)
    _batch_panel_axes(ax_lat, ax_tp, series)
    return handles


def _batch_panel_axes(ax_lat, ax_tp, series: list) -> None:
    """Value axes (log when the values span more than 6x) and a log2 batch-size axis for both panels."""
    lat_all = [v for _, _, pts in series for p in pts
               for v in (p["stats_ms"]["p50"], p["stats_ms"].get("ci_low"), p["stats_ms"].get("ci_high")) if v]
    tp_all = [p["images_per_s"] for _, _, pts in series for p in pts if p.get("images_per_s")]
    value_axis(ax_lat, "y", min(lat_all), max(lat_all))
    if tp_all:
        value_axis(ax_tp, "y", min(tp_all), max(tp_all))
    batches = sorted({p["batch"] for _, _, pts in series for p in pts})
    for ax, title, ylabel in ((ax_lat, "latency vs batch", "median latency per batch (ms)"),
                              (ax_tp, "throughput vs batch", "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        plain_log_axis(ax.xaxis, [float(b) for b in batches])
        pad = 2 ** 0.35
        ax.set_xlim(batches[0] / pad, batches[-1] * pad)
        ax.set_xlabel("batch size", fontsize=FONT + 1)
        ax.set_ylabel(ylabel, fontsize=FONT + 1)
        ax.set_title(title, fontsize=FONT + 2, loc="left", fontweight="bold")
        ax.tick_params(labelsize=FONT)
        ax.grid(True, which="major", alpha=0.3)


def _speedup_panel(ax, speed) -> None:
    """Horizontal bars: one group per target (a bold header row), one bar per batch size."""
    from matplotlib.ticker import FixedLocator

    baselines = sorted({run["baseline"] for run, _, _ in speed})
    y, ticks, labels = 0.0, [], []
    top = max(max(p["vs_baseline"].get("ci_high") or p["vs_baseline"]["ratio"], p["vs_baseline"]["ratio"])
              for _, _, pts in speed for p in pts)
    xmax = max(1.2, top * 1.2)
    for run, c, pts in speed:
        head = short_label(run["target"]["label"], 48)
        if len(baselines) > 1:
            head += f"  vs {short_label(run['baseline'], 30)}"
        ax.text(xmax * 0.004, y, head, va="center", ha="left", fontsize=FONT + 1, fontweight="bold", color=c,
                zorder=4, bbox={"fc": "white", "ec": "none", "pad": 0.6, "alpha": 0.85})
        y += 1
        for p in pts:
            vs = p["vs_baseline"]
            r = vs["ratio"]
            lo, hi = vs.get("ci_low"), vs.get("ci_high")
            unclear = lo is not None and hi is not None and lo <= 1.0 <= hi
            err = [[max(0.0, r - lo)], [max(0.0, hi - r)]] if lo is not None and hi is not None else None
            ax.barh(y, r, height=0.68, color=c, alpha=0.4 if unclear else 0.9, xerr=err,
                    error_kw={"ecolor": "0.15", "capsize": 3, "lw": 1.1}, gid="speedup-bar")
            ax.text(max(r, hi or r) + xmax * 0.012, y, f"{r:.2f}x", va="center", ha="left", zorder=4,
                    fontsize=FONT + 0.5, fontweight="bold", color="0.1",
                    bbox={"fc": "white", "ec": "none", "pad": 0.6, "alpha": 0.85})
            ticks.append(y)
            labels.append(f"batch {p['batch']}")
            y += 1
        y += 0.3
    ax.axvline(1.0, color="0.25", lw=1.2, ls="--", zorder=3)
    ax.set_ylim(y - 0.5, -0.7)
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.set_yticklabels(labels)
    ax.tick_params(axis="y", length=0, labelsize=FONT + 0.5)
    ax.tick_params(axis="x", labelsize=FONT)
    ax.set_xlim(0, xmax)
    plain_linear_axis(ax.xaxis, suffix="x", nbins=8)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    base = short_label(baselines[0], 48) if len(baselines) == 1 else "baseline"
    ax.set_title(f"{SPEEDUP_TITLE}{base}", fontsize=FONT + 2, loc="left", fontweight="bold")
    ax.set_xlabel(f"speedup (x, higher is faster; 1.0x = {base})", fontsize=FONT + 1)


def save_png(fig, target: Path) -> None:
    """Write ``fig`` to ``target`` through a temporary file and a rename; close it."""
    import matplotlib.pyplot as plt

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, file_mode())  # mkstemp's 0600, else: a PNG as readable as every other report
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
        plt.close(fig)
