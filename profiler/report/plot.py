"""PNG plot: median latency and throughput against batch size, one line per target."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in report["runs"]:
        pts = [p for p in run["points"] if not p.get("error")]
        if not pts:
            continue
        b = [p["batch"] for p in pts]
        label = run["target"]["label"]
        ax_lat.plot(b, [p["stats_ms"]["p50"] for p in pts], marker="o", label=label)
        ax_tp.plot(b, [p["images_per_s"] for p in pts], marker="o", label=label)
    for ax, ylabel in ((ax_lat, "median latency (ms)"), (ax_tp, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_lat.legend(fontsize=8)
    env = report["environment"]
    fig.suptitle(f"{env['cpu']}" + (f" / {env['gpu']['name']}" if env.get("gpu") else ""), fontsize=9)
    fig.tight_layout()
    save_png(fig, Path(path))


def save_png(fig, target: Path) -> None:
    """Write ``fig`` to ``target`` through a temporary file and a rename; close it."""
    import matplotlib.pyplot as plt

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
        plt.close(fig)
