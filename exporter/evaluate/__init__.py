"""Accuracy on labelled data (``--eval``): the task's own metric for eager PyTorch and for every
artifact, on the same preprocessed pictures, and the accuracy budget (``--max-drop``) that turns the
difference into a verdict. One metric module per task, registered by task name; the runner feeds any
``predict(batch) -> {output name: array}`` (a runtime session or the eager model) through it."""

# importing a module registers its metrics
from autotimm_deploy.exporter.evaluate import classification, coco, segmentation  # noqa: F401, E402
from autotimm_deploy.exporter.evaluate.base import METRICS, Metric, budget_report, evaluate, metric_for

__all__ = ["METRICS", "Metric", "budget_report", "evaluate", "metric_for"]
