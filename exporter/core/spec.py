"""`ModelSpec`: what to build. Plain data, serialisable into the manifest and back."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.limits import MAX_CLASSES, MAX_IMG_SIDE, MAX_IN_CHANS

TASKS = ("classification", "detection", "semantic-segmentation", "instance-segmentation")
# what an answer (autotimm-predict, the end-to-end checks, a Triton ensemble) reads for each task: output ->
# its dims without the batch ("N" detections, "C" classes, "H"/"W" any size), any one of a group
TASK_OUTPUTS = {
    "classification": [{"logits": "C", "probs": "C"}],
    "semantic-segmentation": [{"logits": "CHW", "mask": "HW"}],
    "detection": [{"boxes": "N4"}, {"scores": "N"}, {"labels": "N"}],
    "instance-segmentation": [{"boxes": "N4"}, {"scores": "N"}, {"labels": "N"}, {"masks": "NHW"}],
}
WEIGHTS = ("random", "pretrained", "checkpoint", "module")  # module: a user's own nn.Module, as given
DEFAULT_CLASSES = {"detection": 80, "semantic-segmentation": 21, "instance-segmentation": 80}
# Head options each task accepts (``ModelSpec.head`` keys); anything else is a user error.
HEAD_OPTIONS = {
    "classification": (),
    "semantic-segmentation": ("head", "head_channels", "argmax"),
    "detection": ("fpn_channels", "depthwise", "score_threshold", "iou_threshold", "max_detections", "raw"),
    "instance-segmentation": ("fpn_channels", "depthwise", "score_threshold", "iou_threshold", "max_detections"),
}
SEG_HEADS = ("fcn", "deeplabv3plus")  # the first is the default
# Whose task architectures: our built-in heads (no dependency), or AutoTimm's own modules (the
# [autotimm] extra; what AutoTimm checkpoints hold). AutoTimm's take these head options:
ARCHITECTURES = ("builtin", "autotimm")
AUTOTIMM_HEAD_OPTIONS = {
    "classification": ("multi_label",),
    "semantic-segmentation": ("head",),
    "detection": ("arch", "fpn_channels", "head_convs", "strides", "score_threshold", "iou_threshold",
                  "max_detections"),
    "instance-segmentation": ("fpn_channels", "head_convs", "strides", "roi_size", "score_threshold", "iou_threshold",
                              "max_detections", "mask_threshold"),
}
DETECTION_ARCHS = ("fcos", "yolox")  # AutoTimm's ObjectDetector heads; the first is the default
# every head option any task takes, in the order the CLI lists them
ALL_HEAD_OPTIONS = tuple(dict.fromkeys(k for table in (HEAD_OPTIONS, AUTOTIMM_HEAD_OPTIONS)
                                       for opts in table.values() for k in opts))
# integer head options and their largest value (a checkpoint's values pass here too)
HEAD_INT_LIMITS = {"head_channels": 4096, "fpn_channels": 4096, "max_detections": 10000,
                   "head_convs": 16, "roi_size": 64}
# Preprocessing a user may set instead of the backbone's timm defaults (--mean, --std, ...)
PREPROCESS_KEYS = ("mean", "std", "interpolation", "crop_pct", "resize", "pad_value")
# how a picture becomes the model's input (exporter/inputs/preprocess.py): centre crop, stretched, or
# letterboxed (aspect kept, padded)
RESIZE_MODES = ("crop", "stretch", "letterbox")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")
LIBRARIES = ("pil", "cv2")  # whose resize the preprocessing follows
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TASK_SUFFIX = {"classification": "", "detection": "-det", "instance-segmentation": "-inst"}


@dataclass(frozen=True)
class ModelSpec:
    """A timm backbone, a task head and its options, input geometry and where the weights come from.

    ``img_size`` and ``num_classes`` may be left ``None``: `autotimm_deploy.exporter.models.resolve_spec` fills them
    from timm's pretrained config, so a manifest always holds concrete values.
    """

    model: str
    task: str = "classification"
    num_classes: int | None = None
    img_size: tuple[int, int] | None = None
    in_chans: int = 3
    weights: str = "random"
    checkpoint: str | None = None
    head: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    architecture: str = "builtin"
    preprocess: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None  # label i's name (--class-names); its length is num_classes

    def __post_init__(self):
        if self.task not in TASKS:
            raise UserError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        if self.weights not in WEIGHTS:
            raise UserError(f"unknown weights {self.weights!r}; choose one of: {', '.join(WEIGHTS)}")
        if (self.weights == "checkpoint") != (self.checkpoint is not None):
            raise UserError("weights='checkpoint' and a checkpoint path go together")
        if self.checkpoint is not None:  # the manifest says which file, wherever it is read from
            object.__setattr__(self, "checkpoint", str(Path(self.checkpoint).expanduser().absolute()))
        for key in ("num_classes", "in_chans"):  # a manifest or recipe may hold anything: type before range
            if (key == "in_chans" or getattr(self, key) is not None) and not _is_int(getattr(self, key)):
                raise UserError(f"{_flag(key)} takes an integer, got {getattr(self, key)!r}")
            if getattr(self, key) is not None:
                object.__setattr__(self, key, int(getattr(self, key)))
        if self.num_classes is not None and not 1 <= self.num_classes <= MAX_CLASSES:
            raise UserError(f"--num-classes takes 1 to {MAX_CLASSES}, got {self.num_classes}")
        if not 1 <= self.in_chans <= MAX_IN_CHANS:
            raise UserError(f"--in-chans takes 1 to {MAX_IN_CHANS}, got {self.in_chans}")
        if self.architecture not in ARCHITECTURES:
            raise UserError(f"unknown architecture {self.architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
        allowed = (AUTOTIMM_HEAD_OPTIONS if self.architecture == "autotimm" else HEAD_OPTIONS)[self.task]
        for key in self.head:
            if key not in allowed:
                flag = "--" + key.replace("_", "-")
                whose = f"{self.task} ({self.architecture} architecture)" if self.architecture != "builtin" else self.task
                raise UserError(f"{flag} does not apply to {whose}"
                                + (f" (it takes: {', '.join('--' + k.replace('_', '-') for k in allowed)})" if allowed else ""))
        if self.head.get("arch") not in (None, *DETECTION_ARCHS):
            raise UserError(f"unknown detection architecture {self.head['arch']!r}; choose one of: "
                            f"{', '.join(DETECTION_ARCHS)}")
        if self.head.get("head") not in (None, *SEG_HEADS):
            raise UserError(f"unknown segmentation head {self.head['head']!r}; choose one of: {', '.join(SEG_HEADS)}")
        for key, top in HEAD_INT_LIMITS.items():
            v = self.head.get(key)
            if key in self.head and (not _is_int(v) or not 1 <= v <= top):
                raise UserError(f"--{key.replace('_', '-')} takes an integer from 1 to {top}, got {v!r}")
        if "strides" in self.head:
            v = self.head["strides"]
            if (not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 8
                    or not all(_is_int(x) and 1 <= x <= 1024 for x in v)):
                raise UserError(f"--strides takes 1 to 8 integers from 1 to 1024, got {v!r}")
        # numpy's integers as Python's: the manifest is JSON
        object.__setattr__(self, "head", {k: int(v) if k in HEAD_INT_LIMITS else type(v)(map(int, v)) if k == "strides"
                                          else v for k, v in self.head.items()})
        for key in ("depthwise", "raw", "argmax", "multi_label"):
            if key in self.head and not isinstance(self.head[key], bool):
                raise UserError(f"--{key.replace('_', '-')} is a switch (true or false), got {self.head[key]!r}")
        for key in ("score_threshold", "iou_threshold", "mask_threshold"):
            if key in self.head and not (is_number(self.head[key]) and 0.0 <= self.head[key] <= 1.0):
                raise UserError(f"--{key.replace('_', '-')} must be between 0 and 1, got {self.head[key]}")
        if self.img_size is not None:
            size = (self.img_size,) * 2 if _whole(self.img_size) else self.img_size  # one side: a square
            sides = tuple(size) if isinstance(size, Iterable) and not isinstance(size, (str, bytes)) else ()
            if len(sides) != 2 or not all(_whole(s) for s in sides):
                raise UserError(f"--img-size takes two integer sides (height, width), got {self.img_size!r}")
            h, w = int(sides[0]), int(sides[1])
            if not (1 <= h <= MAX_IMG_SIDE and 1 <= w <= MAX_IMG_SIDE):
                raise UserError(f"--img-size takes sides from 1 to {MAX_IMG_SIDE}, got {h}x{w}")
            object.__setattr__(self, "img_size", (h, w))
        check_preprocess(self.preprocess, self.in_chans)
        if self.class_names is not None:
            names = check_class_names(self.class_names, self.num_classes)
            object.__setattr__(self, "class_names", names)
            if self.num_classes is None:
                object.__setattr__(self, "num_classes", len(names))

    @property
    def seg_head(self) -> str | None:
        """The semantic-segmentation head (its default filled in); None for other tasks."""
        return self.head.get("head", SEG_HEADS[0]) if self.task == "semantic-segmentation" else None

    def task_label(self) -> str:
        """The task and whose architecture, for reports: ``detection (autotimm fcos)``,
        ``segmentation (fcn)`` (our built-in heads), ``classification``."""
        detail = self.seg_head or (self.head.get("arch", DETECTION_ARCHS[0]) if self.task == "detection" else None)
        if self.architecture != ARCHITECTURES[0]:
            detail = f"{self.architecture} {detail}" if detail else self.architecture
        task = "segmentation" if self.seg_head else self.task
        return f"{task} ({detail})" if detail and (self.seg_head or self.architecture != ARCHITECTURES[0]) else task

    def stem(self, precision: str = "fp32") -> str:
        """The default file stem of this model's artifacts: name, task (AutoTimm detectors: their head),
        precision."""
        if self.seg_head:
            suffix = f"-{self.seg_head}"
        elif self.architecture == "autotimm" and self.task == "detection":
            suffix = f"-{self.head.get('arch', DETECTION_ARCHS[0])}"
        else:
            suffix = TASK_SUFFIX[self.task]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model).strip("_") + suffix
        return stem if precision == "fp32" else f"{stem}-{precision}"

    def replace(self, **changes) -> "ModelSpec":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["img_size"] = list(self.img_size) if self.img_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        if isinstance(d.get("img_size"), list):
            d["img_size"] = tuple(d["img_size"])
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"model spec has unknown keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _whole(v: Any) -> bool:
    """An integer, or a float with no fraction (64.0), not a bool."""
    return _is_int(v) or (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                          and float(v).is_integer())


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


MIN_STD = 1e-3  # a sanity bound (timm's are 0.2-0.3); 1e-300 passed "> 0", became 0 in float32: NaN answers


def task_outputs_missing(task: str, shapes: dict[str, list]) -> str | None:
    """What the ``task``'s answers read that outputs of these ``shapes`` (batch first) lack, or None."""
    for group in TASK_OUTPUTS.get(task, []):
        key = next((k for k in group if k in shapes), None)
        if key is None or len(shapes[key]) - 1 != len(group[key]):
            return " or ".join(f"{k} [batch, {', '.join(d)}]" for k, d in group.items())
    return None


