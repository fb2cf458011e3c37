"""Shared plumbing for runtimes that execute a ``torch.nn.Module``-like callable (eager, TorchScript,
torch.export, AOTInductor). On CUDA, ``cuda_graph=True`` captures one CUDA graph per input shape
after a warm-up on a side stream (PyTorch's documented whole-network capture) and replays it, as
the TensorRT runtime does."""

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
        self.cuda_graph = bool(self.options.get("cuda_graph")) and self.device.startswith("cuda")
        self._graphs: dict[tuple, tuple] = {}

    def load(self):
        raise NotImplementedError

    def run_settings(self, batch: int) -> dict[str, Any]:
        settings = {"mode": "latency", "threads": self.torch.get_num_threads()}
        return {**settings, "cuda_graph": True} if self.cuda_graph else settings

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        return [self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays.values()]

    def run(self, prepared: Any) -> Any:
        if self.cuda_graph:
            return self._replay(prepared)
        with self.torch.inference_mode():
            out = self.module(*prepared)
        return out if isinstance(out, (tuple, list)) else (out,)

    def _replay(self, prepared: list) -> Any:
        torch = self.torch
        key = tuple(tuple(t.shape) for t in prepared)
        if key not in self._graphs:
            static_in = [t.clone() for t in prepared]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):  # lazy initialisation and cuDNN autotuning happen outside the capture
                    self.module(*static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                out = self.module(*static_in)
            self._graphs[key] = (graph, static_in, tuple(out) if isinstance(out, (tuple, list)) else (out,))
        graph, static_in, static_out = self._graphs[key]
        for dst, src in zip(static_in, prepared):
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src)
        graph.replay()
        return static_out  # overwritten by the next replay: fetch copies it out first

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        names = self.output_names or [f"output{i}" for i in range(len(outputs))]
        return {n: t.detach().float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
                for n, t in zip(names, outputs)}

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def close(self) -> None:
        self._graphs.clear()
