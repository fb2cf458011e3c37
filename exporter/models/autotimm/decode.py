"""AutoTimm's detection postprocessing (``decode_fcos_detections``, ``ObjectDetector.predict``) as
fixed-shape graph code with the same meaning, for every location and class:

- score of a location = max over classes of ``sigmoid(cls) * sigmoid(centerness)`` (YOLOX: no
  centerness), its label the arg-max class; kept only when ``score > score_thresh`` (strict);
- box = grid point (``(i + 0.5) * stride``) minus/plus the predicted left/top, right/bottom
  distances, each coordinate clamped to the image;
- class-aware greedy NMS (``torchvision.ops.batched_nms``: a kept box retires the same-class boxes
  whose IoU with it is ``> nms_thresh``, in descending score order), first ``max_detections``.

NMS runs on the best ``pre_nms`` locations (default 1000; `greedy_nms_picks` of our detection
module, IoU computed as torchvision's kernel does). ``predict()`` has no such cap, yet the result
is the same whenever at most ``pre_nms`` locations pass the threshold, or the first
``max_detections`` boxes greedy NMS keeps lie among the best ``pre_nms`` (greedy NMS decides each
box from the higher-scored ones only): a model would have to keep more than ``pre_nms`` locations
and suppress all but a few of them for it to differ; raise ``pre_nms`` then. Outputs follow our
detection contract: ``boxes [B, N, 4]`` (x1, y1, x2, y2, input pixels), ``scores [B, N]``,
``labels [B, N]`` (int64, -1 for padding), ``num_detections [B]``.
"""

from __future__ import annotations

import torch
from autotimm_deploy.exporter.models.detection import batched_greedy_nms

PRE_NMS = 1000


def grid_points(shapes: list[tuple[int, int]], strides: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every level's grid points, level after level, row-major: (points [A, 2], stride of each [A])."""
    points, point_strides = [], []
    for (h, w), s in zip(shapes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        points.append(torch.stack([(xs + 0.5) * s, (ys + 0.5) * s], -1).reshape(-1, 2))
        point_strides.append(torch.full((h * w,), float(s)))
    return torch.cat(points), torch.cat(point_strides)


def flatten_levels(levels: list[torch.Tensor]) -> torch.Tensor:
    """[B, C, H, W] per level -> [B, A, C] over all locations, in ``grid_points`` order."""
    return torch.cat([t.flatten(2) for t in levels], 2).transpose(1, 2)


def decode_locations(cls: list[torch.Tensor], reg: list[torch.Tensor], ctr: list[torch.Tensor] | None,
                     points: torch.Tensor, img_size: tuple[int, int]):
    """Per location: (boxes [B, A, 4], best score [B, A], its class [B, A])."""
    scores = torch.sigmoid(flatten_levels(cls))
    if ctr is not None:
        scores = scores * torch.sigmoid(flatten_levels(ctr))
    best, labels = scores.max(dim=-1)
    dist = flatten_levels(reg)
    h, w = img_size
    x1 = (points[None, :, 0] - dist[..., 0]).clamp(min=0, max=w)
    y1 = (points[None, :, 1] - dist[..., 1]).clamp(min=0, max=h)
    x2 = (points[None, :, 0] + dist[..., 2]).clamp(min=0, max=w)
    y2 = (points[None, :, 1] + dist[..., 3]).clamp(min=0, max=h)
    return torch.stack([x1, y1, x2, y2], -1), best, labels


def detect(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, score_thresh: float,
           nms_thresh: float, max_detections: int, pre_nms: int):
    """The best ``pre_nms`` locations, then greedy class-aware NMS; the first ``max_detections`` kept."""
    k = min(pre_nms, scores.shape[1])
    top, idx = scores.topk(k, dim=1)
    boxes = torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4))
    return batched_greedy_nms(boxes, top, torch.gather(labels, 1, idx), nms_thresh, score_thresh, max_detections,
                              strict=True)
