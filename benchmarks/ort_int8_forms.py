"""ONNX Runtime int8 on the CPU: the three forms of our ONNX int8 graph (``--onnx-int8``) against the
fp32 graph, batch 1, measured interleaved in one process by the profiler's harness (issue #31 point 2).

    .venv/bin/python benchmarks/ort_int8_forms.py [--models resnet50,efficientnet_b0] [--size 224]

s8s8 (symmetric int8 activations) is TensorRT's form; u8s8 (asymmetric uint8 activations) is what
ONNX Runtime's MLAS kernels take natively; u8s8-qop is the same numbers as quantized operators.
Random weights, calibration on scikit-image's pictures. Name the CPU (``lscpu``) beside the numbers
and run it alone."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.formats.onnx import OnnxOptions
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.pipeline import profile
from autotimm_deploy.profiler.report.table import interval_text

FORMS = ("s8s8", "u8s8", "u8s8-qop")


def run_model(model: str, size: int, tmp: Path, max_time: float) -> dict:
    spec = ModelSpec(model, img_size=(size, size))
    paths, parity = [export(spec, ["onnx"], tmp / "fp32", force=True)[0].artifact], {}
    for form in FORMS:
        options = ExportOptions(precision="int8", calib_data="sample-pictures", format_options={"onnx": OnnxOptions(int8_form=form)})
        (r,) = export(spec, ["onnx"], tmp / form, options, force=True)
        paths.append(r.artifact)
        parity[form] = {"verdict": str(r.parity.verdict) if r.parity else r.error,
                        "cosine": r.parity.primary[1].get("cosine") if r.parity else None}
    report = profile(paths, Settings(batch_sizes=[1], harness=HarnessConfig(max_time=max_time, warmup_time=3.0)),
                     interleave=True, isolate=False)
    runs = report["runs"]
    row = {"model": model, "size": size, "fp32_ms": runs[0]["points"][0]["stats_ms"]["p50"], "cpu": report["environment"]["cpu"]}
    for form, run in zip(FORMS, runs[1:]):
        p = run["points"][0]
        row[form] = {"ms": p["stats_ms"]["p50"], "vs_fp32": p["vs_baseline"], **parity[form]}
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| model | fp32 ms | " + " | ".join(f"{f} ms (x fp32, 95% CI) | {f} cosine" for f in FORMS) + " |",
             "|---|---:|" + "---:|---:|" * len(FORMS)]
    for r in rows:
        cells = []
        for f in FORMS:
            v = r[f]["vs_fp32"]
            cells += [f"{r[f]['ms']:.2f} ({v['ratio']:.2f}x {interval_text(v)})",
                      f"{r[f]['cosine']:.4f}" if r[f]["cosine"] is not None else r[f]["verdict"]]
        lines.append(f"| {r['model']} | {r['fp32_ms']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,mobilenetv3_small_100,efficientnet_b0,convnext_tiny,vit_base_patch16_224")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--max-time", type=float, default=15.0)
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models.split(","):
            rows.append(run_model(model, a.size, Path(tmp) / model, a.max_time))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
