"""`predict()`: the Python API behind ``autotimm-predict``. Picture files in, answers out in each
picture's own pixels: the manifest's preprocessing (`autotimm_deploy.exporter.inputs.preprocess`),
the artifact run by the runtime the profiler would use, and its outputs turned into answers:
top-k classes, detections (boxes with the letterbox or stretch undone, clipped to the picture),
instance masks pasted at the picture's resolution, a class mask the size of the picture."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.limits import MAX_IMG_SIDE
from autotimm_deploy.exporter.core.manifest import Manifest
from autotimm_deploy.exporter.core.spec import check_class_names
from autotimm_deploy.exporter.inputs.preprocess import Geometry, describe, prepare
from autotimm_deploy.profiler.artifact import detect, open_artifact
from autotimm_deploy.profiler.report.annotate import encode_mask

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
MAX_PICTURE_PIXELS = MAX_IMG_SIDE * MAX_IMG_SIDE  # a decompression bomb is refused, not decoded


@dataclass
class Answer:
    """What the model says about one picture, in the picture's own pixels."""

    file: Path
    width: int
    height: int
    task: str
    top: list[dict[str, Any]] = field(default_factory=list)  # classification: {label, name, prob}
    detections: list[dict[str, Any]] = field(default_factory=list)  # {box, score, label, name}
    masks: list[dict] | None = None  # instance segmentation: one COCO RLE per detection, at the picture's size
    mask: np.ndarray | None = None  # semantic segmentation: int [height, width] class per pixel
    mask_file: Path | None = None  # where the class mask was written (-o)
    annotated: Path | None = None  # the annotated copy (-o)
    picture: np.ndarray | None = field(default=None, repr=False)  # the decoded picture, while `on_answer` runs

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": str(self.file), "width": self.width, "height": self.height, "task": self.task}
        if self.task == "classification":
            out["top"] = self.top
        elif self.task in ("detection", "instance-segmentation"):
            out["detections"] = self.detections
        else:
            out["mask"] = str(self.mask_file) if self.mask_file else None
            out["classes"] = self.class_shares()
        if self.annotated:
            out["annotated"] = str(self.annotated)
        return out

    def class_shares(self) -> list[dict[str, Any]]:
        """Semantic segmentation: each class present, with its share of the picture's pixels."""
        if self.mask is None:
            return []
        labels, counts = np.unique(self.mask, return_counts=True)
        return [{"label": int(k), "share": round(float(c) / self.mask.size, 4)}
                for k, c in sorted(zip(labels, counts), key=lambda kc: -kc[1])]


