"""Where an fp32 artifact departs from eager PyTorch, layer by layer. The dynamo ONNX exporter names
every tensor after the ``torch.export`` node that computes it, so the program it translated is run
in PyTorch node by node with each float value kept; the artifact's tensors of the same name (ONNX
through onnxruntime's augmentation, OpenVINO through the tensor names its IR keeps from the ONNX
graph) are compared with them in the program's order, each with the timm module that produced it."""

from __future__ import annotations

import numpy as np
from autotimm_deploy.exporter.formats.int8_plan import timm_path

AGAINST = "eager PyTorch (the program the ONNX exporter translated, run node by node)"


def eager_tensors(ctx, pictures: np.ndarray) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(order, values): every float tensor of the translated program on ``pictures``, by node name."""
    import torch
    from autotimm_deploy.exporter.formats.onnx_graph import translated_program

    graph = translated_program(ctx).module()
    order: list[dict] = []
    values: dict[str, np.ndarray] = {}

    class Keep(torch.fx.Interpreter):
        def run_node(self, node):
            value = super().run_node(node)
            if node.op == "call_function" and isinstance(value, torch.Tensor) and value.is_floating_point():
                values[node.name] = value.detach().float().numpy()
                order.append({"tensor": node.name, "node": node.name, "op": _op(node),
                              "module": _module(node)})
            return value

    with torch.no_grad():
        Keep(graph).run(torch.from_numpy(np.ascontiguousarray(pictures, dtype=np.float32)))
    return order, values


def _op(node) -> str:
    """aten's "convolution.default" -> "convolution"; a tuple item is named after its producer."""
    import operator

    import torch

    if node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0].lstrip("_")


def _module(node) -> str:
    """The innermost module the node ran in, without our wrapper's attribute."""
    stack = node.meta.get("nn_module_stack") or {}
    return timm_path(list(stack.values())[-1][0]) if stack else ""
