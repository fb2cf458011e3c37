"""ONNX int8: onnxruntime static quantization, in one of three forms (`INT8_FORMS`), all with
per-channel symmetric int8 weights:

- ``s8s8``: a Q/DQ graph with symmetric int8 activations, the form TensorRT's explicit-precision path
  takes (its int8 engines are always built from this one);
- ``u8s8``: a Q/DQ graph with asymmetric uint8 activations, what ONNX Runtime's CPU kernels (MLAS,
  VNNI / AMX) run natively: s8s8 activations make them convert on every call;
- ``u8s8-qop``: the same numbers as quantized operators (QLinearConv, MatMulInteger, QGemm), for
  ONNX Runtime only.

With an accuracy budget (``--eval DATA --max-drop POINTS``) the graph is scored on the labelled data
and, while it misses the budget, the compute nodes whose quantized input activations are noisiest
(lowest signal-to-quantization-noise ratio, measured with onnxruntime's Q/DQ debugging utilities on
labelled pictures, where ranges fitted to unrepresentative calibration data show as clipping) are kept
in float, 1, 2, 4, ... of them, then the fewest between the last two counts by bisection,
re-quantizing and re-scoring each time. The nodes kept in float (with the timm modules they come from) and the metric at every step go
into the manifest; TensorRT's strongly typed int8 engines are built from this same graph."""

from __future__ import annotations

import contextlib
import functools
import io
import tempfile
from pathlib import Path

from autotimm_deploy.exporter.core.environment import int8_saturates
from autotimm_deploy.exporter.core.errors import ExportFailed, first_line
from autotimm_deploy.exporter.formats.int8_plan import kept, narrow_weights_record, timm_path

# Q/DQ only on the inputs of the compute-heavy ops, the placement TensorRT's explicit int8 path
# expects; post-processing (box decode, NMS, resizes, concatenations) stays in float, where
# quantizing it would cost accuracy (box coordinates) and can produce graphs ORT cannot load.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an in-memory array."""

    def __init__(self, name: str, data):
        self.items = iter([{name: data[i:i + 1]} for i in range(len(data))])

    def get_next(self):
        return next(self.items, None)

    def __iter__(self):  # what onnxruntime's Q/DQ debugging utilities read
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


# our calibrator name -> onnxruntime's CalibrationMethod; the first is the default
# (not Entropy: quantize_static builds it with 128 bins and 128 quantized bins, so its KL search has
# one candidate, the full range, and gives min/max's scales exactly, measured on mobilenetv3_large_100)
CALIBRATORS = {"minmax": "MinMax", "percentile": "Percentile"}
# form -> (ORT QuantFormat name, activation QuantType name, activations symmetric)
INT8_FORMS = {"s8s8": ("QDQ", "QInt8", True), "u8s8": ("QDQ", "QUInt8", False),
              "u8s8-qop": ("QOperator", "QUInt8", False)}


