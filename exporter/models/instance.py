"""Instance segmentation: the detector (FPN + FCOS head, decode and NMS in the graph) plus
prototype masks, the design of YOLACT and YOLOv8-seg, chosen because it exports cleanly:

- a prototype network on P3 produces ``PROTOTYPES`` mask prototypes at stride 4 for the image;
- the head predicts, per location, as many mask coefficients (beside class, box and centerness);
- after NMS, each kept detection's coefficients are gathered and its mask is
  ``sigmoid(coefficients @ prototypes)``, cropped to its box.

Everything is gather, matmul and comparisons with fixed shapes: no RoIAlign (a custom op in
ONNX that not every runtime has), no data-dependent shapes. Outputs: the detection outputs plus
``masks [B, N, H/4, W/4]``, per-pixel probabilities (threshold at 0.5), zero outside the box and
for padded detections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models.detection import (
    DEFAULTS,
    Detector,
    FCOSHead,
    build_fpn_model,
    flat_levels,
    seed_head,
)
from autotimm_deploy.exporter.models.nms import greedy_nms_picks
from autotimm_deploy.exporter.models.registry import register_task
from torch import nn

PROTOTYPES = 32
MASK_STRIDE = 4
INSTANCE_DEFAULTS = {**DEFAULTS, "raw": False}


class InstanceHead(FCOSHead):
    def __init__(self, width: int, num_classes: int, depthwise: bool, num_convs: int = 4):
        super().__init__(width, num_classes, depthwise, num_convs)
        self.coefs = nn.Conv2d(width, PROTOTYPES, 3, padding=1)

    def forward(self, p: torch.Tensor):
        c, r = self.cls_tower(p), self.reg_tower(p)
        return self.cls_logits(c), F.relu(self.bbox_pred(r)), self.centerness(r), self.coefs(r)


class ProtoNet(nn.Module):
    """P3 (stride 8) -> prototypes at stride 4."""

    def __init__(self, width: int, size: tuple[int, int]):
        super().__init__()
        self.size = size
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.tail = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, PROTOTYPES, 1))

    def forward(self, p3: torch.Tensor) -> torch.Tensor:
        return self.tail(F.interpolate(self.body(p3), size=self.size, mode="bilinear", align_corners=False))


class InstanceSegmenter(Detector):
    def __init__(self, features, spec: ModelSpec, opts: dict):
        super().__init__(features, spec, opts)
        width = opts["fpn_channels"]
        self.head = InstanceHead(width, spec.num_classes, opts["depthwise"], num_convs=2 if opts["depthwise"] else 4)
        h, w = spec.img_size[0] // MASK_STRIDE, spec.img_size[1] // MASK_STRIDE
        self.protonet = ProtoNet(width, (h, w))
        self.register_buffer("mask_x", (torch.arange(w) + 0.5) * MASK_STRIDE, persistent=False)
        self.register_buffer("mask_y", (torch.arange(h) + 0.5) * MASK_STRIDE, persistent=False)
        self.output_names = ("boxes", "scores", "labels", "num_detections", "masks")

    def forward(self, x: torch.Tensor):
        pyramid = self.fpn(self.backbone(x))
        levels = [self.head(p) for p in pyramid]
        boxes, scores, labels, location = self.candidates(levels)
        idx, best, valid = greedy_nms_picks(boxes, scores, labels, self.opts["iou_threshold"],
                                            self.opts["score_threshold"], self.opts["max_detections"],
                                            num_classes=self.num_classes)
        kept_boxes = torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4))
        kept_boxes = torch.where(valid[..., None], kept_boxes, torch.zeros_like(kept_boxes))
        kept_labels = torch.where(valid, torch.gather(labels, 1, idx), torch.full_like(idx, -1))
        kept_scores = torch.where(valid, best, torch.zeros_like(best))

        coefs = flat_levels(levels, 3)  # [B, A, P]
        where = torch.gather(location, 1, idx)  # kept detection -> its location
        kept_coefs = torch.gather(coefs, 1, where[..., None].expand(-1, -1, coefs.shape[-1]))  # [B, N, P]
        protos = self.protonet(pyramid[0])  # [B, P, h, w]
        b, _, h, w = protos.shape
        masks = torch.sigmoid(torch.bmm(kept_coefs, protos.flatten(2))).view(b, -1, h, w)
        inside_x = (self.mask_x >= kept_boxes[..., 0:1]) & (self.mask_x < kept_boxes[..., 2:3])  # [B, N, w]
        inside_y = (self.mask_y >= kept_boxes[..., 1:2]) & (self.mask_y < kept_boxes[..., 3:4])  # [B, N, h]
        inside = inside_y[..., :, None] & inside_x[..., None, :] & valid[..., None, None]
        masks = torch.where(inside, masks, torch.zeros_like(masks))
        return kept_boxes, kept_scores, kept_labels, valid.sum(1), masks


def seed_instance_head(model: InstanceSegmenter, seed: int) -> None:
    """As for detection, plus mask coefficients spread enough that masks are clearly in or out
    (a random head gives sigmoid(~0) = 0.5 everywhere, where a 0.5 threshold is a coin toss)."""
    seed_head(model, seed)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        model.head.coefs.weight.copy_(torch.randn(model.head.coefs.weight.shape, generator=gen) * 0.5)


@register_task("instance-segmentation")
def build_instance_segmenter(spec: ModelSpec) -> nn.Module:
    model = build_fpn_model(spec, InstanceSegmenter, INSTANCE_DEFAULTS, seed_instance_head)
    model.build_info.update({"mask_prototypes": PROTOTYPES, "mask_stride": MASK_STRIDE})
    return model

