"""End-to-end against compute-only, per AutoTimm variant (issue #29): what a picture costs from file
to answer (decode, the manifest's preprocessing, inference, answers in the picture's pixels) beside
the model alone, for the Python pipeline and for an --embed-preprocessing artifact of the same model,
both on ONNX Runtime, measured by ``autotimm-profile --pictures`` (`profile_pictures`) on
scikit-image's four non-square pictures, each call taking the next picture in turn.

    .venv/bin/python benchmarks/pictures_e2e.py [--quick] [--out results.json]

Random weights (AutoTimm's own architectures, ``--architecture autotimm``): speed does not depend
on them, and the end-to-end parity numbers come from the same export (``parity.end_to_end``). Run it
alone on the machine; name the CPU (``lscpu``) beside the numbers."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.inputs.samples import non_square_pictures
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.picture_timing import profile_pictures

# AutoTimm's benchmark page's sizes per task (classification 224, detection 640, segmentation 512)
VARIANTS = {
    "classification": (ModelSpec("resnet50", img_size=(224, 224), architecture="autotimm"), 224),
    "detection (fcos)": (ModelSpec("resnet50", task="detection", img_size=(640, 640), architecture="autotimm"), 640),
    "segmentation (fcn)": (ModelSpec("resnet50", task="semantic-segmentation", img_size=(512, 512),
                                     architecture="autotimm"), 512),
}
QUICK = {"classification": (ModelSpec("resnet18", img_size=(224, 224), architecture="autotimm"), 224),
         "detection (fcos)": (ModelSpec("resnet18", task="detection", img_size=(320, 320), architecture="autotimm"), 320)}


def _jpegs(tmp: Path) -> Path:
    """scikit-image's four non-square pictures as JPEG files (coffee 600x400, rocket 640x427, ...)."""
    from PIL import Image

    folder = tmp / "pictures"
    folder.mkdir(parents=True, exist_ok=True)
    for name, picture in non_square_pictures().items():
        Image.fromarray(picture).save(folder / f"{name}.jpg", quality=92)
    return folder


def run_variant(label: str, spec: ModelSpec, tmp: Path, cfg: HarnessConfig) -> dict:
    """autotimm-profile --pictures on the plain and the embedded export, one picture per call."""
    plain = export(spec, ["onnx"], tmp / "plain", force=True)[0]
    embedded = export(spec, ["onnx"], tmp / "embedded", ExportOptions(embed_preprocessing="nhwc"), force=True)[0]
    report = profile_pictures([plain.artifact, embedded.artifact], [_jpegs(tmp)], Settings(harness=cfg),
                              runtime="onnxruntime")
    python, inside = (run["points"][0]["steps_ms"] for run in report["end_to_end"])
    steps = {**{k: python[k] for k in ("decode", "preprocess", "compute only", "answers")},
             "end to end (Python preprocessing)": python["end to end"], "end to end (embedded)": inside["end to end"]}
    return {"variant": label, "model": spec.model, "size": spec.img_size[0],
            "ms": {k: v["p50"] for k, v in steps.items()}, "ci": {k: [v["ci_low"], v["ci_high"]] for k, v in steps.items()},
            "end_to_end_parity": plain.parity.end_to_end, "embedded_parity": embedded.parity.end_to_end}


def markdown(rows: list[dict]) -> str:
    cols = ["decode", "preprocess", "compute only", "answers", "end to end (Python preprocessing)",
            "end to end (embedded)"]
    lines = ["| variant | size | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['variant']} ({r['model']}) | {r['size']} | "
                     + " | ".join(f"{r['ms'][c]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="resnet18 at smaller sizes")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--max-time", type=float, default=20.0)
    a = p.parse_args()
    cfg = HarnessConfig(max_time=a.max_time, warmup_time=3.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, (spec, _) in (QUICK if a.quick else VARIANTS).items():
            rows.append(run_variant(label, spec, Path(tmp) / label.split()[0], cfg))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
