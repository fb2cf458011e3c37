"""AutoTimm checkpoints at the seed's sizes, by hand (not a test): for each AutoTimm variant, a real
checkpoint (a few Trainer.fit steps at a small size, then exported at the seed's size; the networks
are size-agnostic), exported to ONNX, TorchScript, torch.export and OpenVINO with parity against
AutoTimm's predict(), then batch-1 latency of eager vs ONNX Runtime vs OpenVINO, interleaved.

    .venv/bin/python benchmarks/autotimm_checkpoints.py [--backbone resnet50] [--variants fcos,instance] [--out DIR]

Run it alone on the machine. Prints a Markdown table per variant and writes results.json in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SIZES = {"classification": 224, "detection": 640, "semantic-segmentation": 512, "instance-segmentation": 640}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--variants", default="classifier,fcos,yolox,fcn,deeplabv3plus,instance")
    p.add_argument("--formats", default="onnx,torchscript,pt2,openvino")
    p.add_argument("--max-time", type=float, default=8.0, help="seconds of timing per comparison")
    p.add_argument("--out", default="out/bench-autotimm")
    p.add_argument("--score-threshold", type=float, help="detection: override the checkpoints' score threshold (a few "
                   "training steps leave scores low; a low threshold makes NMS and masks do real work)")
    a = p.parse_args()
    warnings.filterwarnings("ignore")

    import autotimm_models
    from autotimm_deploy.exporter.models import spec_from_checkpoint
    from autotimm_deploy.exporter.parity import reference_summary, summary
    from autotimm_deploy.exporter.pipeline import export
    from autotimm_deploy.profiler.measure.settings import Settings
    from autotimm_deploy.profiler.measure.timing import HarnessConfig
    from autotimm_deploy.profiler.pipeline import profile
    from autotimm_deploy.profiler.targets import eager_twin, resolve

    autotimm_models.BACKBONE = a.backbone
    for cls_name, extra in autotimm_models.VARIANTS.values():  # AutoTimm's defaults, not the tests' small heads
        if cls_name in ("ObjectDetector", "InstanceSegmentor"):
            extra.update(fpn_channels=256, head_num_convs=4, score_thresh=0.05, max_detections_per_image=100)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    names = a.variants.split(",")
    t0 = time.perf_counter()
    checkpoints = autotimm_models.make_checkpoints(out, names)
    print(f"trained {len(names)} checkpoints in {time.perf_counter() - t0:.0f} s", flush=True)
    results = {}
    for name in names:
        head = {"score_threshold": a.score_threshold} if a.score_threshold is not None else {}
        spec = spec_from_checkpoint(checkpoints[name], head=head if name in ("fcos", "yolox", "instance") else {})
        size = SIZES[spec.task]
        spec = spec.replace(img_size=(size, size))
        rows = export(spec, a.formats.split(","), out / name, force=True)
        table = [{"format": r.format, "ok": r.ok, "export_s": round(r.export_seconds, 1),
                  "vs_eager": summary(r.parity), "vs_predict": reference_summary(r.parity) if r.parity else None,
                  "error": r.error, "artifact": str(r.artifact) if r.artifact else None} for r in rows]
        timed = [resolve(t["artifact"]) for t in table if t["ok"] and t["format"] in ("onnx", "openvino")]
        report = profile([eager_twin(timed[0]), *timed], Settings(batch_sizes=[1], harness=HarnessConfig(
            max_time=a.max_time)), interleave=True)  # eager, ONNX Runtime, OpenVINO in interleaved rounds
        latency = {run["target"]["label"]: run["points"][0].get("stats_ms", {}).get("p50") for run in report["runs"]}
        results[name] = {"task": spec.task, "img_size": size, "label": spec.task_label(), "formats": table,
                         "latency_ms": latency}
        print(f"\n### {name}: {spec.task_label()}, {a.backbone}, {size} px\n")
        print("| format | export s | vs eager | vs AutoTimm predict() |\n|---|---|---|---|")
        for t in table:
            print(f"| {t['format']} | {t['export_s']} | {t['vs_eager'] if t['ok'] or not t['error'] else t['error']} "
                  f"| {t['vs_predict']} |")
        print("\nbatch-1 median latency (ms): " + ", ".join(f"{k}: {v:.1f}" for k, v in latency.items() if v), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
