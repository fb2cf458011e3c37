"""The AutoTimm task modules we deploy, one entry each: which class, how a checkpoint shows it, which
of its submodules inference uses, and which of its settings our head options name.

Lightning does not record a checkpoint's class; each AutoTimm task saves hyper-parameters no other
task saves (``marks``), which is how `identify` tells them apart without importing AutoTimm."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autotimm_deploy.exporter.models.autotimm import wrappers

# our head option -> AutoTimm's __init__ argument (and hyper-parameter) of the same meaning
DETECTION_OPTIONS = {"arch": "detection_arch", "fpn_channels": "fpn_channels", "head_convs": "head_num_convs",
                     "strides": "strides", "score_threshold": "score_thresh", "iou_threshold": "nms_thresh",
                     "max_detections": "max_detections_per_image"}
# options that make the network what it is: a checkpoint fixes them (and the spec records them, so
# the profiler's eager twin is the same network); the others (thresholds) may be changed
STRUCTURAL = ("arch", "fpn_channels", "head_convs", "strides", "head", "multi_label", "roi_size")


@dataclass(frozen=True)
class AutoTimmTask:
    cls_name: str
    task: str
    marks: tuple[str, ...]
    parts: tuple[str, ...]  # submodules whose weights inference needs; the rest (losses, metrics) is left out
    features: bool  # multi-scale FeatureBackboneConfig, else a BackboneConfig (pooled features)
    wrapper: type
    options: dict[str, str] = field(default_factory=dict)
    construct: dict[str, Any] = field(default_factory=dict)  # fixed constructor arguments

    def describe(self, hparams: dict[str, Any]) -> str:
        extra = hparams.get("detection_arch") or hparams.get("head_type")
        return f"{self.cls_name}({hparams.get('backbone')!r}{', ' + repr(extra) if extra else ''})"

    @property
    def keys(self) -> tuple[str, ...]:
        """The constructor arguments taken from a checkpoint: those our options name (what shapes the
        network and its postprocessing). Training settings (losses, optimizers, metrics) are left to
        AutoTimm's defaults: inference does not use them, and nothing from a file picks a class."""
        return ("num_classes", *self.options.values())


# metrics=[]: the detection tasks' default metric (COCO mAP) needs pycocotools only to train; none is
# needed to build the network. Most specific first: an InstanceSegmentor also saves detection keys.
TASKS = (
    AutoTimmTask("InstanceSegmentor", "instance-segmentation", ("mask_size", "roi_pool_size", "mask_threshold"),
                 ("backbone", "fpn", "detection_head", "mask_head"), True, wrappers.InstanceSegmentor,
                 {**{k: v for k, v in DETECTION_OPTIONS.items() if k != "arch"}, "roi_size": "roi_pool_size",
                  "mask_threshold": "mask_threshold"},
                 {"metrics": []}),
    AutoTimmTask("ObjectDetector", "detection", ("detection_arch",), ("backbone", "fpn", "head"), True,
                 wrappers.Detector, DETECTION_OPTIONS, {"metrics": []}),
    AutoTimmTask("SemanticSegmentor", "semantic-segmentation", ("head_type",), ("backbone", "head"), True,
                 wrappers.Segmentor, {"head": "head_type"}),
    AutoTimmTask("ImageClassifier", "classification", ("multi_label",), ("backbone", "head"), False,
                 wrappers.Classifier, {"multi_label": "multi_label"}),
)
BY_TASK = {t.task: t for t in TASKS}
# AutoTimm tasks we recognise but do not deploy yet, by their marks
UNSUPPORTED = {"YOLOXDetector": ("model_name", "total_epochs", "warmup_epochs", "no_aug_epochs")}


def identify(hparams: dict[str, Any]) -> AutoTimmTask | str | None:
    """The task whose marks ``hparams`` carries; the class name of a recognised but unsupported
    AutoTimm task; None for anything else."""
    if isinstance(hparams.get("backbone"), str) and "num_classes" in hparams:
        for t in TASKS:
            if all(k in hparams for k in t.marks):
                return t
    for name, marks in UNSUPPORTED.items():
        if all(k in hparams for k in marks):
            return name
    return None
