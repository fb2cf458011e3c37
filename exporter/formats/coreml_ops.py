"""Translations of PyTorch ops that ``coremltools`` lacks, registered into its torch frontend once
(never over a translation coremltools has itself: a newer coremltools that adds one wins).

- ``aten.prod`` (``prod.dim_int``, ``prod``): our detection postprocessing's box areas; Core ML's
  ``reduce_prod``. Booleans are reduced as int32 (Core ML has no boolean reductions).
- Python's operators on boolean masks as ``torch.export`` records them (``__and__``, ``__or__``,
  ``__xor__``, ``__invert__``): coremltools knows them only by their ``logical_*`` / ``bitwise_*``
  names. Integer operands are refused in one line, as coremltools refuses ``bitwise_and`` on them.
- ``torch.div(a, b, rounding_mode="floor")`` on integers (our detection decode's location index):
  coremltools computes every ``div`` in float32, so the index came out float and the ``gather``
  that uses it was refused; integer floor division stays in int32 here (``floor_div``).
- ``aten.alias`` (a view that changes nothing; Swin's window attention, GhostNet): identity.
- ``clamp`` of an integer tensor with one bound (``labels.clamp(min=0)``: AutoTimm's instance
  masks pick each detection's class with it): coremltools fills the missing bound with float32's
  largest value and clamps in float32, and the ``gather`` that used the result was refused ("expects
  tensor ... of dtype int32 ... but got fp32"); integers stay int32 here (``maximum`` / ``minimum``).
- ``torch.gather`` of a boolean tensor (our NMS looks up which candidates a pick suppresses): Core
  ML gathers numbers only, so the mask is gathered as int32 and cast back.
"""

from __future__ import annotations

_REGISTERED = False


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, _get_kwinputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY, register_torch_op
    from coremltools.converters.mil.mil.types import is_bool, is_int

    def prod(context, node):
        inputs = _get_inputs(context, node, min_expected=1)
        x = inputs[0]
        dim = inputs[1].val if len(inputs) > 1 and node.kind != "prod" else None
        keepdim = inputs[2].val if len(inputs) > 2 else _get_kwinputs(context, node, "keepdim", default=[False])[0]
        keepdim = bool(getattr(keepdim, "val", keepdim))
        if is_bool(x.dtype):
            x = mb.cast(x=x, dtype="int32")
        axes = None if dim is None else [int(dim)]
        context.add(mb.reduce_prod(x=x, axes=axes, keep_dims=keepdim, name=node.name))

    known = _TORCH_OPS_REGISTRY.name_to_func_mapping
    missing = [n for n in ("prod", "prod.dim_int") if n not in known]
    if missing:
        prod.__name__ = missing[0]
        register_torch_op(prod, torch_alias=missing[1:] or None)
    for op, name in (("and", "logical_and"), ("or", "logical_or"), ("xor", "logical_xor"), ("invert", "logical_not")):
        # the graph check looks ``__or__`` up as recorded, the translation lookup strips it to ``or``
        for key in (f"__{op}__", op):
            if key not in known and name in known:
                known[key] = _booleans_only(f"__{op}__", known[name], _get_inputs, is_bool)
    div = known.get("div")
    if div is not None and not getattr(div, "integer_floor", False):
        def integer_floor_div(context, node):
            inputs = _get_inputs(context, node, expected=[2, 3])
            mode = inputs[2] if len(inputs) > 2 else None
            mode = _get_kwinputs(context, node, "rounding_mode", default=[mode])[0]
            mode = getattr(mode, "val", mode)
            if mode == "floor" and all(is_int(v.dtype) for v in inputs[:2]):
                x, y = (mb.cast(x=v, dtype="int32") for v in inputs[:2])
                context.add(mb.floor_div(x=x, y=y, name=node.name))
            else:
                div(context, node)

        integer_floor_div.integer_floor = True
        for name in [k for k, f in known.items() if f is div]:
            known[name] = integer_floor_div
    clamp = known.get("clamp")
    if clamp is not None and not getattr(clamp, "integers", False):
        integer_clamp = _integer_clamp(clamp, mb, _get_inputs, is_int)
        for name in [k for k, f in known.items() if f is clamp]:
            known[name] = integer_clamp
    def alias(context, node):
        context.add(mb.identity(x=_get_inputs(context, node, expected=1)[0], name=node.name))

    for key in ("alias", "alias_copy"):
        known.setdefault(key, alias)
    gather = known.get("gather")
    if gather is not None and not getattr(gather, "booleans", False):
        def boolean_gather(context, node):
            inputs = _get_inputs(context, node, min_expected=3)
            x, axis, indices = inputs[:3]
            if not is_bool(x.dtype):
                gather(context, node)
                return
            picked = mb.gather_along_axis(x=mb.cast(x=x, dtype="int32"), indices=indices, axis=axis)
            context.add(mb.cast(x=picked, dtype="bool", name=node.name))

        boolean_gather.booleans = True
        known["gather"] = boolean_gather
    _REGISTERED = True


def _integer_clamp(clamp, mb, get_inputs, is_int):
    """``clamp`` with integer bounds on an integer tensor in int32 (``maximum`` / ``minimum``);
    anything else as coremltools translates it."""
    import numpy as np

    def translation(context, node):
        inputs = get_inputs(context, node, expected=[1, 2, 3])
        x, bounds = inputs[0], list(inputs[1:3])
        if not is_int(x.dtype) or all(b is None for b in bounds) or any(
                b is not None and (b.val is None or not is_int(b.dtype)) for b in bounds):
            clamp(context, node)  # floats, and bounds known only at run time, as coremltools does them
            return
        out = mb.cast(x=x, dtype="int32")
        for bound, op in zip(bounds, (mb.maximum, mb.minimum)):
            if bound is not None:
                out = op(x=out, y=mb.const(val=np.int32(bound.val)))
        context.add(mb.identity(x=out, name=node.name))

    translation.integers = True
    return translation


def _booleans_only(op: str, translate, get_inputs, is_bool):
    def translation(context, node):
        if not all(is_bool(v.dtype) for v in get_inputs(context, node)):
            raise NotImplementedError(f"Core ML has {op} on boolean tensors only (not bitwise on integers)")
        translate(context, node)

    return translation
