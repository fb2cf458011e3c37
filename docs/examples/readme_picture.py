"""The README's annotated picture, made by this project's own tools, offline (issue #29).

1. A tiny COCO-format detection set from scikit-image's own pictures: four objects cut out by hand
   (fixed rectangles: the cat's head from ``chelsea``, the cup from ``coffee``, the rocket from
   ``rocket``, the astronaut from ``astronaut``) pasted at random scales and places, flipped and
   lightly recoloured, onto random crops of other scikit-image scenes (``camera``, ``coins``,
   ``hubble_deep_field``, ``retina``, ``brick``, ...); the box of each is the rectangle pasted.
2. A small AutoTimm ``ObjectDetector`` (FCOS head, resnet18 backbone, ``pretrained=False``: nothing
   downloaded; 192 px letterboxed input) trained on it by AutoTimm's own ``DetectionDataModule`` and ``AutoTrainer``, as
   ``tests/test_eval_matches_autotimm.py`` does; AutoTimm's own validation scores it on composites
   it did not train on, and the checkpoint is saved as an AutoTimm user saves it.
3. ``autotimm-export --checkpoint detector.ckpt --class-names names.txt -f onnx`` (AutoTimm records
   no class names: they are given at export and kept in the manifest), then ``autotimm-predict`` on
   a held-out 640x427 composite whose background scene (``stereo_motorcycle``'s left view) was in no
   training picture.
4. The annotated answer copied to ``docs/images/predict-detection.jpg`` (JPEG, quality 85), the
   ``autotimm-predict`` table printed.

What the picture is, honestly: a tiny detector trained for 14 minutes of one CPU core on pasted
scikit-image objects. The same four objects (scaled, flipped, recoloured) are what it is asked to
find; the scene, places and sizes in the picture are new to it.

    python docs/examples/readme_picture.py [--work DIR] [--steps N] [--threads N] [--out FILE]

Everything is seeded (NumPy, torch through AutoTimm's ``seed``, albumentations' own random state);
two runs gave the same losses, scores and boxes. On this project's VM (``lscpu``: Intel(R) Xeon(R)
Processor, family 6 model 207, 2 cores under KVM, shared with other jobs at a load average of ~6)
the whole run took 22.4 minutes: 21.0 of them training 800 steps (14.3 minutes of CPU, one torch
thread: on the shared VM a second thread mostly spun waiting for a core, 3-4x the CPU per step),
the rest making the pictures (~20 s), exporting (~1 min with its parity checks) and predicting.
It printed AutoTimm's validation on 24 unseen composites, mAP 75.0 / mAP50 100.0, and on the
picture cup 0.75, astronaut 0.61, rocket 0.55, cat 0.46, each box on its pasted rectangle (the
cat's ~16 px short on the right). Shorter runs (of an earlier draft: a narrower rocket, 1-4 objects
a picture) found less: 250 steps at 256 px nothing above 0.3, 400 steps at 192 px (lr 3e-3) the cup
and the astronaut only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PICTURE_OUT = REPO / "docs" / "images" / "predict-detection.jpg"

SEED = 0
IMAGE_SIZE = 192  # the detector's letterboxed input
STEPS = 800  # AutoTimm training steps, batch BATCH
BATCH = 8
LR = 6e-3  # AdamW, cosine to zero over STEPS
TRAIN_PICTURES, VAL_PICTURES = 400, 24
HELD_OUT_SIZE = (640, 427)  # width, height of the README picture
MIN_SCORE = 0.3  # autotimm-predict --min-score: the detector's own threshold is AutoTimm's 0.05

# name -> (scikit-image picture, x1, y1, x2, y2 cut out of it); COCO category ids 1..4 in this order
OBJECTS = {
    "cat": ("chelsea", 50, 0, 410, 300),
    "cup": ("coffee", 165, 10, 425, 305),
    "rocket": ("rocket", 268, 110, 372, 410),
    "astronaut": ("astronaut", 30, 0, 360, 400),
}
# scenes the objects are pasted on (none of them holds one of the objects)
SCENES = ("camera", "coins", "immunohistochemistry", "hubble_deep_field", "retina", "cell", "brick", "grass",
          "gravel", "colorwheel", "moon", "page", "text", "clock", "checkerboard", "logo")
HELD_OUT_SCENE = "stereo_motorcycle"  # in no training picture


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return np.ascontiguousarray(a[..., :3]).astype(np.uint8)


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    a = getattr(skimage.data, name)()
    return _rgb(a[0] if isinstance(a, tuple) else a)


def _resize(a: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None))


def _background(scene: np.ndarray, w: int, h: int, rng: np.random.Generator, tint: bool) -> np.ndarray:
    """A random crop of ``scene`` (at least half its shorter side), resized to w x h."""
    sh, sw = scene.shape[:2]
    scale = rng.uniform(0.5, 1.0) * min(sw / w, sh / h)
    cw, ch = max(16, int(w * scale)), max(16, int(h * scale))
    x, y = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    bg = _resize(scene[y:y + ch, x:x + cw], w, h).astype(np.float32)
    if tint:  # grey scenes get a random colour cast, so colour alone does not tell objects from scenery
        bg = bg * rng.uniform(0.6, 1.2, size=3)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _overlaps(box, boxes, margin: int = 4) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + margin and b[0] < x2 + margin and y1 < b[3] + margin and b[1] < y2 + margin
               for b in boxes)


def composite(w: int, h: int, scene: np.ndarray, crops: dict[str, np.ndarray], rng: np.random.Generator,
              names: list[str], tint: bool) -> tuple[np.ndarray, list[tuple[int, int, int, int, int]]]:
    """``scene`` cropped to w x h with ``names``' objects pasted in: the picture and its boxes
    (x1, y1, x2, y2, category index), objects that find no free place left out."""
    pic = _background(scene, w, h, rng, tint)
    boxes: list[tuple[int, int, int, int, int]] = []
    for name in names:
        obj = crops[name]
        oh, ow = obj.shape[:2]
        for _ in range(50):
            side = rng.uniform(0.22, 0.6) * min(w, h)  # the object's longer side
            s = side / max(oh, ow)
            bw, bh = max(8, round(ow * s)), max(8, round(oh * s))
            if bw >= w or bh >= h:
                continue
            x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            if not _overlaps((x, y, x + bw, y + bh), boxes):
                break
        else:
            continue
        patch = _resize(obj, bw, bh).astype(np.float32)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        patch = (patch - 128) * rng.uniform(0.8, 1.2) + 128 + rng.uniform(-20, 20, size=3)  # contrast, colour
        pic[y:y + bh, x:x + bw] = np.clip(patch, 0, 255).astype(np.uint8)
        boxes.append((x, y, x + bw, y + bh, list(crops).index(name)))
    return pic, boxes


def _coco(folder: Path, prefix: str, pictures, categories: list[str]) -> dict:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (pic, boxes) in enumerate(pictures):
        name = f"{prefix}{i:04d}.jpg"
        Image.fromarray(pic).save(folder / name, quality=92)
        images.append({"id": i + 1, "file_name": name, "height": pic.shape[0], "width": pic.shape[1]})
        for x1, y1, x2, y2, c in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(categories)]}


def build_dataset(root: Path) -> Path:
    """COCO folder ``root`` (train/, val/, annotations/instances_{train,val}.json, names.txt) and the
    held-out picture ``root/picture.jpg``; returns the picture's path."""
    from PIL import Image

    rng = np.random.default_rng(SEED)
    crops = {n: _skimage(src)[y1:y2, x1:x2] for n, (src, x1, y1, x2, y2) in OBJECTS.items()}
    scenes = {n: _skimage(n) for n in SCENES}
    categories = list(OBJECTS)

    def pictures(count: int):
        for _ in range(count):
            long = int(rng.integers(400, 641))
            short = int(long * rng.uniform(0.6, 1.0))
            w, h = (long, short) if rng.random() < 0.6 else (short, long)
            scene = str(rng.choice(SCENES))
            k = int(rng.integers(2, len(categories) + 1))
            names = [str(n) for n in rng.choice(categories, size=k, replace=False)]
            yield composite(w, h, scenes[scene], crops, rng, names, tint=scenes[scene].std(-1).mean() < 1)

    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", TRAIN_PICTURES), ("val", VAL_PICTURES)):
        doc = _coco(root / split, split, pictures(count), categories)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    (root / "names.txt").write_text("\n".join(categories) + "\n")

    w, h = HELD_OUT_SIZE
    pic, boxes = composite(w, h, _skimage(HELD_OUT_SCENE), crops, np.random.default_rng(SEED + 1000),
                           categories, tint=False)
    assert len(boxes) == len(categories), "the held-out picture should hold every object"
    Image.fromarray(pic).save(root / "picture.jpg", quality=95)
    (root / "picture.truth.json").write_text(json.dumps(
        [{"name": categories[c], "box": [x1, y1, x2, y2]} for x1, y1, x2, y2, c in boxes]))
    return root / "picture.jpg"


