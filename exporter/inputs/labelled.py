"""Labelled evaluation data (``--eval DATA``): the user's pictures with their ground truth, each
picture preprocessed once as the manifest says, for every task:

- classification: an image folder ``DATA/<class>/<picture>`` (classes in sorted order, or by number
  when every folder is named by its class index), or a CSV ``image,label`` (label: class index);
  multi-label models: a CSV whose first column is the picture and whose other columns are 0/1 per
  class (AutoTimm's ``MultiLabelImageDataset`` layout). Pictures: timm's eval transform (resize,
  centre crop).
- detection and instance segmentation: a COCO JSON file (``file_name`` relative to the JSON's folder,
  its ``images/`` folder, or, in COCO's layout ``annotations/instances_<split>.json``, the split's
  folder ``<split>/`` beside ``annotations/``); category ids in sorted order are the model's labels
  0..K-1, as AutoTimm's COCO datasets number them. Pictures: the manifest's transform (AutoTimm's
  detectors: letterbox; its instance segmentors: stretch), predictions mapped back to their pixels.
- semantic segmentation: ``DATA/images/`` and ``DATA/masks/`` with matching file stems, a mask
  holding the class index per pixel and 255 where it is ignored (AutoTimm's ``png`` layout).

Which kind a path is follows from the task and the path; every problem with the data is one line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.limits import MAX_EVAL_SAMPLES
from autotimm_deploy.exporter.inputs.calibration import IMAGE_SUFFIXES, check_fits
from autotimm_deploy.exporter.inputs.preprocess import Geometry, describe, prepare

IGNORE_INDEX = 255  # segmentation mask value left out of the metrics


@dataclass
class Labelled:
    """Preprocessed pictures and what the task's metric compares them with."""

    kind: str  # "image-folder" | "label-csv" | "multilabel-csv" | "coco" | "mask-folder"
    images: np.ndarray  # [N, C, H, W] float32, preprocessed
    geometries: list[Geometry]  # where each picture lies in its input (predictions map back through it)
    labels: Any = None  # int [N] (single-label) | float 0/1 [N, K] (multi-label) | masks (list of int [H0, W0])
    coco: dict | None = None  # the COCO ground truth of the chosen pictures
    image_ids: list[int] = field(default_factory=list)  # COCO image ids, in ``images`` order
    category_ids: list[int] = field(default_factory=list)  # COCO category id of label 0, 1, ...
    info: dict[str, Any] = field(default_factory=dict)  # what the manifest records about the data

    def __len__(self) -> int:
        return len(self.images)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Each picture's own (height, width)."""
        return [g.picture for g in self.geometries]


def load_labelled(source: str | Path, task: str, prep: dict, num_classes: int | None, multi_label: bool = False,
                  samples: int | None = None) -> Labelled:
    """Load ``source`` for ``task``; ``samples`` pictures at most (a seeded choice when there are more)."""
    path = Path(source)
    if samples is not None and not 1 <= samples <= MAX_EVAL_SAMPLES:
        raise UserError(f"--eval-samples takes 1 to {MAX_EVAL_SAMPLES}, got {samples}")
    if not path.exists():
        raise UserError(f"evaluation data not found: {path}")
    kind, loader = _kind(path, task, multi_label)
    prep = describe(prep, task)
    data = loader(path, prep, num_classes, samples)
    if len(data) == 0:
        raise UserError(f"evaluation data {path} holds no pictures")
    data.info = {"source": str(path), "kind": kind, "samples": len(data), **data.info,
                 "preprocessing": f"the manifest's ({prep['resize']}), predictions mapped back to "
                                  "each picture's own pixels"}
    return data


def _kind(path: Path, task: str, multi_label: bool):
    if task == "classification":
        if path.is_dir():
            if multi_label:
                raise UserError(f"{path}: a multi-label model is evaluated on a CSV (image, then one 0/1 column per "
                                "class), not an image folder")
            return "image-folder", _image_folder
        if path.suffix.lower() == ".csv":
            return ("multilabel-csv", _multilabel_csv) if multi_label else ("label-csv", _label_csv)
        raise UserError(f"--eval for classification takes an image folder (DATA/<class>/<picture>) or a .csv, got {path}")
    if task in ("detection", "instance-segmentation"):
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if len(found) != 1:
                raise UserError(f"--eval for {task} takes a COCO JSON file; {path} holds {len(found)} .json files: "
                                "name the one to use")
            path = found[0]
        if path.suffix.lower() != ".json":
            raise UserError(f"--eval for {task} takes a COCO JSON file, got {path}")
        return "coco", _coco
    if task == "semantic-segmentation":
        if not (path.is_dir() and (path / "images").is_dir() and (path / "masks").is_dir()):
            raise UserError(f"--eval for semantic segmentation takes a folder with images/ and masks/ (same file "
                            f"stems, class index per pixel, {IGNORE_INDEX} ignored); got {path}")
        return "mask-folder", _mask_folder
    raise UserError(f"--eval does not know how to score the {task} task")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _choose(n: int, samples: int | None) -> list[int]:
    """All indices, or ``samples`` of them chosen with a fixed seed (every class stays likely), in order."""
    if samples is None or samples >= n:
        return list(range(n))
    return sorted(np.random.default_rng(0).permutation(n)[:samples].tolist())


