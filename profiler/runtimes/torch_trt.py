"""Torch-TensorRT programs (``.trt.ep``): ``import torch_tensorrt`` registers the TensorRT engine
class the saved program refers to, then ``torch.export.load(p).module()`` runs on the GPU (its
TensorRT subgraphs as engines, the rest as PyTorch)."""

from __future__ import annotations

from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.profiler.runtimes._torch import TorchSession
from autotimm_deploy.profiler.runtimes.base import register_runtime


@register_runtime
class TorchTensorRTSession(TorchSession):
    extra = "torch-trt"
    requires = ("torch_tensorrt",)
    name = "torch-trt"
    formats = ("torch-trt",)
    devices = ("cuda",)

    def load(self):
        import torch_tensorrt  # noqa: F401 - registers tensorrt::Engine for deserialization

        if not self.torch.cuda.is_available():
            raise UserError("the torch-trt runtime needs a CUDA GPU and none is visible")
        try:
            return self.torch.export.load(str(self.path)).module().to(self.device)
        except Exception as e:  # noqa: BLE001 - corrupt file, or built by another TensorRT / for another GPU
            raise UserError(f"cannot load Torch-TensorRT program {self.path}: {first_line(e, 200)} (rebuild it here "
                            "with autotimm-export --format torch-trt)") from None
