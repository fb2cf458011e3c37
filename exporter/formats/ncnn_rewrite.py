"""What pnnx cannot map to ncnn layers, rewritten before it sees the graph (issue #32).

ncnn has no batch axis and holds at most four others. pnnx follows the batch through the graph and
drops it; where it loses track of it (a permute that moves it off the front, a reshape that folds
it into another axis) or a tensor has more than four other axes, it leaves PyTorch ops behind that
ncnn cannot load (pnnx issue 44, ncnn issue 3542). Transformers do both:
``qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)`` puts the batch second, window
attention reshapes to six axes. The model is exported once at batch 1 with fixed shapes
(``torch.export``; constants folded, so a position embedding computed from the input's size is a
constant and every reshape has its sizes, the batch's 1 included), and one pass rewrites that
graph, each step into an equal computation:

1. decompositions: ``unbind`` into one ``select`` per piece; ``var`` into the mean of squared
   differences; the 2-norm into ``sqrt(sum(x * x))`` (pnnx turns ``F.normalize`` on any axis into
   ncnn's Normalize, which normalizes across channels); ``clamp_min`` into ``clamp`` and ``alias``
   dropped (pnnx knows neither); an uneven ``chunk`` / ``split`` with its sizes spelled out (pnnx
   makes it an equal Slice that reads past the end); a strided slice into a slice, a reshape and a
   select; ``unfold`` into its windows;
2. a reshape out of a tensor ncnn cannot hold, computed once per index of one of its input's axes
   and concatenated, so that step 3 takes that axis out of the whole region before it;
3. every ``select`` moved above the ops that make what it selects from (permute, transpose,
   reshape, expand, add / sub / mul / div, stack, cat, slice) while selects are all they feed:
   ``select(permute(reshape(qkv)), 0, i)`` becomes a slice of the qkv projection reshaped on its
   own, four axes with the batch in front.

The rewritten module is what ``torch.jit.trace`` records and pnnx converts; the ncnn export's parity
check compares the ncnn artifact with the original eager model.
"""

from __future__ import annotations

import math
import operator

from autotimm_deploy.exporter.formats.torch_program import folded_program

MAX_UNROLL = 16  # the longest axis a region ncnn cannot hold is computed once per index of
MAX_PASSES = 32  # bound on the rounds of splitting and of moving selects up (one op a round)


def ncnn_module(module, example):
    """``module`` at ``example``'s (batch-1) shapes as a rewritten ``torch.fx.GraphModule``."""
    gm = folded_program(module, example).module()
    rewrite(gm)
    return gm


def rewrite(gm) -> None:
    """Rewrite ``gm`` (a ``torch.export`` graph with shapes in each node's ``meta["val"]``) in place."""
    graph = gm.graph
    for node in list(graph.nodes):
        _decompose(graph, node)
    graph.eliminate_dead_code()  # what the decompositions replaced
    for _ in range(MAX_PASSES):  # a piece may still be too large: split again
        carriers = _batch_carriers(graph)
        split = [node for node in list(graph.nodes) if _split_over_rank(graph, node, carriers)]
        graph.eliminate_dead_code()
        if not split:
            break
    _sink_selects(graph)
    graph.eliminate_dead_code()
    gm.recompile()


def _aten():
    import torch

    return torch.ops.aten


def _is_reshape(node) -> bool:
    """A reshape however spelled: its output is its input's elements in order, in another shape."""
    aten = _aten()
    return node.op == "call_function" and node.target in (
        aten.reshape.default, aten.view.default, aten._unsafe_view.default, aten.flatten.using_ints, aten.unflatten.int)


def _shape(node) -> list[int]:
    return [int(s) for s in node.meta["val"].shape]


def _call(graph, target, *args, **kwargs):
    """A new node ``target(*args, **kwargs)`` with its value's metadata (computed on the meta device)."""
    import torch
    from torch.fx.node import map_arg

    def meta(n):
        v = n.meta["val"]
        return torch.empty(v.shape, dtype=v.dtype, device="meta")

    node = graph.call_function(target, args, kwargs)
    node.meta["val"] = target(*map_arg(args, meta), **map_arg(kwargs, meta))
    return node


def _decompose(graph, node) -> None:
    aten = _aten()
    if node.op != "call_function":
        return
    with graph.inserting_before(node):
        if node.target is aten.unbind.int:
            _unbind(graph, node)
        elif node.target in (aten.var.correction, aten.var.dim):
            _var(graph, node)
        elif node.target is aten.slice.Tensor and _arg(node, 4, "step", 1) > 1:
            _strided_slice(graph, node)
        elif node.target is aten.linalg_vector_norm.default and _arg(node, 1, "ord", 2) == 2:
            _norm(graph, node)
        elif node.target is aten.unfold.default:
            _unfold(graph, node)
        elif node.target in (aten.split.Tensor, aten.chunk.default):
            _uneven_split(graph, node)
        elif node.target is aten.alias.default:  # a view that changes nothing (Swin): pnnx keeps aten::alias
            node.replace_all_uses_with(node.args[0])
        elif node.target is aten.clamp_min.default:  # pnnx knows clamp(x, min), not clamp_min
            node.replace_all_uses_with(_call(graph, aten.clamp.default, node.args[0], node.args[1]))


