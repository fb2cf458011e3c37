"""ExecuTorch programs (``.pte``) through ExecuTorch's own runtime (its Python bindings over the C++
runtime and the XNNPACK delegate a phone runs). A ``.pte`` keeps no tensor names: without a
manifest, inputs and outputs are named by position, and the batch range is the program's planned one."""

from __future__ import annotations

from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.capture import captured_output
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.manifest import TensorSig
from autotimm_deploy.profiler.runtimes.base import Session, quiet_first, register_runtime

DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64",
          11: "bool", 15: "bfloat16"}  # ExecuTorch ScalarType codes


@register_runtime
class ExecuTorchSession(Session):
    extra = "executorch"
    requires = ("executorch",)
    name = "executorch"
    formats = ("executorch",)
    devices = ("cpu",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        self.torch = torch
        self._seen: set = set()  # input shapes run once (`quiet_first`)
        if self.threads:
            portable_lib._unsafe_reset_threadpool(int(self.threads))
        try:
            with captured_output():  # the runtime logs its CPU probing to stderr
                self.method = Runtime.get().load_program(str(self.path)).load_method("forward")
        except Exception as e:  # noqa: BLE001
            raise UserError(f"ExecuTorch cannot load {self.path}: {first_line(e, 200)} (not a .pte program, "
                            "or one built by an incompatible ExecuTorch)") from None
        meta = self.method.metadata
        self.planned = [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
        if not self.inputs:
            self.inputs = [TensorSig(f"input{i}" if i else "input", DTYPES.get(meta.input_tensor_meta(i).dtype(),
                                     "float32"), ["batch", *sizes[1:]]) for i, sizes in enumerate(self.planned)]
        if not self.outputs:
            self.outputs = [TensorSig(f"output{i}", "float32", []) for i in range(meta.num_outputs())]

    def batch_range(self) -> tuple[int, int | None]:
        if self.manifest:
            return super().batch_range()
        return 1, self.planned[0][0]  # no manifest: any batch up to the planned one

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        tensors = [self.torch.from_numpy(np.ascontiguousarray(a)) for a in arrays.values()]
        hi = self.batch_range()[1]
        if hi is not None and tensors and tensors[0].shape[0] > hi:
            raise UserError(f"{self.path.name} holds memory for batches up to {hi}; batch {tensors[0].shape[0]} "
                            "does not fit (export again with a larger --batch-size)")
        return tensors

    def run(self, prepared: Any) -> Any:
        return quiet_first(self._seen, tuple(tuple(t.shape) for t in prepared), lambda: self.method.execute(prepared))

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        return {n: t.numpy() for n, t in zip(self.output_names, outputs)}
