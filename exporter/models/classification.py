"""Classification: any timm architecture, output ``logits [B, K]``."""

from __future__ import annotations

import torch
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models.registry import register_task
from autotimm_deploy.exporter.models.timm_backbone import check_forward, create_timm_model, preprocessing
from autotimm_deploy.exporter.models.weights import load_checkpoint, seed_zero_head


class Classifier(torch.nn.Module):
    output_names = ("logits",)

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return (self.net(x),)


@register_task("classification")
def build_classifier(spec: ModelSpec) -> torch.nn.Module:
    net = create_timm_model(spec, num_classes=spec.num_classes)
    info = {"params": sum(p.numel() for p in net.parameters())}
    if spec.weights == "checkpoint":
        load_checkpoint(net, spec.checkpoint)
    elif spec.weights == "random":
        info["head_reseeded"] = seed_zero_head(net, spec.seed)
    check_forward(net, spec)
    model = Classifier(net)
    model.build_info = info
    model.preprocessing = preprocessing(net, spec)
    return model