def quantize_qdq(proto, ctx, form: str = "s8s8", cpu_kernels: bool = False):
    """``proto`` quantized to a Q/DQ (or QOperator) graph in ``form``, calibrated on ``ctx.calibration``,
    with ``ctx.int8_plan``'s weights, calibrator and layers in float. With ``ctx.budget`` (--max-drop)
    layers are kept in float until the budget holds (`_hold_budget`); ``cpu_kernels`` (the graph is
    the artifact ONNX Runtime runs, not TensorRT's input): where those kernels saturate, 7-bit weights
    are tried first."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    data = ctx.calibration
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        src, pre = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx")
        onnx.save_model(proto, str(src))
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing only helps; quantize the plain graph instead
            pre = src
        input_name = proto.graph.input[0].name
        plan = ctx.int8_plan
        calibrator = (plan and plan.calibrator) or next(iter(CALIBRATORS))
        weights = {i.name for i in proto.graph.initializer}
        compute = {n.name: module_name(n, weights) for n in proto.graph.node if n.op_type in QUANTIZED_OPS}
        in_float = set(kept(plan, compute.values()))
        planned = [node for node, module in compute.items() if module in in_float]

        narrow = bool(plan and plan.narrow_weights)

        def quantize(exclude: list[str], seven_bits: bool = narrow):
            dst = Path(tmp, f"int8-{len(exclude)}-{7 if seven_bits else 8}.onnx")
            _quantize_static(pre, dst, _Reader(input_name, data), planned + exclude, form, calibrator, seven_bits)
            return dst

        dst = quantize([])
        control = None
        if ctx.budget is not None:
            may_narrow = cpu_kernels and not narrow and int8_saturates()
            dst, control = _hold_budget(ctx, pre, dst, quantize, may_narrow)
            narrow = narrow or control.get("weight_bits") == 7
        out = onnx.load(str(dst))
    quant_format, activations, symmetric = INT8_FORMS[form]
    info = {"tool": "onnxruntime.quantization.quantize_static", "form": form, "format": quant_format,
            "ops": list(QUANTIZED_OPS),
            "activations": f"{'int8' if activations == 'QInt8' else 'uint8'} {'symmetric' if symmetric else 'asymmetric'}",
            "weights": "int8 per-channel symmetric", "calibration": ctx.calibration_info, "calibrator": calibrator}
    if narrow:
        info["weights"] = narrow_weights_record("per-channel symmetric (onnxruntime reduce_range)")
    if planned:
        info["kept_float"] = {**plan.record()["kept_float"], "nodes": len(planned)}
    if control is not None:
        info["accuracy_control"] = control
    return out, info


def _quantize_static(src: Path, dst: Path, reader, exclude: list[str], form: str = "s8s8",
                     calibrator: str = "minmax", narrow: bool = False) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quant_format, activations, symmetric = INT8_FORMS[form]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            quantize_static(
                str(src), str(dst), reader,
                quant_format=getattr(QuantFormat, quant_format), per_channel=True,
                activation_type=getattr(QuantType, activations), weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, CALIBRATORS[calibrator]),
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=list(exclude), reduce_range=narrow,
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
            )
    except Exception as e:  # noqa: BLE001
        raise ExportFailed(f"onnxruntime static quantization failed: {first_line(e)}") from e


def _hold_budget(ctx, float_path: Path, qdq_path: Path, quantize, may_narrow: bool = False) -> tuple[Path, dict]:
    """Score ``qdq_path``; while it misses the budget keep the most sensitive nodes in float. With
    ``may_narrow`` (ONNX Runtime's int8 kernels saturate on this CPU) 7-bit weights are scored first,
    and kept for the search when they score no worse: they cost no speed, layers in float do."""
    budget = ctx.budget
    batch = (ctx.options.batch_size,) * 2 if ctx.options.static else (1, None)

    def score(path: Path) -> float | None:
        return budget.score(_ort_predict(path), batch)

    value = score(qdq_path)
    steps = [{"kept_float": 0, budget.metric: value}]
    control = {"tool": "onnxruntime Q/DQ debugging (activation SQNR), nodes_to_exclude", "metric": budget.metric,
               "eager": budget.eager, "max_drop": budget.max_drop, "steps": steps, "kept_float": []}
    if not budget.holds(value) and may_narrow:
        narrowed = functools.partial(quantize, seven_bits=True)
        path = narrowed([])
        seven = score(path)
        steps.append({"kept_float": 0, "weight_bits": 7, budget.metric: seven})
        if seven is not None and (value is None or seven >= value):  # points of the metric: higher is better
            qdq_path, value, quantize, control["weight_bits"] = path, seven, narrowed, 7
    if budget.holds(value):
        control["met"] = True
        return qdq_path, control
    ranked = node_sensitivity(float_path, qdq_path, budget.pictures)
    control["ranking"] = [{"node": n, "module": m, "sqnr_db": s} for n, m, s in ranked[:20]]
    tried: dict[int, tuple[Path, float | None]] = {0: (qdq_path, value)}

    def attempt(k: int) -> bool:
        path = quantize([n for n, _, _ in ranked[:k]])
        tried[k] = (path, score(path))
        steps.append({"kept_float": k, budget.metric: tried[k][1]})
        return budget.holds(tried[k][1])

    low, k = 0, 1  # low: the most nodes kept in float that still missed the budget
    while ranked and not attempt(min(k, len(ranked))):
        low = min(k, len(ranked))
        if low == len(ranked):
            break
        k *= 2
    best = min((n for n, (_, v) in tried.items() if budget.holds(v)), default=None)
    while best is not None and best - low > 1:  # the fewest nodes in float that hold it
        mid = (low + best) // 2
        if attempt(mid):
            best = mid
        else:
            low = mid
    keep = best if best is not None else max(tried)
    control["kept_float"] = [{"node": n, "module": m, "sqnr_db": s} for n, m, s in ranked[:keep]]
    control["met"] = best is not None
    return tried[keep][0], control


def _ort_predict(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    return lambda x: dict(zip(names, sess.run(None, {name: x})))


def node_sensitivity(float_path: Path, qdq_path: Path, data) -> list[tuple[str, str, float]]:
    """Quantized compute nodes, most sensitive first: (node name, timm module, SQNR in dB of its
    quantized input activation on ``data``; lower is noisier)."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    model = onnx.load(str(float_path))
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(dir=float_path.parent) as tmp:
        float_aug, qdq_aug = Path(tmp, "float.onnx"), Path(tmp, "qdq.onnx")
        modify_model_output_intermediate_tensors(str(float_path), str(float_aug))
        modify_model_output_intermediate_tensors(str(qdq_path), str(qdq_aug))
        providers = ["CPUExecutionProvider"]
        float_acts = collect_activations(str(float_aug), _Reader(input_name, data), execution_providers=providers)
        qdq_acts = collect_activations(str(qdq_aug), _Reader(input_name, data), execution_providers=providers)
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    weights = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        sqnr = [errors[t]["qdq_err"] for t in node.input if t in errors and t not in weights]
        if sqnr:
            out.append((node.name, module_name(node, weights), round(float(min(sqnr)), 2)))
    return sorted(out, key=lambda r: r[2])


def module_name(node, weights: set[str]) -> str:
    """The timm module a node comes from: its weight's name without ``.weight`` (and our wrapper's
    prefix); the node name when it has no named weight (a MatMul of two activations)."""
    for t in node.input:
        if t in weights and t.endswith(".weight"):
            return timm_path(t[: -len(".weight")])
    return node.name

