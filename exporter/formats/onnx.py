"""ONNX (``.onnx``): the model's graph (`onnx_graph`) at the precision asked for: fp32; fp16 compute
with fp32 I/O (`onnx_reduced`); int8 Q/DQ (`onnx_int8`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.formats.base import ExportContext, Exported, Format, cli_option, register_format
from autotimm_deploy.exporter.formats.onnx_graph import FP32_GRAPH, MIN_OPSET, check_saved, fp32_proto, save_onnx
from autotimm_deploy.exporter.formats.onnx_int8 import CALIBRATORS, INT8_FORMS, quantize_qdq
from autotimm_deploy.exporter.formats.onnx_reduced import reduced_proto


@dataclass
class OnnxOptions:
    """What only an ONNX export takes (``ExportOptions.format_options["onnx"]``)."""

    int8_form: str = cli_option(
        "--onnx-int8", "the --int8 graph's form: s8s8 (Q/DQ, symmetric int8 activations: the form TensorRT and ONNX "
        "Runtime's TensorRT provider take; default), u8s8 (Q/DQ, asymmetric uint8 activations: what ONNX Runtime's "
        "CPU kernels run natively, ~2.8x faster there; give it 32+ calibration pictures), u8s8-qop (u8s8 as "
        "quantized operators, ONNX Runtime only)", default="s8s8", choices=tuple(INT8_FORMS))


@register_format
class OnnxFormat(Format):
    name = "onnx"
    suffix = ".onnx"
    default_runtime = "onnxruntime"
    intermediates = (FP32_GRAPH,)
    description = ("ONNX (onnxruntime, TensorRT, OpenVINO, ...); --fp16: fp16 compute, fp32 I/O; "
                   "--int8: Q/DQ via onnxruntime static quantization")
    precisions = ("fp32", "fp16", "int8")
    dynamic_size = True
    embeds_preprocessing = True
    Options = OnnxOptions
    int8_calibrators = tuple(CALIBRATORS)
    keeps_float = True
    int8_narrow_weights = True  # onnxruntime's reduce_range, where its int8 kernels saturate (no VNNI)

    @staticmethod
    def check_options(options) -> None:
        import onnx

        form = options.of("onnx").int8_form
        if form == "u8s8-qop" and options.max_drop is not None and options.precision == "int8":
            raise UserError("--onnx-int8 u8s8-qop cannot hold an accuracy budget (--max-drop ranks the Q/DQ "
                            "graph's nodes): use --onnx-int8 u8s8")
        top = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= options.opset <= top:
            raise UserError(f"--opset {options.opset} is out of range: this onnx supports {MIN_OPSET} to {top}")

    def export(self, ctx: ExportContext) -> Exported:
        # a reduced graph keeps its fp32 one for `diagnose` (the cached one: exported once for both)
        reference = fp32_proto(ctx)[0] if ctx.options.precision != "fp32" else None
        proto, graph = precision_proto(ctx, ctx.options.precision, ctx.options.of("onnx").int8_form, cpu_kernels=True)
        path = ctx.path(self.suffix)
        set_metadata(proto, ctx.metadata())
        files = save_onnx(proto, path)
        check_saved(path, dynamic=not ctx.options.static and graph.batch is None, proto=proto)
        graph.info["external_data"] = len(files) > 1
        return dataclasses.replace(graph, files=files, reference=reference)

    @staticmethod
    def check_file(path: Path) -> None:
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - DecodeError and friends
            raise UserError(f"{path} is not a valid ONNX file (corrupt or truncated): {type(e).__name__}") from None
        if not model.graph.node or not model.graph.input:
            raise UserError(f"{path} is not a valid ONNX file (no graph inside; corrupt or truncated?)")

    @staticmethod
    def diagnose(ctx: ExportContext, exported: Exported, pictures, cosine_gate: float) -> dict | None:
        from autotimm_deploy.exporter.formats.onnx_layers import eager_divergence, layer_divergence

        if exported.reference is None:  # fp32: against eager, where the tensors carry PyTorch's names
            if exported.exporter != "torch.onnx.dynamo":
                return None
            return eager_divergence(ctx, exported.artifact, pictures, cosine_gate)
        return layer_divergence(exported.reference, exported.artifact, pictures, cosine_gate, ctx.workdir)


METADATA_PREFIX = "autotimm_deploy."


def set_metadata(proto, metadata: dict) -> None:
    """``metadata`` as the graph's ``metadata_props`` (JSON values, keys under our prefix), replacing ours."""
    import json

    kept = [p for p in proto.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value, default=str)


def precision_proto(ctx: ExportContext, precision: str, int8_form: str = "s8s8", cpu_kernels: bool = False):
    """The ONNX graph for ``precision``: fp32; fp16/bf16 compute with fp32 I/O; int8 in ``int8_form``
    (`onnx_int8.INT8_FORMS`; TensorRT always takes s8s8). ``cpu_kernels``: the graph itself is the
    artifact, run by ONNX Runtime's CPU kernels (not TensorRT's)."""
    if precision in ("fp16", "bf16"):
        return reduced_proto(ctx, precision)
    proto, graph = fp32_proto(ctx)
    if precision == "int8":
        proto, graph.info["quantization"] = quantize_qdq(proto, ctx, int8_form, cpu_kernels)
    return proto, graph
