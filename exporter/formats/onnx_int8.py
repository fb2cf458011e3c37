"""ONNX int8: onnxruntime static quantization to a Q/DQ graph (symmetric int8 activations and
per-channel int8 weights, the form TensorRT's explicit-precision path also accepts)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from autotimm_deploy.exporter.core.errors import ExportFailed, first_line

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

    def rewind(self):  # pragma: no cover - not used by the MinMax calibrator
        pass


def quantize_qdq(proto, ctx):
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    data = ctx.calibration
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        onnx.save_model(proto, str(src))
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing only helps; quantize the plain graph instead
            pre = src
        try:
            quantize_static(
                str(pre), str(dst), _Reader(proto.graph.input[0].name, data),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTIZED_OPS),
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
        except Exception as e:  # noqa: BLE001
            raise ExportFailed(f"onnxruntime static quantization failed: {first_line(e)}") from e
        out = onnx.load(str(dst))
    info = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "ops": list(QUANTIZED_OPS),
            "activations": "int8 symmetric",
            "weights": "int8 per-channel symmetric", "calibration": ctx.calibration_info}
    return out, info