def _arg(node, index: int, name: str, default):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _unbind(graph, node) -> None:
    x, dim = node.args[0], _arg(node, 1, "dim", 0)
    for user in list(node.users):
        if user.target is not operator.getitem:
            return  # the list itself is used: leave it
    for user in list(node.users):
        with graph.inserting_before(user):
            user.replace_all_uses_with(_call(graph, _aten().select.int, x, dim, user.args[1]))
        graph.erase_node(user)


def _var(graph, node) -> None:
    """``var(x, dims)`` = ``mean((x - mean(x, dims))**2, dims) * n / (n - correction)``."""
    aten = _aten()
    x = node.args[0]
    shape = _shape(x)
    dims = _arg(node, 1, "dim", None)
    dims = list(range(len(shape))) if dims is None else [d % len(shape) for d in dims]
    if node.target is aten.var.dim:
        correction = 1 if _arg(node, 2, "unbiased", True) else 0
        keepdim = _arg(node, 3, "keepdim", False)
    else:
        correction = node.kwargs.get("correction", 1)
        keepdim = node.kwargs.get("keepdim", False)
    n = math.prod(shape[d] for d in dims)
    diff = _call(graph, aten.sub.Tensor, x, _call(graph, aten.mean.dim, x, dims, True))
    var = _call(graph, aten.mean.dim, _call(graph, aten.mul.Tensor, diff, diff), dims, keepdim)
    if correction:
        var = _call(graph, aten.mul.Tensor, var, n / max(n - correction, 1))
    node.replace_all_uses_with(var)


def _norm(graph, node) -> None:
    """The 2-norm as ``sqrt(sum(x * x))``: pnnx turns ``linalg_vector_norm`` followed by a division
    (``F.normalize``) into ncnn's Normalize layer, which normalizes across channels whatever the dim
    (XCiT's and EdgeNeXt's attention normalize along the last axis)."""
    aten = _aten()
    x = node.args[0]
    dims = _arg(node, 2, "dim", None)
    dims = list(range(len(_shape(x)))) if dims is None else list(dims)
    squares = _call(graph, aten.mul.Tensor, x, x)
    total = _call(graph, aten.sum.dim_IntList, squares, dims, _arg(node, 3, "keepdim", False))
    node.replace_all_uses_with(_call(graph, aten.sqrt.default, total))


def _unfold(graph, node) -> None:
    """``x.unfold(d, size, step)`` (halo attention's neighbourhoods) as its windows: ``size``-long
    slices of axis ``d`` every ``step``, stacked at ``d``, the window axis moved last."""
    aten = _aten()
    x, dim, size, step = node.args
    dim %= len(_shape(x))
    windows = [_call(graph, aten.slice.Tensor, x, dim, k * step, k * step + size) for k in range(_shape(node)[dim])]
    stacked = _call(graph, aten.stack.default, windows, dim)
    order = [a for a in range(len(_shape(stacked))) if a != dim + 1] + [dim + 1]
    node.replace_all_uses_with(_call(graph, aten.permute.default, stacked, order))


def _uneven_split(graph, node) -> None:
    """``chunk`` / ``split`` whose last piece is shorter (``chunk(3)`` of 88 channels: 30, 30, 28)
    with the sizes spelled out: pnnx makes it ncnn's equal Slice, which reads past the end and
    crashes (EdgeNeXt)."""
    x, dim = node.args[0], _arg(node, 2, "dim", 0)
    sizes = [int(v.shape[dim]) for v in node.meta["val"]]
    if len(set(sizes)) > 1:
        node.replace_all_uses_with(_call(graph, _aten().split_with_sizes.default, x, sizes, dim))


