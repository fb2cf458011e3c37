"""Markdown: the table plus the environment it was measured in."""

from __future__ import annotations

import sys
from pathlib import Path

from autotimm_deploy.exporter.core.files import atomic_write_text
from autotimm_deploy.profiler.report.table import COLUMNS, caption, cells, peak_lines, rows


def render(report: dict) -> str:
    env = report["environment"]
    lines = ["# autotimm-profile report", ""]
    gpu = f"; GPU {env['gpu']['name']} (driver {env['gpu'].get('driver')})" if env.get("gpu") else ""
    pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    lines += [f"CPU {env['cpu']}, {env['cores']} cores, {env['threads']} threads{gpu}. {pk}.", "",
              f"*{caption(report)}.*", ""]
    lines += [f"> **Warning:** {w}" for w in report.get("warnings", [])] + ([""] if report.get("warnings") else [])
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" if c in ("target", "runtime", "device") else "---:" for c in COLUMNS) + "|")
    for r in rows(report):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |")
    notes = peak_lines(report)
    lines += ["", *(f"- {line}" for line in notes)] if notes else []
    split = [(r["target"]["label"], r["phases_ms"]) for r in report["runs"] if r.get("phases_ms")]
    if split:
        lines += ["", "GPU time split (medians, each phase timed alone):", "",
                  "| target | batch | host->device ms | compute ms | device->host ms |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {label} | {ph['batch']} | {ph['h2d_ms']:.3f} | {ph['compute_ms']:.3f} | {ph['d2h_ms']:.3f} |"
                  for label, ph in split]
    return "\n".join(lines) + "\n"


def write(report: dict, path: str) -> None:
    if path == "-":  # standard output, as for --json
        sys.stdout.write(render(report))
    else:
        atomic_write_text(Path(path), render(report))
