"""ONNX whose compute runs in fp16 or bf16 while its inputs and outputs stay fp32: the graph a
strongly typed TensorRT build (TensorRT 11) needs for reduced precision, and ``--format onnx
--fp16`` for ONNX Runtime's CUDA provider.

The cast happens in PyTorch before export, per top-level child module (backbone, FPN, heads): each
child's parameters are cast, float inputs are cast to the reduced type on the way in and back to
fp32 on the way out. What the task model does between its children (detection decode and NMS,
resizing logits to the input size, argmax) therefore stays fp32, so box coordinates at 640 px
keep full precision and thresholds compare fp32 scores.
"""

from __future__ import annotations

import copy
import dataclasses

from autotimm_deploy.exporter.formats.onnx_graph import export_graph

DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
# ONNX gives Conv and most compute ops a bfloat16 signature only from opset 22
MIN_OPSET = {"fp16": 18, "bf16": 22}


def cast_model(model, precision: str):
    """A copy of ``model`` whose top-level children compute in ``precision``; I/O stays fp32."""
    import torch

    dtype = getattr(torch, DTYPES[precision])

    def to_reduced(_module, args):
        return tuple(_cast(a, torch.float32, dtype) for a in args)

    def to_fp32(_module, _args, out):
        return _cast(out, dtype, torch.float32)

    twin = copy.deepcopy(model)
    children = [c for c in twin.children() if any(True for _ in c.parameters())]
    for child in children:
        child.to(dtype)
        child.register_forward_pre_hook(to_reduced)
        child.register_forward_hook(to_fp32)
    for attr in ("spec", "output_names", "preprocessing", "build_info"):
        if hasattr(model, attr):
            setattr(twin, attr, getattr(model, attr))
    return twin.eval()


def _cast(value, src, dst):
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(dst) if value.dtype == src else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, src, dst) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, src, dst) for k, v in value.items()}
    return value


def reduced_proto(ctx, precision: str):
    """(ONNX ModelProto with ``precision`` compute, what made it) for the model in ``ctx``."""
    opset = max(ctx.options.opset, MIN_OPSET[precision])
    # onnxscript's optimizer folds BatchNorm into an fp32 Conv bias inside a bf16 graph (an invalid
    # model), so bf16 graphs are exported without it; TensorRT fuses BatchNorm itself.
    options = dataclasses.replace(ctx.options, opset=opset,
                                  optimize_dynamo=ctx.options.optimize_dynamo and precision != "bf16")
    twin = dataclasses.replace(ctx, model=cast_model(ctx.model, precision), options=options)
    proto, graph = export_graph(twin)
    graph.info["compute"] = {"dtype": DTYPES[precision], "io": "float32",
                             "cast": "per top-level module (backbone, neck, heads); post-processing stays fp32"}
    return proto, graph