def check_preprocess(pre: dict[str, Any], in_chans: int, name: Callable[[str], str] = _flag) -> None:
    """Preprocessing overrides: per-channel mean/std (std >= MIN_STD), a known interpolation, 0 < crop_pct <= 1;
    a `UserError` naming the value as ``name(key)`` does (the command line's flag, or a manifest's field)."""
    for key in pre:
        if key not in PREPROCESS_KEYS:
            raise UserError(f"unknown preprocessing key {key!r}; known: {', '.join(PREPROCESS_KEYS)}")
    for key in ("mean", "std"):
        if key not in pre:
            continue
        vals = pre[key]
        if (not isinstance(vals, (list, tuple)) or len(vals) != in_chans
                or not all(is_number(v) for v in vals)):
            raise UserError(f"{name(key)} takes {in_chans} finite number(s), one per input channel, got {vals!r}")
        if key == "std" and min(vals) < MIN_STD:
            raise UserError(f"{name('std')} values must be at least {MIN_STD:g} (pixels are scaled to [0, 1] before "
                            f"it divides them: timm's are about 0.2), got {list(vals)}")
    known = {"interpolation": INTERPOLATIONS, "resize": RESIZE_MODES}
    for key in (k for k in known if k in pre and pre[k] not in known[k]):
        raise UserError(f"{name(key)} takes one of {', '.join(known[key])}, got {pre[key]!r}")
    if "crop_pct" in pre:
        v = pre["crop_pct"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
            raise UserError(f"{name('crop_pct')} takes a number in (0, 1], got {v!r}")
    if "pad_value" in pre:
        vals = pre["pad_value"]
        if (not isinstance(vals, (list, tuple)) or len(vals) != in_chans
                or not all(is_number(v) and 0 <= v <= 255 for v in vals)):
            raise UserError(f"{name('pad_value')} takes one number or {in_chans} (one per channel) from 0 to 255, "
                            f"got {vals!r}")


_BIDI_CONTROLS = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


def unprintable(text: str) -> bool:
    """Whether ``text`` holds a control character (a newline, NUL, an escape) or a bidirectional
    override, which would break a table row or reorder what a terminal shows."""
    import unicodedata

    return any(unicodedata.category(c) == "Cc" or ord(c) in _BIDI_CONTROLS for c in text)


def check_class_names(names: Any, num_classes: int | None) -> tuple[str, ...]:
    """Class names, one per label: non-empty printable text, as many as the model's classes."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not 1 <= len(names) <= MAX_CLASSES:
        raise UserError(f"class names are a list of 1 to {MAX_CLASSES} names, one per class, got {str(names)[:60]!r}")
    bad = next((n for n in names if not isinstance(n, str) or not n.strip() or len(n) > 200
                or unprintable(n.strip())), None)
    if bad is not None:
        raise UserError(f"class names are 1 to 200 printable characters each (no control characters), got "
                        f"{str(bad)[:60]!r}")
    if num_classes is not None and len(names) != num_classes:
        raise UserError(f"{len(names)} class names for a model with {num_classes} classes: give one name per class")
    return tuple(n.strip() for n in names)


def read_class_names(path: str | Path) -> list[str]:
    """--class-names FILE: a JSON list of names, or one name per line (blank lines skipped)."""
    import json

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--class-names: no such file: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--class-names: cannot read {p} as text ({type(e).__name__})") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise UserError(f"--class-names: {p} is not a JSON list ({e})") from None
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"--class-names: {p} names no classes (one name per line, or a JSON list)")
    return names


def parse_img_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"256,320"`` or ``"256x320"`` -> (256, 320)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        vals = [int(p) for p in parts] if all(parts) else []  # an empty item (",64", "64,") is a typo
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise UserError(f"--img-size takes H or H,W with positive integers, got {text!r}")
    return vals[0], vals[1]
