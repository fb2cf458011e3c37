"""The profiling half of benchmarks/gpu_check.sh: resnet50 (224 px, random weights) exported to
TorchScript, torch.export and an AOTInductor package compiled for CUDA, then profiled on the GPU at
batch 1, 8 and 32 against eager fp32 and eager bf16 (autocast), each without and with CUDA graphs.
Writes one JSON report and one Markdown table per configuration, and summary.md.

    PYTHONPATH=<shim>:. python3 benchmarks/gpu_profile.py --out gpu-check [--model resnet50] [--max-time 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import traceback
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu-check")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--max-time", type=float, default=1.5)
    ap.add_argument("--batch-sizes", default="1,8,32")
    a = ap.parse_args()
    import torch
    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.exporter.formats import ExportOptions
    from autotimm_deploy.exporter.formats.aoti import AOTIOptions
    from autotimm_deploy.exporter.pipeline import export
    from autotimm_deploy.profiler.measure.settings import Settings
    from autotimm_deploy.profiler.measure.timing import HarnessConfig
    from autotimm_deploy.profiler.pipeline import profile
    from autotimm_deploy.profiler.report import json_out, markdown

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("gpu_profile: no CUDA GPU visible")
        return 2
    verify = importlib.util.find_spec("skimage") is not None  # parity pictures come from scikit-image
    spec = ModelSpec(a.model, num_classes=1000, img_size=(224, 224))
    summary = [f"# GPU check: {a.model}, {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
               f"CUDA {torch.version.cuda}", ""]
    artifacts = []
    for fmt in ("torchscript", "pt2", "aoti"):
        t0 = time.perf_counter()
        options = ExportOptions(format_options={"aoti": AOTIOptions(device="cuda")})
        try:
            (r,) = export(spec, [fmt], out / "artifacts", options, verify=verify, force=True)
        except Exception as e:  # noqa: BLE001 - one format's failure must not stop the check
            summary.append(f"- export {fmt}: FAILED {type(e).__name__}: {e}")
            traceback.print_exc()
            continue
        parity = r.parity.verdict if r.parity else "not checked (no scikit-image here)"
        summary.append(f"- export {fmt}: {'ok' if r.artifact else 'FAILED ' + str(r.error)} in "
                       f"{time.perf_counter() - t0:.1f} s, parity {parity}")
        if r.artifact and r.error is None:
            artifacts.append(str(r.artifact))
    batches = [int(b) for b in a.batch_sizes.split(",")]
    summary += ["", "| configuration | runtime | " + " | ".join(f"batch {b} ms" for b in batches)
                + " | speedup vs eager at batch 1 |", "|---|---|" + "---:|" * (len(batches) + 1)]
    for eager in ("fp32", "bf16"):
        for graphs in (False, True):
            name = f"eager-{eager}{'-cudagraph' if graphs else ''}"
            settings = Settings(device="cuda", batch_sizes=batches,
                                harness=HarnessConfig(max_time=a.max_time, warmup_time=1.0),
                                eager_options={k: True for k, on in (("bf16", eager == "bf16"),
                                                                     ("cuda_graph", graphs)) if on},
                                runtime_options={"cuda_graph": True} if graphs else {})
            try:
                report = profile(artifacts, settings, compare_eager=True, isolate=False)
            except Exception as e:  # noqa: BLE001
                summary.append(f"| {name} | FAILED {type(e).__name__}: {str(e)[:200]} |")
                traceback.print_exc()
                continue
            json_out.write(report, str(out / f"{name}.json"))
            markdown.write(report, str(out / f"{name}.md"))
            for run in report["runs"]:
                cells = []
                for b in batches:
                    p = next((p for p in run["points"] if p["batch"] == b), None)
                    cells.append("-" if p is None or p.get("error") else f"{p['stats_ms']['p50']:.3f}")
                first = run["points"][0] if run["points"] else {}
                sp = first.get("vs_baseline")
                summary.append(f"| {name} | {run['target']['label']} ({run['runtime']}) | " + " | ".join(cells) + " | "
                               + (f"{sp['ratio']:.2f}x" if sp else "baseline") + " |")
            (out / "summary.md").write_text("\n".join(summary) + "\n")  # after each: a timeout keeps what finished
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
