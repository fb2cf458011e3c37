"""Fixed-shape modules around AutoTimm's own task modules: ``forward`` is what ``predict()``
returns, as graph code every format can hold; ``reference`` runs AutoTimm's eager ``predict()``
itself and pads its per-image lists into the same contract, for the parity check against it.

Contracts (docs/formats.md, "AutoTimm models"):
- classification: ``logits [B, K]`` (AutoTimm's forward) and ``probs [B, K]`` (what
  ``predict_step`` returns: softmax, or sigmoid for multi-label models);
- detection (ObjectDetector's FCOS and YOLOX heads, YOLOXDetector): ``boxes``, ``scores``,
  ``labels``, ``num_detections`` (see decode.py);
- semantic segmentation: ``logits [B, K, H, W]`` at input resolution (AutoTimm's logits, at 1/4 or
  1/32 of the input, upsampled bilinearly as its training loss does), ``mask [B, H, W]``, their
  arg-max, and ``feature_mask [B, h, w]``, the arg-max at feature resolution that ``predict()`` returns;
- instance segmentation: the detection outputs and ``masks [B, N, H, W]`` (bool), each mask pasted
  into its box and thresholded as ``predict()`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from autotimm_deploy.exporter.models.autotimm.decode import decode_locations, detect, grid_points
from torch import nn

DETECTION_OUTPUTS = ("boxes", "scores", "labels", "num_detections")


class Wrapper(nn.Module):
    """AutoTimm's inference submodules (``parts``), registered as ours; the task module itself stays
    outside the module tree (tracing a LightningModule trips on its Trainer properties) and serves
    `reference`. ``forward`` chains the parts as the task's own ``forward`` does."""

    parts: tuple[str, ...] = ("backbone", "head")
    predict_method = "predict"

    def __init__(self, net: nn.Module, img_size: tuple[int, int]):
        super().__init__()
        for name in self.parts:
            self.add_module(name, getattr(net, name))
        object.__setattr__(self, "task", net)
        self.img_size = tuple(img_size)

    @property
    def reference_name(self) -> str:
        return f"AutoTimm {type(self.task).__name__}.{self.predict_method}()"


class Classifier(Wrapper):
    output_names = ("logits", "probs")
    predict_method = "predict_step"

    def __init__(self, net: nn.Module, img_size: tuple[int, int]):
        super().__init__(net, img_size)
        self.multi_label = bool(net.hparams.get("multi_label", False))

    def forward(self, x: torch.Tensor):
        logits = self.head(self.backbone(x))
        return logits, (logits.sigmoid() if self.multi_label else logits.softmax(dim=-1))

    def reference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.task(x), "probs": self.task.predict_step(x, 0)}


class Detector(Wrapper):
    """ObjectDetector (FCOS or YOLOX head) with its predict() decode and NMS in the graph."""

    parts = ("backbone", "fpn", "head")
    output_names = DETECTION_OUTPUTS
    class_offsets = True  # predict()'s NMS is torchvision's batched_nms (see decode.detect)

    def __init__(self, net: nn.Module, img_size: tuple[int, int]):
        super().__init__(net, img_size)
        self.score_thresh = float(net.score_thresh)
        self.nms_thresh = float(net.nms_thresh)
        self.max_detections = int(net.max_detections_per_image)
        with torch.no_grad():
            cls = net(torch.zeros(1, 3, *img_size))[0]  # both tasks' forward: (cls, reg, ctr) per level
        points, _ = grid_points([tuple(t.shape[-2:]) for t in cls], list(net.strides))
        self.register_buffer("points", points, persistent=False)

    def levels(self, fpn: list[torch.Tensor]):
        out = self.head(fpn)
        return out if len(out) == 3 else (*out, None)  # YOLOX: no centerness

    def detections(self, levels):
        cls, reg, ctr = levels
        boxes, scores, labels = decode_locations(cls, reg, ctr, self.points, self.img_size)
        return detect(boxes, scores, labels, self.score_thresh, self.nms_thresh, self.max_detections,
                      num_classes=cls[0].shape[1], class_offsets=self.class_offsets)

    def forward(self, x: torch.Tensor):
        return self.detections(self.levels(self.fpn(self.backbone(x))))

    def reference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return pad_detections(self.task.predict(x), self.max_detections)


class YOLOXDetector(Detector):
    """YOLOXDetector: CSPDarknet, YOLOX's PAFPN neck and its decoupled head (3 levels, strides 8, 16,
    32, no centerness), with predict()'s decode and NMS in the graph. predict() suppresses class by
    class with ``ops.nms`` and lists its detections by class; ours are the same detections, by score."""

    parts = ("backbone", "neck", "head")
    class_offsets = False

    def forward(self, x: torch.Tensor):
        return self.detections(self.levels(self.neck(self.backbone(x))))


class Segmentor(Wrapper):
    output_names = ("logits", "mask", "feature_mask")

    def upsample(self, logits: torch.Tensor):
        up = F.interpolate(logits, size=self.img_size, mode="bilinear", align_corners=False)
        return up, up.argmax(dim=1)

    def forward(self, x: torch.Tensor):
        logits = self.head(self.backbone(x))
        return (*self.upsample(logits), logits.argmax(dim=1))

    def reference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, mask = self.upsample(self.task.predict(x, return_logits=True))
        return {"logits": logits, "mask": mask, "feature_mask": self.task.predict(x)}


