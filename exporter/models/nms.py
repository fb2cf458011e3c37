"""Greedy class-aware NMS, the one meaning every detection model's graph gives it (what
``torchvision.ops.batched_nms`` computes): candidates scoring ``>= score_threshold`` (``>`` when
``strict``) are visited in score order, ties to the lower index; each kept one retires the
same-class candidates whose IoU with it is ``> iou_threshold``. Its outputs are the first
``rounds`` picks, padded: (candidate index [B, N], its score [B, N], valid [B, N]); a padded pick
has index 0 and score -1.

Two forms of it, chosen while a format traces the model (`exporter.core.operators`):

- unrolled (every format): ``rounds`` rounds of "take the best live candidate, retire what it
  suppresses" on a suppression matrix computed once, plain tensor math with fixed shapes and a
  dynamic batch (TorchScript, torch.export / AOTInductor, ExecuTorch, LiteRT, Core ML, ncnn);
- one operator, ``autotimm::greedy_nms`` (while ``operators.nms_operator()`` is on: the ONNX
  graph), which the ONNX format translates into ``NonMaxSuppression`` (`formats.onnx_nms`). Its
  eager implementation here (what the program runs outside ONNX, e.g. in a layer diagnosis) picks
  one candidate per round, with the IoU computed as the matrix computes it, so both forms agree bit
  for bit.

IoU is computed as torchvision's NMS kernel computes it (areas not clamped, no epsilon: two empty
boxes give NaN, which suppresses nothing, as there; an inverted box overlaps nothing).
"""

from __future__ import annotations

import torch
from autotimm_deploy.exporter.core.operators import ONNX_NMS, note_nms, nms_operator_allowed, unrolled_nms


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """boxes [B, K, 4] -> IoU [B, K, K]."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area[:, :, None] + area[:, None, :] - inter)


def batched_greedy_nms(boxes, scores, labels, iou_threshold: float, score_threshold: float, rounds: int,
                       strict: bool = False, iou_boxes=None, num_classes: int | None = None):
    """boxes [B, K, 4], scores [B, K], labels [B, K] (candidates) -> the first ``rounds`` boxes greedy
    class-aware NMS keeps, padded: (boxes [B, N, 4], scores [B, N], labels [B, N], count [B]).
    ``iou_boxes`` (default ``boxes``): the coordinates overlaps are computed on."""
    idx, best, valid = greedy_nms_picks(boxes if iou_boxes is None else iou_boxes, scores, labels, iou_threshold,
                                        score_threshold, rounds, strict, num_classes)
    out_boxes = torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4))
    out_boxes = torch.where(valid[..., None], out_boxes, torch.zeros_like(out_boxes))
    out_labels = torch.where(valid, torch.gather(labels, 1, idx), torch.full_like(idx, -1))
    return out_boxes, torch.where(valid, best, torch.zeros_like(best)), out_labels, valid.sum(1)


def greedy_nms_picks(boxes, scores, labels, iou_threshold: float, score_threshold: float, rounds: int,
                     strict: bool = False, num_classes: int | None = None):
    """(candidate index [B, N], its score [B, N], valid [B, N]) of the first ``rounds`` picks: the
    operator while a format that has one traces the model (``num_classes``, the number of label
    values, given), else the unrolled rounds.

    Which candidate suppresses which is computed once ([B, K, K]); each round is then five ops:
    take the best live candidate, look up its row, retire what it suppresses (itself included)."""
    if num_classes is not None and nms_operator_allowed():
        note_nms(ONNX_NMS)
        return torch.ops.autotimm.greedy_nms(boxes, scores, labels, float(iou_threshold), float(score_threshold),
                                             rounds, strict, num_classes)
    note_nms(unrolled_nms(rounds))
    k = scores.shape[1]
    same = labels[:, :, None] == labels[:, None, :]
    eye = torch.arange(k, device=scores.device)[:, None] == torch.arange(k, device=scores.device)[None, :]
    kills = ((pairwise_iou(boxes) > iou_threshold) & same) | eye[None]
    live = _live_scores(scores, score_threshold, strict)
    picks, bests = [], []
    for _ in range(rounds):
        best, idx = live.max(dim=1)
        picks.append(idx)
        bests.append(best)
        row = torch.gather(kills, 1, idx[:, None, None].expand(-1, 1, k))[:, 0]
        live = torch.where(row, torch.full_like(live, -1.0), live)
    idx, best = torch.stack(picks, 1), torch.stack(bests, 1)
    return idx, best, best >= 0


def _live_scores(scores: torch.Tensor, score_threshold: float, strict: bool) -> torch.Tensor:
    """The candidates' scores, -1 where a score does not pass the threshold."""
    passing = scores > score_threshold if strict else scores >= score_threshold
    return torch.where(passing, scores, torch.full_like(scores, -1.0))


@torch.library.custom_op("autotimm::greedy_nms", mutates_args=())
def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float,
               score_threshold: float, rounds: int, strict: bool,
               num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The operator form (see the module's docstring): one pick per round, IoU of the pick with every
    candidate (no [K, K] matrix, so it runs on every location of a large input). ``num_classes`` (the
    label values are 0 .. num_classes - 1) shapes the translated graph only."""
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"greedy_nms: a label is {int(labels.max())}, but num_classes is {num_classes}")
    k = scores.shape[1]
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    positions = torch.arange(k, device=scores.device)
    live = _live_scores(scores, score_threshold, strict)
    picks, bests = [], []
    for _ in range(rounds):
        best, idx = live.max(dim=1, keepdim=True)
        pick = torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4))  # [B, 1, 4]
        inter = (torch.minimum(pick[..., 2:], boxes[..., 2:]) - torch.maximum(pick[..., :2], boxes[..., :2]))
        inter = inter.clamp(min=0).prod(-1)
        iou = inter / (torch.gather(area, 1, idx) + area - inter)
        retire = ((iou > iou_threshold) & (labels == torch.gather(labels, 1, idx))) | (positions == idx)
        live = torch.where(retire, torch.full_like(live, -1.0), live)
        picks.append(idx[:, 0])
        bests.append(best[:, 0])
    idx, best = torch.stack(picks, 1), torch.stack(bests, 1)
    valid = best >= 0
    return torch.where(valid, idx, torch.zeros_like(idx)), best, valid


def _greedy_nms_shapes(boxes, scores, labels, iou_threshold, score_threshold, rounds, strict, num_classes):
    """The operator's outputs without running it (what torch.export traces with)."""
    b = scores.shape[0]
    return (scores.new_empty((b, rounds), dtype=torch.int64), scores.new_empty((b, rounds)),
            scores.new_empty((b, rounds), dtype=torch.bool))


greedy_nms.register_fake(_greedy_nms_shapes)
