"""Classification: top-1 / top-5 accuracy (single label), mean average precision over the classes
(multi-label: each class ranked by its score, AP as scikit-learn's ``average_precision_score``)."""

from __future__ import annotations

import numpy as np
from autotimm_deploy.exporter.evaluate.base import Metric, register_metric


def _scores(outputs: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """Class scores: the logits (``probs`` only when the model has no logits), [B, K]."""
    key = "logits" if "logits" in outputs else ("probs" if "probs" in outputs else names[0])
    return np.asarray(outputs[key], dtype=np.float64).reshape(len(outputs[key]), -1)


@register_metric
class TopK(Metric):
    tasks = ("classification",)
    kinds = ("image-folder", "label-csv")
    primary = "top1"

    def __init__(self, data, output_names):
        super().__init__(data, output_names)
        self.hits = {1: 0, 5: 0}
        self.seen = 0
        self.classes = 0

    def update(self, outputs, index):
        s = _scores(outputs, self.output_names)
        y = self.data.labels[index]
        self.classes = s.shape[1]
        order = np.argsort(-s, axis=1, kind="stable")
        for k in self.hits:
            self.hits[k] += int((order[:, :k] == y[:, None]).any(1).sum())
        self.seen += len(y)

    def result(self):
        top5 = 100.0 * self.hits[5] / self.seen if self.classes > 5 and self.seen else None
        return {"top1": 100.0 * self.hits[1] / self.seen if self.seen else None, "top5": top5}


def average_precision(y: np.ndarray, s: np.ndarray) -> float | None:
    """AP of one class: sum over the ranked positives of precision at each, divided by the positives
    (ties in score broken by treating the tied block as one threshold). None without positives."""
    positives = y.sum()
    if positives == 0:
        return None
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each block of equal scores
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / positives
    return float((precision * recall_gain).sum())


@register_metric
class MultiLabelAP(Metric):
    tasks = ("classification",)
    kinds = ("multilabel-csv",)
    primary = "mAP"

    def __init__(self, data, output_names):
        super().__init__(data, output_names)
        self.scores: list[np.ndarray] = []
        self.index: list[int] = []

    def update(self, outputs, index):
        self.scores.append(_scores(outputs, self.output_names))
        self.index += index

    def result(self):
        s = np.concatenate(self.scores)
        y = self.data.labels[self.index]
        aps = [average_precision(y[:, k], s[:, k]) for k in range(y.shape[1])]
        defined = [a for a in aps if a is not None]
        exact = float(((s > 0) == (y > 0.5)).all(1).mean()) if "logits" in self.output_names else None
        return {"mAP": 100.0 * float(np.mean(defined)) if defined else None,
                "exact_match": 100.0 * exact if exact is not None else None}
