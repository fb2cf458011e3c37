"""Rich table, plus the flat rows every tabular renderer shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autotimm_deploy.exporter.core.results import MIN_CI_SAMPLES, ProfileRun


if TYPE_CHECKING:
    from rich.console import Console

COLUMNS = ("target", "runtime", "device", "batch", "median ms", "p90 ms", "p95 ms", "p99 ms", "images/s",
           "% of peak", "x batch 1", "speedup vs baseline (95% CI)", "peak RSS MB", "n", "settings")
# the runtime settings shown in the table's last column, in this order, as "N label" (all are in --json)
SETTING_LABELS = {"streams": "streams", "infer_requests": "requests", "threads": "threads",
                  "intra_op_threads": "threads/run", "inference_precision": "", "cuda_graph": "CUDA graph"}


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def rows(report: dict) -> list[dict]:
    """One flat row per run and batch size: what the table, CSV and Markdown show."""
    out = []
    for run in map(ProfileRun.from_dict, report["runs"]):
        for p in run.points:
            row = {"target": run.label, "runtime": run.runtime, "device": run.device,
                   "batch": p.batch, "baseline": run.baseline, "error": p.error,
                   "peak_rss_mb": run.memory.get("peak_rss_mb"), "peak_gpu_mb": run.memory.get("peak_gpu_mb")}
            if not p.error:
                st = p.stats_ms
                vs = p.vs_baseline or {}
                row.update({"median_ms": st["p50"], "p90_ms": st["p90"], "p95_ms": st["p95"], "p99_ms": st["p99"],
                            "ci_low_ms": st["ci_low"], "ci_high_ms": st["ci_high"], "n": st["n"],
                            "images_per_s": p.images_per_s, "speedup_vs_batch1": p.speedup_vs_batch1,
                            "speedup_vs_baseline": vs.get("ratio"), "speedup_ci_low": vs.get("ci_low"),
                            "speedup_ci_high": vs.get("ci_high"), "percent_of_peak": p.percent_of_peak,
                            "settings": settings_text(p.settings)})
            out.append(row)
    return out


def settings_text(settings: dict | None) -> str:
    """``throughput: 2 streams, 2 requests, 2 threads``: the settings a row ran with (`SETTING_LABELS`)."""
    settings = settings or {}
    shown = [f"{settings[k]} {label}".strip() if settings[k] is not True else label
             for k, label in SETTING_LABELS.items() if settings.get(k) is not None]
    mode = settings.get("mode")
    return f"{mode}: {', '.join(shown)}" if mode and shown else mode or ", ".join(shown) or "-"


def peak_lines(report: dict) -> list[str]:
    """One line per run: how the "% of peak" column's peak was derived, or why it is empty."""
    out = []
    for run in report["runs"]:
        peak, flops = run.get("peak"), run.get("flops_per_image")
        if peak is None:
            continue
        what = f"{peak['precision']} peak: {peak['how']}" + "".join(f"; {n}" for n in peak.get("notes") or [])
        counted = f"{flops / 1e9:.3g} GFLOPs per picture" if flops else "no FLOP count (the manifest has none)"
        out.append(f"{run['target']['label']}: {counted}; {what}")
    return out


def interval_text(d: dict) -> str:
    """``[lo, hi]`` of a dict's ``ci_low`` / ``ci_high``, or what stands where there is none (a ratio's
    interval counts interleaved rounds, a latency's samples)."""
    lo, hi = d.get("ci_low"), d.get("ci_high")
    if lo is None or hi is None:
        return f"(no CI: <{MIN_CI_SAMPLES} rounds)" if "rounds" in d else f"(no CI: n<{MIN_CI_SAMPLES})"
    return f"[{lo:.2f}, {hi:.2f}]"


def skipped_text(run: dict, asked: list[int]) -> str:
    """Which asked batch sizes a run skipped, and the fixed batch it was measured at instead, if any."""
    text = (f"{run['target']['label']}: batch sizes {', '.join(map(str, run['batches_skipped']))} skipped "
            "(outside its batch range)")
    instead = [str(p["batch"]) for p in run["points"] if asked and p["batch"] not in asked]
    return text + (f"; measured at its fixed batch {', '.join(instead)} instead" if instead else "")


def speedup_text(r: dict) -> str:
    if r.get("speedup_vs_baseline") is None:
        return "-"
    return f"{r['speedup_vs_baseline']:.2f}x " + interval_text({"ci_low": r["speedup_ci_low"], "ci_high": r["speedup_ci_high"],
                                                              "rounds": None})


def cells(r: dict) -> list[str]:
    if r.get("error"):
        return [r["target"], r["runtime"], r["device"], str(r["batch"]), f"error: {r['error']}"] + [""] * (len(COLUMNS) - 5)
    return [r["target"], r["runtime"], r["device"], str(r["batch"]), _fmt(r["median_ms"], ".3f"),
            _fmt(r["p90_ms"], ".3f"), _fmt(r["p95_ms"], ".3f"), _fmt(r["p99_ms"], ".3f"), _fmt(r["images_per_s"], ".1f"),
            _fmt(r.get("percent_of_peak"), ".1f"), _fmt(r["speedup_vs_batch1"]), speedup_text(r),
            _fmt(r["peak_gpu_mb"] if r["peak_gpu_mb"] is not None else r["peak_rss_mb"], ".0f"), str(r["n"]),
            r.get("settings") or "-"]


def render(report: dict, console: "Console") -> None:
    from rich.markup import escape  # rich only where a table is drawn: the rows serve CSV/Markdown without it
    from rich.table import Table

    env = report["environment"]
    title = (f"autotimm-profile: {env['cpu']} ({env['threads']} threads)"
             + (f", {env['gpu']['name']}" if env.get("gpu") else ""))
    t = Table(title=title, caption=caption(report))
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("target", "runtime", "device") else "right")
    for r in rows(report):
        t.add_row(*(escape(c) for c in cells(r)), style="red" if r.get("error") else None)
    console.print(t)
    for line in peak_lines(report):
        console.print(escape(line))
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(w)}")
    for run in report["runs"]:
        if run.get("batches_skipped"):
            console.print(escape(skipped_text(run, report["settings"].get("batch_sizes") or [])))
    split = [(r["target"]["label"], r["phases_ms"]) for r in report["runs"] if r.get("phases_ms")]
    if split:
        t = Table(title="GPU time split (medians, each phase timed alone)")
        for c in ("target", "batch", "host->device ms", "compute ms", "device->host ms"):
            t.add_column(c, justify="left" if c == "target" else "right")
        for label, ph in split:
            t.add_row(escape(label), str(ph["batch"]), *(_fmt(ph[k], ".3f") for k in ("h2d_ms", "compute_ms", "d2h_ms")))
        console.print(t)


def caption(report: dict) -> str:
    s = report["settings"]
    copies = "host<->device copies inside the timed region" if s["copies_timed"] else "compute only (--device-io)"
    base = "speedup = baseline median / this median, per interleaved round" if any(
        r["baseline"] for r in report["runs"]) else ""
    return "; ".join(x for x in (f"clock {s['clock']}", copies, base) if x)
