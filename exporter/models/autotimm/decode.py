"""AutoTimm's detection postprocessing (``decode_fcos_detections``, ``ObjectDetector.predict``) as
fixed-shape graph code with the same meaning, for every location and class:

- score of a location = max over classes of ``sigmoid(cls) * sigmoid(centerness)`` (YOLOX: no
  centerness), its label the arg-max class; kept only when ``score > score_thresh`` (strict);
- box = grid point (``(i + 0.5) * stride``) minus/plus the predicted left/top, right/bottom
  distances, each coordinate clamped to the image;
- class-aware greedy NMS (``torchvision.ops.batched_nms``: a kept box retires the same-class boxes
  whose IoU with it is ``> nms_thresh``, in descending score order), first ``max_detections``.
  ``YOLOXDetector.predict`` runs ``ops.nms`` class by class and keeps the ``max_detections`` best
  of the union: the same boxes (classes never suppress each other, and the best ``N`` of the union
  are the first ``N`` greedy picks), listed by class there and by score here, with IoU computed on
  the boxes themselves (``class_offsets=False``).

NMS visits every location (``predict()`` cuts nothing before NMS either), so the result is exact
however many locations pass. Outputs follow our detection contract: ``boxes [B, N, 4]`` (x1, y1,
x2, y2, input pixels), ``scores [B, N]``, ``labels [B, N]`` (int64, -1 for padding),
``num_detections [B]``.
"""

from __future__ import annotations

import torch
from autotimm_deploy.exporter.core.operators import nms_operator_allowed, note_nms, unrolled_nms
from autotimm_deploy.exporter.models.nms import batched_greedy_nms

VANILLA_ABOVE = 1000  # torchvision's CPU batched_nms switches from the coordinate trick to a per-class loop above this
MATRIX_LIMIT = 2000  # locations up to which NMS computes the whole suppression matrix once


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
           nms_thresh: float, max_detections: int, class_offsets: bool = True, num_classes: int | None = None):
    """Greedy class-aware NMS over every location; the first ``max_detections`` kept, padded.

    As ``torchvision.ops.batched_nms`` on the CPU: candidates in score order, ties to the earlier
    location (its sort is stable); with at most ``VANILLA_ABOVE`` boxes passing, IoU is computed on
    boxes shifted by ``label * (max coordinate + 1)`` (its "coordinate trick", whose rounding we
    reproduce), otherwise on the boxes themselves. Without ``class_offsets``, always on the boxes
    themselves (``ops.nms`` class by class, as YOLOXDetector runs it). Up to ``MATRIX_LIMIT``
    locations, which box suppresses which is computed once as a matrix; above, each round compares
    its pick with every location (no [A, A] matrix). Both visit every location: nothing is cut before NMS.
    In the ONNX graph (``num_classes`` given), whatever the number of locations, ONNX's
    ``NonMaxSuppression`` (`models.nms`) on the same boxes, shifted as above, so its IoU is
    rounded as predict()'s."""
    if class_offsets:
        passing = scores > score_thresh
        corner = torch.where(passing[..., None], boxes, torch.full_like(boxes, float("-inf"))).amax(dim=(1, 2))
        trick = passing.sum(1) <= VANILLA_ABOVE
        shifted = torch.where(trick[:, None, None],
                              boxes + (labels.to(boxes.dtype) * (corner + 1)[:, None])[..., None], boxes)
    else:
        shifted = boxes
    if scores.shape[1] <= MATRIX_LIMIT or (num_classes is not None and nms_operator_allowed()):
        return batched_greedy_nms(boxes, scores, labels, nms_thresh, score_thresh, max_detections, strict=True,
                                  iou_boxes=shifted, num_classes=num_classes)
    return _nms_by_rounds(boxes, shifted, scores, labels, score_thresh, nms_thresh, max_detections)


def _nms_by_rounds(boxes, shifted, scores, labels, score_thresh: float, nms_thresh: float, rounds: int):
    """One pick per round: the best live location (the first on ties), its box selected by a one-hot
    product (exact: one term is non-zero), IoU with every location, same-class overlaps retired."""
    note_nms(unrolled_nms(rounds))
    x1, y1, x2, y2 = shifted.unbind(-1)
    corners = torch.stack([x1, y1, -x2, -y2], -1)  # max() over these gives the intersection's corners
    areas = (x2 - x1) * (y2 - y1)
    lab = labels.to(boxes.dtype)
    packed = torch.cat([corners, areas[..., None], lab[..., None], boxes], -1)  # [B, A, 10]
    live = torch.where(scores > score_thresh, scores, torch.full_like(scores, -1.0))
    positions = torch.arange(scores.shape[1], device=scores.device)
    picks, bests = [], []
    for _ in range(rounds):
        best, idx = live.max(dim=1, keepdim=True)
        chosen = positions == idx
        pick = (packed * chosen[..., None]).sum(1, keepdim=True)  # [B, 1, 10]
        meet = torch.maximum(corners, pick[..., :4])
        wh = (-(meet[..., :2] + meet[..., 2:4])).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        iou = inter / (pick[..., 4] + areas - inter)
        retire = ((iou > nms_thresh) & (lab == pick[..., 5])) | chosen
        live = torch.where(retire, torch.full_like(live, -1.0), live)
        picks.append(pick[:, 0])
        bests.append(best[:, 0])
    pick, best = torch.stack(picks, 1), torch.stack(bests, 1)
    valid = best >= 0
    out_boxes = torch.where(valid[..., None], pick[..., 6:], torch.zeros_like(pick[..., 6:]))
    out_labels = torch.where(valid, pick[..., 5].to(labels.dtype), torch.full_like(labels[:, :rounds], -1))
    return out_boxes, torch.where(valid, best, torch.zeros_like(best)), out_labels, valid.sum(1)
