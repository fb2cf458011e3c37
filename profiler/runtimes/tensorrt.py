"""TensorRT: a serialized engine run with ``execute_async_v3`` on a CUDA stream.

Device buffers are torch CUDA tensors (torch is already here; no second CUDA binding). Before
loading, the engine's manifest is checked against the installed TensorRT and the current GPU:
an engine only runs on the TensorRT version and GPU architecture it was built for, unless it was
built version- or hardware-compatible. ``cuda_graph=True`` captures one CUDA graph per batch
size and replays it (launch overhead off the critical path, as ``trtexec --useCudaGraph``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.environment import tensorrt_environment, version_tuple
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.manifest import TensorSig
from autotimm_deploy.profiler.runtimes.base import Session, register_runtime

_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
           "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


# Version-compatible engines also load in the next major release for these pairs only (TensorRT's
# support matrix: "TensorRT 10 version-compatible engines can run with a TensorRT 11 runtime, and
# TensorRT 8 version-compatible engines can run with a TensorRT 10 runtime").
CROSS_MAJOR = {8: 10, 10: 11}
VERSION_COMPATIBLE_SINCE = (8, 6)


def _runs_forward(then: tuple[int, ...], now: tuple[int, ...]) -> bool:
    """Whether a version-compatible engine built with TensorRT ``then`` loads in TensorRT ``now``."""
    if then[:2] < VERSION_COMPATIBLE_SINCE or now[:2] < VERSION_COMPATIBLE_SINCE:
        return False
    return (now[:1] == then[:1] and now >= then) or CROSS_MAJOR.get(then[0]) == now[0]


def compatibility_problem(built: dict | None, current: dict) -> str | None:
    """Why an engine built in ``built`` (the manifest's ``export.tensorrt``) cannot run in
    ``current`` (same keys), or None. Pure data: tested without TensorRT."""
    if not built:
        return None  # a bare .engine without manifest: TensorRT itself will refuse a mismatch
    problems = []
    then, now = version_tuple(built["version"]), version_tuple(current["version"])
    forward_ok = built.get("version_compatible") and _runs_forward(then, now)
    if then != now and not forward_ok:
        problems.append(f"TensorRT {built['version']} (this machine has {current['version']})")
    level = built.get("hardware_compatibility")
    cc_built, cc_now = built["compute_capability"], current["compute_capability"]
    if cc_built != cc_now:
        ampere_plus = level == "ampere+" and float(cc_now) >= 8.0
        if not ampere_plus:
            problems.append(f"sm_{cc_built.replace('.', '')} (this GPU, {current['gpu']}, is "
                            f"sm_{cc_now.replace('.', '')})")
    if not problems:
        return None
    return (f"engine built for {' with '.join(reversed(problems)) if len(problems) > 1 else problems[0]}; "
            "rebuild it here with autotimm-export ... --format trt (engines are tied to the TensorRT "
            "version and GPU architecture they were built with)")



@register_runtime
class TensorRTSession(Session):
    extra = "trt"
    requires = ("tensorrt", "torch")
    name = "tensorrt"
    formats = ("trt",)
    devices = ("cuda",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise UserError("the tensorrt runtime needs a CUDA GPU and none is visible")
        self.torch, self.trt = torch, trt
        self.dev = torch.device(self.device if ":" in self.device else "cuda:0")
        built = (self.manifest.export or {}).get("tensorrt") if self.manifest else None
        problem = compatibility_problem(built, tensorrt_environment(self.dev.index or 0))
        if problem:
            raise UserError(problem)
        self.logger = trt.Logger(trt.Logger.ERROR)
        trt.init_libnvinfer_plugins(self.logger, "")  # engines with plugin layers need the registry filled
        runtime = trt.Runtime(self.logger)
        if built and built.get("version_compatible"):
            runtime.engine_host_code_allowed = True
        with torch.cuda.device(self.dev):
            try:
                self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
            except Exception as e:  # noqa: BLE001
                raise UserError(f"TensorRT cannot load {self.path}: {first_line(e, 200)}") from None
            if self.engine is None:
                raise UserError(f"TensorRT cannot load {self.path} (corrupt, or built by another TensorRT "
                                "version or for another GPU); rebuild it with autotimm-export --format trt")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.dev)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.engine_outputs = [n for n in names if not is_input[n]]
        if not self.inputs:
            self.inputs = [self._sig(n) for n in self.input_names]
        if not self.outputs:
            self.outputs = [self._sig(n) for n in self.engine_outputs]
        self.cuda_graph = bool(self.options.get("cuda_graph"))
        self._graphs: dict[tuple, Any] = {}
        self._in_buffers: dict[tuple, dict[str, Any]] = {}
        self._out_buffers: dict[tuple, dict[str, Any]] = {}

    def _sig(self, name: str) -> TensorSig:
        dtype = _DTYPES.get(self.engine.get_tensor_dtype(name).name, "float32")
        symbolic = {0: "batch", 2: "height", 3: "width"}  # the only dims our engines leave free
        shape = [d if d >= 0 else symbolic.get(i, f"dim{i}") for i, d in enumerate(self.engine.get_tensor_shape(name))]
        return TensorSig(name, dtype, shape)

    def batch_range(self) -> tuple[int, int | None]:
        lo, _opt, hi = self.engine.get_tensor_profile_shape(self.input_names[0], 0)
        return int(lo[0]), int(hi[0])

    def _torch_dtype(self, name: str):
        return getattr(self.torch, _DTYPES[self.engine.get_tensor_dtype(name).name])

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        with self.torch.cuda.stream(self.stream):
            return {k: self.torch.from_numpy(np.ascontiguousarray(v)).to(self.dev, self._torch_dtype(k),
                                                                          non_blocking=False)
                    for k, v in arrays.items()}

    def _bind(self, prepared: dict[str, Any]) -> dict[str, Any]:
        key = tuple(tuple(t.shape) for t in prepared.values())
        if self.cuda_graph:  # a captured graph reads fixed addresses: copy into this shape's buffers
            static = self._in_buffers.get(key)
            if static is None:
                static = self._in_buffers[key] = {n: self.torch.empty_like(t) for n, t in prepared.items()}
            for name, tensor in prepared.items():
                if tensor.data_ptr() != static[name].data_ptr():
                    static[name].copy_(tensor)
            prepared = static
        for name, tensor in prepared.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                lo, hi = self.batch_range()
                raise RuntimeError(f"TensorRT refused input {name} of shape {tuple(tensor.shape)} (outside the "
                                   f"engine's optimization profile: batch {lo} to {hi}, and its size range)")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outs = self._out_buffers.get(key)
        if outs is None:
            outs = {n: self.torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self._torch_dtype(n),
                                        device=self.dev) for n in self.engine_outputs}
            self._out_buffers[key] = outs
        for name, tensor in outs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        return outs

    def run(self, prepared: Any) -> Any:
        with self.torch.cuda.stream(self.stream):
            outs = self._bind(prepared)
            if not self.cuda_graph:
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise RuntimeError("TensorRT execute_async_v3 failed")
                return outs
            return self._replay(tuple(tuple(t.shape) for t in prepared.values()), outs)

    def _replay(self, key: tuple, outs: dict[str, Any]) -> dict[str, Any]:
        graph = self._graphs.get(key)
        if graph is None:
            # one plain run first: TensorRT allocates and sets shapes outside the capture
            self.context.execute_async_v3(self.stream.cuda_stream)
            self.stream.synchronize()
            graph = self.torch.cuda.CUDAGraph()
            with self.torch.cuda.graph(graph, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
            self._graphs[key] = graph
        graph.replay()
        return outs

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        self.stream.synchronize()
        by_engine = {n: (t.float() if t.dtype in (self.torch.float16, self.torch.bfloat16) else t).cpu().numpy()
                     for n, t in outputs.items()}
        return {n: by_engine[n] for n in self.output_names if n in by_engine} or by_engine

    def synchronize(self) -> None:
        self.stream.synchronize()

    def timing_stream(self):
        return self.stream

    def close(self) -> None:
        self._graphs.clear()
        self._in_buffers.clear()
        self._out_buffers.clear()
        self.context = None
        self.engine = None
