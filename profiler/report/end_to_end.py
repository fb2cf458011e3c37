"""The end-to-end report (``autotimm-profile --pictures``): per artifact and batch, each step's median
with its 95 % CI, as a rich table and as Markdown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autotimm_deploy.exporter.core.files import atomic_write_text
from autotimm_deploy.profiler.report.table import interval_text

if TYPE_CHECKING:
    from rich.console import Console

STEP_COLUMNS = ("end to end", "decode", "preprocess", "compute only", "answers", "end to end (eager)",
                "compute only (eager)")


def _ms(stats: dict | None) -> str:
    if not stats:
        return "-"
    return f"{stats['p50']:.2f} {interval_text(stats)}"


def _speedup(point: dict) -> str:
    s = point.get("speedup_vs_eager")
    return "-" if not s else f"{s['ratio']:.2f}x {interval_text(s)}"


def rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """The header and one row of cells per artifact and batch (an error fills the first step's cell)."""
    eager = report["settings"].get("compare_eager")
    steps = [c for c in STEP_COLUMNS if eager or "eager" not in c]
    header = ["target", "batch", *[f"{c} ms" for c in steps], "images/s", "end to end / compute",
              *(["speedup vs eager, end to end"] if eager else [])]
    out = []
    for run in report["end_to_end"]:
        for p in run["points"]:
            head = [run["target"]["label"], str(p["batch"])]
            if p.get("error"):
                out.append(head + [f"error: {p['error']}"] + [""] * (len(header) - 3))
                continue
            out.append(head + [_ms(p["steps_ms"].get(c)) for c in steps]
                       + [f"{p['images_per_s']:.1f}", f"{p['end_to_end_over_compute']:.2f}x"]
                       + ([_speedup(p)] if eager else []))
    return header, out


def notes(report: dict) -> list[str]:
    """What was left out and how it was measured, under the table."""
    pics = report["pictures"]
    out = [f"{len(pics['used'])} picture(s) used of {pics['found']} found; each call takes the next ones in turn. "
           "Medians in ms with their 95% CI; host wall clock, from the file to the answers in the picture's pixels."]
    for run in report["end_to_end"]:
        skipped = run.get("batches_skipped")
        if skipped:
            out.append(f"{run['target']['label']}: batch {', '.join(map(str, skipped['batches']))} not measured: "
                       f"{skipped['why']}")
    return out


def render(report: dict, console: "Console") -> None:
    from rich.markup import escape
    from rich.table import Table

    env = report["environment"]
    header, body = rows(report)
    t = Table(title=f"autotimm-profile --pictures: {escape(env['cpu'])} ({env['threads']} threads)")
    for i, c in enumerate(header):
        t.add_column(c, justify="left" if i == 0 else "right", overflow="fold")
    for r in body:
        t.add_row(*map(escape, r))
    console.print(t)
    for line in notes(report):
        console.print(escape(line))


def markdown(report: dict) -> str:
    header, body = rows(report)
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes(report)]) + "\n"


def write_markdown(report: dict[str, Any], path: str) -> None:
    if path == "-":
        print(markdown(report), end="")
    else:
        from pathlib import Path

        atomic_write_text(Path(path), markdown(report))
