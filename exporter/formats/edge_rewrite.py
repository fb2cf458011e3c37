"""What the edge converters cannot take, rewritten once for all four (ExecuTorch, LiteRT, Core ML,
ncnn) in the ``torch.export`` program they start from (issue #32).

- ``Tensor.unfold`` (halo attention's overlapping windows, timm's ``HaloAttn``: halonet, sehalonet,
  halo2botnet): Core ML has no translation for it, LiteRT's converter rejected the pad before it
  (``unfold`` made it six axes), pnnx leaves it as a PyTorch op. ``x.unfold(d, size, step)`` is its
  windows: ``size``-long slices of axis ``d`` every ``step``, stacked at ``d``, the window axis
  moved last. Two unfolds of a map's last two axes read only through reshapes (HaloAttn's) are
  written as the windows flattened, ``(B, C, windows, size * size)``: the same elements in the same
  order, no tensor of six axes (Core ML holds five).
- An operand of add / sub / mul / div that is an ``expand`` (or a permute of one) where
  broadcasting gives the same result, left to broadcast, also along a symbolic batch: LiteRT's
  converter rejected HaloAttn's relative logits, two expanded five-axis terms added, and ECA's gate
  (``x * y.expand_as(x)``, ecaresnet50d) as not broadcast-compatible.

- ``addcmul`` / ``addcdiv`` (ConvNeXt-V2's global response norm: ``torch.addcmul``), which Core ML
  and pnnx have no translation for: decomposed into their multiplies / divides and add (PyTorch's own
  decompositions, `EDGE_DECOMPOSED`).

- ``sum`` / ``mean`` over the axis a ``stack`` just made, as the stacked tensors added (EfficientViM's
  distilled head, ``torch.stack(logits).sum(0)``): pnnx puts that axis where ncnn has no axis (the
  batch's) and ncnn summed over the classes instead.

- torchvision's ``roi_align`` (AutoTimm's InstanceSegmentor pools its mask features with it), which
  ExecuTorch has no kernel for and LiteRT and Core ML cannot read: as matrix products
  (`exporter/formats/roi_align.py`).

- For Core ML alone (`COREML_REWRITES`): ``upsample_bicubic2d`` (CrossViT resizes one branch's
  tokens to the other's grid with ``F.interpolate(mode="bicubic")``), which coremltools has no
  translation for, as two matrix products with constant interpolation matrices.

- For LiteRT alone (`LITERT_REWRITES`): a 1-wide ``conv1d`` (stride 1, no padding, one group;
  EfficientViM's projections) as its weight's matrix times the input. LiteRT's converter lowered it
  to a ``tfl.batch_matmul`` of the wrong rank ("expected 3 but got 4") and failed; the other three
  convert the convolution as it is.

The graph is exported again after the rewrite, so a dynamic batch stays dynamic and every node has
its shapes (which `ncnn_rewrite` reads).
"""

from __future__ import annotations

from autotimm_deploy.exporter.formats.torch_program import folded_program


def edge_program(module, example, dims=None, also=()):
    """``folded_program(module, example, dims)`` with the ops above decomposed, every ``unfold`` written
    as its windows, expanded operands of elementwise ops left to broadcast, sums of a stack added and
    RoIAlign as matrix products;
    ``also``: a format's own rewrites (`LITERT_REWRITES`)."""
    import warnings

    import torch

    program = folded_program(module, example, dims)
    program = decomposed(program)
    graph_module = program.module()
    changed = [rewrite(graph_module.graph) for rewrite in (broadcast_not_expanded, unfold_as_windows,
                                                               stack_reduced_as_adds, roi_align_as_products, *also)]
    if not any(changed):
        return program
    graph_module.recompile()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(graph_module, (example,), dynamic_shapes=dims, strict=False)


EDGE_DECOMPOSED = ("addcmul", "addcdiv")  # aten ops written as their parts for every edge converter


