"""The metric interface, its registry, the batch runner and the budget verdict."""

from __future__ import annotations

import time
from typing import Any, Callable, ClassVar

import numpy as np
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.results import AccuracyReport, Verdict
from autotimm_deploy.exporter.inputs.labelled import Labelled

METRICS: dict[str, type["Metric"]] = {}
EVAL_BATCH = 16  # pictures per call where the artifact's batch is free


class Metric:
    """Collects one task's predictions over a `Labelled` set; `result` gives every metric in points
    (percent: top-1 %, AP x 100, mIoU %), None where the data cannot define it."""

    tasks: ClassVar[tuple[str, ...]]
    kinds: ClassVar[tuple[str, ...]]  # the `Labelled.kind` values it scores
    primary: ClassVar[str]  # the metric the budget is held on

    def __init__(self, data: Labelled, output_names: list[str]):
        self.data = data
        self.output_names = output_names

    def update(self, outputs: dict[str, np.ndarray], index: list[int]) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float | None]:
        raise NotImplementedError


def register_metric(cls: type[Metric]) -> type[Metric]:
    for task in cls.tasks:
        for kind in cls.kinds:
            METRICS[f"{task}:{kind}"] = cls
    return cls


def metric_for(task: str, data: Labelled, output_names: list[str]) -> Metric:
    cls = METRICS.get(f"{task}:{data.kind}")
    if cls is None:
        raise UserError(f"no metric scores {data.kind} data for the {task} task")
    return cls(data, list(output_names))


def evaluate(predict: Callable[[np.ndarray], dict[str, np.ndarray]], data: Labelled, task: str,
             output_names: list[str], batch_range: tuple[int, int | None] = (1, None),
             indices: list[int] | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run ``predict`` over the pictures of ``data`` (all, or ``indices``; a fixed-batch artifact gets
    zero-padded batches, their extra rows dropped) and score it:
    {"metrics": {...}, "primary": name, "seconds": s}. ``progress(done, total)`` after each batch."""
    metric = metric_for(task, data, output_names)
    lo, hi = batch_range
    fixed = hi is not None and lo == hi
    step = lo if fixed else max(lo, min(EVAL_BATCH, hi or EVAL_BATCH))
    t0 = time.perf_counter()
    chosen = list(range(len(data))) if indices is None else list(indices)
    for start in range(0, len(chosen), step):
        index = chosen[start:start + step]
        x = data.images[index]
        k = len(x)
        if fixed and k < step:
            x = np.concatenate([x, np.zeros((step - k, *x.shape[1:]), dtype=x.dtype)])
        out = predict(np.ascontiguousarray(x))
        metric.update({name: np.asarray(v)[:k] for name, v in out.items()}, index)
        if progress:
            progress(start + k, len(chosen))
    return {"metrics": metric.result(), "primary": metric.primary, "seconds": round(time.perf_counter() - t0, 3)}


def budget_report(data: Labelled, eager: dict[str, Any], artifact: dict[str, Any],
                  max_drop: float | None) -> AccuracyReport:
    """The artifact's metrics beside eager's, the drop on the primary metric and, with a budget, the
    verdict (an artifact whose metric is undefined on this data fails a budget: nothing holds it)."""
    p = eager["primary"]
    a, e = artifact["metrics"].get(p), eager["metrics"].get(p)
    drop = None if a is None or e is None else round(e - a, 6)
    verdict = None
    if max_drop is not None:
        verdict = Verdict.PASS if drop is not None and drop <= max_drop + 1e-9 else Verdict.FAIL
    return AccuracyReport(data=dict(data.info), primary=p, eager=eager["metrics"], artifact=artifact["metrics"],
                          drop=drop, max_drop=max_drop, verdict=verdict, seconds=artifact["seconds"])
