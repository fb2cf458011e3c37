"""LiteRT models (``.tflite``) through ``ai-edge-litert``'s interpreter (XNNPACK delegate) on the CPU.

Runs through the model's signature runner, which resizes the input to each batch. Only the runner
touches the interpreter: calling ``allocate_tensors`` or ``invoke`` beside it is refused by LiteRT.
Signature outputs are named ``output_0``, ``output_1``, ... and listed alphabetically
(``output_10`` before ``output_2``): they are put back in numeric order, the task's output order.
LiteRT has no int64 tensors on most paths: integer outputs come back in the manifest's dtype.
Full-integer models (our int8) take and give int8 tensors: float inputs are quantized and outputs
dequantized here with each tensor's scale and zero point."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.capture import captured_output
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.manifest import TensorSig
from autotimm_deploy.profiler.runtimes.base import Session, quiet_first, register_runtime


def _numeric(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


@register_runtime
class LiteRTSession(Session):
    extra = "litert"
    requires = ("ai_edge_litert",)
    name = "litert"
    formats = ("litert",)
    devices = ("cpu",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from ai_edge_litert.interpreter import Interpreter

        self._seen: set = set()  # input shapes run once (`quiet_first`)

        try:
            with captured_output():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
                self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads or None)
                self.runner = self.interpreter.get_signature_runner()
        except Exception as e:  # noqa: BLE001
            raise UserError(f"LiteRT cannot load {self.path}: {first_line(e, 200)} (not a .tflite model with a "
                            "signature, or corrupt)") from None
        ins, outs = self.runner.get_input_details(), self.runner.get_output_details()
        self.arg_names = sorted(ins, key=_numeric)
        self.out_names = sorted(outs, key=_numeric)
        # full-integer models (our int8) take and give int8: (scale, zero point) per quantized tensor
        self.in_quant = [_quant(ins[n]) for n in self.arg_names]
        self.out_quant = [_quant(outs[n]) for n in self.out_names]
        if not self.inputs:
            self.inputs = [TensorSig(n, np.dtype(ins[n]["dtype"]).name, [int(d) for d in ins[n]["shape"]])
                           for n in self.arg_names]
        if not self.outputs:
            self.outputs = [TensorSig(n, np.dtype(outs[n]["dtype"]).name, [int(d) for d in outs[n]["shape"]])
                            for n in self.out_names]
        if len(self.out_names) != len(self.outputs):
            raise UserError(f"{self.path.name} has {len(self.out_names)} outputs; its manifest names {len(self.outputs)}")

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        """Float pictures, quantized here for an int8 input (as the app on the device would)."""
        lo, hi = self.batch_range()
        batch = next(iter(arrays.values())).shape[0]
        if lo == hi and batch != lo:  # the interpreter would resize the input and compute a wrong batch
            raise UserError(f"{self.path.name} has a fixed batch of {lo} (its graph does not resize); got {batch}")
        out = {}
        for n, a, q in zip(self.arg_names, arrays.values(), self.in_quant):
            if q is None:
                out[n] = np.ascontiguousarray(a, dtype=np.float32)
            else:
                scale, zero, dtype = q
                info = np.iinfo(dtype)
                out[n] = np.clip(np.rint(a / scale) + zero, info.min, info.max).astype(dtype)
        return out

    def run(self, prepared: Any) -> Any:
        outputs = quiet_first(self._seen, tuple(a.shape for a in prepared.values()), lambda: self.runner(**prepared))
        batch = next(iter(prepared.values())).shape[0]
        first = np.asarray(outputs[self.out_names[0]])
        if first.ndim and first.shape[0] != batch:
            raise RuntimeError(f"{self.path.name} gave {first.shape[0]} results for a batch of {batch}: its graph "
                               "fixes the batch; run it at that batch")
        return outputs

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        out = {}
        for sig, n, q in zip(self.outputs, self.out_names, self.out_quant):
            value = np.asarray(outputs[n])
            if q is not None:
                value = (value.astype(np.float32) - q[1]) * q[0]
            out[sig.name] = value.astype(sig.dtype, copy=False)
        return out


def _quant(detail: dict) -> tuple[float, int, Any] | None:
    """(scale, zero point, integer dtype) of a quantized float tensor, else None."""
    scale, zero = detail.get("quantization") or (0.0, 0)
    dtype = np.dtype(detail["dtype"])
    return (float(scale), int(zero), dtype.type) if scale and dtype.kind in "iu" else None
