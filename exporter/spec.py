"""`ModelSpec`: what to build. Plain data, serialisable into the manifest and back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from exporter.errors import UserError

TASKS = ("classification", "detection", "semantic-segmentation", "instance-segmentation")
WEIGHTS = ("random", "pretrained", "checkpoint")


@dataclass(frozen=True)
class ModelSpec:
    """A timm backbone, a task head and its options, input geometry and where the weights come from.

    ``img_size`` and ``num_classes`` may be left ``None``: `exporter.models.resolve_spec` fills them
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

    def __post_init__(self):
        if self.task not in TASKS:
            raise UserError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        if self.weights not in WEIGHTS:
            raise UserError(f"unknown weights {self.weights!r}; choose one of: {', '.join(WEIGHTS)}")
        if (self.weights == "checkpoint") != (self.checkpoint is not None):
            raise UserError("weights='checkpoint' and a checkpoint path go together")
        if self.num_classes is not None and self.num_classes < 1:
            raise UserError(f"--num-classes must be a positive integer, got {self.num_classes}")
        if self.in_chans < 1:
            raise UserError(f"--in-chans must be a positive integer, got {self.in_chans}")
        if self.img_size is not None:
            h, w = self.img_size
            if h < 1 or w < 1:
                raise UserError(f"--img-size must be positive, got {h}x{w}")
            object.__setattr__(self, "img_size", (int(h), int(w)))

    def replace(self, **changes) -> "ModelSpec":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["img_size"] = list(self.img_size) if self.img_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        if d.get("img_size") is not None:
            d["img_size"] = tuple(d["img_size"])
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"model spec has unknown keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def parse_img_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"256,320"`` or ``"256x320"`` -> (256, 320)."""
    parts = text.replace("x", ",").split(",")
    try:
        vals = [int(p) for p in parts if p.strip()]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise UserError(f"--img-size takes H or H,W with positive integers, got {text!r}")
    return vals[0], vals[1]
