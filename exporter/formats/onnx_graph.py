"""The ONNX graph of a model, shared by every format made from ONNX (onnx, trt, openvino): torch's
dynamo exporter first (opset >= 18), the TorchScript-based one as fallback; simplified with onnxslim;
saved with weights inline under 2 GB and external above; checked with ``onnx.checker``."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import threading
import warnings
from pathlib import Path
from typing import Any

from autotimm_deploy.exporter.core.capture import captured_output
from autotimm_deploy.exporter.core.errors import ExportFailed, first_line
from autotimm_deploy.exporter.core.operators import nms_operator, recording
from autotimm_deploy.exporter.formats.base import BatchRange, ExportContext, Exported
from autotimm_deploy.exporter.formats.dims import onnx_axes, with_dynamic_dims
from autotimm_deploy.exporter.formats.onnx_fusable import fusable
from autotimm_deploy.exporter.formats.onnx_nms import translation_table

INLINE_LIMIT = 1_800_000_000  # protobuf's hard limit is 2 GiB; leave room for the graph itself
DYNAMO_MIN_OPSET = 18
MIN_OPSET = 9  # the oldest the TorchScript-based exporter writes


def input_name(ctx: ExportContext) -> str:
    """The graph's input: ``image`` (an 8-bit picture) with the preprocessing inside, else ``input``."""
    return "image" if ctx.options.embed_preprocessing else "input"


def _dynamo(ctx: ExportContext, names: tuple[list[str], list[str]]):
    return _dynamo_program(ctx, names, ctx.options.optimize_dynamo).model_proto


def _dynamo_program(ctx: ExportContext, names: tuple[list[str], list[str]], optimize: bool):
    """The dynamo exporter's program; detection NMS traced as one operator, translated into ONNX's
    ``NonMaxSuppression`` (`onnx_nms`)."""
    import torch

    def call(dims):
        model, example = ctx.model, (ctx.example_input(),)
        if ctx.options.embed_preprocessing:  # torch.export first: the exporter's own retries lose the size symbols
            model, dims = torch.export.export(model, example, dynamic_shapes=dims, strict=False), None
        return torch.onnx.export(model, example, dynamo=True, dynamic_shapes=dims,
                                 input_names=names[0], output_names=names[1], opset_version=ctx.options.opset,
                                 optimize=optimize, verbose=False, custom_translation_table=translation_table())

    with nms_operator(), torchlib_listed_once():
        program, _multiple = with_dynamic_dims(ctx.options, call)
    return program


_LISTED = {"lock": threading.Lock(), "users": 0, "before": None}  # exports inside, what was there before


@contextlib.contextmanager
def torchlib_listed_once():
    """``torch.onnx.export`` builds its operator registry anew at each call, and most of that (0.9 s
    of CPU a call here, 0.2 s with this) is onnxscript listing torchlib's functions, the same list each
    time: listed once a process, for every export within it (a recipe's models, the test suite). The
    first export in puts the cached lister on torch's lazy module, the last one out takes it off
    (threads may overlap); where torch's internals differ, exports go on as they were."""
    try:
        from torch.onnx._internal import _lazy_import

        apis = _lazy_import.onnxscript_apis
        with _LISTED["lock"]:
            if not _LISTED["users"]:
                _LISTED["before"] = vars(apis).get("get_torchlib_ops")  # (the lazy module holds none)
                apis.get_torchlib_ops = functools.partial(_listed_by, apis.get_torchlib_ops)
            _LISTED["users"] += 1
    except (ImportError, AttributeError, TypeError):
        apis = None
    try:
        yield
    finally:
        if apis is not None:
            with _LISTED["lock"]:
                _LISTED["users"] -= 1
                if not _LISTED["users"]:
                    if _LISTED["before"] is None:
                        vars(apis).pop("get_torchlib_ops", None)
                    else:
                        apis.get_torchlib_ops = _LISTED["before"]


@functools.cache
def _listed_by(lister):
    """What onnxscript's ``lister`` lists, once a process."""
    return lister()


def translated_program(ctx: ExportContext):
    """The ``torch.export`` program the dynamo exporter translates (run again, unoptimised): its node
    names are the tensor names of the ONNX graph, so it is PyTorch's side of a layer comparison."""
    import torch

    names = ([input_name(ctx)], list(ctx.model.output_names))
    with warnings.catch_warnings(), torch.no_grad(), captured_output():
        warnings.simplefilter("ignore")
        return _dynamo_program(ctx, names, optimize=False).exported_program


def _torchscript(ctx: ExportContext, names: tuple[list[str], list[str]]):
    import onnx
    import torch

    raw = ctx.workdir / f".{ctx.stem}.raw.onnx"
    axes = onnx_axes(ctx.options, names[0], names[1])
    torch.onnx.export(
        ctx.model,
        (ctx.example_input(),),
        str(raw),
        dynamo=False,
        input_names=names[0],
        output_names=names[1],
        dynamic_axes=axes,
        opset_version=ctx.options.opset,
        do_constant_folding=True,
    )
    proto = onnx.load(str(raw))  # pulls any external data in
    for p in raw.parent.glob(raw.name + "*"):
        p.unlink()
    return proto


