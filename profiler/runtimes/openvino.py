"""OpenVINO on the CPU. Batch 1 runs a model compiled with the LATENCY hint, reshaped to the batch it
runs where every other input dim is fixed (as ``benchmark_app -shape`` does: the CPU plugin then skips
shape inference on every call: 1.5-15 % of a small CNN's batch-1 time); larger batches a
model compiled with the THROUGHPUT hint, the batch split across its parallel infer requests (an
AsyncInferQueue of OPTIMAL_NUMBER_OF_INFER_REQUESTS, all in flight at once, one per stream), unless
``batch_mode="latency"`` keeps the batch-1 settings.
The inference precision comes from the manifest (fp32 is pinned to f32: OpenVINO would otherwise
pick bf16 on CPUs that have it)."""

from __future__ import annotations

from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.manifest import TensorSig
from autotimm_deploy.profiler.runtimes.base import Session, register_runtime


@register_runtime
class OpenVinoSession(Session):
    extra = "openvino"
    requires = ("openvino",)
    name = "openvino"
    formats = ("openvino",)
    devices = ("cpu",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import openvino as ov  # the registry checked it is installed

        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as e:  # noqa: BLE001
            raise UserError(f"OpenVINO cannot read {self.path}: {first_line(e, 200)}") from None
        export = self.manifest.export if self.manifest else {}
        self.precision = self.options.get("inference_precision") or export.get("inference_precision", "f32")
        self._compiled: dict[str, Any] = {}
        self._latency: tuple[int, Any] | None = None  # (batch, an infer request of the LATENCY model for it)
        self._queue = None
        if not self.inputs:
            self.inputs = [_sig(p, "input") for p in self.model.inputs]
        if not self.outputs:
            self.outputs = [_sig(p, f"output{i}") for i, p in enumerate(self.model.outputs)]
        self._request(_opening_batch(self.model.inputs))  # compiled now: a broken IR fails on opening

    def compiled(self, hint: str):
        if hint not in self._compiled:
            self._compiled[hint] = self.core.compile_model(self.model, "CPU", self._config(hint))
        return self._compiled[hint]

    def _request(self, batch: int):
        """The infer request for ``batch``; only the last batch's is kept (each fixed model holds its
        own packed weights, and the harness runs one batch size after another)."""
        if self._latency is None or self._latency[0] != batch:
            self._latency = (batch, self._fixed(batch).create_infer_request())
        return self._latency[1]

    def latency_compiled(self, batch: int | None = None):
        """The LATENCY-compiled model that runs ``batch`` (default: the one compiled on opening)."""
        return self._request(batch or self._latency[0]).get_compiled_model()

    def _fixed(self, batch: int):
        """The LATENCY model reshaped to ``batch``, or the dynamic one where an input has another
        dynamic dim (a picture of any size) or the graph does not reshape."""
        import openvino as ov

        shapes = [p.get_partial_shape() for p in self.model.inputs]
        if any(s.rank.is_dynamic or any(d.is_dynamic for d in list(s)[1:]) for s in shapes):
            return self.compiled("LATENCY")
        model = self.model.clone()
        try:  # the batch where it is dynamic; an input whose first dim is fixed keeps it
            model.reshape({port: ov.PartialShape([batch if i == 0 and d.is_dynamic else d for i, d in enumerate(s)])
                           for port, s in zip(model.inputs, shapes) if s.rank.get_length() and s[0].is_dynamic})
            return self.core.compile_model(model, "CPU", self._config("LATENCY"))
        except Exception:  # noqa: BLE001 - a graph whose shapes cannot be fixed runs as exported
            return self.compiled("LATENCY")

    def _config(self, hint: str) -> dict[str, Any]:
        config = {"PERFORMANCE_HINT": hint}
        if self.precision != "default":
            config["INFERENCE_PRECISION_HINT"] = self.precision
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        return [np.ascontiguousarray(a) for a in arrays.values()]

    def run(self, prepared: Any) -> Any:
        batch = prepared[0].shape[0]
        if not self._throughput(batch):
            request = self._request(batch)
            result = request.infer(prepared)
            return [np.array(result[o]) for o in request.model_outputs]
        return self._run_throughput(prepared, batch)

    def _throughput(self, batch: int) -> bool:
        return batch > 1 and self.options.get("batch_mode", "throughput") == "throughput"

    def compute_precision(self) -> str:
        if self.manifest and self.manifest.precision == "int8":
            return "int8"
        asked = _PRECISIONS.get(self.precision, self.manifest.precision if self.manifest else "fp32")
        try:  # what the compiled model really computes in: a CPU without bf16 (or f16) support runs f32
            return _PRECISIONS.get(self.latency_compiled().get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                                   asked)
        except Exception:  # noqa: BLE001 - an OpenVINO that does not report it: what was asked
            return asked

    def run_settings(self, batch: int) -> dict[str, Any]:
        """The compiled model's own record of its hint, streams and threads, and the requests in flight."""
        hint = "THROUGHPUT" if self._throughput(batch) else "LATENCY"
        compiled = self.compiled(hint) if hint == "THROUGHPUT" else self.latency_compiled(batch)
        settings = {"mode": hint.lower(), "hint": hint}
        for key, prop, read in (("streams", "NUM_STREAMS", int), ("threads", "INFERENCE_NUM_THREADS", int),
                                ("inference_precision", "INFERENCE_PRECISION_HINT", lambda t: t.get_type_name())):
            try:
                settings[key] = read(compiled.get_property(prop))
            except Exception:  # noqa: BLE001 - a property this OpenVINO does not report is left out
                pass
        settings["infer_requests"] = min(len(self._queue), batch) if hint == "THROUGHPUT" and self._queue else 1
        return settings

    def _run_throughput(self, prepared, batch: int):
        import openvino as ov

        compiled = self.compiled("THROUGHPUT")
        if self._queue is None:
            n = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            self._queue = ov.AsyncInferQueue(compiled, n)
            self._parts: dict[int, list[np.ndarray]] = {}
            self._queue.set_callback(
                lambda req, idx: self._parts.__setitem__(idx, [np.array(t.data) for t in req.output_tensors]))
        chunks = np.array_split(np.arange(batch), min(len(self._queue), batch))
        self._parts.clear()
        for idx, rows in enumerate(chunks):
            self._queue.start_async([a[rows[0]:rows[-1] + 1] for a in prepared], userdata=idx)
        self._queue.wait_all()
        return [np.concatenate([self._parts[i][k] for i in range(len(chunks))]) for k in range(len(self.outputs))]

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, outputs))


_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # OpenVINO's inference precision -> ours


def _opening_batch(ports) -> int:
    """The batch compiled on opening: the first input's fixed batch, or the least its range allows."""
    for port in ports:
        shape = port.get_partial_shape()
        if shape.rank.is_static and shape.rank.get_length():
            dim0 = shape[0]
            return dim0.get_length() if dim0.is_static else max(1, dim0.get_min_length())
    return 1


def _sig(port, fallback: str) -> TensorSig:
    shape = [d.get_length() if d.is_static else "batch" for d in port.get_partial_shape()]
    names = port.get_names()
    return TensorSig(sorted(names)[0] if names else fallback, port.get_element_type().get_type_name(), shape)