def decomposed(program):
    """``program`` with the `EDGE_DECOMPOSED` ops it holds replaced by PyTorch's decompositions."""
    import torch
    from torch._decomp import get_decompositions

    ops = [getattr(torch.ops.aten, name) for name in EDGE_DECOMPOSED]
    held = {n.target for n in program.graph.nodes if n.op == "call_function"}
    if not any(op.default in held for op in ops):
        return program
    return program.run_decompositions(get_decompositions(ops))


def unfold_as_windows(graph) -> bool:
    """Replace each ``aten.unfold`` over an axis of fixed size in ``graph`` by slices + stack +
    permute (the new nodes carry no shapes: export the graph again); whether any was replaced."""
    import torch

    aten = torch.ops.aten
    replaced = False
    erased = set()
    for node in [n for n in graph.nodes if n.op == "call_function" and n.target is aten.unfold.default]:
        if node in erased:
            continue  # the second of a pair
        second = _flat_windows(graph, node)
        if second is not None:
            erased.add(second)
            replaced = True
            continue
        x, dim, size, step = node.args
        out = node.meta["val"]  # the unfold's own shapes (its input may be a replaced unfold)
        rank = out.dim() - 1
        dim %= max(rank, 1)
        count = out.shape[dim]
        if not isinstance(count, int):
            continue  # a symbolic axis (the batch): no fixed number of windows
        with graph.inserting_before(node):
            windows = [graph.call_function(aten.slice.Tensor, (x, dim, k * step, k * step + size)) for k in range(count)]
            stacked = graph.call_function(aten.stack.default, (windows, dim))
            order = [a for a in range(rank + 1) if a != dim + 1] + [dim + 1]
            node.replace_all_uses_with(graph.call_function(aten.permute.default, (stacked, order)))
        graph.erase_node(node)
        replaced = True
    return replaced


def roi_align_as_products(graph) -> bool:
    """Each ``torchvision::roi_align`` in ``graph`` computed by `roi_align.roi_align` (traced into
    matrix products when the graph is exported again); whether there was one."""
    from autotimm_deploy.exporter.formats.roi_align import roi_align

    nodes = [n for n in graph.nodes if n.op == "call_function" and str(n.target) == "torchvision.roi_align.default"]
    for node in nodes:
        node.target = roi_align
    return bool(nodes)


def stack_reduced_as_adds(graph) -> bool:
    """``sum(stack(xs, d), d)`` (or ``mean``) as ``xs[0] + xs[1] + ...`` (divided by their count); whether
    any was replaced."""
    import torch

    aten = torch.ops.aten
    replaced = False
    for node in [n for n in graph.nodes if n.op == "call_function"
                 and n.target in (aten.sum.dim_IntList, aten.mean.dim)]:
        stack = node.args[0]
        if getattr(stack, "target", None) is not aten.stack.default or len(stack.users) != 1:
            continue
        pieces, d = stack.args[0], (stack.args[1] if len(stack.args) > 1 else 0)
        rank = stack.meta["val"].dim()
        dims = node.args[1] if len(node.args) > 1 else None
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if dims is None or [a % rank for a in dims] != [d % rank] or keepdim or node.kwargs.get("dtype"):
            continue
        with graph.inserting_before(node):
            total = pieces[0]
            for piece in pieces[1:]:
                total = graph.call_function(aten.add.Tensor, (total, piece))
            if node.target is aten.mean.dim:
                total = graph.call_function(aten.div.Tensor, (total, len(pieces)))
            node.replace_all_uses_with(total)
        graph.erase_node(node)
        graph.erase_node(stack)
        replaced = True
    return replaced


CONV1D_DEFAULTS = (None, [1], [0], [1], 1)  # aten.conv1d's bias, stride, padding, dilation, groups


