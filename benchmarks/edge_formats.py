"""Edge and mobile formats side by side (#18's table): for each model, every edge format and
precision beside ONNX Runtime and OpenVINO, with file size, export seconds, parity against eager
and batch-1 latency on this CPU. Run by hand, alone, on a quiet machine:

    .venv/bin/python benchmarks/edge_formats.py [--models mobilenetv3_small_100,...] [--img-size 224]

Each artifact is timed in its own process, interleaved with its eager twin (the ratio is what
compares across rows; absolute times drift on a shared machine). Weights are random (offline);
int8 is calibrated on scikit-image's sample pictures. Core ML is exported and its interface checked,
but it predicts only on macOS: its latency and parity are "not run" here. Writes a Markdown table to
stdout and the raw rows to --out/results.json."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

# (format, precision) or (format, "int8", its --<format>-int8 form)
CELLS = [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8"),
         ("executorch", "fp32"), ("executorch", "int8"), ("litert", "fp32"), ("litert", "fp16"),
         ("litert", "int8"), ("litert", "int8", "dynamic"), ("ncnn", "fp32"), ("ncnn", "fp16"), ("ncnn", "int8"),
         ("coreml", "fp32"), ("coreml", "fp16"), ("coreml", "int8", "linear"), ("coreml", "int8", "palette4")]


def cell_options(fmt: str, precision: str, form: str | None):
    """The export options of one cell: int8 calibrated on the sample pictures, in its form."""
    from autotimm_deploy.exporter.formats import ExportOptions, get_format

    own = {fmt: get_format(fmt).Options(int8_form=form)} if form else {}
    return ExportOptions(precision=precision, calib_data="sample-pictures" if precision == "int8" else None,
                         format_options=own)


def parity_numbers(parity) -> str:
    if parity is None:
        return "-"
    if str(parity.verdict) == "not run":
        return "not run (macOS only)"
    m = parity.metrics.get("logits") or {}
    if "cosine" not in m:
        return f"{parity.verdict}: {m.get('error', '?')}"
    def num(key: str, spec: str) -> str:
        return "n/a" if m.get(key) is None else format(m[key], spec)

    return f"{parity.verdict}: cos {num('cosine', '.5f')}, max_rel {num('max_rel', '.1e')}, top-1 {num('top1_agreement', '.0%')}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="mobilenetv3_small_100,mobilenetv3_large_100,efficientnet_b0")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--cells", help="comma-separated format:precision[:int8 form] (default: all of CELLS)")
    p.add_argument("--max-time", type=float, default=4.0, help="seconds of timing per artifact")
    p.add_argument("--out", default="out/bench-edge-formats")
    p.add_argument("--resume", action="store_true", help="keep the rows (and timings) already in OUT/results.json")
    a = p.parse_args()
    warnings.filterwarnings("ignore")

    from autotimm_deploy.exporter.core.environment import package_versions
    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.exporter.models import build_model
    from autotimm_deploy.exporter.pipeline import export
    from autotimm_deploy.profiler.measure.settings import Settings
    from autotimm_deploy.profiler.measure.timing import HarnessConfig
    from autotimm_deploy.profiler.pipeline import profile

    cells = [tuple(c.split(":")) for c in a.cells.split(",")] if a.cells else CELLS
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    rows = json.loads(results.read_text()) if a.resume and results.exists() else []
    done = {(r["model"], r["format"], r["precision"]) for r in rows}
    label = {c: c[1] if len(c) == 2 else f"{c[1]} {c[2]}" for c in cells}  # "int8 dynamic"
    for name in a.models.split(","):
        todo = [c for c in cells if (name, c[0], label[c]) not in done]
        if not todo:
            continue
        spec = ModelSpec(name, img_size=(a.img_size, a.img_size))
        model = build_model(spec)
        for cell in todo:
            fmt, precision = cell[:2]
            options = cell_options(fmt, precision, cell[2] if len(cell) > 2 else None)
            t0 = time.perf_counter()
            (r,) = export(spec, [fmt], out / name / label[cell].replace(" ", "-"), options, force=True, model=model)
            row = {"model": name, "format": fmt, "precision": label[cell], "ok": r.ok, "error": r.error,
                   "size_mb": round(r.bytes / 2**20, 2), "export_s": round(r.export_seconds, 1),
                   "verify_s": round(r.verify_seconds, 1), "wall_s": round(time.perf_counter() - t0, 1),
                   "parity": parity_numbers(r.parity), "artifact": str(r.artifact) if r.artifact else None,
                   "batch": r.info.get("batch_fallback") or "dynamic"}
            print(f"{name} {fmt} {label[cell]}: {row['export_s']} s, {row['size_mb']} MB, {row['parity']}"
                  f"{' ERROR ' + r.error if r.error else ''}", flush=True)
            rows.append(row)
            results.write_text(json.dumps(rows, indent=1))
    for row in rows:
        if not row["artifact"] or row["format"] == "coreml" or "ms" in row:
            continue
        report = profile([row["artifact"]], Settings(batch_sizes=[1], harness=HarnessConfig(
            max_time=a.max_time, warmup_time=1.0)), compare_eager=True)
        runs = {r["runtime"]: r for r in report["runs"]}
        eager = runs.pop("eager")["points"][0]["stats_ms"]["p50"]
        (run,) = runs.values()
        row["ms"] = run["points"][0]["stats_ms"]["p50"]
        row["eager_ms"] = eager
        print(f"{row['model']} {row['format']} {row['precision']}: {row['ms']:.2f} ms vs eager {eager:.2f} ms",
              flush=True)
        results.write_text(json.dumps(rows, indent=1))

    versions = package_versions(["torch", "onnxruntime", "openvino", "executorch", "ai-edge-litert", "ncnn", "pnnx",
                                 "coremltools"])
    print(f"\n{', '.join(f'{k} {v}' for k, v in versions.items())}; {a.img_size} px, random weights\n")
    print("| model | format | precision | file MB | export s | parity vs eager | batch-1 ms | eager ms | speedup |")
    print("|---|---|---|---:|---:|---|---:|---:|---:|")
    for row in rows:
        ms, eager = row.get("ms"), row.get("eager_ms")
        cells_ms = (f"{ms:.2f} | {eager:.2f} | {eager / ms:.1f}x" if ms else "not run | | ")
        status = row["parity"] if row["ok"] or not row["error"] else f"export failed: {row['error'][:80]}"
        print(f"| {row['model']} | {row['format']} | {row['precision']} | {row['size_mb']} | {row['export_s']} | "
              f"{status} | {cells_ms} |")


if __name__ == "__main__":
    main()
