"""Shared plumbing for runtimes that execute a ``torch.nn.Module``-like callable."""

from __future__ import annotations

from typing import Any

import numpy as np
from autotimm_deploy.profiler.runtimes.base import Session


class TorchSession(Session):
    devices = ("cpu", "cuda")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))
        self.torch = torch
        self.module = self.load()

    def load(self):
        raise NotImplementedError

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        return [self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays.values()]

    def run(self, prepared: Any) -> Any:
        with self.torch.inference_mode():
            out = self.module(*prepared)
        return out if isinstance(out, (tuple, list)) else (out,)

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        names = self.output_names or [f"output{i}" for i in range(len(outputs))]
        return {n: t.detach().float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
                for n, t in zip(names, outputs)}

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()