def _read(path: Path, mode: str = "RGB") -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode) if mode else im)
    except FileNotFoundError:
        raise UserError(f"evaluation picture not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot read evaluation picture {path}: {first_line(e, 150)}") from None


def _load(files: list[Path], prep: dict) -> tuple[np.ndarray, list[Geometry]]:
    """The pictures preprocessed as the manifest says, and where each lies in its input."""
    check_fits(len(files), prep, "evaluation pictures", "pass --eval-samples N")
    out = np.empty((len(files), *prep["input_size"]), dtype=np.float32)
    geometries = []
    for i, f in enumerate(files):
        out[i], g = prepare(_read(f), prep)
        geometries.append(g)
    return out, geometries


def _image_folder(path: Path, prep: dict, num_classes: int | None, samples) -> Labelled:
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{path} has no class folders: lay the pictures out as {path}/<class>/<picture>")
    by_number = all(c.isdigit() for c in classes)
    index = {c: int(c) for c in classes} if by_number else {c: i for i, c in enumerate(classes)}
    if by_number:
        top = max(index.values())
        if num_classes is not None and top >= num_classes:
            raise UserError(f"{path}: class folder {top} is past the model's {num_classes} classes (folders named by "
                            "number are class indices)")
    else:
        if num_classes is not None and len(classes) != num_classes:
            raise UserError(f"{path} has {len(classes)} class folders but the model predicts {num_classes} classes; "
                            "name the folders by class index (0, 1, ...) to evaluate on a subset")
    items = [(f, index[c]) for c in classes for f in _images_in(path / c)]
    if not items:
        raise UserError(f"{path}: the class folders hold no pictures ({', '.join(IMAGE_SUFFIXES)})")
    items = [items[i] for i in _choose(len(items), samples)]
    images, geometries = _load([f for f, _ in items], prep)
    return Labelled("image-folder", images, geometries, labels=np.array([y for _, y in items], dtype=np.int64),
                    info={"classes": len(classes), "class_names": classes if not by_number else None})


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {first_line(e, 150)}") from None
    if len(rows) < 2:
        raise UserError(f"{path} needs a header row and at least one picture row")
    width = len(rows[0])
    bad = next((i for i, r in enumerate(rows) if len(r) != width), None)
    if bad is not None:
        raise UserError(f"{path} line {bad + 1} has {len(rows[bad])} columns, the header {width}")
    return rows[0], rows[1:]


def _number(text: str, path: Path, line: int, kind=int):
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"{path} line {line}: {text!r} is not a {'class index' if kind is int else 'number'}") from None


def _label_csv(path: Path, prep: dict, num_classes: int | None, samples) -> Labelled:
    header, rows = _csv_rows(path)
    if len(header) != 2:
        raise UserError(f"{path}: a single-label CSV has two columns, image and label (class index); got {header}")
    rows = [rows[i] for i in _choose(len(rows), samples)]
    labels = np.array([_number(r[1], path, i + 2) for i, r in enumerate(rows)], dtype=np.int64)
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: labels must be class indices 0..{num_classes - 1}")
    images, geometries = _load([_under(path.parent, r[0]) for r in rows], prep)
    return Labelled("label-csv", images, geometries, labels=labels, info={"classes": num_classes})


def _multilabel_csv(path: Path, prep: dict, num_classes: int | None, samples) -> Labelled:
    header, rows = _csv_rows(path)
    names = header[1:]
    if num_classes is not None and len(names) != num_classes:
        raise UserError(f"{path} has {len(names)} label columns but the model predicts {num_classes} classes")
    rows = [rows[i] for i in _choose(len(rows), samples)]
    labels = np.array([[_number(v, path, i + 2, float) for v in r[1:]] for i, r in enumerate(rows)], dtype=np.float32)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise UserError(f"{path}: label columns hold 0 or 1")
    images, geometries = _load([_under(path.parent, r[0]) for r in rows], prep)
    return Labelled("multilabel-csv", images, geometries, labels=labels, info={"classes": len(names), "class_names": names})


