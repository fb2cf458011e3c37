"""Semantic segmentation: ``fcn`` and ``deeplabv3plus`` heads on timm features.

Outputs ``logits [B, K, H, W]`` upsampled bilinearly (``align_corners=False``, the ONNX Resize
``half_pixel`` mode every runtime implements alike) to the input size, and with ``argmax`` a
``mask [B, H, W]`` (int64).

- FCN: the deepest map -> 3x3 conv (``head_channels``, default 128) + BN + ReLU -> 1x1 classifier.
- DeepLabV3+: depthwise-separable ASPP (1x1, three 3x3 atrous branches at rates 3/6/9 — the
  OS16 rates 6/12/18 halved for our stride-32 backbones — and image pooling) on the deepest map,
  projected to 256; fused with the shallowest map (1x1 to 48 ch) at its resolution; two separable
  3x3 convs; 1x1 classifier. Separable convs, as in the DeepLabV3+ paper, keep ResNet-50 + head
  near the seed's 28 M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models.features import Features
from autotimm_deploy.exporter.models.registry import register_task
from autotimm_deploy.exporter.models.timm_backbone import check_forward, preprocessing
from autotimm_deploy.exporter.models.weights import load_checkpoint
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1, separable: bool = False) -> nn.Sequential:
    pad = dilation * (k // 2)
    if separable and k > 1:
        return nn.Sequential(
            nn.Conv2d(cin, cin, k, padding=pad, dilation=dilation, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FCNHead(nn.Module):
    def __init__(self, channels: list[int], num_classes: int, width: int = 128):
        super().__init__()
        self.block = conv_bn_relu(channels[-1], width)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.block(feats[-1]))


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int = 256, rates=(3, 6, 9)):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, 1)] +
                                      [conv_bn_relu(cin, cout, 3, r, separable=True) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(cout * (len(rates) + 2), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, 1))


class DeepLabV3PlusHead(nn.Module):
    def __init__(self, channels: list[int], num_classes: int, width: int = 256, low: int = 48):
        super().__init__()
        self.aspp = ASPP(channels[-1], width)
        self.low = conv_bn_relu(channels[0], low, 1)
        self.fuse = nn.Sequential(conv_bn_relu(width + low, width, 3, separable=True),
                                  conv_bn_relu(width, width, 3, separable=True))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        low = self.low(feats[0])
        high = F.interpolate(self.aspp(feats[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, low], 1)))


class Segmenter(nn.Module):
    def __init__(self, features: Features, head: nn.Module, argmax: bool):
        super().__init__()
        self.backbone = features
        self.head = head
        self.argmax = argmax
        self.output_names = ("logits", "mask") if argmax else ("logits",)

    def forward(self, x: torch.Tensor):
        logits = F.interpolate(self.head(self.backbone(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.argmax:
            return logits, logits.argmax(1)
        return (logits,)


@register_task("semantic-segmentation")
def build_segmenter(spec: ModelSpec) -> nn.Module:
    opts = spec.head
    features = Features(spec)
    num_classes = spec.num_classes
    head_cls = {"fcn": FCNHead, "deeplabv3plus": DeepLabV3PlusHead}[spec.seg_head]
    torch.manual_seed(spec.seed + 1)  # the head's random init is part of the spec: deterministic parity
    head = head_cls(features.channels, num_classes, **({"width": opts["head_channels"]} if opts.get("head_channels") else {}))
    model = Segmenter(features, head, bool(opts.get("argmax")))
    if spec.weights == "checkpoint":
        load_checkpoint(model, spec.checkpoint)
    model.build_info = {"params": sum(p.numel() for p in model.parameters()),
                        "backbone_params": sum(p.numel() for p in features.parameters()),
                        "head": spec.seg_head, "feature_strides": features.strides,
                        "feature_channels": features.channels}
    model.eval()
    check_forward(model, spec)
    model.preprocessing = preprocessing(features.net, spec)
    return model