def train(root: Path, steps: int) -> tuple[Path, dict[str, float], tuple[float, float]]:
    """AutoTimm's ObjectDetector trained by AutoTimm on ``root``: checkpoint, AutoTimm's validation
    (in points), training seconds (wall, this process's CPU)."""
    import autotimm
    import pytorch_lightning as pl
    import torch

    torch._dynamo.config.disable = True  # AutoTimm's modules eager: no minutes of torch.compile
    datamodule = autotimm.DetectionDataModule(
        data_dir=root, train_images_dir=root / "train", train_ann_file=root / "annotations" / "instances_train.json",
        val_images_dir=root / "val", val_ann_file=root / "annotations" / "instances_val.json",
        image_size=IMAGE_SIZE, batch_size=BATCH, num_workers=0, pin_memory=False)
    datamodule.train_transforms.set_random_seed(SEED)  # albumentations' own random state
    model = autotimm.ObjectDetector(
        backbone=autotimm.FeatureBackboneConfig(model_name="resnet18", pretrained=False),
        num_classes=len(OBJECTS), fpn_channels=64, head_num_convs=2, lr=LR, weight_decay=1e-4,
        scheduler="cosine", compile_model=False, seed=SEED, deterministic=False)

    def trainer(**kw):
        return autotimm.AutoTrainer(accelerator="cpu", logger=False, tuner_config=False, enable_checkpointing=False,
                                    enable_model_summary=False, enable_progress_bar=False,
                                    default_root_dir=str(root), **kw)

    start, cpu = time.perf_counter(), time.process_time()

    class Loss(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step % 50 == 0 or step == steps:
                loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
                minutes = (time.perf_counter() - start) / 60
                print(f"  step {step}/{steps}  loss {loss:.3f}  {minutes:.1f} min", flush=True)

    fit = trainer(max_epochs=-1, max_steps=steps, num_sanity_val_steps=0, limit_val_batches=0, seed=SEED,
                  callbacks=[Loss()])
    fit.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start, time.process_time() - cpu
    checkpoint = root / "detector.ckpt"
    fit.save_checkpoint(checkpoint)
    (logged,) = trainer().validate(model, datamodule=datamodule, verbose=False)
    return checkpoint, {k: 100.0 * float(v) for k, v in logged.items()}, seconds


def _tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install this project (make setup) and run with its Python")
    return found


def _run(cmd: list[str], cwd: Path) -> tuple[str, str]:
    """``cmd`` run in ``cwd``, its stdout and stderr."""
    print("$", Path(cmd[0]).name, *cmd[1:], flush=True)
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"{Path(cmd[0]).name} exited {done.returncode}")
    return done.stdout, done.stderr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", help="working folder (default: a temporary one, removed afterwards)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"training steps ({STEPS})")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training (1: on a shared VM a "
                   "second thread mostly spins waiting for a core)")
    p.add_argument("--out", default=str(PICTURE_OUT), help="where the annotated JPEG goes (%(default)s)")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(a.threads)
    start = time.perf_counter()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="readme_picture_"))
    try:
        build_dataset(work / "data")
        _, scores, trained = train(work / "data", a.steps)
        print(f"trained {a.steps} steps in {trained[0] / 60:.1f} min ({trained[1] / 60:.1f} min of CPU); AutoTimm's "
              f"validation on {VAL_PICTURES} unseen composites: mAP {scores['val/map']:.1f}, "
              f"mAP50 {scores['val/map_50']:.1f}", flush=True)
        print("".join(_run([_tool("autotimm-export"), "--checkpoint", "data/detector.ckpt", "--class-names",
                            "data/names.txt", "-f", "onnx", "-o", "out"], cwd=work)))
        (onnx,) = sorted((work / "out").glob("*.onnx"))
        answers, table = _run([_tool("autotimm-predict"), f"out/{onnx.name}", "data/picture.jpg", "-o", "seen",
                               "--min-score", str(MIN_SCORE), "--json"], cwd=work)
        print(table)
        truth = json.loads((work / "data" / "picture.truth.json").read_text())
        for d in json.loads(answers)["results"][0]["detections"]:
            print(f"  {d['name']:<10} {d['score']:.2f}  box {[round(v) for v in d['box']]}")
        print("  pasted:", ", ".join(f"{t['name']} {t['box']}" for t in truth))
        from PIL import Image

        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(work / "seen" / "picture.pred.png").convert("RGB").save(out, quality=85, optimize=True)
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB) in {(time.perf_counter() - start) / 60:.1f} min")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
