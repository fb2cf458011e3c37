"""Rewrites of the fp32 ONNX graph that change no value and let the runtimes fuse what they would
otherwise run one elementwise pass at a time.

GELU. torch.onnx writes ``gelu`` (opset < 20, no ``Gelu`` operator) as
``x * (0.5 * (1 + erf(x / sqrt 2)))``. ONNX Runtime's GELU fusion knows ``(x * (1 + erf(x / sqrt 2))) * 0.5``
and ``(0.5 * x) * (1 + erf(...))`` but not that order, so every GELU of a transformer's MLP ran as
five passes over its widest tensor. Moving the halving last is exact: a product with 0.5 is a change
of exponent, so ``x * (0.5 * y)`` and ``(x * y) * 0.5`` round to the same float (short of subnormals,
and of overflow, which is why float16 graphs, whose range ends at 65504, are left as they are).
OpenVINO and TensorRT fuse either order. The reordered product gets a new name, so that no tensor
of this graph is compared by name with a different quantity in a graph left as it was."""

from __future__ import annotations

import math

_TOLERANCE = 2e-3  # for sqrt 2, rounded to its dtype (bfloat16: 1.4140625); only whether runtimes fuse rests on it,
# while the rewrite's exactness rests on 1 and 0.5, which must be exact
_WIDE = (1, 16)  # TensorProto FLOAT, BFLOAT16: float32's range; FLOAT16's is too short (see above)


def fusable(proto) -> dict[str, int]:
    """Rewrite ``proto`` in place; how many of each pattern were rewritten (only those found)."""
    found = {"gelu": _gelu_halved_last(proto.graph)}
    return {k: v for k, v in found.items() if v}


def _scalars(graph) -> dict[str, float]:
    """The one-element float32 / bfloat16 constants of ``graph`` (initializers that are not also
    inputs, and Constant nodes), by name."""
    from onnx import numpy_helper

    inputs = {v.name for v in graph.input}
    values = {t.name: t for t in graph.initializer if t.name not in inputs}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = node.attribute[0].t
    out = {}
    for name, tensor in values.items():
        if math.prod(tensor.dims) == 1 and tensor.data_type in _WIDE:
            out[name] = float(numpy_helper.to_array(tensor).reshape(-1)[0])
    return out


def _gelu_halved_last(graph) -> int:
    scalars = _scalars(graph)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {v.name for v in graph.output}

    def only_consumer(name: str, op_type: str):
        users = consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in outputs:
            return users[0]
        return None

    def other(node, name: str) -> str | None:
        rest = [i for i in node.input if i != name]
        return rest[0] if len(node.input) == 2 and len(rest) == 1 else None

    def near(name: str | None, value: float, tolerance: float = 0.0) -> bool:
        return name in scalars and abs(scalars[name] - value) <= tolerance * abs(value)

    count = 0
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        scale = producer.get(erf.input[0])
        if scale is None or scale.op_type not in ("Div", "Mul") or len(scale.input) != 2:
            continue
        x, by = scale.input
        if not near(by, math.sqrt(2.0) if scale.op_type == "Div" else math.sqrt(0.5), _TOLERANCE):
            continue
        add = only_consumer(erf.output[0], "Add")
        if add is None or not near(other(add, erf.output[0]), 1.0):
            continue
        half = only_consumer(add.output[0], "Mul")
        half_name = other(half, add.output[0]) if half is not None else None
        if not near(half_name, 0.5):
            continue
        last = only_consumer(half.output[0], "Mul")
        if last is None or other(last, half.output[0]) != x:
            continue
        # x * (0.5 * s)  ->  (x * s) * 0.5: the same two nodes, their inputs exchanged, and the
        # product renamed (its value changed)
        product = f"{half.output[0]}_times_x"
        for info in graph.value_info:
            if info.name == half.output[0]:
                info.name = product
        del half.input[:]
        half.input.extend([x, add.output[0]])
        half.output[0] = product
        del last.input[:]
        last.input.extend([product, half_name])
        count += 1
    return count
