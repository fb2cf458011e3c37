"""CSV: one row per target and batch size."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from autotimm_deploy.exporter.core.files import atomic_write_text
from autotimm_deploy.profiler.report.table import rows

FIELDS = ("target", "runtime", "device", "batch", "median_ms", "ci_low_ms", "ci_high_ms", "p90_ms", "p95_ms",
          "p99_ms", "n", "images_per_s", "speedup_vs_batch1", "baseline", "speedup_vs_baseline", "speedup_ci_low",
          "speedup_ci_high", "percent_of_peak", "settings", "peak_rss_mb", "peak_gpu_mb", "error")


def write(report: dict, path: str) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows(report))
    if path == "-":  # standard output, as for --json
        sys.stdout.write(buf.getvalue())
    else:
        atomic_write_text(Path(path), buf.getvalue())
