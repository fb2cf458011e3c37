"""ONNX (``.onnx``): the model's graph (`onnx_graph`) at the precision asked for: fp32; fp16 compute
with fp32 I/O (`onnx_reduced`); int8 Q/DQ (`onnx_int8`)."""

from __future__ import annotations

from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.formats.base import ExportContext, Exported, Format, register_format
from autotimm_deploy.exporter.formats.onnx_graph import MIN_OPSET, check_saved, fp32_proto, save_onnx
from autotimm_deploy.exporter.formats.onnx_int8 import quantize_qdq
from autotimm_deploy.exporter.formats.onnx_reduced import reduced_proto


@register_format
class OnnxFormat(Format):
    name = "onnx"
    suffix = ".onnx"
    description = ("ONNX (onnxruntime, TensorRT, OpenVINO, ...); --fp16: fp16 compute, fp32 I/O; "
                   "--int8: Q/DQ via onnxruntime static quantization")
    precisions = ("fp32", "fp16", "int8")
    dynamic_size = True

    @staticmethod
    def check_options(options) -> None:
        import onnx

        top = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= options.opset <= top:
            raise UserError(f"--opset {options.opset} is out of range: this onnx supports {MIN_OPSET} to {top}")

    def export(self, ctx: ExportContext) -> Exported:
        reference = None
        if ctx.options.precision != "fp32":  # kept for `diagnose`; one fp32 export serves both
            reference, _ = fp32_proto(ctx)
            ctx.cache.setdefault("onnx_fp32", (reference, _))
        try:
            proto, info = precision_proto(ctx, ctx.options.precision)
        finally:
            if not ctx.share_intermediates:
                ctx.cache.pop("onnx_fp32", None)
        path = ctx.path(self.suffix)
        files = save_onnx(proto, path)
        check_saved(path, dynamic=not ctx.options.static and "static_fallback" not in info)
        info["external_data"] = len(files) > 1
        return Exported(files, info, reference=reference)

    @staticmethod
    def diagnose(ctx: ExportContext, exported: Exported, pictures, cosine_gate: float) -> dict | None:
        from autotimm_deploy.exporter.formats.onnx_layers import eager_divergence, layer_divergence

        if exported.reference is None:  # fp32: against eager, where the tensors carry PyTorch's names
            if exported.info.get("exporter") != "torch.onnx.dynamo":
                return None
            return eager_divergence(ctx, exported.artifact, pictures, cosine_gate)
        return layer_divergence(exported.reference, exported.artifact, pictures, cosine_gate, ctx.workdir)


def precision_proto(ctx: ExportContext, precision: str):
    """The ONNX graph for ``precision``: fp32; fp16/bf16 compute with fp32 I/O; int8 Q/DQ."""
    if precision in ("fp16", "bf16"):
        return reduced_proto(ctx, precision)
    proto, info = fp32_proto(ctx)
    if precision == "int8":
        proto, info["quantization"] = quantize_qdq(proto, ctx)
    return proto, info
