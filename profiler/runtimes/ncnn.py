"""ncnn models (``.ncnn.param`` + ``.ncnn.bin``) through the ``ncnn`` Python package, on the CPU.

ncnn has no batch dimension: a batch runs picture by picture, one extractor each. ncnn blobs are
named ``in0`` / ``out0``...; they map by position onto the manifest's names. ncnn computes in float:
outputs come back in the manifest's dtype (int64 class maps, for instance). An ``ncnn.Mat`` made
from a numpy array does not copy it, so each picture's array is kept alive until its outputs are
read (a freed one reads garbage)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.capture import captured_output
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import TensorSig
from autotimm_deploy.profiler.runtimes.base import Session, register_runtime


def binary_path(param: Path) -> Path:
    name = param.name
    return param.with_name((name[:-len(".param")] if name.endswith(".param") else name) + ".bin")


@register_runtime
class NcnnSession(Session):
    extra = "ncnn"
    requires = ("ncnn",)
    name = "ncnn"
    formats = ("ncnn",)
    devices = ("cpu",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import ncnn

        self.net = ncnn.Net()
        opt = self.net.opt
        opt.num_threads = int(self.threads or len(os.sched_getaffinity(0)))
        half = (self.manifest.precision if self.manifest else "fp32") == "fp16"
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = half
        opt.use_vulkan_compute = False
        with captured_output() as said:  # ncnn reports load failures on stderr, with a nonzero code
            failed = self.net.load_param(str(self.path)) or self.net.load_model(str(binary_path(self.path)))
        if failed:
            lines = [ln for ln in said.text.splitlines() if ln.strip()]
            raise UserError(f"ncnn cannot load {self.path.name}: {lines[0] if lines else 'load failed'} (not an ncnn "
                            ".param with its .bin beside it, or an op ncnn lacks)")
        self.ncnn = ncnn
        self.blob_in, self.blob_out = list(self.net.input_names()), list(self.net.output_names())
        if not self.inputs:
            self.inputs = [TensorSig(n, "float32", ["batch", "?", "?", "?"]) for n in self.blob_in]
        if not self.outputs:
            self.outputs = [TensorSig(n, "float32", ["batch"]) for n in self.blob_out]
        if len(self.blob_out) != len(self.outputs):
            raise UserError(f"{self.path.name} has {len(self.blob_out)} outputs; its manifest names {len(self.outputs)}")

    def input_shapes(self, batch: int, size=None):
        if self.manifest is None:
            raise UserError("an ncnn model keeps no input shape: profile it with its manifest beside it")
        return super().input_shapes(batch, size)

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        return [np.ascontiguousarray(a, dtype=np.float32) for a in arrays.values()]

    def run(self, prepared: Any) -> Any:
        rows = []
        for i in range(prepared[0].shape[0]):
            pictures = [a[i] for a in prepared]  # views of contiguous arrays: alive while `prepared` is
            ex = self.net.create_extractor()
            for name, picture in zip(self.blob_in, pictures):
                ex.input(name, self.ncnn.Mat(picture))
            row = []
            for name in self.blob_out:
                code, mat = ex.extract(name)
                if code != 0:
                    raise RuntimeError(f"ncnn could not compute {name} (error {code})")
                row.append(np.array(mat, copy=True))
            rows.append(row)
        return rows

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        out = {}
        for k, sig in enumerate(self.outputs):
            per = [row[k] for row in outputs]
            dims = sig.shape[1:]
            if all(isinstance(d, int) for d in dims) and all(p.size == int(np.prod(dims)) for p in per):
                per = [p.reshape(dims) for p in per]  # ncnn drops unit dims: the manifest's shape back
            out[sig.name] = np.stack(per).astype(sig.dtype if self.manifest else np.float32, copy=False)
        return out
