"""OpenVINO IR (``.xml`` + ``.bin``), converted from our fp32 ONNX graph.

- fp32: weights and compute in fp32 (the runtime pins ``INFERENCE_PRECISION_HINT=f32``, since
  OpenVINO otherwise runs bf16 on CPUs with AMX/AVX512-BF16).
- bf16: the same fp32 IR; the manifest records ``inference_precision: bf16`` and the runtime sets it.
- int8: post-training quantization with NNCF on the calibration data.
"""

from __future__ import annotations

from autotimm_deploy.exporter.core.errors import ExportFailed, MissingExtra, first_line
from autotimm_deploy.exporter.formats.base import ExportContext, Exported, Format, register_format
from autotimm_deploy.exporter.formats.onnx_graph import fp32_proto, save_onnx

INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "default"}


@register_format
class OpenVinoFormat(Format):
    name = "openvino"
    suffix = ".xml"
    description = "OpenVINO IR (.xml + .bin) for Intel CPUs; fp32, bf16, int8 (NNCF)"
    extra = "openvino"
    requires = ("openvino",)
    precisions = ("fp32", "bf16", "int8")
    dynamic_size = True

    @staticmethod
    def check_options(options) -> None:
        import importlib.util

        if options.precision == "int8" and importlib.util.find_spec("nncf") is None:
            raise MissingExtra("nncf (for OpenVINO int8)", "openvino")

    def export(self, ctx: ExportContext) -> Exported:
        import openvino as ov

        proto, info = fp32_proto(ctx)
        try:
            model = ov.convert_model(_to_file(proto, ctx))
        except Exception as e:  # noqa: BLE001
            raise ExportFailed(f"openvino.convert_model failed: {first_line(e)}") from e
        precision = ctx.options.precision
        if precision == "int8":
            model, info["quantization"] = _quantize(model, ctx, proto)
        xml = ctx.path(self.suffix)
        ov.save_model(model, str(xml), compress_to_fp16=False)
        info.update({"source": f"onnx ({info.pop('exporter')})", "converter": f"openvino {ov.get_version()}",
                     "inference_precision": INFERENCE_PRECISION[precision]})
        return Exported([xml, xml.with_suffix(".bin")], info)


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
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            q = nncf.quantize(model, nncf.Dataset([data[i:i + 1] for i in range(len(data))]),
                              subset_size=len(data),
                              preset=nncf.QuantizationPreset.MIXED if transformer else nncf.QuantizationPreset.PERFORMANCE,
                              **kwargs)
    except Exception as e:  # noqa: BLE001
        raise ExportFailed(f"NNCF quantization failed: {first_line(e)}") from e
    return q, {"tool": f"nncf {nncf.__version__}", "model_type": "transformer" if transformer else "cnn",
               "calibration": ctx.calibration_info}
