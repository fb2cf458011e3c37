"""Object detection: FPN (P3-P7) + FCOS-style anchor-free head, with decoding and batched NMS inside
the graph. Outputs ``boxes [B, N, 4]`` (x1, y1, x2, y2 in input pixels), ``scores [B, N]``,
``labels [B, N]`` (int64, -1 for padding), ``num_detections [B]`` (int64); ``raw`` outputs the
per-level head maps instead.

NMS is exact greedy class-aware NMS (what ``torchvision.ops.batched_nms`` computes) over the top
1000 candidates (`nms`): in the ONNX graph ONNX's own ``NonMaxSuppression``, in every other format
``max_detections`` rounds of "take the best remaining candidate, retire the same-class boxes that
overlap it above the IoU threshold" on a suppression matrix computed once, plain tensor math over
the whole batch with fixed shapes and a dynamic batch. Greedy NMS visits boxes in score order, so
its first N kept boxes are exactly these N rounds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models.features import Features, check_divisible
from autotimm_deploy.exporter.models.nms import batched_greedy_nms
from autotimm_deploy.exporter.models.registry import register_task
from autotimm_deploy.exporter.models.timm_backbone import check_forward, preprocessing
from autotimm_deploy.exporter.models.weights import load_checkpoint
from torch import nn

STRIDES = (8, 16, 32, 64, 128)
DEFAULTS = {"fpn_channels": 256, "depthwise": False, "score_threshold": 0.05, "iou_threshold": 0.6,
            "max_detections": 100, "raw": False}
PRE_NMS = 1000


def conv(cin: int, cout: int, stride: int = 1, depthwise: bool = False) -> nn.Module:
    if depthwise:
        return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1))
    return nn.Conv2d(cin, cout, 3, stride, 1)


def fit(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample a backbone map to an exact (static) size: integer max-pool down, nearest up."""
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if h % size[0] == 0 and w % size[1] == 0 and h // size[0] == w // size[1]:
        return F.max_pool2d(x, h // size[0])
    return F.interpolate(x, size=size, mode="nearest")


class FPN(nn.Module):
    """P3-P5 from the backbone maps nearest in stride (resampled when a stride is missing, as for
    ViTs), top-down fusion, then P6/P7 by strided convs."""

    def __init__(self, features: Features, img_size: tuple[int, int], width: int, depthwise: bool):
        super().__init__()
        self.sizes = [(img_size[0] // s, img_size[1] // s) for s in STRIDES[:3]]
        self.pick = []
        for s in STRIDES[:3]:
            below = [i for i, fs in enumerate(features.strides) if fs <= s]
            self.pick.append(max(below, key=lambda i: features.strides[i]) if below else 0)
        self.lateral = nn.ModuleList(nn.Conv2d(features.channels[i], width, 1) for i in self.pick)
        self.output = nn.ModuleList(conv(width, width, depthwise=depthwise) for _ in self.pick)
        self.p6 = conv(width, width, 2, depthwise)
        self.p7 = conv(width, width, 2, depthwise)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [l(fit(feats[i], size)) for l, i, size in zip(self.lateral, self.pick, self.sizes)]
        for k in (1, 0):  # top-down: P4 += up(P5), P3 += up(P4)
            lat[k] = lat[k] + F.interpolate(lat[k + 1], size=self.sizes[k], mode="nearest")
        outs = [o(x) for o, x in zip(self.output, lat)]
        p6 = self.p6(outs[-1])
        return outs + [p6, self.p7(F.relu(p6))]


class FCOSHead(nn.Module):
    def __init__(self, width: int, num_classes: int, depthwise: bool, num_convs: int = 4):
        super().__init__()

        def tower():
            layers = []
            for _ in range(num_convs):
                # at most 32 groups of at least 2 channels: GroupNorm refuses 1 value per group (P7 can be 1x1)
                groups = math.gcd(32, max(1, width // 2))
                layers += [conv(width, width, depthwise=depthwise), nn.GroupNorm(groups, width), nn.ReLU()]
            return nn.Sequential(*layers)

        self.cls_tower, self.reg_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(width, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(width, 4, 3, padding=1)
        self.centerness = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.constant_(self.cls_logits.bias, -math.log(99))  # prior probability 0.01

    def forward(self, p: torch.Tensor):
        c, r = self.cls_tower(p), self.reg_tower(p)
        return self.cls_logits(c), F.relu(self.bbox_pred(r)), self.centerness(r)


def flat_levels(levels, i: int) -> torch.Tensor:
    """The i-th head output of every level, as [B, locations, channels]."""
    return torch.cat([level[i].flatten(2) for level in levels], 2).transpose(1, 2)


class Detector(nn.Module):
    def __init__(self, features: Features, spec: ModelSpec, opts: dict):
        super().__init__()
        self.backbone = features
        self.fpn = FPN(features, spec.img_size, opts["fpn_channels"], opts["depthwise"])
        self.head = FCOSHead(opts["fpn_channels"], spec.num_classes, opts["depthwise"],
                             num_convs=2 if opts["depthwise"] else 4)
        self.opts = opts
        self.num_classes = spec.num_classes
        h, w = spec.img_size
        self.register_buffer("points", torch.cat([self._grid(h // s, w // s, s) for s in STRIDES]), persistent=False)
        self.register_buffer("point_strides", torch.cat(
            [torch.full(((h // s) * (w // s),), float(s)) for s in STRIDES]), persistent=False)
        self.register_buffer("limits", torch.tensor([w, h, w, h], dtype=torch.float32), persistent=False)
        if opts["raw"]:
            self.output_names = tuple(f"{k}_p{i}" for i in range(3, 8) for k in ("cls", "reg", "ctr"))
        else:
            self.output_names = ("boxes", "scores", "labels", "num_detections")

    @staticmethod
    def _grid(h: int, w: int, s: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        return torch.stack([(xs.flatten() + 0.5) * s, (ys.flatten() + 0.5) * s], 1).float()

    def head_outputs(self, x: torch.Tensor):
        return [self.head(p) for p in self.fpn(self.backbone(x))]

    def candidates(self, levels):
        """Decode every level and keep the top PRE_NMS (location, class) pairs per image:
        (boxes [B, P, 4], scores [B, P], labels [B, P], location index [B, P])."""
        b = levels[0][0].shape[0]
        cls, reg, ctr = (flat_levels(levels, i) for i in range(3))  # [B, A, K], [B, A, 4], [B, A, 1]
        scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr))
        dist = reg * self.point_strides[None, :, None]
        boxes = torch.cat([self.points[None] - dist[..., :2], self.points[None] + dist[..., 2:]], -1)
        boxes = torch.minimum(boxes.clamp(min=0), self.limits)
        k = min(PRE_NMS, scores.shape[1] * self.num_classes)
        top, idx = scores.reshape(b, -1).topk(k, dim=1)
        anchor = torch.div(idx, self.num_classes, rounding_mode="floor")
        labels = idx - anchor * self.num_classes
        return torch.gather(boxes, 1, anchor[..., None].expand(-1, -1, 4)), top, labels, anchor

    def forward(self, x: torch.Tensor):
        levels = self.head_outputs(x)
        if self.opts["raw"]:
            return tuple(t for level in levels for t in level)
        boxes, scores, labels, _ = self.candidates(levels)
        return batched_greedy_nms(boxes, scores, labels, self.opts["iou_threshold"], self.opts["score_threshold"],
                                  self.opts["max_detections"], num_classes=self.num_classes)


def seed_head(model: "Detector", seed: int) -> None:
    """Random weights give near-identical scores everywhere, so NMS order would hinge on rounding.
    Spread the final layers' weights (seeded) so scores differ clearly across locations and inputs."""
    head = model.head
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (head.cls_logits, head.centerness, head.bbox_pred):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.05)
        head.bbox_pred.bias.fill_(2.0)  # boxes of a few strides, not degenerate zero-area ones


@register_task("detection")
def build_detector(spec: ModelSpec) -> nn.Module:
    return build_fpn_model(spec, Detector, DEFAULTS, seed_head)


def build_fpn_model(spec: ModelSpec, cls, defaults: dict, seed_fn) -> nn.Module:
    """Backbone features + ``cls`` (a Detector); ``seed_fn(model, seed)`` spreads a new head's weights."""
    check_divisible(spec, STRIDES[-1])
    opts = {**defaults, **spec.head}
    features = Features(spec)
    torch.manual_seed(spec.seed + 1)
    model = cls(features, spec, opts)
    if spec.weights == "checkpoint":
        load_checkpoint(model, spec.checkpoint)
    elif spec.weights in ("random", "pretrained"):  # pretrained covers the backbone only: the head is new
        seed_fn(model, spec.seed)
    model.build_info = {"params": sum(p.numel() for p in model.parameters()),
                        "backbone_params": sum(p.numel() for p in features.parameters()),
                        "feature_strides": features.strides, "fpn_strides": list(STRIDES), **opts}
    model.eval()
    check_forward(model, spec)
    model.preprocessing = preprocessing(features.net, spec)
    return model