def pointwise_conv1d_as_matmul(graph) -> bool:
    """``conv1d(x, w, b)`` with a 1-wide kernel, stride 1, no padding and one group as
    ``w[:, :, 0] @ x + b[:, None]``; whether any was replaced."""
    import torch

    aten = torch.ops.aten
    replaced = False
    for node in [n for n in graph.nodes if n.op == "call_function" and n.target is aten.conv1d.default]:
        x, weight, bias, stride, padding, dilation, groups = [*node.args, *CONV1D_DEFAULTS[len(node.args) - 2:]]
        if node.kwargs or _fixed(weight) is None or _fixed(weight)[-1] != 1 or list(stride) != [1] \
                or padding not in ([0], (0,), "valid") or list(dilation) != [1] or groups != 1:
            continue
        with graph.inserting_before(node):
            out = graph.call_function(aten.matmul.default, (graph.call_function(aten.squeeze.dim, (weight, -1)), x))
            if bias is not None:
                out = graph.call_function(aten.add.Tensor, (out, graph.call_function(aten.unsqueeze.default,
                                                                                     (bias, -1))))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        replaced = True
    return replaced


LITERT_REWRITES = (pointwise_conv1d_as_matmul,)


def bicubic_as_matmuls(graph) -> bool:
    """``upsample_bicubic2d`` between fixed sizes (CrossViT's branches resized to each other) as
    ``Mh @ x @ Mw``: each output row / column PyTorch's bicubic mix of four input ones, the
    matrices constants (`cubic_matrix`); whether any was replaced."""
    import warnings

    import torch

    aten = torch.ops.aten
    replaced = False
    for node in [n for n in graph.nodes if n.op == "call_function"
                 and n.target in (aten.upsample_bicubic2d.vec, aten.upsample_bicubic2d.default)]:
        args = [*node.args, *[None] * 5][:5]
        x, align = args[0], bool(args[2] if len(node.args) > 2 else node.kwargs.get("align_corners", False))
        scales = (args[3] or [None, None]) if node.target is aten.upsample_bicubic2d.vec else args[3:5]
        sizes = [getattr(n.meta.get("val"), "shape", [None])[-2:] if isinstance(n, torch.fx.Node) else [None]
                 for n in (x, node)]  # (h, w) in and out; the batch may be dynamic
        if node.kwargs.keys() - {"align_corners"} or not all(isinstance(v, int) for hw in sizes for v in hw):
            continue
        rows, cols = (torch.from_numpy(cubic_matrix(i, o, align, s)) for i, o, s in zip(*sizes, scales))
        with graph.inserting_before(node):
            names = []
            for what, matrix in (("rows", rows), ("cols", cols.T.contiguous())):
                names.append(f"_bicubic_{what}_{node.name}")
                setattr(graph.owning_module, names[-1], matrix)
            with warnings.catch_warnings():  # a plain tensor attribute: torch.export lifts it as a constant
                warnings.simplefilter("ignore")
                mh, mw = [graph.get_attr(n) for n in names]
            out = graph.call_function(aten.matmul.default, (graph.call_function(aten.matmul.default, (mh, x)), mw))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        replaced = True
    return replaced


