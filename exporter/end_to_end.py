"""End-to-end parity for AutoTimm models: raw non-square pictures through AutoTimm's own eval
transform (called from the installed AutoTimm), the model's own ``predict()`` and the letterbox or
stretch undone by AutoTimm's own formulas, against the same pictures through our preprocessing, the
artifact and our answers (`autotimm_deploy.exporter.inputs.answers`). Tensor parity says the graph
is right; this says the deployed pipeline gives AutoTimm's answers on a picture.

The gates (issue #29): detections matched in the picture's pixels with the same class, IoU >= 0.95
and scores within 0.02, the only unmatched ones at the edge of the lists (within 0.02 of the lowest
score kept, where a near tie decides what makes the cut: a model with random weights has many);
instance masks IoU >= 0.99; semantic class maps IoU >= 0.99; classification top-1 identical."""

from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np
from autotimm_deploy.exporter.core.errors import first_line
from autotimm_deploy.exporter.inputs.answers import Answer, answer, decode_mask, picture_geometry, picture_outputs
from autotimm_deploy.exporter.inputs.preprocess import Geometry, describe, prepare
from autotimm_deploy.exporter.inputs.samples import non_square_pictures

BOX_IOU, SCORE_DELTA, MASK_IOU = 0.95, 0.02, 0.99


