"""Core ML packages (``.mlpackage.zip``, see `exporter.formats.coreml`) through ``coremltools``'
``MLModel.predict``, which Core ML offers on macOS only: elsewhere this runtime says so, and the
exporter reports the parity check as not run.

The package is unzipped into a temporary folder for the life of the session and run on Core ML's
CPU compute unit (``CPU_ONLY``: what ``--device cpu`` means everywhere else; the GPU and Neural
Engine are not offered yet). Core ML takes the whole batch at once within the range the package
declares; outputs come back in the manifest's dtypes (Core ML has no int64: integer outputs arrive
as int32)."""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.capture import quiet_import
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.manifest import TensorSig
from autotimm_deploy.profiler.runtimes.base import Session, register_runtime


@register_runtime
class CoreMLSession(Session):
    extra = "coreml"
    requires = ("coremltools",)
    name = "coreml"
    formats = ("coreml",)
    devices = ("cpu",)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if sys.platform != "darwin":
            return f"Core ML runs models only on macOS (this is {sys.platform}); run it on a Mac"
        return None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        ct = quiet_import("coremltools")
        self._folder = tempfile.TemporaryDirectory(prefix="autotimm-coreml-")
        try:
            with zipfile.ZipFile(self.path) as z:
                z.extractall(self._folder.name)  # zipfile keeps every member inside the folder
            package = next(Path(self._folder.name).glob("*.mlpackage"))
            self.model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY)
        except Exception as e:  # noqa: BLE001 - a broken zip, no package inside, Core ML's own refusal
            self._folder.cleanup()
            raise UserError(f"Core ML cannot load {self.path.name}: {first_line(e, 200)} (not a zipped .mlpackage "
                            "as autotimm-export writes, or corrupt)") from None
        described = self.model.get_spec().description
        self.in_names = [f.name for f in described.input]
        self.out_names = [f.name for f in described.output]
        if not self.inputs:
            self.inputs = [TensorSig(n, "float32", [int(d) for d in f.type.multiArrayType.shape])
                           for n, f in zip(self.in_names, described.input)]
        if not self.outputs:
            self.outputs = [TensorSig(n, "float32", ["batch"]) for n in self.out_names]
        if len(self.out_names) != len(self.outputs):
            self._folder.cleanup()
            raise UserError(f"{self.path.name} has {len(self.out_names)} outputs; its manifest names {len(self.outputs)}")

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        return {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(self.in_names, arrays.values())}

    def run(self, prepared: Any) -> Any:
        return self.model.predict(prepared)

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        return {sig.name: np.asarray(outputs[n]).astype(sig.dtype, copy=False)
                for sig, n in zip(self.outputs, self.out_names)}

    def close(self) -> None:
        self.model = None
        self._folder.cleanup()
