"""The AutoTimm task modules we deploy, one entry each: which class, how a checkpoint shows it, which
of its submodules inference uses, and which of its settings our head options name.

Lightning does not record a checkpoint's class; each AutoTimm task saves hyper-parameters no other
task saves (``marks``), which is how `identify` tells them apart without importing AutoTimm.
Most tasks take a timm backbone (``backbone``); ``YOLOXDetector`` builds its own network from one of
AutoTimm's YOLOX variants (``model_name``), which is then the spec's model name (`for_spec`)."""

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
# YOLOXDetector: only the postprocessing is ours to name (its network is the variant's)
YOLOX_OPTIONS = {k: DETECTION_OPTIONS[k] for k in ("score_threshold", "iou_threshold", "max_detections")}
# AutoTimm's YOLOX variants (autotimm.models.csp_darknet.build_csp_darknet) -> the input side the
# official YOLOX models are evaluated at, our default when a checkpoint does not record its own
YOLOX_VARIANTS = {"yolox-nano": 416, "yolox-tiny": 416, "yolox-s": 640, "yolox-m": 640, "yolox-l": 640,
                  "yolox-x": 640}


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
    # the hyper-parameter (and constructor argument) that names the model: a timm backbone, wrapped in
    # AutoTimm's (Feature)BackboneConfig, or (with ``variants``) one of AutoTimm's own model names
    model_key: str = "backbone"
    variants: dict[str, int] = field(default_factory=dict)  # AutoTimm's model names -> default input side
    fixed: dict[str, Any] = field(default_factory=dict)  # head options the class fixes ({"arch": "yolox"})
    size_multiple: int = 1  # input sides must be a multiple of this

    def describe(self, hparams: dict[str, Any]) -> str:
        extra = hparams.get("detection_arch") or hparams.get("head_type")
        return f"{self.cls_name}({hparams.get(self.model_key)!r}{', ' + repr(extra) if extra else ''})"

    @property
    def keys(self) -> tuple[str, ...]:
        """The constructor arguments taken from a checkpoint: those our options name (what shapes the
        network and its postprocessing). Training settings (losses, optimizers, metrics) are left to
        AutoTimm's defaults: inference does not use them, and nothing from a file picks a class."""
        return ("num_classes", *self.options.values())


# metrics=[]: the detection tasks' default metric (COCO mAP) needs pycocotools only to train; none is
# needed to build the network (YOLOXDetector's "none" is None: it refuses an empty list). Most
# specific first: an InstanceSegmentor also saves detection keys.
TASKS = (
    AutoTimmTask("YOLOXDetector", "detection", ("model_name", "total_epochs", "warmup_epochs", "no_aug_epochs"),
                 ("backbone", "neck", "head"), True, wrappers.YOLOXDetector, YOLOX_OPTIONS, {"metrics": None},
                 model_key="model_name", variants=YOLOX_VARIANTS, fixed={"arch": "yolox"}, size_multiple=32),
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
BY_TASK = {t.task: t for t in TASKS if not t.variants}  # the task of a timm backbone
VARIANTS = {name: t for t in TASKS for name in t.variants}  # AutoTimm's own model names -> their task


def for_spec(task: str, model: str) -> AutoTimmTask:
    """The AutoTimm class that builds ``model`` for ``task``: the one whose own model names include it
    (``yolox-s``: YOLOXDetector), else the task's class around a timm backbone."""
    t = VARIANTS.get(model)
    return t if t is not None and t.task == task else BY_TASK[task]


def identify(hparams: dict[str, Any]) -> AutoTimmTask | None:
    """The task whose marks ``hparams`` carries, with its model named; None for anything else."""
    if "num_classes" in hparams:
        for t in TASKS:
            if isinstance(hparams.get(t.model_key), str) and all(k in hparams for k in t.marks):
                return t
    return None