def picture_files(paths: Iterable[str | Path]) -> list[Path]:
    """The picture files named, folders searched (recursively, in name order); a named file that
    is not there is an error, a folder with no pictures too."""
    out: list[Path] = []
    for given in paths:
        p = Path(given)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in PICTURE_SUFFIXES)
            if not found:
                raise UserError(f"{p} holds no pictures ({', '.join(PICTURE_SUFFIXES)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"no such picture or folder: {p}")
    if not out:
        raise UserError("give at least one picture file or folder")
    return out


def read_picture(path: Path, prep: dict[str, Any]) -> np.ndarray:
    """A picture file -> HWC uint8 RGB, decoded as the reference transform's loader does: OpenCV's
    (``library`` cv2) turns the picture upright by its EXIF orientation, PIL's does not."""
    from PIL import Image, ImageOps

    setattr(Image, "MAX_IMAGE_PIXELS", MAX_PICTURE_PIXELS)  # PIL refuses larger pictures (a decompression bomb)
    try:
        with Image.open(path) as img:
            if prep.get("library") == "cv2":
                img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError:
        raise UserError(f"{path} is larger than {MAX_PICTURE_PIXELS:,} pixels: refused") from None
    except Exception as e:  # noqa: BLE001 - not a picture, truncated, ...
        raise UserError(f"cannot read picture {path}: {first_line(e, 150)}") from None


def class_names(manifest: Manifest, given: list[str] | None = None) -> list[str] | None:
    """Label i's name: ``given`` (--class-names), else the manifest's."""
    num = manifest.spec.get("num_classes")
    if given is not None:
        return list(check_class_names(given, num))
    names = manifest.spec.get("class_names")
    return list(names) if names else None


def _name(names: list[str] | None, label: int) -> str:
    return names[label] if names and 0 <= label < len(names) else str(label)


def answer(outputs: dict[str, np.ndarray], geometry: Geometry, task: str, names: list[str] | None, path: Path,
           top_k: int = 5, mask_threshold: float = 0.5, min_score: float = 0.0) -> Answer:
    """One picture's outputs (batch of one) as its answer in its own pixels."""
    h0, w0 = geometry.picture
    a = Answer(path, w0, h0, task)
    if task == "classification":
        probs = outputs.get("probs")
        if probs is None:
            logits = np.asarray(outputs["logits"][0], np.float64)
            probs = np.exp(logits - logits.max())
            probs = probs / probs.sum()
        else:
            probs = np.asarray(probs[0], np.float64)
        order = np.argsort(-probs, kind="stable")[:top_k]
        a.top = [{"label": int(i), "name": _name(names, int(i)), "prob": round(float(probs[i]), 6)} for i in order]
    elif task in ("detection", "instance-segmentation"):
        if "boxes" not in outputs:
            raise UserError("this artifact has raw head outputs (--raw): autotimm-predict needs the decoded "
                            "detections (export without --raw)")
        n = int(np.asarray(outputs["num_detections"]).reshape(-1)[0]) if "num_detections" in outputs else \
            len(outputs["scores"][0])
        boxes = geometry.boxes_to_picture(np.asarray(outputs["boxes"][0][:n], np.float64))
        scores, labels = np.asarray(outputs["scores"][0][:n]), np.asarray(outputs["labels"][0][:n])
        keep = [j for j in range(n) if labels[j] >= 0 and scores[j] >= min_score]
        a.detections = [{"box": [round(float(v), 2) for v in boxes[j]], "score": round(float(scores[j]), 6),
                         "label": int(labels[j]), "name": _name(names, int(labels[j]))} for j in keep]
        if task == "instance-segmentation" and "masks" in outputs:
            a.masks = [encode_mask(geometry.dense_to_picture(np.asarray(outputs["masks"][0][j], np.float32)) > mask_threshold)
                       for j in keep]  # one at a time: a hundred full-size masks of a large picture are gigabytes
            for d, m in zip(a.detections, a.masks):
                d["mask"] = m
    else:
        if "logits" in outputs:
            a.mask = geometry.dense_to_picture(np.asarray(outputs["logits"][0], np.float32)).argmax(0)
        else:
            a.mask = geometry.dense_to_picture(np.asarray(outputs["mask"][0]), "nearest").astype(np.int64)
    return a


def predict(artifact: str | Path, pictures: Iterable[str | Path], runtime: str | None = None,
            device: str | None = None, names: list[str] | None = None, top_k: int = 5, min_score: float = 0.0,
            on_answer: Callable[[Answer], None] | None = None) -> list[Answer]:
    """Run ``artifact`` on each picture file (folders searched) and return the answers, in order:
    ``top_k`` classes, detections scoring ``min_score`` or more (0: every one the model returns).
    ``on_answer(a)`` sees each as it comes (progress, writing annotated copies)."""
    files = picture_files(pictures)
    path = Path(artifact)
    fmt, manifest = detect(path)
    if manifest is None:
        raise UserError(f"{path} has no manifest beside it: autotimm-predict needs its preprocessing and task "
                        f"(export it with autotimm-export, which writes {path.name}.json)")
    task = manifest.spec.get("task", "classification")
    prep = describe(manifest.preprocessing, task)
    if manifest.size.get("dynamic"):
        raise UserError(f"{path} takes inputs of any size (--dynamic-size): autotimm-predict feeds the export size "
                        "the manifest's preprocessing describes; export it at a fixed size to predict with it")
    names = class_names(manifest, names)
    threshold = float(manifest.spec.get("head", {}).get("mask_threshold") or 0.5)
    out: list[Answer] = []
    with open_artifact(path, manifest=manifest, runtime=runtime, device=device) as session:
        name = session.inputs[0].name
        batch = session.batch_range()[0]
        for f in files:
            picture = read_picture(f, prep)
            x, geometry = prepare(picture, prep)
            feed = np.repeat(x[None], batch, axis=0) if batch > 1 else x[None]  # a fixed batch: the picture, repeated
            result = session.infer({name: np.ascontiguousarray(feed)})
            a = answer({k: np.asarray(v)[:1] for k, v in result.items()}, geometry, task, names, f, top_k, threshold,
                       min_score)
            if on_answer:
                a.picture = picture
                on_answer(a)
                a.picture = None
            out.append(a)
    return out