EXPORTERS = {"torch.onnx.dynamo": _dynamo, "torch.onnx.torchscript": _torchscript}


def _initializer_bytes(proto) -> int:
    return sum(t.ByteSize() for t in proto.graph.initializer)


def save_onnx(proto, path: Path) -> list[Path]:
    """Write ``proto`` to ``path``; weights go to ``<name>.data`` beside it when too large to inline."""
    import onnx

    if _initializer_bytes(proto) < INLINE_LIMIT:
        onnx.save_model(proto, str(path))
        return [path]
    data = path.with_name(path.name + ".data")
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    return [path, data]


FP32_GRAPH = "onnx_fp32"  # the `ExportContext.cache` intermediate `fp32_proto` keeps (`Format.intermediates`)


def graph_key(ctx: ExportContext) -> tuple:
    """What the fp32 graph depends on: the model and every option that shapes the graph."""
    o = ctx.options
    return (FP32_GRAPH, ctx.model, o.opset, o.static, o.batch_size, o.dynamic_size, o.simplify, o.optimize_dynamo)


def fp32_proto(ctx: ExportContext) -> tuple[Any, Exported]:
    """The fp32 ONNX graph of ``ctx.model`` and what made it (an `Exported` without files yet),
    exported once per export call and option set: kept in ``ctx.cache`` for the formats after it
    (`autotimm_deploy.exporter.pipeline` frees it once no later format reads it)."""
    key = graph_key(ctx)
    if key not in ctx.cache:
        ctx.cache[key] = export_graph(ctx)
    proto, graph = ctx.cache[key]
    return proto, dataclasses.replace(graph, info=dict(graph.info))


def export_graph(ctx: ExportContext) -> tuple[Any, Exported]:
    """Export ``ctx.model`` with the first exporter that succeeds, then simplify. When no exporter
    can keep the batch dynamic (a model whose graph depends on the batch size, such as CondConv's
    per-sample kernels), the graph is exported again with the batch fixed to ``--batch-size``, and
    the returned `Exported` says so (the manifest then records a static batch)."""
    proto, exporter, failures, nms = _first_success(ctx)
    graph = Exported([], {"opset": ctx.options.opset}, exporter=exporter)
    if proto is None and not ctx.options.static:
        fixed = dataclasses.replace(ctx, options=dataclasses.replace(ctx.options, static=True))
        proto, exporter, static_failures, nms = _first_success(fixed)
        if proto is not None:
            b = ctx.options.batch_size
            graph = dataclasses.replace(graph, exporter=exporter, batch=BatchRange.fixed(b),
                                        fallback=f"no exporter could keep the batch dynamic; the graph is fixed to "
                                                 f"batch {b} (pass --batch-size to choose it)")
        failures.update({f"{k} (static batch)": v for k, v in static_failures.items()})
    if proto is None:
        raise ExportFailed("; ".join(f"{k}: {v}" for k, v in failures.items()))
    if failures:
        graph.info["fallback_from"] = failures
    if nms is not None:
        graph.info["nms"] = nms

    if ctx.options.simplify:
        proto, graph.info["simplifier"] = _simplify(proto)
        if rewritten := fusable(proto):
            graph.info["fusable"] = rewritten
    return proto, graph


def _first_success(ctx: ExportContext):
    """(proto or None, exporter name, {exporter: why it failed}, the NMS the graph holds) over the
    exporters for the opset. What the exporters print (graphs, warnings, C++ logs) is captured, not shown."""
    import torch

    names = ([input_name(ctx)], list(ctx.model.output_names))
    candidates = list(EXPORTERS) if ctx.options.opset >= DYNAMO_MIN_OPSET else ["torch.onnx.torchscript"]
    failures: dict[str, str] = {}
    for exporter in candidates:
        try:
            with warnings.catch_warnings(), torch.no_grad(), captured_output(), recording() as trace:
                warnings.simplefilter("ignore")
                return EXPORTERS[exporter](ctx, names), exporter, failures, trace.nms
        except Exception as e:  # noqa: BLE001 - any exporter failure means "try the next one"
            failures[exporter] = first_line(e, 160)
    return None, None, failures, None


def check_saved(path: Path, dynamic: bool, proto=None) -> None:
    """``onnx.checker`` on the file at ``path``; a dynamic batch kept on every input and output, read
    from ``proto`` (what was saved there) when given, else from the file (loaded again)."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001
        raise ExportFailed(f"onnx.checker rejected the graph: {first_line(e)}") from e
    _check_batch_dim(proto.graph if proto is not None else onnx.load(str(path), load_external_data=False).graph,
                     dynamic)


def _simplify(proto):
    try:
        import onnxslim

        before = len(proto.graph.node)
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(proto)
        return slim, {"tool": "onnxslim", "version": onnxslim.__version__, "nodes": [before, len(slim.graph.node)]}
    except Exception as e:  # noqa: BLE001 - simplification is an optimisation; keep the plain graph
        return proto, {"tool": "onnxslim", "error": first_line(e)}


def _check_batch_dim(graph, dynamic: bool) -> None:
    for value in list(graph.input) + list(graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        if dynamic and not dim0.dim_param:
            raise ExportFailed(f"{value.name} lost its dynamic batch dimension (got {dim0.dim_value}); try --static")
