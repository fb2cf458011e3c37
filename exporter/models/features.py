"""Backbone feature maps for task heads: any timm model with ``features_only``, normalised in one
place to NCHW tensors with known channels and strides."""

from __future__ import annotations

import torch
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models.timm_backbone import create_timm_model
from torch import nn


class Features(nn.Module):
    """``forward(x) -> list[Tensor]`` of NCHW maps (the deepest four, or all where a model has fewer),
    shallow to deep; ``channels``/``strides`` per map."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.net = None
        for levels in (4, 3, 2):  # the last four maps where the model has them; some have only 3 (levit)
            try:
                self.net = create_timm_model(spec, features_only=True, out_indices=tuple(range(-levels, 0)))
                break
            except UserError as e:
                reason = str(e).split(": ", 1)[-1]
                if "out of range" not in reason:
                    break
        if self.net is None:
            raise UserError(f"{spec.model} cannot serve as a {spec.task} backbone: it gives no feature maps "
                            f"(timm features_only: {reason})")
        self.channels = list(self.net.feature_info.channels())
        self.strides = list(self.net.feature_info.reduction())
        with torch.no_grad():
            try:
                outs = self.net(torch.zeros(1, spec.in_chans, *spec.img_size))
            except Exception as e:  # noqa: BLE001
                raise UserError(f"{spec.model} cannot run at {spec.img_size[0]}x{spec.img_size[1]}: {first_line(e)}") from None
        # swin-style models return NHWC maps: detect once, permute in forward
        self.nhwc = bool(outs[0].shape[1] != self.channels[0] and outs[0].shape[-1] == self.channels[0])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.net(x)
        return [o.permute(0, 3, 1, 2).contiguous() for o in outs] if self.nhwc else list(outs)


def check_divisible(spec: ModelSpec, stride: int) -> None:
    h, w = spec.img_size
    if h % stride or w % stride:
        raise UserError(f"--img-size {h}x{w} must be divisible by {stride} (the largest stride of the "
                        f"{spec.task} model); try {h // stride * stride or stride}x{w // stride * stride or stride}")