def _strided_slice(graph, node) -> None:
    """``x[..., a:b:s]`` on axis ``d`` with ``k`` elements: the first ``k - 1`` as a slice from ``a``
    to ``a + (k-1)*s`` reshaped into ``(k - 1, s)`` with index 0 of the ``s`` axis selected, the last
    as a one-wide slice, concatenated (no padding: pnnx loses the batch axis after a pad)."""
    aten = _aten()
    x, dim = node.args[0], node.args[1] % len(_shape(node.args[0]))
    step, shape = node.args[4], _shape(x)
    size, k = shape[dim], _shape(node)[dim]
    if k == 0:
        return
    start = _arg(node, 2, "start", 0) or 0
    start = min(max(start + size if start < 0 else start, 0), size)
    last = start + (k - 1) * step
    pieces = []
    if k > 1:
        head = _call(graph, aten.slice.Tensor, x, dim, start, last)
        head = _call(graph, aten.reshape.default, head, shape[:dim] + [k - 1, step] + shape[dim + 1:])
        pieces.append(_call(graph, aten.select.int, head, dim + 1, 0))
    pieces.append(_call(graph, aten.slice.Tensor, x, dim, last, last + 1))
    node.replace_all_uses_with(pieces[0] if k == 1 else _call(graph, aten.cat.default, pieces, dim))


def _split_axis(in_shape: list[int], out_shape: list[int], axis: int) -> int | None:
    """The input axis that a reshape ``in_shape -> out_shape`` splits with output ``axis`` as its
    outermost part (so index ``i`` of ``axis`` is one contiguous run of that input axis), or None."""
    before = math.prod(out_shape[:axis])
    ends = {math.prod(out_shape[:q + 1]) for q in range(axis, len(out_shape))}
    for j in range(len(in_shape)):
        if (math.prod(in_shape[:j]) == before and in_shape[j] % out_shape[axis] == 0
                and math.prod(in_shape[:j + 1]) in ends and in_shape[j] > 1):
            return j
    return None


def _batch_carriers(graph) -> set:
    """The nodes whose first axis is the picture's batch (of 1), followed as pnnx follows it: from
    the input through every op whose output still starts with an axis of 1. A reshape that puts an
    axis of 1 in front of a tensor without the batch (Swin's ``attn.view(-1, nW, H, N, N)``) does
    not make one."""
    carriers = set()
    for node in graph.nodes:
        shape = getattr(node.meta.get("val"), "shape", None)
        if shape and shape[0] == 1 and (node.op == "placeholder" or any(a in carriers for a in node.all_input_nodes)):
            carriers.add(node)
    return carriers


def _fits(shape: list[int], batch: bool) -> bool:
    """Whether ncnn holds a tensor of ``shape``: four axes beside the batch, or four without it."""
    return len(shape) <= 4 or (len(shape) == 5 and batch)


