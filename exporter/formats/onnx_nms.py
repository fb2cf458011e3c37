"""The detection models' NMS operator (``autotimm::greedy_nms``, `models.nms`) in ONNX: ONNX's own
``NonMaxSuppression``, then its selections as the operator's fixed-shape outputs, so the graph
holds ~25 nodes where the unrolled rounds took ~35 per detection. It has exactly the operator's
meaning in ONNX Runtime (CPU), and in OpenVINO once `exact_openvino_nms` has adjusted its IR:

- which candidates take part is decided here, with the operator's own comparison (``>=`` the score
  threshold, or ``>`` when strict), on the scores as they are; the others get ``-inf`` and
  ``NonMaxSuppression`` a score threshold of the lowest finite float, which every runtime's
  threshold (``>`` in ONNX Runtime and TensorRT, ``>=`` in OpenVINO) puts above ``-inf`` and
  below every real score;
- class-aware through per-class scores ``[B, C, K]``: a candidate's score sits in the row of its
  label only (not the coordinate-offset trick, which would round its IoU);
- IoU ``> iou_threshold`` suppresses, as ONNX Runtime and TensorRT compare; ONNX Runtime computes
  IoU in torchvision's float order and breaks ties of score to the lower index, as greedy NMS does.
  A box with x2 < x1 or y2 < y1 overlaps nothing in torchvision's arithmetic, while ONNX orders
  each box's corners first: such a box gets zero width or height here, so it overlaps nothing there
  either;
- the selected (batch, class, box) triples mark the kept candidates; ``TopK`` over the kept scores
  (ties to the lower index, as the ONNX spec asks) gives the first ``rounds`` picks in greedy order,
  padded with score -1 and index 0.
"""

from __future__ import annotations

from typing import Any

from autotimm_deploy.exporter.core.errors import ExportFailed

LOWEST_FLOAT32 = -3.4028234663852886e38


def translation_table() -> dict[Any, Any]:
    """``torch.onnx.export(custom_translation_table=...)``: the operator, when a model registered it."""
    import torch

    op = getattr(torch.ops.autotimm, "greedy_nms", None)
    return {op.default: greedy_nms_onnx} if op is not None else {}


def greedy_nms_onnx(boxes, scores, labels, iou_threshold: float, score_threshold: float, rounds: int, strict: bool,
                    num_classes: int):
    """onnxscript for ``autotimm::greedy_nms``: (index [B, N], score [B, N], valid [B, N])."""
    from onnxscript import opset18 as op

    def ints(*values):
        return op.Constant(value_ints=list(values))

    threshold = op.Constant(value_float=score_threshold)
    passing = op.Greater(scores, threshold) if strict else op.GreaterOrEqual(scores, threshold)
    classes = op.Reshape(op.Range(op.Constant(value_int=0), op.Constant(value_int=num_classes),
                                  op.Constant(value_int=1)), ints(1, -1, 1))
    own = op.And(op.Equal(op.Unsqueeze(labels, ints(1)), classes), op.Unsqueeze(passing, ints(1)))
    per_class = op.Where(own, op.Unsqueeze(scores, ints(1)), op.Constant(value_float=float("-inf")))  # [B, C, K]
    corner = op.Slice(boxes, ints(0), ints(2), ints(2))
    upright = op.Concat(corner, op.Max(corner, op.Slice(boxes, ints(2), ints(4), ints(2))), axis=2)
    selected = op.NonMaxSuppression(upright, per_class, ints(rounds), op.Constant(value_floats=[iou_threshold]),
                                    op.Constant(value_floats=[LOWEST_FLOAT32]))  # [M, 3]: batch, class, box
    where = op.Gather(selected, ints(0, 2), axis=1)
    dropped = op.Expand(op.Constant(value_float=-1.0), op.Shape(scores))
    kept = op.ScatterND(dropped, where, op.GatherND(scores, where))
    padding = op.Expand(op.Constant(value_float=-1.0), op.Concat(op.Shape(scores, end=1), ints(rounds), axis=0))
    best, index = op.TopK(op.Concat(kept, padding, axis=1), ints(rounds), axis=1)
    valid = op.GreaterOrEqual(best, op.Constant(value_float=0.0))
    return op.Where(valid, index, op.Constant(value_int=0)), best, valid


def exact_openvino_nms(model) -> int:
    """Give an OpenVINO model converted from our ONNX graph the operator's meaning: its
    NonMaxSuppression suppresses at IoU ``>=`` its threshold (ONNX: ``>``), so the threshold becomes
    the next float32 above it (for a float32 IoU, ``>= next(t)`` is ``> t``); its TopK keeps ties in
    no set order, so the TopK after each NMS becomes stable (ties to the lower index, as ONNX asks).
    Returns how many NMS operations were adjusted."""
    import numpy as np
    import openvino as ov

    count = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "NonMaxSuppression":
            continue
        source = node.input_value(3).get_node()
        if source.get_type_name() != "Constant":
            raise ExportFailed(f"OpenVINO's NonMaxSuppression has a computed IoU threshold ({source.get_type_name()})")
        threshold = np.float32(source.get_data())
        nudged = np.nextafter(threshold, np.float32(np.inf), dtype=np.float32)
        node.input(3).replace_source_output(ov.opset13.constant(np.array(nudged, np.float32)).output(0))
        for topk in _downstream(node, "TopK"):
            topk.set_attribute("stable", True)
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


def _downstream(node, type_name: str) -> list:
    """The nearest ``type_name`` operations fed, directly or not, by ``node``."""
    found, seen, todo = [], set(), [node]
    while todo:
        for output in todo.pop().outputs():
            for target in output.get_target_inputs():
                consumer = target.get_node()
                if consumer.get_name() in seen:
                    continue
                seen.add(consumer.get_name())
                (found if consumer.get_type_name() == type_name else todo).append(consumer)
    return found
