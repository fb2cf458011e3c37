"""``--target cpu`` on real-size models: eager fp32 against the artifact it chooses. Run by hand on
a quiet machine:

    .venv/bin/python benchmarks/cpu_targets.py [--models resnet50,...] [--max-time 20] [--out bench-cpu]

Calibration: 32 images made from scikit-image's pictures (random 224-px crops, flips) written as PNG
files, as a user's folder would be. Prints a Markdown table (the chosen artifact's speedup over eager
and over ONNX Runtime fp32, its "% of peak" for its precision on this CPU), the geometric means and
every candidate's time."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.select import target_cpu
from autotimm_deploy.profiler.measure.peak import device_peak, percent_of_peak
from autotimm_deploy.profiler.report.table import interval_text

MODELS = "resnet50,mobilenetv3_small_100,efficientnet_b0,convnext_tiny,vit_base_patch16_224"


def calibration_folder(folder: Path, n: int = 32, seed: int = 0) -> Path:
    import skimage.data
    from PIL import Image

    names = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "camera")
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = getattr(skimage.data, names[i % len(names)])()
        img = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img[..., :3]
        h, w = img.shape[:2]
        s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crop = img[y:y + s, x:x + s]
        Image.fromarray(crop[:, ::-1] if i % 2 else crop).save(folder / f"{i:03d}.png")
    return folder


def peak_share(candidate) -> str:
    """The chosen artifact's batch-1 FLOP/s as a share of this CPU's peak for its precision
    (profiler/measure/peak.py: flags, cores, clock), from the FLOPs counted at export."""
    flops = (load_manifest(candidate.result.artifact).model or {}).get("flops") or {}
    pct = percent_of_peak(flops.get("per_image"), 1000.0 / candidate.median_ms, device_peak("cpu", candidate.precision))
    return "-" if pct is None else f"{pct:.1f} %"


def why_untimed(candidate) -> str:
    """The skip reason, the export's error, or the gate's failures of a candidate that got no time."""
    row = candidate.row(False)
    if row["note"]:
        return row["note"]
    if row["failures"]:
        return "failed its gate: " + "; ".join(map(str, row["failures"]))
    return "passed, not timed"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--max-time", type=float, default=20.0)
    ap.add_argument("--out", default="bench-cpu")
    a = ap.parse_args()
    speedups, over_ort, every, untimed = [], [], {}, {}
    print("| model | eager fp32 ms | chosen | its ms | speedup [95% CI] | vs ORT fp32 | % of peak | max_rel | cosine "
          "| top1 | runner-up |")
    print("|---|---:|---|---:|---|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        calib = calibration_folder(Path(tmp))
        for model in a.models.split(","):
            opts = ExportOptions(calib_data=str(calib), calib_samples=32)
            winner, ranked, eager = target_cpu(ModelSpec(model), Path(a.out) / model, opts, force=True,
                                               max_time=a.max_time)
            every[model] = (eager.get("median_ms"), {c.label: (c.median_ms, c.result.export_seconds if c.result else 0,
                                                                 c.result and c.result.ok)
                                                      for c in ranked})
            untimed[model] = {c.label: why_untimed(c) for c in ranked if c.median_ms is None}
            if winner is None:
                print(f"| {model} | {eager.get('median_ms')} | none passed | | | | | | | | |")
                continue
            row = winner.row(True)
            second = next((c for c in ranked if c is not winner and c.median_ms is not None), None)
            sp = winner.speedup
            speedups.append(sp["ratio"])
            ort = next((c.median_ms for c in ranked if c.label == "onnx fp32" and c.median_ms), None)
            if ort:
                over_ort.append(ort / winner.median_ms)
            top1 = "-" if row["top1_agreement"] is None else f"{row['top1_agreement']:.0%}"
            print(f"| {model} | {eager['median_ms']:.2f} | {winner.label} | {winner.median_ms:.2f} | "
                  f"{sp['ratio']:.2f}x {interval_text(sp)} | "
                  f"{f'{ort / winner.median_ms:.2f}x' if ort else '-'} | {peak_share(winner)} | {row['max_rel']:.1e} | "
                  f"{row['cosine']:.5f} | {top1} | "
                  f"{second.label + f' {second.median_ms:.2f} ms' if second else '-'} |", flush=True)
    for what, ratios in (("eager fp32", speedups), ("ONNX Runtime fp32", over_ort)):
        if ratios:
            geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            print(f"\ngeometric-mean speedup over {what}: {geo:.2f}x over {len(ratios)} models")
    labels = list(dict.fromkeys(label for _, cands in every.values() for label in cands))
    print("\nEvery candidate, batch-1 median ms (export seconds); - : not timed (failed parity or skipped)\n")
    print("| model | eager | " + " | ".join(labels) + " |")
    print("|---|---:|" + "---:|" * len(labels))
    for model, (eager_ms, cands) in every.items():
        cells = []
        for label in labels:
            ms, secs, ok = cands.get(label, (None, None, None))
            cells.append(f"{ms:.2f} ({secs:.0f} s)" if ms is not None else ("-" if not ok else "passed, untimed"))
        print(f"| {model} | {eager_ms:.2f} | " + " | ".join(cells) + " |")
    print("\nWhy a candidate was not timed\n")
    for model, reasons in untimed.items():
        for label, why in reasons.items():
            print(f"- {model}, {label}: {why}")


if __name__ == "__main__":
    main()