def reference_transform(prep: dict[str, Any], task: str, backbone: str) -> Callable[[np.ndarray], np.ndarray]:
    """AutoTimm's own eval transform that ``prep`` describes: HWC uint8 RGB -> CHW float32."""
    import autotimm.data as ad
    from autotimm import TransformConfig, get_transforms_from_backbone
    from PIL import Image

    size, mean, std = prep["input_size"][1], tuple(prep["mean"]), tuple(prep["std"])
    none = {"bboxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    if prep["resize"] == "letterbox":
        t = ad.detection_eval_transforms(size)
        return lambda img: np.asarray(t(image=img, **none)["image"])
    if prep["resize"] == "stretch":
        from autotimm.data.segmentation_transforms import instance_segmentation_transforms, segmentation_eval_transforms

        if task == "instance-segmentation":
            t = instance_segmentation_transforms(size, mean, std, train=False)
            return lambda img: np.asarray(t(image=img, **none)["image"])
        t = segmentation_eval_transforms(size, mean, std)
        return lambda img: np.asarray(t(image=img)["image"])
    backend = "albumentations" if prep["library"] == "cv2" else "torchvision"
    config = TransformConfig(backend=backend, image_size=size, mean=mean, std=std, use_timm_config=False,
                             interpolation=prep["interpolation"], crop_pct=float(prep["crop_pct"]))
    t = get_transforms_from_backbone(backbone, config, is_train=False,
                                     task={"semantic-segmentation": "segmentation"}.get(task, task).replace("-", "_"))
    if backend == "torchvision":
        return lambda img: np.asarray(t(Image.fromarray(img)))
    return lambda img: np.asarray(t(image=img, **none)["image"])


def reference_geometry(picture: tuple[int, int], prep: dict[str, Any]) -> Geometry:
    """Where AutoTimm's transform put the picture, by AutoTimm's own formulas (albumentations'
    ``LongestMaxSize``: ``round(side * S / longest)``; ``PadIfNeeded``: ``int((S - side) / 2)`` before)."""
    (h0, w0), (_, h, w) = picture, prep["input_size"]
    if prep["resize"] == "letterbox":
        scale = h / max(h0, w0)
        nh, nw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
        return Geometry((h0, w0), (nh, nw), (int((h - nh) / 2), int((w - nw) / 2)), (h, w))
    return Geometry((h0, w0), (h, w), (0, 0), (h, w))  # stretched (a crop only matters to dense answers)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(a == b)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def compare(ref: Answer, ours: Answer, cut: tuple[float, int] | None = None) -> dict[str, Any]:
    """How far our answer on one picture is from AutoTimm's; ``cut``: the model's score threshold and
    ``max_detections``, where a detection list ends (unknown: at the lowest score either side kept)."""
    if ref.task == "classification":
        return {"top1_same": ref.top[0]["label"] == ours.top[0]["label"],
                "prob_delta": abs(ref.top[0]["prob"] - next((t["prob"] for t in ours.top
                                                             if t["label"] == ref.top[0]["label"]), 0.0))}
    if ref.task == "semantic-segmentation":
        classes = np.union1d(np.unique(ref.mask), np.unique(ours.mask))
        ious = [_mask_iou(ref.mask == k, ours.mask == k) for k in classes]
        return {"mask_iou": float(np.mean(ious)) if ious else 1.0,
                "pixels_same": float((ref.mask == ours.mask).mean())}
    matched, ious, deltas, mask_ious, free = 0, [], [], [], list(range(len(ours.detections)))
    used = set()  # the reference detections matched, by index
    for i, r in enumerate(ref.detections):
        best = max(((j, _iou(r["box"], ours.detections[j]["box"])) for j in free
                    if ours.detections[j]["label"] == r["label"]), key=lambda p: p[1], default=(None, 0.0))
        j, iou = best
        if j is None or iou < BOX_IOU or abs(ours.detections[j]["score"] - r["score"]) > SCORE_DELTA:
            continue
        free.remove(j)
        used.add(i)
        matched += 1
        ious.append(iou)
        deltas.append(abs(ours.detections[j]["score"] - r["score"]))
        if "mask" in r and "mask" in ours.detections[j]:
            mask_ious.append(_mask_iou(decode_mask(r["mask"]), decode_mask(ours.detections[j]["mask"])))
    out = {"reference": len(ref.detections), "ours": len(ours.detections), "matched": matched,
           "min_iou": min(ious, default=None), "max_score_delta": max(deltas, default=None),
           "displaced": _displaced(ref, ours, used, free, cut)}
    if ref.task == "instance-segmentation":
        out["min_mask_iou"] = min(mask_ious, default=None)
    return out


def _displaced(ref: Answer, ours: Answer, used: set[int], free: list[int], cut: tuple[float, int] | None) -> int:
    """Unmatched detections (on either side) at the edge of the other side's list: scoring within
    SCORE_DELTA of where it was cut, where a near tie decides what makes it (the score threshold, or
    the last of ``max_detections`` when the list is full). Any other unmatched detection is a real
    difference."""

    def edge(other: list[dict]) -> float:
        if cut is None:  # unknown: the lowest score either side kept
            return min((d["score"] for d in ref.detections + ours.detections), default=0.0) + SCORE_DELTA
        threshold, capacity = cut
        return (min(d["score"] for d in other) if len(other) >= capacity else threshold) + SCORE_DELTA

    return (sum(r["score"] <= edge(ours.detections) for i, r in enumerate(ref.detections) if i not in used)
            + sum(ours.detections[j]["score"] <= edge(ref.detections) for j in free))


def _cut(model) -> tuple[float, int] | None:
    """A detector's score threshold and ``max_detections`` (AutoTimm's wrapper or our head's options)."""
    opts = getattr(model, "opts", None) or {}
    threshold = getattr(model, "score_thresh", opts.get("score_threshold"))
    capacity = getattr(model, "max_detections", opts.get("max_detections"))
    return None if threshold is None or capacity is None else (float(threshold), int(capacity))


def _passed(m: dict[str, Any]) -> bool:
    if "top1_same" in m:
        return m["top1_same"]
    if "pixels_same" in m:
        return m["mask_iou"] >= MASK_IOU
    unmatched = (m["reference"] - m["matched"]) + (m["ours"] - m["matched"])
    ok = unmatched == m.get("displaced", 0)
    return ok and (m.get("min_mask_iou") is None or m["min_mask_iou"] >= MASK_IOU)


# the reference answers of a model, made once per model whatever the number of formats it is exported to
_REFERENCES: "weakref.WeakKeyDictionary[Any, list[Answer]]" = weakref.WeakKeyDictionary()


def _references(model, make: Callable[[], list[Answer]]) -> list[Answer]:
    if model not in _REFERENCES:
        _REFERENCES[model] = make()
    return _REFERENCES[model]


def _report(rows: list[dict[str, Any]], against: str, whose: str) -> dict[str, Any]:
    if rows and "matched" in rows[0] and not any(r["reference"] or r["ours"] for r in rows):
        return {"verdict": "not run", "against": against, "pictures": rows,
                "reason": f"no detection above the score threshold on any of {len(rows)} pictures, in {whose} "
                          "answers or ours: nothing to compare (tensor parity still holds)"}
    failed = [r["picture"] for r in rows if not _passed(r)]
    return {"verdict": "fail" if failed else "pass", "against": against, "pictures": rows,
            "failures": [f"{p}: answers differ from {whose}" for p in failed]}


def _row(name: str, img: np.ndarray, ref: Answer, ours: Answer, cut: tuple[float, int] | None = None) -> dict[str, Any]:
    return {"picture": name, "size": [int(img.shape[0]), int(img.shape[1])], **compare(ref, ours, cut)}


def against_python(embedded, predict: Callable[[np.ndarray], dict[str, np.ndarray]]) -> dict[str, Any]:
    """An artifact with its preprocessing inside (``predict``: picture input -> outputs already in the
    picture's pixels) against the Python pipeline with the same record and the plain model."""
    import torch

    from autotimm_deploy.exporter.inputs.pictures import picture_input

    inner, task = embedded.model, embedded.task
    prep = describe(inner.preprocessing, task)
    pictures = non_square_pictures()

    def python_answers() -> list[Answer]:
        out = []
        for name, img in pictures.items():
            x, geometry = prepare(img, prep)
            with torch.no_grad():
                raw = dict(zip(inner.output_names, (t.numpy() for t in inner(torch.from_numpy(x[None])))))
            out.append(answer(raw, geometry, task, None, name))
        return out

    rows = [_row(name, img, ref, answer(picture_outputs(predict(picture_input(img, embedded.layout)), task),
                                        picture_geometry(img), task, None, name), _cut(inner))
            for (name, img), ref in zip(pictures.items(), _references(embedded, python_answers))]
    return _report(rows, "the Python pipeline (exporter/inputs/preprocess.py)", "the Python pipeline's")


def end_to_end(model, predict: Callable[[np.ndarray], dict[str, np.ndarray]], pictures=None) -> dict[str, Any] | None:
    """Our pipeline (``predict``: a batch of one preprocessed picture -> the artifact's outputs)
    against AutoTimm's on raw non-square pictures; None for models without AutoTimm's ``predict()``."""
    import torch

    reference = getattr(model, "reference", None)
    spec = model.spec
    if reference is None or spec.architecture != "autotimm":
        return None
    if spec.preprocess:
        return {"verdict": "not run", "reason": "the preprocessing was overridden (--resize, --mean ...): AutoTimm's "
                                                "eval transform is not what the artifact expects"}
    prep = describe(model.preprocessing, spec.task)
    _, h, w = prep["input_size"]
    if h != w:
        return {"verdict": "not run", "reason": f"AutoTimm's eval transforms make square pictures (one image_size); "
                                                f"this artifact takes {h}x{w}: the check against them runs at square sizes"}
    try:
        transform = reference_transform(prep, spec.task, spec.model)
    except Exception as e:  # noqa: BLE001 - AutoTimm (or albumentations) missing or changed
        return {"verdict": "not run", "reason": f"AutoTimm's transform could not be built: {first_line(e, 150)}"}
    given = pictures is not None
    pictures = pictures or non_square_pictures()

    def autotimm_answers() -> list[Answer]:
        out = []
        for name, img in pictures.items():
            with torch.no_grad():
                raw = {k: v.numpy() for k, v in reference(torch.from_numpy(transform(img)[None])).items()}
            out.append(answer(raw, reference_geometry(img.shape[:2], prep), spec.task, None, name))
        return out

    refs = autotimm_answers() if given else _references(model, autotimm_answers)
    rows = []
    for (name, img), ref in zip(pictures.items(), refs):
        x, geometry = prepare(img, prep)
        rows.append(_row(name, img, ref, answer(predict(x[None]), geometry, spec.task, None, name), _cut(model)))
    return _report(rows, f"AutoTimm's eval transform + {model.reference_name}", "AutoTimm's")
