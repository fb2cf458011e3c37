"""OpenVINO IR converted from our ONNX graph, given back the operators OpenVINO's own PyTorch
frontend would have used where the ONNX graph spelled them out. Each computes the same function (up
to float rounding; parity checks the artifact as always); the CPU plugin runs the spelled-out forms
as separate layers with layout changes between them.

- Group norm: ``Reshape [N, G, -1] -> MVN -> Reshape back`` becomes ``GroupNormalization``
  (the reshapes of a blocked layout cost each norm two reorders; PoolFormer ran 1.2x slower).
- Roll: ``Concat(x[s:], x[:s])`` along one axis (how torch.onnx writes ``torch.roll``) becomes
  ``Roll`` (Swin's shifted windows).
- Hard sigmoid: ``HardSigmoid(alpha=1/6, beta=0.5)`` becomes ``HSigmoid``, which the CPU plugin
  fuses into the convolution before it (it ran as its own layer between two reorders).
"""

from __future__ import annotations

_TOLERANCE = 1e-6


def fusable(model) -> dict[str, int]:
    """Rewrite ``model`` in place; how many of each pattern were rewritten (only those found)."""
    found = {}
    for name, rewrite in (("group_norm", _group_norm), ("roll", _roll), ("hsigmoid", _hsigmoid)):
        count = sum(_tried(rewrite, node) for node in list(model.get_ordered_ops()))
        if count:
            found[name] = count
    if found:
        model.validate_nodes_and_infer_types()
    return found


def _tried(rewrite, node) -> bool:
    """A rewrite is an optimisation: one that cannot read a node leaves it as it is (a new node is
    checked when it is built, before anything is replaced)."""
    try:
        return rewrite(node)
    except Exception:  # noqa: BLE001
        return False


def _source(node, index: int):
    return node.input(index).get_source_output().get_node()


def _constant(node, index: int):
    """The value of ``node``'s input ``index`` as a flat list, or None when it is computed."""
    source = _source(node, index)
    return source.get_data().reshape(-1).tolist() if source.get_type_name() == "Constant" else None


def _only_user(output):
    users = list(output.get_target_inputs())
    return users[0].get_node() if len(users) == 1 else None


def _replace(old, new) -> bool:
    new.set_friendly_name(old.get_friendly_name())
    old.output(0).replace(new.output(0))
    return True


def _static(shape) -> list[int] | None:
    return [d.get_length() for d in shape] if shape.rank.is_static and all(d.is_static for d in shape) else None


def _group_norm(node) -> bool:
    """MVN over the last axis of a ``[N, G, K]`` view of a ``[N, C, ...]`` tensor, viewed back."""
    import numpy as np
    import openvino as ov

    if node.get_type_name() != "MVN" or node.get_input_size() != 2:  # MVN-6: the axes are an input
        return False
    if node.get_attributes().get("eps_mode", "").lower() != "inside_sqrt":
        return False
    if not node.get_attributes().get("normalize_variance"):
        return False
    into, back = _source(node, 0), _only_user(node.output(0))
    if into.get_type_name() != "Reshape" or back is None or back.get_type_name() != "Reshape":
        return False
    grouped, x = node.get_output_partial_shape(0), into.input(0).get_source_output()
    shape = x.get_partial_shape()
    if (grouped.rank.is_dynamic or shape.rank.is_dynamic or grouped.rank.get_length() != 3
            or shape.rank.get_length() < 4):
        return False  # not [N, G, K] viewing [N, C, H, W, ...]
    axes = _constant(node, 1)
    if axes is None or [a % 3 for a in axes] != [2]:
        return False
    per_channel, per_group = _static(shape[1:]), _static(grouped[1:])  # [C, H, W, ...], [G, K]
    if per_channel is None or per_group is None or per_channel[0] % per_group[0]:
        return False
    c, groups = per_channel[0], per_group[0]
    if per_group[1] != int(np.prod(per_channel)) // groups or back.get_output_partial_shape(0) != shape:
        return False
    norm = ov.opset12.group_normalization(x, ov.opset13.constant(np.ones(c, np.float32)),
                                          ov.opset13.constant(np.zeros(c, np.float32)),
                                          num_groups=groups, epsilon=float(node.get_attributes()["eps"]))
    return _replace(back, norm)


def _slice_of(node, dims: list[int]):
    """(source output, start, stop, axis) of a unit-step ``Slice`` along one axis, else None."""
    if node.get_type_name() != "Slice" or node.get_input_size() != 5:
        return None
    start, stop, step, axes = (_constant(node, i) for i in range(1, 5))
    if None in (start, stop, step, axes) or len(axes) != 1 or step != [1]:
        return None
    axis = axes[0] % len(dims)
    size = dims[axis]
    lo = start[0] + size if start[0] < 0 else start[0]
    hi = min(stop[0] + size if stop[0] < 0 else stop[0], size)
    return node.input(0).get_source_output(), lo, hi, axis


def _roll(node) -> bool:
    """``Concat(x[s:], x[:s])`` along the axis of both slices: ``Roll(x, -s)``."""
    import numpy as np
    import openvino as ov

    if node.get_type_name() != "Concat" or node.get_input_size() != 2:
        return False
    first, second = _source(node, 0), _source(node, 1)
    x_shape = first.get_input_partial_shape(0) if first.get_type_name() == "Slice" else None
    if x_shape is None or x_shape.rank.is_dynamic:
        return False
    dims = [d.get_length() if d.is_static else -1 for d in x_shape]
    a, b = _slice_of(first, dims), _slice_of(second, dims)
    if a is None or b is None or a[0] != b[0] or a[3] != b[3] or node.get_attributes()["axis"] % len(dims) != a[3]:
        return False
    size = dims[a[3]]
    if size <= 0 or not (0 < a[1] < size and a[2] == size and b[1] == 0 and b[2] == a[1]):
        return False
    source, shifts, axes = a[0], [size - a[1]], [a[3]]
    inner = source.get_node()
    if inner.get_type_name() == "Roll" and len(source.get_target_inputs()) == 2:  # only these two slices read it
        before = _constant(inner, 1), _constant(inner, 2)
        if None not in before and len(before[0]) == len(before[1]) and a[3] not in [x % len(dims) for x in before[1]]:
            # torch.roll over two axes, as one Roll (as OpenVINO's own frontend writes it)
            source, shifts, axes = inner.input(0).get_source_output(), before[0] + shifts, before[1] + axes
    roll = ov.opset7.roll(source, ov.opset13.constant(np.array(shifts, np.int64)),
                          ov.opset13.constant(np.array(axes, np.int64)))
    return _replace(node, roll)


def _hsigmoid(node) -> bool:
    """``clamp(x / 6 + 1 / 2, 0, 1)`` is ``HSigmoid``'s ``min(max(x + 3, 0), 6) / 6``."""
    import openvino as ov

    if node.get_type_name() != "HardSigmoid":
        return False
    alpha, beta = _constant(node, 1), _constant(node, 2)
    if alpha is None or beta is None or abs(alpha[0] - 1 / 6) > _TOLERANCE or abs(beta[0] - 0.5) > _TOLERANCE:
        return False
    return _replace(node, ov.opset5.hsigmoid(node.input(0).get_source_output()))
