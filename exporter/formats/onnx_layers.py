"""Where a reduced-precision ONNX graph departs from its fp32 graph, layer by layer: both graphs are
run with every intermediate float tensor marked as an output (Polygraphy's "mark all" comparison,
through onnxruntime's own augmentation), the tensors both graphs name are compared in graph order,
and each is mapped back to the timm module that produced it. The fp32 graph stands in for eager
PyTorch here: it passed its own parity gate against eager, and its tensors have names to match.
An fp32 graph that fails is compared with eager PyTorch itself (``eager_layers``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from autotimm_deploy.exporter.formats.eager_layers import AGAINST, eager_tensors
from autotimm_deploy.exporter.formats.layers import compare_layers, module_after
from autotimm_deploy.exporter.formats.onnx_int8 import module_name

SAVED = "_ReshapedSavedOutput"  # the suffix onnxruntime's augmentation gives each saved tensor


def layer_divergence(reference, artifact: Path, pictures: np.ndarray, cosine_gate: float,
                     workdir: Path) -> dict:
    """Compare ``artifact`` (a saved ONNX file) with the fp32 ``reference`` proto on ``pictures``."""
    import onnx

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ref_path = Path(tmp, "reference.onnx")
        onnx.save_model(reference, str(ref_path))
        ref = _all_tensors(ref_path, Path(tmp, "reference-all.onnx"), pictures)
        out = _all_tensors(artifact, Path(tmp, "artifact-all.onnx"), pictures)
    weights = {i.name for i in reference.graph.initializer}
    order, last = [], None
    for node in reference.graph.node:
        own = module_name(node, weights)
        if own != node.name:
            last = own
        order += [{"tensor": t, "node": node.name, "op": node.op_type, "module": module_after(own, node.name, last)}
                  for t in node.output]
    return compare_layers(order, ref, out, cosine_gate, "the fp32 ONNX graph (itself parity-checked against eager)",
                          len(pictures))


def eager_divergence(ctx, artifact: Path, pictures: np.ndarray, cosine_gate: float) -> dict:
    """Compare an fp32 ``artifact`` from the dynamo exporter with eager PyTorch on ``pictures``."""
    order, ref = eager_tensors(ctx, pictures)
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        out = _all_tensors(artifact, Path(tmp, "artifact-all.onnx"), pictures)
    return compare_layers(order, ref, out, cosine_gate, AGAINST, len(pictures))


def _all_tensors(path: Path, augmented: Path, pictures: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor of the graph at ``path`` on ``pictures``, flattened, by tensor name."""
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    modify_model_output_intermediate_tensors(str(path), str(augmented))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named tensor
    sess = ort.InferenceSession(str(augmented), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(None, {name: np.ascontiguousarray(pictures, dtype=np.float32)})
    return {n[: -len(SAVED)]: v for n, v in zip(names, values) if n.endswith(SAVED)}
