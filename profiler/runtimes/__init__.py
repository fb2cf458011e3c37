"""Runtime registry. Entries name their module lazily so that listing runtimes imports nothing heavy;
adding a runtime is adding one module and one line here."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from autotimm_deploy.exporter.core.errors import MissingExtra, RuntimeUnavailable, UserError
from autotimm_deploy.exporter.core.manifest import Manifest
from autotimm_deploy.profiler.runtimes.base import Session

# name -> (module, class, extra that provides it, modules it needs)
RUNTIMES: dict[str, tuple[str, str, str | None, tuple[str, ...]]] = {
    "eager": ("autotimm_deploy.profiler.runtimes.eager", "EagerSession", None, ("torch", "timm")),
    "torchscript": ("autotimm_deploy.profiler.runtimes.torchscript", "TorchScriptSession", None, ("torch",)),
    "pt2": ("autotimm_deploy.profiler.runtimes.pt2", "PT2Session", None, ("torch",)),
    "aoti": ("autotimm_deploy.profiler.runtimes.aoti", "AOTISession", None, ("torch",)),
    "executorch": ("autotimm_deploy.profiler.runtimes.executorch", "ExecuTorchSession", "executorch", ("executorch",)),
    "ncnn": ("autotimm_deploy.profiler.runtimes.ncnn", "NcnnSession", "ncnn", ("ncnn",)),
    "litert": ("autotimm_deploy.profiler.runtimes.litert", "LiteRTSession", "litert", ("ai_edge_litert",)),
    "coreml": ("autotimm_deploy.profiler.runtimes.coreml", "CoreMLSession", "coreml", ("coremltools",)),
    "onnxruntime": ("autotimm_deploy.profiler.runtimes.onnxruntime", "OnnxRuntimeSession", None, ("onnxruntime",)),
    "openvino": ("autotimm_deploy.profiler.runtimes.openvino", "OpenVinoSession", "openvino", ("openvino",)),
    "tensorrt": ("autotimm_deploy.profiler.runtimes.tensorrt", "TensorRTSession", "trt", ("tensorrt", "torch")),
    "torch-trt": ("autotimm_deploy.profiler.runtimes.torch_trt", "TorchTensorRTSession", "torch-trt", ("torch_tensorrt",)),
    "onnxruntime-cuda": ("autotimm_deploy.profiler.runtimes.onnxruntime", "OnnxRuntimeCudaSession", "gpu", ("onnxruntime",)),
    "onnxruntime-trt": ("autotimm_deploy.profiler.runtimes.onnxruntime", "OnnxRuntimeTensorRTSession", "gpu", ("onnxruntime",)),
    "triton": ("autotimm_deploy.profiler.runtimes.triton", "TritonSession", "triton", ("tritonclient",)),
}

# The runtime an artifact format runs on unless the user picks another.
DEFAULT_RUNTIME = {"torchscript": "torchscript", "pt2": "pt2", "aoti": "aoti", "executorch": "executorch",
                   "ncnn": "ncnn", "litert": "litert", "coreml": "coreml", "onnx": "onnxruntime",
                   "openvino": "openvino", "trt": "tensorrt", "torch-trt": "torch-trt", "triton": "triton"}


def runtime_class(name: str) -> type[Session]:
    if name not in RUNTIMES:
        raise UserError(f"unknown runtime {name!r} (available: {', '.join(RUNTIMES)})")
    module, cls, extra, needs = RUNTIMES[name]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"the {name} runtime ({', '.join(missing)})", extra or "dev")
    return getattr(importlib.import_module(module), cls)


def open_session(path: str | Path | None, runtime: str | None = None, manifest: Manifest | None = None,
                 device: str | None = None, threads: int | None = None, **options) -> Session:
    """Load an artifact for execution. ``runtime`` defaults from the manifest's format, ``device``
    to the runtime's first (the CPU, or the GPU for GPU-only runtimes)."""
    if runtime is None:
        if manifest is None:
            raise UserError(f"cannot tell which runtime runs {path}: no manifest and no --runtime")
        runtime = DEFAULT_RUNTIME.get(manifest.format)
        if runtime is None:
            raise UserError(f"no runtime for format {manifest.format!r}; pass --runtime")
    cls = runtime_class(runtime)
    reason = cls.unavailable_reason()
    if reason:
        raise RuntimeUnavailable(f"the {runtime} runtime cannot run here: {reason}")
    device = device or cls.default_device(manifest, path)
    if device.split(":")[0] not in cls.devices:
        raise UserError(f"the {runtime} runtime does not run on {device} (it runs on: {', '.join(cls.devices)})")
    if manifest is not None and manifest.format not in cls.formats:
        raise UserError(f"the {runtime} runtime cannot run a {manifest.format} artifact")
    return cls(path, manifest, device=device, threads=threads, **options)


def available_runtimes(device: str = "cpu") -> list[str]:
    """The runtimes installed here that run on ``device`` (cpu, cuda), in registry order."""
    out = []
    for name in RUNTIMES:
        try:
            cls = runtime_class(name)
        except MissingExtra:
            continue
        if cls.unavailable_reason():
            continue
        if device.split(":")[0] in cls.devices:
            out.append(name)
    return out
