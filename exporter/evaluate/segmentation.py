"""Semantic segmentation: mean IoU over the classes present in the ground truth or the prediction,
and pixel accuracy, at each picture's own resolution (the prediction resized back, nearest), with
the ignore index left out."""

from __future__ import annotations

import numpy as np
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.evaluate.base import Metric, register_metric
from autotimm_deploy.exporter.inputs.labelled import IGNORE_INDEX


def predicted_classes(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """[B, H, W] class indices: the model's own ``mask`` output, else the argmax of its logits."""
    if "mask" in outputs and np.asarray(outputs["mask"]).ndim == 3:
        return np.asarray(outputs["mask"]).astype(np.int64)
    return np.asarray(outputs["logits"]).argmax(1)


@register_metric
class MeanIoU(Metric):
    tasks = ("semantic-segmentation",)
    kinds = ("mask-folder",)
    primary = "mIoU"

    def __init__(self, data, output_names):
        super().__init__(data, output_names)
        if "logits" not in output_names and "mask" not in output_names:
            raise UserError(f"mIoU needs a logits [B,C,H,W] or mask [B,H,W] output; this artifact has {output_names}")
        self.confusion: np.ndarray | None = None

    def update(self, outputs, index):
        pred = predicted_classes(outputs)
        if self.confusion is None:  # classes: the model's (its logits), at least those the masks hold
            k = np.asarray(outputs["logits"]).shape[1] if "logits" in outputs else 0
            k = max(k, self.data.info.get("classes") or 0, int(pred.max()) + 1)
            self.confusion = np.zeros((k, k), dtype=np.int64)
        k = len(self.confusion)
        for p, i in zip(pred, index):
            gt = self.data.labels[i].astype(np.int64)
            if p.shape != gt.shape:  # at the input's pixels: back to the picture's (a prediction at its size is kept)
                p = self.data.geometries[i].dense_to_picture(p, "nearest").astype(np.int64)
            valid = gt != IGNORE_INDEX
            self.confusion += np.bincount(gt[valid] * k + np.clip(p[valid], 0, k - 1),
                                          minlength=k * k).reshape(k, k)

    def result(self):
        c = self.confusion
        if c is None or c.sum() == 0:
            return {"mIoU": None, "pixel_accuracy": None}
        tp = np.diag(c).astype(np.float64)
        union = c.sum(0) + c.sum(1) - tp
        present = union > 0
        return {"mIoU": 100.0 * float((tp[present] / union[present]).mean()),
                "pixel_accuracy": 100.0 * float(tp.sum() / c.sum())}
