"""Bring your own model: any ``nn.Module`` that takes an image batch ``[B, C, H, W]``, with its own
postprocessing, made exportable by `from_module` (what `export(spec, model=...)` needs: a spec, output
names, the preprocessing its inputs get, build info)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.files import plain_name
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models.timm_backbone import preprocessing_record
from torch import nn

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class UserModel(nn.Module):
    """The user's module, its outputs as a tuple in ``output_names`` order (a tensor, a tuple or
    list, or a dict by name are all accepted)."""

    def __init__(self, module: nn.Module, output_names: Sequence[str]):
        super().__init__()
        self.module = module
        self.output_names = tuple(output_names)

    def forward(self, x: torch.Tensor):
        out = self.module(x)
        if isinstance(out, torch.Tensor):
            return (out,)
        if isinstance(out, dict):
            return tuple(out[n] for n in self.output_names)
        return tuple(out)


def from_module(module: nn.Module, name: str, img_size: int | tuple[int, int], output_names: Sequence[str] = ("logits",),
                task: str = "classification", in_chans: int = 3, num_classes: int | None = None,
                preprocessing: dict[str, Any] | None = None) -> nn.Module:
    """``module`` ready for `autotimm_deploy.exporter.pipeline.export` (``export(model.spec, formats,
    out, model=model)``). ``preprocessing`` (mean, std, interpolation, crop_pct) is what callers
    must apply to pictures; default ImageNet statistics, bilinear resize, no crop. One zero batch is
    run to check the outputs match ``output_names``."""
    plain_name(name, "the model name")
    names = tuple(output_names)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise UserError(f"output_names must be distinct identifiers, got {list(names)}")
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    spec = ModelSpec(name, task=task, img_size=size, in_chans=in_chans, num_classes=num_classes, weights="module",
                     preprocess=dict(preprocessing or {}))  # checked there
    model = UserModel(module, names).eval()
    try:
        with torch.no_grad():
            outs = model(torch.zeros(2, in_chans, *spec.img_size))
    except Exception as e:  # noqa: BLE001 - the user's code: any error is theirs, in one line
        raise UserError(f"{name} cannot run on a [2, {in_chans}, {spec.img_size[0]}, {spec.img_size[1]}] batch: "
                        f"{type(e).__name__}: {first_line(e)}") from None
    if len(outs) != len(names) or not all(isinstance(t, torch.Tensor) and t.shape[:1] == (2,) for t in outs):
        raise UserError(f"{name} returns {len(outs)} output(s) for the {len(names)} output_names {list(names)}; each "
                        "must be a tensor whose first dimension is the batch")
    mean_std = IMAGENET if in_chans == 3 else {"mean": [0.5] * in_chans, "std": [0.25] * in_chans}
    model.spec = spec
    model.preprocessing = preprocessing_record(model.spec, mean_std["mean"], mean_std["std"], "bilinear", 1.0,
                                               "default for a custom module (ImageNet statistics)")
    model.build_info = {"params": sum(p.numel() for p in module.parameters()), "architecture": "custom nn.Module",
                        "class": f"{type(module).__module__}.{type(module).__qualname__}"}
    return model