def cubic_matrix(size_in: int, size_out: int, align_corners: bool, scale: float | None = None):
    """(size_out, size_in) float32: output index i as PyTorch's bicubic interpolation (cubic
    convolution, A = -0.75, neighbours clamped at the borders) mixes the input indices."""
    import math

    import numpy as np

    a = -0.75

    def near(t: float) -> float:  # |offset| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t: float) -> float:  # 1 < |offset| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    matrix = np.zeros((size_out, size_in), np.float64)
    for i in range(size_out):
        if align_corners:
            src = i * (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
        else:  # no clamp at 0 for cubic (PyTorch's area_pixel_compute_source_index)
            src = (1.0 / scale if scale else size_in / size_out) * (i + 0.5) - 0.5
        x0 = math.floor(src)
        t = src - x0
        for k, weight in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
            matrix[i, min(max(x0 - 1 + k, 0), size_in - 1)] += weight
    return matrix.astype(np.float32)


COREML_REWRITES = (bicubic_as_matmuls,)  # Core ML has no bicubic resize; the other three convert it


def broadcast_not_expanded(graph) -> bool:
    """An operand of add / sub / mul / div that is ``expand(x)`` (or ``expand_as``), or a permute of
    it, as ``x`` (or its permute) where broadcasting gives the same result, symbolic batch included
    (HaloAttn's relative logits: two five-axis expanded, permuted terms added; ECA's gate; LiteRT's
    converter rejected both as not broadcast-compatible); whether any was replaced."""
    import torch

    aten = torch.ops.aten
    replaced = False
    for node in [n for n in graph.nodes if n.op == "call_function"
                 and n.target in (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor)]:
        operands, shapes = list(node.args[:2]), [_dims(o) for o in node.args[:2]]
        for k, operand in enumerate(node.args[:2]):
            permute = operand if getattr(operand, "target", None) is aten.permute.default else None
            expand = permute.args[0] if permute is not None else operand
            if getattr(expand, "target", None) not in (aten.expand.default, aten.expand_as.default):
                continue
            x = expand.args[0]
            if permute is not None and x.meta["val"].dim() != expand.meta["val"].dim():
                continue
            order = list(permute.args[1]) if permute is not None else None
            shape = _dims(x)
            if shape is None or None in shapes or _dims(node) is None:
                continue
            shape = shape if order is None else [shape[p] for p in order]
            if _broadcast(*shapes[:k], shape, *shapes[k + 1:]) != _dims(node):
                continue
            shapes[k] = shape
            with graph.inserting_before(node):
                operands[k] = x if permute is None else graph.call_function(aten.permute.default, (x, order))
            node.update_arg(k, operands[k])
            replaced = True
    graph.eliminate_dead_code()
    return replaced


def _dims(value):
    """A node's shape with a symbolic axis as its expression's text (``s0``: the same symbol reads the
    same in every node of a program); None where its value is unknown."""
    import torch

    if not isinstance(value, torch.fx.Node):
        return []
    if "val" not in value.meta:
        return None
    return [s if isinstance(s, int) else str(s) for s in value.meta["val"].shape]


def _broadcast(*shapes):
    """The broadcast of ``shapes`` (`_dims`), or None where it depends on a symbol's value: two
    different symbols, or a symbol against a size other than 1, on one axis (a symbol against 1 is
    that symbol, whatever its value)."""
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        sizes = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0} - {1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return out


def _fixed(value):
    """The shape of a node's value as ints (a number: ``[]``), None where an axis is symbolic."""
    dims = _dims(value)
    return dims if dims is not None and all(isinstance(s, int) for s in dims) else None


def _flat_windows(graph, node):
    """``x.unfold(-2, k1, s1).unfold(-1, k2, s2)`` read only through reshapes (HaloAttn's windows of a
    ``(B, C, H, W)`` map) as the windows flattened: ``(B, C, n1 * n2, k1 * k2)``, the same elements in
    the same order, so every reshape of it is unchanged, and no tensor of six axes (Core ML holds
    five). The pair's second unfold when ``node`` was its first (both erased), else None."""
    import torch

    aten = torch.ops.aten
    users = list(node.users)
    if len(users) != 1 or users[0].target is not aten.unfold.default or users[0].args[0] is not node:
        return None
    second = users[0]
    x, d1, k1, s1 = node.args
    _, d2, k2, s2 = second.args
    rank = node.meta["val"].dim() - 1
    n1, n2 = second.meta["val"].shape[rank - 2:rank]
    reshapes = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)
    if (rank < 2 or d1 % rank != rank - 2 or d2 % (rank + 1) != rank - 1 or not isinstance(n1, int)
            or not isinstance(n2, int) or not second.users or any(u.target not in reshapes for u in second.users)):
        return None
    with graph.inserting_before(second):
        windows = []
        for i in range(n1):
            rows = graph.call_function(aten.slice.Tensor, (x, rank - 2, i * s1, i * s1 + k1))
            for j in range(n2):
                window = graph.call_function(aten.slice.Tensor, (rows, rank - 1, j * s2, j * s2 + k2))
                windows.append(graph.call_function(aten.flatten.using_ints, (window, rank - 2, rank - 1)))
        second.replace_all_uses_with(graph.call_function(aten.stack.default, (windows, rank - 2)))
    graph.erase_node(second)
    graph.erase_node(node)
    return second
