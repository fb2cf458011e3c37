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
   select; an inference BatchNorm over a tensor whose first axis is not
   the batch (LeViT's ``bn(x.flatten(0, 1))``) into ``x * scale + shift``, and that flatten and
   ``reshape_as`` into plain reshapes; ``repeat_interleave`` into an expanded axis; attention over
   more than four axes into its matmuls and softmax (ncnn's SDPA takes three); a map cut into
   blocks through six axes (HaloAttn's queries) as its blocks sliced and stacked; a segmentation's
   class map (``argmax`` along an axis) as a running comparison (ncnn's ArgMax takes the whole blob);
2. a reshape out of a tensor ncnn cannot hold, computed once per index of one of its input's axes
   and concatenated, so that step 3 takes that axis out of the whole region before it;
3. every ``select`` moved above the ops that make what it selects from (permute, transpose,
   reshape, expand, add / sub / mul / div, stack, cat, slice; and out of a tensor ncnn cannot hold,
   linear, layer norm, softmax, matmul, activations) while selects are all they feed:
   ``select(permute(reshape(qkv)), 0, i)`` becomes a slice of the qkv projection reshaped on its
   own, four axes with the batch in front; steps 2 and 3 repeat while reshapes out of six axes are
   left;
4. selects of every index of one axis that could not move as one-wide slices (pnnx would join them
   into an ``unbind`` that ncnn cannot run).

``unfold`` is written as its windows before, for every edge format (`edge_rewrite`).

The rewritten module is what ``torch.jit.trace`` records and pnnx converts; the ncnn export's parity
check compares the ncnn artifact with the original eager model.
"""

from __future__ import annotations

import math
import operator

from autotimm_deploy.exporter.formats.edge_rewrite import edge_program

MAX_UNROLL = 16  # the longest axis a region ncnn cannot hold is computed once per index of
MAX_PASSES = 32  # bound on the rounds of splitting and of moving selects up (one op a round)


def ncnn_module(module, example):
    """``module`` at ``example``'s (batch-1) shapes as a rewritten ``torch.fx.GraphModule``."""
    gm = edge_program(module, example).module()
    rewrite(gm)
    return gm


def rewrite(gm) -> None:
    """Rewrite ``gm`` (a ``torch.export`` graph with shapes in each node's ``meta["val"]``) in place."""
    graph = gm.graph
    for node in list(graph.nodes):
        _decompose(gm, node)
    graph.eliminate_dead_code()  # what the decompositions replaced
    _split_all(graph, 5)
    _sink_selects(graph)
    # moved selects leave reshapes out of six axes behind (Twins' qkv projection): split, move again.
    # (Five axes are left alone in this round: pnnx converts the ones left here, Swin's windows.)
    for _ in range(MAX_PASSES):
        if not _split_all(graph, 6):
            break
        _sink_selects(graph)
    _selects_as_slices(graph)
    gm.recompile()


def _split_all(graph, min_rank: int) -> bool:
    """Split every reshape out of a tensor of ``min_rank`` axes or more that ncnn cannot hold, and
    the pieces again while they are too large; whether any was split."""
    anything = False
    for _ in range(MAX_PASSES):
        carriers = _batch_carriers(graph)
        split = [node for node in list(graph.nodes) if _split_over_rank(graph, node, carriers, min_rank)]
        graph.eliminate_dead_code()
        if not split:
            break
        anything = True
    return anything


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


def _decompose(gm, node) -> None:
    aten = _aten()
    graph = gm.graph
    if node.op != "call_function":
        return
    with graph.inserting_before(node):
        if node.target is aten.batch_norm.default and not node.args[5] and _shape(node)[0] != 1:
            _batch_norm_as_affine(gm, node)
        elif node.target is aten.reshape_as.default or (node.target is aten.flatten.using_ints and node.args[1] == 0):
            node.replace_all_uses_with(_call(graph, aten.reshape.default, node.args[0], _shape(node)))
        elif node.target is aten.unbind.int:
            _unbind(graph, node)
        elif node.target is aten.permute.default and list(node.args[1]) == [0, 1, 3, 5, 2, 4]:
            _blocks(graph, node)
        elif node.target in (aten.var.correction, aten.var.dim):
            _var(graph, node)
        elif node.target is aten.slice.Tensor and _arg(node, 4, "step", 1) > 1:
            _strided_slice(graph, node)
        elif node.target is aten.linalg_vector_norm.default and _arg(node, 1, "ord", 2) == 2:
            _norm(graph, node)
        elif node.target is aten.repeat_interleave.self_int and _arg(node, 2, "dim", None) is not None:
            _repeat_interleave(graph, node)
        elif node.target is aten.scaled_dot_product_attention.default and len(_shape(node)) > 4:
            _attention(graph, node)
        elif node.target in (aten.split.Tensor, aten.chunk.default):
            _uneven_split(graph, node)
        elif node.target is aten.alias.default:  # a view that changes nothing (Swin): pnnx keeps aten::alias
            node.replace_all_uses_with(node.args[0])
        elif node.target is aten.clamp_min.default:  # pnnx knows clamp(x, min), not clamp_min
            node.replace_all_uses_with(_call(graph, aten.clamp.default, node.args[0], node.args[1]))
        elif node.target is aten.argmax.default and _arg(node, 1, "dim", None) is not None:
            _argmax(graph, node)


def _batch_norm_as_affine(gm, node) -> None:
    """An inference BatchNorm over a tensor whose first axis is not the batch (LeViT's
    ``bn(x.flatten(0, 1))``) as ``x * scale + shift``: pnnx takes BatchNorm's first axis for the
    batch and drops it (the output was NaN). The flatten and the ``reshape_as`` back become plain
    reshapes beside it."""
    import torch

    graph = gm.graph
    x, weight, bias, mean, var = node.args[:5]
    eps = node.args[7]
    mean, var = (operator.attrgetter(n.target)(gm).detach() for n in (mean, var))
    scale = torch.rsqrt(var + eps) * (1 if weight is None else operator.attrgetter(weight.target)(gm).detach())
    shift = (0 if bias is None else operator.attrgetter(bias.target)(gm).detach()) - mean * scale
    axes = [1] * (len(_shape(x)) - 2)
    terms = []
    for name, value in (("scale", scale), ("shift", shift)):
        attr = f"_ncnn_{node.name}_{name}"
        gm.register_buffer(attr, value.reshape(-1, *axes).contiguous())
        terms.append(graph.get_attr(attr))
        terms[-1].meta["val"] = getattr(gm, attr)
    scaled = _call(graph, _aten().mul.Tensor, x, terms[0])
    node.replace_all_uses_with(_call(graph, _aten().add.Tensor, scaled, terms[1]))


def _arg(node, index: int, name: str, default):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _argmax(graph, node) -> None:
    """``argmax(x, dim)`` (a segmentation's class map) as a running comparison along ``dim``: ncnn's
    ArgMax takes the whole blob, not an axis. ``best`` is the largest value so far; position ``c``
    wins where its value is strictly larger (``relu(sign(x_c - best))``, exact for any difference, so
    the first of equal values keeps the place, as in PyTorch), and the index is ``max(index, wins * c)``
    (c is larger than every index before it; an infinite score wins or loses like any other). Six layers
    a position. The index is float (exact up to 2**24 positions, 2048 in fp16); the ncnn runtime returns it in the manifest's dtype. Only an index that is an
    output is rewritten: one that other ops use stays (pnnx names it)."""
    aten = _aten()
    x, dim, keepdim = node.args[0], _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False)
    if any(user.op != "output" for user in node.users):
        return
    shape = _shape(x)
    dim %= len(shape)

    def at(c: int):
        return _call(graph, aten.slice.Tensor, x, dim, c, c + 1)

    best = at(0)
    index = _call(graph, aten.mul.Tensor, best, 0.0) if shape[dim] == 1 else None  # (0 * inf: only for one position)
    for c in range(1, shape[dim]):
        value = at(c)
        wins = _call(graph, aten.relu.default, _call(graph, aten.sign.default, _call(graph, aten.sub.Tensor, value, best)))
        won = _call(graph, aten.mul.Tensor, wins, float(c))
        index = won if index is None else _call(graph, aten.maximum.default, index, won)
        if c + 1 < shape[dim]:
            best = _call(graph, aten.maximum.default, best, value)
    node.replace_all_uses_with(index if keepdim else _call(graph, aten.reshape.default, index, _shape(node)))


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


def _blocks(graph, node) -> None:
    """``x.reshape(P, Q, n1, k1, n2, k2).permute(0, 1, 3, 5, 2, 4)`` of a map ``x`` of ``(.., ..,
    n1 * k1, n2 * k2)``, read only through reshapes (HaloAttn's query blocks), as its ``k1 x k2``
    blocks sliced, flattened and stacked last, ``(P, Q, k1 * k2, n1 * n2)``: the same elements in the
    same order, no tensor of six axes (the heads folded into the batch left five that ncnn cannot
    hold)."""
    aten = _aten()
    source = node.args[0]
    if not _is_reshape(source) or not node.users or not all(_is_reshape(u) for u in node.users):
        return
    x, (p, q, n1, k1, n2, k2) = source.args[0], _shape(source)
    if len(_shape(x)) != 4 or _shape(x)[2:] != [n1 * k1, n2 * k2]:
        return
    x = _call(graph, aten.reshape.default, x, [p, q, n1 * k1, n2 * k2])
    blocks = []
    for i in range(n1):
        rows = _call(graph, aten.slice.Tensor, x, 2, i * k1, (i + 1) * k1)
        for j in range(n2):
            block = _call(graph, aten.slice.Tensor, rows, 3, j * k2, (j + 1) * k2)
            blocks.append(_call(graph, aten.reshape.default, block, [p, q, k1 * k2]))
    stacked = _call(graph, aten.stack.default, blocks, 3)
    for user in list(node.users):
        user.replace_input_with(node, stacked)


def _repeat_interleave(graph, node) -> None:
    """``x.repeat_interleave(r, d)`` (GCViT's global queries, one per window) as an axis of ``r``
    after ``d``, expanded, merged into ``d``: ncnn has no such layer."""
    aten = _aten()
    x, repeats, dim = node.args[0], node.args[1], node.args[2] % len(_shape(node.args[0]))
    shape = _shape(x)
    grown = _call(graph, aten.reshape.default, x, shape[:dim + 1] + [1] + shape[dim + 1:])
    grown = _call(graph, aten.expand.default, grown, shape[:dim + 1] + [repeats] + shape[dim + 1:])
    node.replace_all_uses_with(_call(graph, aten.reshape.default, grown, _shape(node)))


def _attention(graph, node) -> None:
    """``scaled_dot_product_attention`` over more than four axes (Twins' windows and heads) as its
    matmuls and softmax: ncnn's SDPA layer takes three axes (heads, tokens, channels) and computed
    such inputs wrongly. With a mask, causality or dropout it is left as it is."""
    aten = _aten()
    q, k, v = node.args[:3]
    if any(_arg(node, i, name, none) for i, name, none in ((3, "attn_mask", None), (4, "dropout_p", 0.0),
                                                            (5, "is_causal", False))):
        return
    scale = node.kwargs.get("scale") or _shape(q)[-1] ** -0.5
    keys = _call(graph, aten.transpose.int, k, -2, -1)
    scores = _call(graph, aten.matmul.default, _call(graph, aten.mul.Tensor, q, scale), keys)
    node.replace_all_uses_with(_call(graph, aten.matmul.default, _call(graph, aten.softmax.int, scores, -1), v))


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
    """The nodes whose first axis is the picture's batch (of 1). The batch axis is followed from the
    input: through permutes and selects to where they move it (the qkv permute puts it second, the
    select of q, k or v brings it back), through a reshape only while it stays first with 1, through
    other ops where the output still has a 1 there. A reshape that puts an axis of 1 in front of a
    tensor without the batch (Swin's ``attn.view(-1, nW, H, N, N)``) makes none."""
    axis = {}
    for node in graph.nodes:
        shape = list(getattr(node.meta.get("val"), "shape", None) or [])
        source = next((a for a in node.all_input_nodes if axis.get(a) is not None), None)
        if node.op == "placeholder":
            b = 0 if shape[:1] == [1] else None
        else:
            b = None if source is None else _batch_axis_after(node, source, axis[source])
            if shape and b is not None and (b >= len(shape) or shape[b] != 1):
                b = None
        axis[node] = b
    return {node for node, b in axis.items() if b == 0}


def _batch_axis_after(node, source, b: int):
    """Where ``node`` puts the batch that is axis ``b`` of its input ``source`` (None: nowhere)."""
    aten = _aten()
    if node.target in (aten.permute.default, aten.transpose.int) and node.args[0] is source:
        return _permutation(node).index(b)
    if node.target is aten.select.int and node.args[0] is source:
        d = node.args[1] % len(_shape(source))
        return None if d == b else b - (d < b)
    if _is_reshape(node):
        return 0 if b == 0 and _shape(node)[0] == 1 else None
    return b


def _fits(shape: list[int], batch: bool) -> bool:
    """Whether ncnn holds a tensor of ``shape``: four axes beside the batch, or four without it."""
    return len(shape) <= 4 or (len(shape) == 5 and batch)


def _split_over_rank(graph, node, carriers: set, min_rank: int) -> bool:
    """A reshape into a tensor ncnn holds from one it cannot (BoTNet's relative-position logits
    ``(heads, H, W, H, W)``, Swin's windows ``(1, H/7, 7, W/7, 7, C)``): computed once per index
    of one axis of its input and concatenated, so that the selects of that axis sink through the
    region before it, leaving every tensor in it one axis smaller. An axis of 1 in front that is
    not the batch is the cheapest (one piece). Only inputs of ``min_rank`` axes or more."""
    aten = _aten()
    if not _is_reshape(node):
        return False
    y, shape = node.args[0], _shape(node)
    source = _shape(y)
    if len(source) < min_rank or _fits(source, y in carriers) or not _fits(shape, node in carriers):
        return False
    for a, n in enumerate(source):
        j = _split_axis(shape, source, a) if n <= MAX_UNROLL and (n > 1 or (a == 0 and y not in carriers)) else None
        if j is not None:
            break
    else:
        return False
    piece = shape[:j] + [shape[j] // n] + shape[j + 1:]
    flat = j == 0 and shape[0] != 1 and n > 1  # pnnx takes a first axis for the batch: join flat rows
    if flat:
        piece, j = [1, math.prod(piece)], 1
    with graph.inserting_before(node.next):
        pieces = [_call(graph, aten.reshape.default, _call(graph, aten.select.int, y, a, i), piece) for i in range(n)]
        joined = pieces[0] if n == 1 else _call(graph, aten.cat.default, pieces, j)
        node.replace_all_uses_with(_call(graph, aten.reshape.default, joined, shape) if flat else joined)
    return True


def _sink_selects(graph) -> bool:
    """Move every ``select`` above the layout and elementwise ops that make the tensor it selects
    from, as long as selects are all those ops feed (nothing is computed twice), until none moves;
    above the ops that compute (linear, layer norm, softmax, matmul, activations) only out of a
    tensor ncnn cannot hold (Twins' attention runs its qkv projection on six axes). Whether any
    moved."""
    anything = False
    for _ in range(MAX_PASSES):
        moved = False
        carriers = _batch_carriers(graph)
        for node in list(graph.nodes):
            if node.op == "call_function" and node.target is _aten().select.int and node.users:
                producer = node.args[0]
                if producer.op == "call_function" and all(u.target is _aten().select.int for u in producer.users):
                    d, i = node.args[1] % len(_shape(producer)), node.args[2]
                    with graph.inserting_before(node):
                        new = _select_through(graph, producer, d, i)
                        if new is None and not _fits(_shape(producer), producer in carriers):
                            new = _select_through_compute(graph, producer, d, i)
                    if new is not None:
                        node.replace_all_uses_with(new)
                        moved = True
        graph.eliminate_dead_code()
        anything |= moved
        if not moved:
            break
    return anything


def _selects_as_slices(graph) -> None:
    """Selects of every index of one axis, left where they could not move, as one-wide slices
    reshaped: pnnx joins them into an ``unbind``, whose ncnn Reshape fails at run time (GCViT)."""
    aten = _aten()
    for x in list(graph.nodes):
        for d in {u.args[1] % len(_shape(x)) for u in x.users if u.target is aten.select.int}:
            picks = [u for u in x.users if u.target is aten.select.int and u.args[1] % len(_shape(x)) == d]
            if len(picks) < 2 or len({u.args[2] % _shape(x)[d] for u in picks}) < _shape(x)[d]:
                continue
            for node in picks:
                i = node.args[2] % _shape(x)[d]
                with graph.inserting_before(node):
                    piece = _call(graph, aten.slice.Tensor, x, d, i, i + 1)
                    node.replace_all_uses_with(_call(graph, aten.reshape.default, piece, _shape(node)))
                graph.erase_node(node)


def _select_through_compute(graph, producer, d: int, i: int):
    """``select(producer, d, i)`` for an op that computes along other axes than ``d``."""
    aten = _aten()
    target, args, rank = producer.target, producer.args, len(_shape(producer))
    unary = (aten.gelu.default, aten.relu.default, aten.relu_.default, aten.sigmoid.default, aten.silu.default,
             aten.hardswish.default, aten.tanh.default, aten.exp.default, aten.neg.default, aten.sqrt.default,
             aten.dropout.default, aten.clamp.default)
    if target is aten.softmax.int and args[1] % rank != d:
        dim = args[1] % rank
        return _call(graph, target, _call(graph, aten.select.int, args[0], d, i), dim - (dim > d), *args[2:])
    if (target in unary or (target is aten.linear.default and d < rank - 1)
            or (target is aten.layer_norm.default and d < rank - len(args[1]))):
        return _call(graph, target, _call(graph, aten.select.int, args[0], d, i), *args[1:], **producer.kwargs)
    if target is aten.matmul.default and d < rank - 2:
        return _call(graph, target, *(_select_operand(graph, a, rank, d, i) for a in args[:2]))
    return None


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
    the batch kept in front), the select on ``n``, reshaped. That way too when ``j`` is a first axis
    that is not the batch (Swin's windows): pnnx takes a first axis for the batch and writes a Slice
    of it that ncnn cannot load."""
    aten = _aten()
    rest = out_shape[:d] + out_shape[d + 1:]
    if out_shape[d] == 1:
        return _call(graph, aten.reshape.default, x, rest)
    j = _split_axis(_shape(x), out_shape, d)
    if j is None or (j == 0 and _shape(x)[0] != 1):
        view = [math.prod(out_shape[:d]), out_shape[d], math.prod(out_shape[d + 1:])]
        piece = _call(graph, aten.select.int, _call(graph, aten.reshape.default, x, [1, *view]), 2, i)
    elif _shape(x)[j] == out_shape[d]:
        piece = _call(graph, aten.select.int, x, j, i)
    else:
        inner = _shape(x)[j] // out_shape[d]
        piece = _call(graph, aten.slice.Tensor, x, j, i * inner, (i + 1) * inner)
    return piece if _shape(piece) == rest else _call(graph, aten.reshape.default, piece, rest)