def _under(root: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else root / p


def _coco(path: Path, prep: dict, num_classes: int | None, samples) -> Labelled:
    try:
        gt = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read COCO file {path}: {first_line(e, 150)}") from None
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")):
        raise UserError(f"{path} is not a COCO detection file: it needs images, annotations and categories lists")
    try:
        cats = sorted(int(c["id"]) for c in gt["categories"])
        images = sorted(gt["images"], key=lambda im: int(im["id"]))
        image_files = {int(im["id"]): str(im["file_name"]) for im in images}
        for a in gt["annotations"]:
            int(a["image_id"]), int(a["category_id"])
            if len([float(v) for v in a["bbox"]]) != 4:
                raise ValueError("bbox [x, y, width, height]")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: a COCO entry lacks a valid {first_line(e, 60)} (images need id and file_name, "
                        "annotations image_id, category_id and bbox)") from None
    if not cats:
        raise UserError(f"{path} defines no categories")
    if num_classes is not None and len(cats) != num_classes:
        raise UserError(f"{path} defines {len(cats)} categories but the model predicts {num_classes} classes (label i "
                        "is the i-th category id in sorted order, so the file must list every class)")
    unknown = {int(a["category_id"]) for a in gt["annotations"]} - set(cats)
    if unknown:
        raise UserError(f"{path}: annotations use category ids {sorted(unknown)[:5]} missing from its categories")
    images = [images[i] for i in _choose(len(images), samples)]
    ids = [int(im["id"]) for im in images]
    roots = _picture_roots(path)
    files = [next((r / image_files[i] for r in roots if (r / image_files[i]).is_file()), roots[0] / image_files[i])
             for i in ids]
    arrays, geometries = _load(files, prep)
    sizes = [g.picture for g in geometries]
    chosen = set(ids)
    for im, (h, w) in zip(images, sizes):
        if (int(im.get("height") or h), int(im.get("width") or w)) != (h, w):
            raise UserError(f"{path}: image {im['id']} is {h}x{w} on disk but {im.get('height')}x{im.get('width')} "
                            "in the JSON")
    subset = {**{k: v for k, v in gt.items() if k not in ("images", "annotations")},
              "images": [{**im, "height": h, "width": w} for im, (h, w) in zip(images, sizes)],
              "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in chosen]}
    return Labelled("coco", arrays, geometries, coco=subset, image_ids=ids, category_ids=cats,
                    info={"classes": len(cats), "annotations": len(subset["annotations"])})


def _picture_roots(path: Path) -> list[Path]:
    """Where a COCO file's ``file_name`` may be relative to: its own folder, its ``images/`` folder
    and, for COCO's own layout (``annotations/instances_<split>.json``, AutoTimm's default), the
    split's picture folder beside ``annotations/`` (``<split>/``, with or without 2017)."""
    roots = [path.parent, path.parent / "images"]
    if path.parent.name == "annotations" and path.stem.startswith("instances_"):
        split = path.stem[len("instances_"):]
        base = split.removesuffix("2017")
        roots += [path.parent.parent / s for s in dict.fromkeys((split, base + "2017", base)) if s]
    return roots


def _mask_folder(path: Path, prep: dict, num_classes: int | None, samples) -> Labelled:
    masks = {p.stem: p for p in _images_in(path / "masks")}
    pictures = [p for p in _images_in(path / "images")]
    missing = [p.name for p in pictures if p.stem not in masks]
    if missing:
        raise UserError(f"{path / 'masks'} has no mask for {missing[0]} (masks share the pictures' file stems)")
    pictures = [pictures[i] for i in _choose(len(pictures), samples)]
    arrays, geometries = _load(pictures, prep)
    labels, top = [], 0
    for p, size in zip(pictures, (g.picture for g in geometries)):
        m = _read(masks[p.stem], mode=None)
        if m.ndim != 2:
            raise UserError(f"mask {masks[p.stem]} has {m.ndim} dimensions: a mask is one channel of class indices")
        if m.shape != size:
            raise UserError(f"mask {masks[p.stem]} is {m.shape[0]}x{m.shape[1]}, its picture {size[0]}x{size[1]}")
        values = np.setdiff1d(np.unique(m), [IGNORE_INDEX])
        if values.size and values.min() < 0:
            raise UserError(f"mask {masks[p.stem]} holds negative values: class indices from 0, {IGNORE_INDEX} ignored")
        if num_classes is not None and values.size and values.max() >= num_classes:
            raise UserError(f"mask {masks[p.stem]} holds class {int(values.max())}, past the model's {num_classes} "
                            f"classes ({IGNORE_INDEX}: ignored)")
        top = max(top, int(values.max()) + 1 if values.size else 0)
        labels.append(m)  # as stored (uint8 / uint16): converted per picture when scored
    return Labelled("mask-folder", arrays, geometries, labels=labels, info={"classes": num_classes or top})
