"""Where an OpenVINO int8 or bf16 artifact departs from its fp32 IR, layer by layer: both models are
compiled with every operation's output marked as a model output, run on the same pictures (the
reference at f32, the artifact at its own inference precision), and the outputs of the operations
both name are compared in graph order and mapped back to timm module names through the ONNX graph
the IR was converted from. An fp32 IR that fails is compared with eager PyTorch itself, through
the ONNX tensor names its operations keep (``eager_layers``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from autotimm_deploy.exporter.formats.eager_layers import AGAINST, eager_tensors
from autotimm_deploy.exporter.formats.layers import compare_layers, module_after

SKIPPED = ("Constant", "Parameter", "Result")


def layer_divergence(reference, modules: dict[str, str], artifact: Path, precision: str, pictures: np.ndarray,
                     cosine_gate: float) -> dict:
    """``reference``: the fp32 ``ov.Model``; ``modules``: ONNX node name -> timm module;
    ``precision``: the artifact's inference precision (f32, bf16, default)."""
    import openvino as ov

    core = ov.Core()
    ref, order = _all_outputs(core, reference.clone(), "f32", pictures, modules)
    out, _ = _all_outputs(core, core.read_model(str(artifact)), precision, pictures, modules)
    return compare_layers(order, ref, out, cosine_gate, "the fp32 OpenVINO IR run at f32 (the same graph before "
                          "quantization, itself parity-checked against eager)", len(pictures))


def eager_divergence(ctx, artifact: Path, precision: str, pictures: np.ndarray, cosine_gate: float) -> dict:
    """Compare an fp32 IR converted from the dynamo exporter's ONNX with eager PyTorch: its operations'
    outputs keep the ONNX tensor names, which are the PyTorch program's node names."""
    import openvino as ov

    order, ref = eager_tensors(ctx, pictures)
    core = ov.Core()
    out, _ = _all_outputs(core, core.read_model(str(artifact)), precision, pictures, {})
    return compare_layers(order, ref, out, cosine_gate, AGAINST, len(pictures))


def _all_outputs(core, model, precision: str, pictures: np.ndarray, modules: dict[str, str]):
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() not in SKIPPED]
    model.add_outputs([op.output(i) for op in ops for i in range(op.get_output_size())])
    config = {} if precision == "default" else {"INFERENCE_PRECISION_HINT": precision}
    compiled = core.compile_model(model, "CPU", config)
    values = compiled(np.ascontiguousarray(pictures, dtype=np.float32))
    by_port = {}  # (producer, port) -> value: each model output is a Result fed by one operation's port
    for j, port in enumerate(model.outputs):
        src = port.get_node().input_value(0)
        by_port[(src.get_node().get_friendly_name(), src.get_index())] = np.asarray(values[j])
    out, order, last = {}, [], None
    for op in ops:
        name = op.get_friendly_name()
        base = name.split("/")[0]
        own = modules.get(base)
        if own and own != base:
            last = own
        for i in range(op.get_output_size()):
            if (name, i) in by_port:
                key = f"{name}:{i}"
                out[key] = by_port[(name, i)]
                out.update({t: out[key] for t in op.output(i).get_names()})  # the ONNX tensor names it keeps
                order.append({"tensor": key, "node": name, "op": op.get_type_name(),
                              "module": module_after(own, base, last)})
    return out, order
