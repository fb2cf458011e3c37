"""Our artifacts beside what other tools make of the same model, in the same runtime, timed by the same
harness. Run by hand on a quiet machine:

    .venv/bin/python benchmarks/peer_tools.py [--models resnet50,...] [--size 224] [--max-time 8]
        [--benchmark-app] [--out peer.json]

For each timm model (random weights, one build shared by every tool):
- OpenVINO: our IR (timm -> ONNX -> OpenVINO, `autotimm-export -f openvino`) against OpenVINO's own
  PyTorch frontend (``ov.convert_model(model, example_input=...)``), the path OpenVINO documents;
- ONNX Runtime: our ONNX (dynamo, onnxslim) against torch.onnx's TorchScript exporter
  (``dynamo=False``, opset 17: what timm's ``onnx_export.py`` and most tools write).

Both sides have a dynamic batch and are timed at batch 1 by the profiler's harness, interleaved (the
ratio's 95% interval counts rounds). "layers" counts what each runtime runs after its own
optimizations (OpenVINO's compiled CPU graph without constants; ONNX Runtime's optimized graph),
which does not depend on how busy the machine is. ``--benchmark-app`` also times both IRs with
OpenVINO's own ``benchmark_app`` (median latency, LATENCY hint), as a check on the harness. Name the
CPU (``lscpu``) beside the numbers."""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.pipeline import profile
from autotimm_deploy.profiler.report.table import interval_text

MODELS = ("resnet50,mobilenetv3_large_100,efficientnet_b0,convnext_tiny,vit_small_patch16_224,poolformer_s12,"
          "swin_tiny_patch4_window7_224")
PEERS = {"openvino": "ov.convert_model (OpenVINO's PyTorch frontend)", "onnx": "torch.onnx TorchScript exporter"}


def peer_artifacts(model, size: tuple[int, int], folder: Path) -> dict[str, Path]:
    import openvino as ov
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, 3, *size)
    xml, onnx_path = folder / "peer.xml", folder / "peer.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov.save_model(ov.convert_model(model, example_input=x, input=[(-1, 3, *size)]), str(xml),
                      compress_to_fp16=False)
        torch.onnx.export(model, (x,), str(onnx_path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return {"openvino": xml, "onnx": onnx_path}


def layers(fmt: str, path: Path, size: tuple[int, int]) -> int:
    """What the runtime runs after its own optimizations, at batch 1."""
    if fmt == "openvino":
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        model.reshape([1, 3, *size])
        compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        kinds = collections.Counter(op.get_rt_info()["layerType"].astype(str)
                                    for op in compiled.get_runtime_model().get_ordered_ops())
        return sum(kinds.values()) - kinds["Const"]
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return len(onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node)


def benchmark_app(xml: Path, size: tuple[int, int], seconds: int) -> float | None:
    beside = Path(sys.executable).with_name("benchmark_app")  # the venv's, when it is not activated
    tool = shutil.which("benchmark_app") or (str(beside) if beside.exists() else None)
    if tool is None:
        return None
    out = subprocess.run([tool, "-m", str(xml), "-d", "CPU", "-hint", "latency", "-t", str(seconds),
                          "-shape", f"[1,3,{size[0]},{size[1]}]"], capture_output=True, text=True).stdout
    found = re.search(r"Median:\s+([\d.]+) ms", out)
    return float(found.group(1)) if found else None


def run_model(name: str, size: int, folder: Path, max_time: float, with_benchmark_app: bool) -> list[dict]:
    spec = ModelSpec(name, img_size=(size, size))
    model = build_model(spec)
    ours = {r.format: r for r in export(model.spec, list(PEERS), folder / "ours", model=model, force=True)}
    peers = peer_artifacts(model, model.spec.img_size, folder / "peer")
    rows = []
    for fmt, peer in peers.items():
        mine = ours[fmt]
        settings = Settings(batch_sizes=[1], img_size=model.spec.img_size,
                            harness=HarnessConfig(max_time=max_time, warmup_time=2.0))
        runs = profile([str(peer), str(mine.artifact)], settings, interleave=True, isolate=False)["runs"]
        theirs, ours_point = runs[0]["points"][0], runs[1]["points"][0]
        row = {"model": name, "size": size, "runtime": fmt, "peer": PEERS[fmt],
               "peer_ms": theirs["stats_ms"]["p50"], "ours_ms": ours_point["stats_ms"]["p50"],
               "ours_vs_peer": ours_point["vs_baseline"],
               "layers": [layers(fmt, peer, model.spec.img_size), layers(fmt, mine.artifact, model.spec.img_size)],
               "parity": str(mine.parity.verdict) if mine.parity else mine.error,
               "fusable": mine.info.get("fusable", {})}
        if with_benchmark_app and fmt == "openvino":
            row["benchmark_app_ms"] = [benchmark_app(peer, model.spec.img_size, 6),
                                       benchmark_app(mine.artifact, model.spec.img_size, 6)]
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | runtime | peer's artifact | peer ms | ours ms | peer / ours (95% CI) | layers peer / ours "
             "| benchmark_app ms peer / ours | ours: parity, rewritten |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        v = r["ours_vs_peer"]
        app = "/".join("-" if t is None else f"{t:.2f}" for t in r.get("benchmark_app_ms", [None, None]))
        fused = ", ".join(f"{k} {n}" for k, n in r["fusable"].items()) or "-"
        lines.append(f"| {r['model']} | {r['runtime']} | {r['peer']} | {r['peer_ms']:.2f} | {r['ours_ms']:.2f} "
                     f"| {v['ratio']:.2f}x {interval_text(v)} | {r['layers'][0]} / {r['layers'][1]} | {app} "
                     f"| {r['parity']}; {fused} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=MODELS)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--max-time", type=float, default=8.0, help="seconds of timing per artifact")
    p.add_argument("--benchmark-app", action="store_true", help="also time both IRs with OpenVINO's benchmark_app")
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            rows += run_model(name, a.size, Path(tmp) / name, a.max_time, a.benchmark_app)
            print("\n".join(markdown(rows[-2:]).splitlines()[2:]), flush=True)
    print(markdown(rows))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
