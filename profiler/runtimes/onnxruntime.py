"""ONNX Runtime: CPU provider; CUDA and TensorRT providers when ``onnxruntime-gpu`` is installed,
with IO binding so GPU numbers are not bound by host copies the caller did not ask for."""

from __future__ import annotations

from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.manifest import TensorSig
from autotimm_deploy.profiler.runtimes.base import Session

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


class OnnxRuntimeSession(Session):
    name = "onnxruntime"
    formats = ("onnx",)
    devices = ("cpu", "cuda")
    provider: str | None = None  # PROVIDERS key; None: from the device

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import onnxruntime as ort  # the registry checked it is installed

        self.ort = ort
        provider_key = (self.options.get("provider") or self.provider
                        or ("cuda" if self.device.startswith("cuda") else "cpu"))
        wanted = PROVIDERS[provider_key]
        if wanted[0] not in ort.get_available_providers():
            raise UserError(
                f"onnxruntime has no {wanted[0]} here (available: {', '.join(ort.get_available_providers())}); "
                "install the [gpu] extra on a CUDA machine"
            )
        self.device_id = int(self.device.split(":")[1]) if ":" in self.device else 0
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
            so.inter_op_num_threads = 1
        try:
            self.sess = ort.InferenceSession(str(self.path), sess_options=so,
                                             providers=self._provider_options(wanted))
        except Exception as e:  # noqa: BLE001 - corrupt or unsupported file
            raise UserError(f"onnxruntime cannot load {self.path}: {first_line(e, 200)}") from None
        self.on_gpu = wanted[0] != "CPUExecutionProvider"
        if not self.inputs:  # no manifest: describe the graph itself
            self.inputs = [_sig(i) for i in self.sess.get_inputs()]
        if not self.outputs:
            self.outputs = [_sig(o) for o in self.sess.get_outputs()]

    def _provider_options(self, providers: list[str]) -> list:
        """TensorRT EP: cache engines and tactics on disk (else every session rebuilds for minutes);
        fp16 when the artifact was exported for fp16 or ``fp16=True`` is asked for."""
        if providers[0] != "TensorrtExecutionProvider":
            return providers
        from pathlib import Path

        cache = Path.home() / ".cache" / "autotimm-deploy" / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        fp16 = bool(self.options.get("fp16")) or bool(self.manifest and self.manifest.precision == "fp16")
        trt = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
               "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache), "trt_fp16_enable": fp16,
               "device_id": self.device_id}
        return [(providers[0], trt), *providers[1:]]

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        if not self.on_gpu:
            return {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        return {k: self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), "cuda", self.device_id)
                for k, v in arrays.items()}

    def run(self, prepared: Any) -> Any:
        if not self.on_gpu:
            return self.sess.run(None, prepared)
        binding = self.sess.io_binding()
        for name, value in prepared.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        self.sess.run_with_iobinding(binding)
        return binding.get_outputs()

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        arrays = [o if isinstance(o, np.ndarray) else o.numpy() for o in outputs]
        return dict(zip(self.output_names, arrays))

    def synchronize(self) -> None:
        pass  # run / run_with_iobinding return after the device finished


def _sig(node) -> TensorSig:
    shape = [d if isinstance(d, int) else (d or "batch") for d in node.shape]
    return TensorSig(node.name, _ORT_TYPES.get(node.type, node.type), shape)


class OnnxRuntimeCudaSession(OnnxRuntimeSession):
    """ONNX Runtime's CUDA execution provider (``onnxruntime-gpu``, the ``[gpu]`` extra)."""

    name = "onnxruntime-cuda"
    devices = ("cuda",)
    provider = "cuda"


class OnnxRuntimeTensorRTSession(OnnxRuntimeSession):
    """ONNX Runtime's TensorRT execution provider, CUDA then CPU for what TensorRT cannot run."""

    name = "onnxruntime-trt"
    devices = ("cuda",)
    provider = "tensorrt"
