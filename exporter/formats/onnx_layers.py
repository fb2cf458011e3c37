"""Where a reduced-precision ONNX graph departs from its fp32 graph, layer by layer: both graphs are
run with every intermediate float tensor marked as an output (Polygraphy's "mark all" comparison,
through onnxruntime's own augmentation), the tensors both graphs name are compared in graph order,
and each is mapped back to the timm module that produced it. The fp32 graph stands in for eager
PyTorch here: it passed its own parity gate against eager, and its tensors have names to match."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from autotimm_deploy.exporter.formats.onnx_int8 import module_name

SAVED = "_ReshapedSavedOutput"  # the suffix onnxruntime's augmentation gives each saved tensor
SHOWN = 5


def layer_divergence(reference, artifact: Path, pictures: np.ndarray, cosine_gate: float,
                     workdir: Path) -> dict:
    """Compare ``artifact`` (a saved ONNX file) with the fp32 ``reference`` proto on ``pictures``:
    the first tensors (graph order) whose cosine to the fp32 tensor falls below ``cosine_gate``, and
    the worst ones."""
    import onnx

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ref_path = Path(tmp, "reference.onnx")
        onnx.save_model(reference, str(ref_path))
        ref = _all_tensors(ref_path, Path(tmp, "reference-all.onnx"), pictures)
        out = _all_tensors(artifact, Path(tmp, "artifact-all.onnx"), pictures)
    weights = {i.name for i in reference.graph.initializer}
    rows, last_module = [], None
    for node in reference.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and any(t in weights for t in node.input):
            last_module = module_name(node, weights)
        for t in node.output:
            a, b = ref.get(t), out.get(t)
            if a is None or b is None or a.shape != b.shape or a.size == 0:
                continue
            a, b = a.astype(np.float64), b.astype(np.float64)
            scale = float(np.abs(a).max())
            denom = float(np.linalg.norm(a) * np.linalg.norm(b))
            cosine = float(a @ b / denom) if denom > 0 else (1.0 if not b.any() else 0.0)
            module = module_name(node, weights)
            rows.append({"tensor": t, "node": node.name, "op": node.op_type,
                         "module": module if module != node.name else (f"after {last_module}" if last_module else ""),
                         "cosine": round(cosine, 6),
                         "max_rel": round(float(np.abs(a - b).max()) / scale, 6) if scale > 0 else None})
    first = [r for r in rows if not np.isfinite(r["cosine"]) or r["cosine"] < cosine_gate][:SHOWN]
    worst = sorted(rows, key=lambda r: r["cosine"])[:SHOWN]
    return {"against": "the fp32 ONNX graph (itself parity-checked against eager)", "pictures": int(len(pictures)),
            "compared": len(rows), "cosine_gate": cosine_gate, "first": first, "worst": worst}


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
