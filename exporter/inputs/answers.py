"""Answers in a picture's own pixels: what a model's outputs (one picture's) say, turned back
through the picture's `Geometry` (`autotimm_deploy.exporter.inputs.preprocess`): the top-k classes
with their names, detections with the letterbox or stretch undone and clipped to the picture,
instance masks pasted at the picture's size, a class mask the size of the picture. What
``autotimm-predict`` prints and the end-to-end parity check compares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import Manifest
from autotimm_deploy.exporter.core.spec import check_class_names, task_outputs_missing
from autotimm_deploy.exporter.inputs.preprocess import Geometry


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


def encode_mask(mask: np.ndarray) -> dict:
    """A bool [H, W] mask as COCO run-length encoding (``{"size": [H, W], "counts": str}``)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def decode_mask(rle: dict) -> np.ndarray:
    """An `encode_mask` mask back to bool [H, W]."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def class_names(manifest: Manifest, given: list[str] | None = None) -> list[str] | None:
    """Label i's name: ``given`` (--class-names), else the manifest's."""
    num = manifest.spec.get("num_classes")
    if given is not None:
        return list(check_class_names(given, num))
    names = manifest.spec.get("class_names")
    return list(names) if names else None


def _name(names: list[str] | None, label: int) -> str:
    return names[label] if names and 0 <= label < len(names) else str(label)


def _check_outputs(outputs: dict[str, np.ndarray], task: str, names: list[str] | None) -> None:
    """The outputs are what the manifest's task (`TASK_OUTPUTS`) and class names say, else one line (an
    edited manifest would otherwise give a classifier's scores as a class map, or names beside the wrong
    scores)."""
    if task in ("detection", "instance-segmentation") and "boxes" not in outputs and \
            any(k.startswith("cls_p") for k in outputs):
        raise UserError("this artifact has raw head outputs (--raw): autotimm-predict needs the decoded "
                        "detections (export without --raw)")
    shapes = {k: np.shape(v) for k, v in outputs.items()}
    if task_outputs_missing(task, shapes):
        got = ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
        raise UserError(f"the artifact's outputs ({got}) are not a {task} model's, as its manifest says: re-export "
                        "the artifact, or restore its manifest")
    classes = shapes["logits" if "logits" in shapes else "probs"][1] if task == "classification" else None
    if names and classes is not None and classes != len(names):
        raise UserError(f"the model scores {classes} classes but {len(names)} class names were given: give one name "
                        "per class (--class-names), or re-export the artifact")


def answer(outputs: dict[str, np.ndarray], geometry: Geometry, task: str, names: list[str] | None, path: Path,
           top_k: int = 5, min_score: float = 0.0) -> Answer:
    """One picture's outputs (batch of one) as its answer in its own pixels. Instance masks are
    probabilities or already thresholded in the graph (AutoTimm's ``mask_threshold``): cut at 0.5."""
    _check_outputs(outputs, task, names)
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
        n = int(np.asarray(outputs["num_detections"]).reshape(-1)[0]) if "num_detections" in outputs else \
            len(outputs["scores"][0])
        boxes = geometry.boxes_to_picture(np.asarray(outputs["boxes"][0][:n], np.float64))
        scores, labels = np.asarray(outputs["scores"][0][:n]), np.asarray(outputs["labels"][0][:n])
        keep = [j for j in range(n) if labels[j] >= 0 and scores[j] >= min_score]
        a.detections = [{"box": [round(float(v), 2) for v in boxes[j]], "score": round(float(scores[j]), 6),
                         "label": int(labels[j]), "name": _name(names, int(labels[j]))} for j in keep]
        if task == "instance-segmentation" and "masks" in outputs:
            # one at a time, kept run-length encoded: a hundred full-size masks of a large picture are gigabytes
            a.masks = [encode_mask(geometry.dense_to_picture(np.asarray(outputs["masks"][0][j], np.float32))
                                   > 0.5) for j in keep]
            for d, m in zip(a.detections, a.masks):
                d["mask"] = m
    else:
        if "logits" in outputs:
            a.mask = geometry.dense_to_picture(np.asarray(outputs["logits"][0], np.float32)).argmax(0)
        else:
            a.mask = geometry.dense_to_picture(np.asarray(outputs["mask"][0]), "nearest").astype(np.int64)
    return a


def picture_geometry(img: np.ndarray) -> Geometry:
    """An embedded graph's answers are in the picture's pixels already: the identity."""
    h, w = img.shape[:2]
    return Geometry((h, w), (h, w), (0, 0), (h, w))


def picture_outputs(outputs: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
    """An embedded graph's outputs for `answer`: a semantic ``mask`` at the picture's size, not the logits."""
    if task == "semantic-segmentation":
        return {k: v for k, v in outputs.items() if k != "logits"}
    return outputs