class InstanceSegmentor(Detector):
    """InstanceSegmentor: the FCOS detector, then RoIAlign on P3, the mask head, and each mask
    pasted into its box at input resolution, all in the graph."""

    parts = ("backbone", "fpn", "detection_head", "mask_head")
    output_names = (*DETECTION_OUTPUTS, "masks")

    def __init__(self, net: nn.Module, img_size: tuple[int, int]):
        super().__init__(net, img_size)
        self.roi_size = int(net.roi_pool_size)
        self.mask_threshold = float(net.mask_threshold)

    def levels(self, fpn: list[torch.Tensor]):
        return self.detection_head(fpn)

    def forward(self, x: torch.Tensor):
        from torchvision.ops import roi_align

        fpn = self.fpn(self.backbone(x))
        boxes, scores, labels, count = self.detections(self.levels(fpn))
        b, n = labels.shape
        index = torch.arange(b, device=x.device, dtype=boxes.dtype).repeat_interleave(n)[:, None]
        rois = torch.cat([index, boxes.reshape(-1, 4)], 1)
        # as predict(): RoIAlign on P3 at scale 1/8, adaptive sampling, aligned
        feats = roi_align(fpn[0], rois, output_size=(self.roi_size, self.roi_size), spatial_scale=1.0 / 8,
                          sampling_ratio=-1, aligned=True)
        logits = self.mask_head(feats)
        m = logits.shape[-1]
        chosen = torch.gather(logits, 1, labels.clamp(min=0).reshape(-1, 1, 1, 1).expand(-1, 1, m, m))
        probs = chosen.sigmoid().reshape(b, n, m, m)
        masks = paste_masks(probs, boxes, self.img_size, self.mask_threshold) & (labels >= 0)[..., None, None]
        return boxes, scores, labels, count, masks

    def reference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = self.img_size
        dets = self.task.predict(x)
        out = pad_detections(dets, self.max_detections)
        masks = torch.zeros(len(dets), self.max_detections, h, w, dtype=torch.bool)
        for i, d in enumerate(dets):
            masks[i, :len(d["masks"])] = d["masks"][:self.max_detections]
        out["masks"] = masks
        return out


def _axis_weights(lo: torch.Tensor, hi: torch.Tensor, size: int, m: int):
    """Bilinear weights ``[B, N, size, m]`` that resample an ``m``-long mask axis onto pixels
    ``lo .. hi-1`` of a ``size``-long image axis (``F.interpolate(..., align_corners=False)``'s
    source index, clamped at 0; the last tap repeats at the edge), zero outside; and the inside flags."""
    pixel = torch.arange(size, device=lo.device, dtype=lo.dtype)[None, None, :]
    d = pixel - lo[..., None]
    length = (hi - lo)[..., None]
    src = ((d + 0.5) * (m / length) - 0.5).clamp(min=0)
    i0 = torch.floor(src)
    lam = (src - i0).clamp(0, 1)
    i1 = torch.clamp(i0 + 1, max=m - 1)
    taps = torch.arange(m, device=lo.device, dtype=lo.dtype)
    inside = (d >= 0) & (d < length)
    weights = ((taps == i0[..., None]).to(lo.dtype) * (1 - lam)[..., None]
               + (taps == i1[..., None]).to(lo.dtype) * lam[..., None])
    return weights * inside[..., None].to(lo.dtype), inside


def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, img_size: tuple[int, int], threshold: float):
    """probs [B, N, m, m] -> bool masks [B, N, H, W]: each resized into its box, the box rounded out
    to whole pixels as ``predict()`` rounds it (floor / ceil, at least one pixel), then ``> threshold``."""
    h, w = img_size
    x1 = torch.floor(boxes[..., 0]).clamp(0, w - 1)
    y1 = torch.floor(boxes[..., 1]).clamp(0, h - 1)
    x2 = torch.minimum(torch.maximum(torch.ceil(boxes[..., 2]), x1 + 1), torch.full_like(x1, w))
    y2 = torch.minimum(torch.maximum(torch.ceil(boxes[..., 3]), y1 + 1), torch.full_like(y1, h))
    wy, in_y = _axis_weights(y1, y2, h, probs.shape[-2])
    wx, in_x = _axis_weights(x1, x2, w, probs.shape[-1])
    pasted = wy @ (probs @ wx.transpose(-1, -2))  # along the width first, then the height, as F.interpolate
    return (pasted > threshold) & in_y[..., :, None] & in_x[..., None, :]


def pad_detections(dets: list[dict[str, torch.Tensor]], n: int) -> dict[str, torch.Tensor]:
    """AutoTimm's per-image detections -> our padded contract (labels -1 and zeros past the count)."""
    b = len(dets)
    boxes, scores = torch.zeros(b, n, 4), torch.zeros(b, n)
    labels, count = torch.full((b, n), -1, dtype=torch.int64), torch.zeros(b, dtype=torch.int64)
    for i, d in enumerate(dets):
        k = min(len(d["scores"]), n)
        boxes[i, :k], scores[i, :k], labels[i, :k], count[i] = d["boxes"][:k], d["scores"][:k], d["labels"][:k], k
    return {"boxes": boxes, "scores": scores, "labels": labels, "num_detections": count}
