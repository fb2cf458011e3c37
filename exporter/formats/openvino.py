"""OpenVINO IR (``.xml`` + ``.bin``), converted from our fp32 ONNX graph (detection NMS as ONNX's
``NonMaxSuppression``, adjusted to ONNX's meaning by `onnx_nms.exact_openvino_nms`).

- fp32: weights and compute in fp32 (the runtime pins ``INFERENCE_PRECISION_HINT=f32``, since
  OpenVINO otherwise runs bf16 on CPUs with AMX/AVX512-BF16).
- bf16: the same fp32 IR; the manifest records ``inference_precision: bf16`` and the runtime sets it.
- int8: post-training quantization with NNCF on the calibration data; with an accuracy budget
  (``--eval DATA --max-drop POINTS``) NNCF's ``quantize_with_accuracy_control``, which scores the
  quantized model with our metric on the labelled data and reverts the layers that cost the most
  back to float until the drop is within the budget.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from autotimm_deploy.exporter.core.errors import ExportFailed, MissingExtra, UserError, first_line
from autotimm_deploy.exporter.formats.base import ExportContext, Exported, Format, register_format
from autotimm_deploy.exporter.formats.onnx_graph import FP32_GRAPH, fp32_proto, save_onnx
from autotimm_deploy.exporter.formats.int8_plan import kept, narrow_weights_record
from autotimm_deploy.exporter.formats.onnx_int8 import module_name
from autotimm_deploy.exporter.formats.onnx_nms import exact_openvino_nms
from autotimm_deploy.exporter.formats.openvino_fusable import fusable

INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "default"}
# our calibrator name -> NNCF's activation range estimator; the first is NNCF's own default
CALIBRATORS = {"mean-minmax": "MEAN_MINMAX", "histogram": "HISTOGRAM", "mean-quantile": "MEAN_QUANTILE"}


@register_format
class OpenVinoFormat(Format):
    name = "openvino"
    suffix = ".xml"
    companions = (".bin",)
    default_runtime = "openvino"
    intermediates = (FP32_GRAPH,)
    description = "OpenVINO IR (.xml + .bin) for Intel CPUs; fp32, bf16, int8 (NNCF)"
    extra = "openvino"
    requires = ("openvino",)
    precisions = ("fp32", "bf16", "int8")
    int8_calibrators = tuple(CALIBRATORS)
    keeps_float = True
    int8_narrow_weights = True  # NNCF's overflow_fix on every layer, where int8 kernels saturate (no VNNI)
    dynamic_size = True
    # PIL's antialiased resize as plain ops (exporter/models/resample.py): OpenVINO's own antialiased
    # Interpolate is off by up to 70 levels of 8 bits
    embeds_preprocessing = True

    @staticmethod
    def check_options(options) -> None:
        import importlib.util

        if options.precision == "int8" and importlib.util.find_spec("nncf") is None:
            raise MissingExtra("nncf (for OpenVINO int8)", "openvino")

    def export(self, ctx: ExportContext) -> Exported:
        import openvino as ov

        proto, graph = fp32_proto(ctx)
        try:
            model = ov.convert_model(_to_file(proto, ctx))
        except Exception as e:  # noqa: BLE001
            raise ExportFailed(f"openvino.convert_model failed: {first_line(e)}") from e
        exact_openvino_nms(model)
        if rewritten := {**graph.info.get("fusable", {}), **fusable(model)}:
            graph.info["fusable"] = rewritten
        precision = ctx.options.precision
        # kept for `diagnose` (a reduced artifact's layers against this fp32 IR), with the timm module
        # of each ONNX node the IR's operations are named after
        reference = (model.clone(), _modules(proto)) if precision != "fp32" else None
        if precision == "int8":
            model, graph.info["quantization"] = _quantize(model, ctx, proto)
        xml = ctx.path(self.suffix)
        for key, value in ctx.metadata().items():  # read back with model.get_rt_info(["autotimm_deploy", key])
            model.set_rt_info(json.dumps(value, default=str), ["autotimm_deploy", key])
        ov.save_model(model, str(xml), compress_to_fp16=False)
        info = {**graph.info, "converter": f"openvino {ov.get_version()}",
                "inference_precision": INFERENCE_PRECISION[precision]}
        return dataclasses.replace(graph, files=[xml, xml.with_suffix(".bin")], info=info,
                                   exporter=f"onnx ({graph.exporter})", reference=reference)

    @staticmethod
    def check_file(path: Path) -> None:
        head = path.read_bytes()[:512].lstrip()
        if not head.startswith(b"<?xml") and not head.startswith(b"<net"):
            raise UserError(f"{path} is not an OpenVINO IR .xml file")

    @staticmethod
    def diagnose(ctx: ExportContext, exported: Exported, pictures, cosine_gate: float) -> dict | None:
        from autotimm_deploy.exporter.formats.openvino_layers import eager_divergence, layer_divergence

        if exported.reference is None:  # fp32: against eager, where the tensors carry PyTorch's names
            if "torch.onnx.dynamo" not in exported.exporter:
                return None
            return eager_divergence(ctx, exported.artifact, exported.info["inference_precision"], pictures,
                                    cosine_gate)
        model, modules = exported.reference
        return layer_divergence(model, modules, exported.artifact, exported.info["inference_precision"], pictures,
                                cosine_gate)


def _modules(proto) -> dict[str, str]:
    """ONNX node name -> the timm module of its weight (nodes with named weights only)."""
    weights = {i.name for i in proto.graph.initializer}
    return {n.name: module_name(n, weights) for n in proto.graph.node}


def _to_file(proto, ctx: ExportContext) -> str:
    path = ctx.workdir / f".{ctx.stem}.ov-src.onnx"
    save_onnx(proto, path)
    return str(path)


def _quantize(model, ctx: ExportContext, proto):
    import contextlib
    import io
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # nncf's import chatter
    import nncf

    nncf.set_log_level(logging.ERROR)

    data = ctx.calibration
    transformer = any(n.op_type in ("Softmax", "LayerNormalization") for n in proto.graph.node)
    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    calibration = nncf.Dataset([data[i:i + 1] for i in range(len(data))])
    preset = nncf.QuantizationPreset.MIXED if transformer else nncf.QuantizationPreset.PERFORMANCE
    info = {"tool": f"nncf {nncf.__version__}", "model_type": "transformer" if transformer else "cnn",
            "calibration": ctx.calibration_info}
    kwargs.update(_planned(nncf, model, proto, ctx.int8_plan, info))
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if ctx.budget is None:
                q = nncf.quantize(model, calibration, subset_size=len(data), preset=preset, **kwargs)
            else:
                q, info["accuracy_control"] = _with_accuracy_control(nncf, model, calibration, ctx, preset, kwargs,
                                                                     proto)
    except Exception as e:  # noqa: BLE001
        raise ExportFailed(f"NNCF quantization failed: {first_line(e)}") from e
    return q, info


def _planned(nncf, model, proto, plan, info: dict) -> dict:
    """NNCF's arguments for a retry's `Int8Plan`: its range estimator, 7-bit weights on every layer,
    its layers as an ignored scope."""
    from nncf.quantization.advanced_parameters import OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    out: dict = {}
    advanced: dict = {}
    info["calibrator"] = (plan and plan.calibrator) or next(iter(CALIBRATORS))
    if plan is not None and plan.calibrator:
        advanced["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet,
                                                                 CALIBRATORS[plan.calibrator])
    if plan is not None and plan.narrow_weights:  # NNCF's default narrows the first layer's weights only
        advanced["overflow_fix"] = OverflowFix.ENABLE
        info["weights"] = narrow_weights_record("on every layer (NNCF overflow_fix=enable)")
    if advanced:
        out["advanced_parameters"] = nncf.AdvancedQuantizationParameters(**advanced)
    modules = _modules(proto)
    in_float = set(kept(plan, modules.values()))
    if in_float:
        nodes = {n for n, m in modules.items() if m in in_float}
        names = [op.get_friendly_name() for op in model.get_ordered_ops()
                 if op.get_type_name() in COMPUTE_OPS and op.get_friendly_name().split("/")[0] in nodes]
        out["ignored_scope"] = nncf.IgnoredScope(names=names, validate=False)
        info["kept_float"] = {**plan.record()["kept_float"], "nodes": len(names)}
    return out


def _with_accuracy_control(nncf, model, calibration, ctx: ExportContext, preset, kwargs, proto):
    """NNCF's accuracy-aware quantization, scored by our metric (points) on the labelled data."""
    budget = ctx.budget
    batch = (ctx.options.batch_size,) * 2 if ctx.options.static else (1, None)
    steps: list[dict] = []

    def validate(compiled, items) -> float:
        outputs = list(compiled.outputs)

        def predict(x):
            result = compiled(x)
            return {o.get_any_name(): result[o] for o in outputs}

        value = budget.score(predict, batch, [int(i) for i in items])
        return float("nan") if value is None else float(value)

    def counted(compiled, items):
        items = list(items)
        value = validate(compiled, items)
        if len(items) == budget.samples:  # a whole-set score (the fp32 IR's, then each candidate's): one step
            steps.append({"model": "int8 candidate" if steps else "fp32 IR", budget.metric: value})
        return value

    q = nncf.quantize_with_accuracy_control(
        model, calibration, nncf.Dataset(list(range(budget.samples))), counted, max_drop=budget.max_drop,
        drop_type=nncf.DropType.ABSOLUTE, preset=preset, subset_size=len(ctx.calibration), **kwargs)
    weights = {i.name for i in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    kept = [{"node": op, "module": module_name(nodes[op.split("/")[0]], weights) if op.split("/")[0] in nodes else op}
            for op in _float_ops(q)]
    final = steps[-1][budget.metric] if steps else None
    return q, {"tool": "nncf.quantize_with_accuracy_control", "metric": budget.metric, "eager": budget.eager,
               "max_drop": budget.max_drop, "steps": steps, "kept_float": kept,
               "met": final is not None and budget.holds(final),
               "note": "kept_float: the convolutions and matrix multiplications without an int8 input, those "
                       "NNCF leaves in float by design included"}


COMPUTE_OPS = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")


def _float_ops(model) -> list[str]:
    """Compute ops of an OpenVINO model whose data input is not fed by a FakeQuantize (float)."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in COMPUTE_OPS:
            continue
        src = op.input_value(0).get_node()
        while src.get_type_name() in ("Convert", "Reshape", "Transpose") and src.get_input_size():
            src = src.input_value(0).get_node()
        if src.get_type_name() != "FakeQuantize":
            out.append(op.get_friendly_name())
    return out
