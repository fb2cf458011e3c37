"""Export time per format (median of N runs) for real-size models. Run by hand on a quiet machine:

    .venv/bin/python benchmarks/export_time.py [--models resnet50,vit_base_patch16_224] [--repeats 3]

Prints a Markdown table (export seconds exclude building the model; parity is checked once per
format, on the first run, and its verdict shown)."""

from __future__ import annotations

import argparse
import statistics
import tempfile

from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.pipeline import export


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet50,vit_base_patch16_224")
    ap.add_argument("--formats", default="torchscript,onnx,pt2")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print("| model | format | exporter | export s (median) | runs | size MB | parity |")
    print("|---|---|---|---:|---|---:|---|")
    for model in a.models.split(","):
        for fmt in a.formats.split(","):
            times, first = [], None
            for i in range(a.repeats):
                with tempfile.TemporaryDirectory() as d:
                    (r,) = export(ModelSpec(model), [fmt], d, verify=(i == 0))
                    if r.error:
                        raise SystemExit(f"{model} {fmt}: {r.error}")
                    times.append(r.export_seconds)
                    first = first or r
            verdict = str(first.parity.verdict) if first.parity else "-"
            rel = first.parity.metrics["logits"].get("max_rel") if first.parity else None
            print(f"| {model} | {fmt} | {first.info.get('exporter')} | {statistics.median(times):.2f} | "
                  f"{', '.join(f'{t:.2f}' for t in times)} | {first.bytes / 2**20:.1f} | {verdict} (max_rel {rel:.1e}) |",
                  flush=True)


if __name__ == "__main__":
    main()
