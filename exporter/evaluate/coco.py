"""Detection and instance segmentation: COCO mAP@[.5:.95] and mAP@.5 by pycocotools' own
``COCOeval`` (boxes; masks as RLE for instance segmentation), on the predictions mapped back to each
picture's pixels (boxes clipped to the picture) and the labels mapped to the file's category ids.

On an AutoTimm detector this is the mAP AutoTimm's own validation logs (torchmetrics'
``MeanAveragePrecision`` on pycocotools, in the letterboxed input) once its boxes are clipped to the
picture, not to the padded input (tests/test_eval_matches_autotimm.py); masks are scored at the
picture's resolution (AutoTimm: its input's), on COCO's own float64 IoU thresholds (torchmetrics':
float32), and COCO's rules hold where AutoTimm's datasets leave them: pictures without annotations
are scored, ``iscrowd`` regions ignored."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.evaluate.base import Metric, register_metric


def _ground_truth(gt: dict):
    from pycocotools.coco import COCO

    gt = {**gt, "annotations": [{**a, "id": a.get("id", i + 1), "iscrowd": a.get("iscrowd", 0),
                                 "area": a.get("area", float(a["bbox"][2]) * float(a["bbox"][3]))}
                                for i, a in enumerate(gt["annotations"])]}
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@register_metric
class CocoAP(Metric):
    tasks = ("detection", "instance-segmentation")
    kinds = ("coco",)
    primary = "mAP"

    def __init__(self, data, output_names):
        super().__init__(data, output_names)
        self.masks = "masks" in output_names
        missing = {"boxes", "scores", "labels"} - set(output_names)
        if missing:
            raise UserError(f"COCO mAP needs the detection outputs boxes, scores and labels (decoded in the graph); "
                            f"this artifact lacks {sorted(missing)} (--raw heads cannot be scored)")
        if self.masks and any("segmentation" not in a for a in data.coco["annotations"]):
            raise UserError("instance segmentation is scored on COCO masks: every annotation needs a segmentation "
                            "(polygons or RLE)")
        self.results: list[dict] = []
        self.seen: list[int] = []  # image ids scored (the whole file, or a subset)

    def update(self, outputs, index):
        from pycocotools import mask as mask_utils

        count = outputs.get("num_detections")
        self.seen += [self.data.image_ids[i] for i in index]
        for row, i in enumerate(index):
            geometry = self.data.geometries[i]
            n = int(count[row]) if count is not None else len(outputs["scores"][row])
            boxes = geometry.boxes_to_picture(np.asarray(outputs["boxes"][row][:n], dtype=np.float64))
            for j in range(n):
                label = int(outputs["labels"][row][j])
                if not 0 <= label < len(self.data.category_ids):
                    continue  # padding, or a class the file does not name
                x1, y1, x2, y2 = (float(v) for v in boxes[j])
                r = {"image_id": self.data.image_ids[i], "category_id": self.data.category_ids[label],
                     "bbox": [x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)],
                     "score": float(outputs["scores"][row][j])}
                if self.masks:
                    m = geometry.dense_to_picture(np.asarray(outputs["masks"][row][j], dtype=np.float32)) > 0.5
                    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode()
                    r["segmentation"] = rle
                self.results.append(r)

    def result(self):
        out = {"mAP": 0.0, "mAP50": 0.0}
        if self.masks:
            out.update({"box_mAP": 0.0, "box_mAP50": 0.0})
        seen = set(self.seen)
        if not any(int(a["image_id"]) in seen for a in self.data.coco["annotations"]):
            return {k: None for k in out}
        if not self.results:  # nothing detected: every AP is 0 (pycocotools refuses empty results)
            return out
        from pycocotools.cocoeval import COCOeval

        gt = _ground_truth(self.data.coco)
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([dict(r) for r in self.results])
            stats = {}
            for kind in (("bbox", "segm") if self.masks else ("bbox",)):
                ev = COCOeval(gt, dt, kind)
                ev.params.imgIds = sorted(seen)
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
                stats[kind] = ev.stats
        if self.masks:
            return {"mAP": _pt(stats["segm"][0]), "mAP50": _pt(stats["segm"][1]),
                    "box_mAP": _pt(stats["bbox"][0]), "box_mAP50": _pt(stats["bbox"][1])}
        return {"mAP": _pt(stats["bbox"][0]), "mAP50": _pt(stats["bbox"][1])}


def _pt(v: float) -> float | None:
    return None if v < 0 else 100.0 * float(v)
