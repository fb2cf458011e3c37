"""Eager PyTorch: the baseline every deployed artifact is compared with.

Options: ``channels_last`` (NHWC memory format), ``bf16`` (autocast to bfloat16)."""

from __future__ import annotations

import contextlib
from typing import Any

from autotimm_deploy.profiler.runtimes._torch import TorchSession
from autotimm_deploy.profiler.runtimes.base import register_runtime


@register_runtime
class EagerSession(TorchSession):
    requires = ("torch", "timm")
    name = "eager"
    formats = ("eager",)

    def __init__(self, path=None, manifest=None, device="cpu", threads=None, model=None, **options):
        if model is None:
            raise ValueError("the eager runtime needs a built model (model=...)")
        self._model = model
        super().__init__(path, manifest, device, threads, **options)

    def load(self):
        model = self._model.eval().to(self.device)
        if self.options.get("channels_last"):
            model = model.to(memory_format=self.torch.channels_last)
        return model

    def compute_precision(self) -> str:
        return "bf16" if self.options.get("bf16") else "fp32"

    def prepare(self, arrays) -> Any:
        tensors = super().prepare(arrays)
        if self.options.get("channels_last"):
            tensors = [t.contiguous(memory_format=self.torch.channels_last) if t.dim() == 4 else t for t in tensors]
        return tensors

    def run(self, prepared: Any) -> Any:
        autocast = (
            # a captured CUDA graph must not point at autocast's cached weight casts, freed on exit
            self.torch.autocast(self.device.split(":")[0], dtype=self.torch.bfloat16,
                                cache_enabled=not self.cuda_graph)
            if self.options.get("bf16")
            else contextlib.nullcontext()
        )
        with autocast:
            return super().run(prepared)