def _split_over_rank(graph, node, carriers: set) -> bool:
    """A reshape into a tensor ncnn holds from one it cannot (BoTNet's relative-position logits
    ``(heads, H, W, H, W)``, Swin's windows ``(1, H/7, 7, W/7, 7, C)``): computed once per index
    of one axis of its input and concatenated, so that the selects of that axis sink through the
    region before it, leaving every tensor in it one axis smaller. An axis of 1 in front that is
    not the batch is the cheapest (one piece)."""
    aten = _aten()
    if not _is_reshape(node):
        return False
    y, shape = node.args[0], _shape(node)
    source = _shape(y)
    if _fits(source, y in carriers) or not _fits(shape, node in carriers):
        return False
    for a, n in enumerate(source):
        j = _split_axis(shape, source, a) if n <= MAX_UNROLL and (n > 1 or (a == 0 and y not in carriers)) else None
        if j is not None:
            break
    else:
        return False
    piece = shape[:j] + [shape[j] // n] + shape[j + 1:]
    with graph.inserting_before(node.next):
        pieces = [_call(graph, aten.reshape.default, _call(graph, aten.select.int, y, a, i), piece) for i in range(n)]
        node.replace_all_uses_with(pieces[0] if n == 1 else _call(graph, aten.cat.default, pieces, j))
    return True


def _sink_selects(graph) -> None:
    """Move every ``select`` above the layout and elementwise ops that make the tensor it selects
    from, as long as selects are all those ops feed (nothing is computed twice), until none moves."""
    for _ in range(MAX_PASSES):
        moved = False
        for node in list(graph.nodes):
            if node.op == "call_function" and node.target is _aten().select.int and node.users:
                producer = node.args[0]
                if producer.op == "call_function" and all(u.target is _aten().select.int for u in producer.users):
                    with graph.inserting_before(node):
                        new = _select_through(graph, producer, node.args[1] % len(_shape(producer)), node.args[2])
                    if new is not None:
                        node.replace_all_uses_with(new)
                        moved = True
        graph.eliminate_dead_code()
        if not moved:
            return


def _select_through(graph, producer, d: int, i: int):
    """``select(producer, d, i)`` computed from the producer's inputs, or None where no rule fits."""
    aten = _aten()
    target, args = producer.target, producer.args
    if target in (aten.contiguous.default, aten.clone.default):
        return _call(graph, aten.select.int, args[0], d, i)
    if target in (aten.permute.default, aten.transpose.int):
        perm = _permutation(producer)
        rest = [p - (p > perm[d]) for p in perm if p != perm[d]]
        picked = _call(graph, aten.select.int, args[0], perm[d], i)
        return picked if rest == sorted(rest) else _call(graph, aten.permute.default, picked, rest)
    if _is_reshape(producer):
        return _select_from_reshape(graph, args[0], _shape(producer), d, i)
    if target is aten.expand.default:
        x, sizes = args[0], list(args[1])
        offset = len(sizes) - len(_shape(x))
        if d >= offset:
            x = _call(graph, aten.select.int, x, d - offset, 0 if _shape(x)[d - offset] == 1 else i)
        return _call(graph, aten.expand.default, x, sizes[:d] + sizes[d + 1:])
    if target in (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor):
        rank = len(_shape(producer))
        return _call(graph, target, *(_select_operand(graph, a, rank, d, i) for a in args[:2]))
    return _select_from_pieces(graph, producer, d, i)


def _permutation(node) -> list[int]:
    rank = len(_shape(node))
    if node.target is _aten().transpose.int:
        perm = list(range(rank))
        a, b = node.args[1] % rank, node.args[2] % rank
        perm[a], perm[b] = b, a
        return perm
    return [p % rank for p in node.args[1]]


def _select_from_pieces(graph, producer, d: int, i: int):
    """``select`` of a ``stack``, ``cat`` or ``slice``: of the piece that holds index ``i``, or of
    every piece on another axis."""
    aten = _aten()
    target, args = producer.target, producer.args
    if target is aten.slice.Tensor and _arg(producer, 4, "step", 1) == 1:
        x, dim = args[0], args[1] % len(_shape(producer))
        if d == dim:
            start = _arg(producer, 2, "start", 0) or 0
            return _call(graph, aten.select.int, x, d, (start % _shape(x)[d] if start < 0 else start) + i)
        end = min(_arg(producer, 3, "end", None) or _shape(x)[dim], _shape(x)[dim])
        picked = _call(graph, aten.select.int, x, d, i)
        return _call(graph, aten.slice.Tensor, picked, dim - (d < dim), _arg(producer, 2, "start", 0) or 0, end)
    if target not in (aten.stack.default, aten.cat.default):
        return None
    pieces, dim = args[0], _arg(producer, 1, "dim", 0) % len(_shape(producer))
    if target is aten.stack.default:
        if d == dim:
            return pieces[i]
        picked = [_call(graph, aten.select.int, p, d - (d > dim), i) for p in pieces]
        return _call(graph, aten.stack.default, picked, dim - (d < dim))
    if d != dim:
        return _call(graph, aten.cat.default, [_call(graph, aten.select.int, p, d, i) for p in pieces], dim - (d < dim))
    for p in pieces:
        if i < _shape(p)[dim]:
            return _call(graph, aten.select.int, p, dim, i)
        i -= _shape(p)[dim]
    return None


def _select_operand(graph, operand, rank: int, d: int, i: int):
    """An operand of a broadcasting op after the op's output loses axis ``d`` to ``select(.., i)``."""
    import torch.fx

    if not isinstance(operand, torch.fx.Node):
        return operand  # a number
    offset = rank - len(_shape(operand))
    if d < offset:
        return operand  # broadcast along the selected axis
    size = _shape(operand)[d - offset]
    return _call(graph, _aten().select.int, operand, d - offset, 0 if size == 1 else i)


def _select_from_reshape(graph, x, out_shape: list[int], d: int, i: int):
    """``select(reshape(x, out_shape), d, i)`` from ``x``: a slice (or select) of ``x`` reshaped when
    axis ``d`` is the outer part of one input axis ``j`` (``qkv.reshape(B, N, 3, H, D)``'s 3 of
    3*H*D); otherwise ``x`` seen as ``(1, P, n, Q)`` (the axes before ``d``, ``d``, the axes after;
    the batch kept in front), the select on ``n``, reshaped."""
    aten = _aten()
    rest = out_shape[:d] + out_shape[d + 1:]
    j = _split_axis(_shape(x), out_shape, d)
    if j is None:
        view = [math.prod(out_shape[:d]), out_shape[d], math.prod(out_shape[d + 1:])]
        piece = _call(graph, aten.select.int, _call(graph, aten.reshape.default, x, [1, *view]), 2, i)
    elif _shape(x)[j] == out_shape[d]:
        piece = _call(graph, aten.select.int, x, j, i)
    else:
        inner = _shape(x)[j] // out_shape[d]
        piece = _call(graph, aten.slice.Tensor, x, j, i * inner, (i + 1) * inner)
    return piece if _shape(piece) == rest else _call(graph, aten.reshape.default, piece, rest)
