"""ONNX Runtime: CPU provider; CUDA and TensorRT providers when ``onnxruntime-gpu`` is installed,
with IO binding so GPU numbers are not bound by host copies the caller did not ask for. On the CPU a
batch above 1 runs split across concurrent single-threaded runs, one per core (``batch_mode=
"latency"`` keeps the batch-1 session: one run on every intra-op thread)."""

from __future__ import annotations

from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.manifest import TensorSig
from autotimm_deploy.profiler.runtimes.base import Session, register_runtime

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


@register_runtime
class OnnxRuntimeSession(Session):
    requires = ("onnxruntime",)
    name = "onnxruntime"
    formats = ("onnx",)
    devices = ("cpu", "cuda")
    provider: str | None = None  # PROVIDERS key; None: from the device
    _stream_pool = None  # the throughput runs' threads, made at the first batch above 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import onnxruntime as ort  # the registry checked it is installed

        self.ort = ort
        provider_key = (self.options.get("provider") or self.provider
                        or ("cuda" if self.device.startswith("cuda") else "cpu"))
        wanted = PROVIDERS[provider_key]
        if wanted[0] not in ort.get_available_providers():
            raise UserError(
                f"onnxruntime has no {wanted[0]} here (available: {', '.join(ort.get_available_providers())}); "
                "install the [gpu] extra on a CUDA machine"
            )
        self.device_id = int(self.device.split(":")[1]) if ":" in self.device else 0
        self.on_gpu = wanted[0] != "CPUExecutionProvider"
        self.stream = None
        import torch

        if self.on_gpu and torch.cuda.is_available():  # ORT computes on our stream: the harness times it
            self.stream = torch.cuda.Stream(torch.device("cuda", self.device_id))
        so = self._options(self.threads)
        providers = provider_options(
            wanted, self.device_id, self.stream.cuda_stream if self.stream is not None else None,
            precision=self.manifest.precision if self.manifest else "fp32", fp16=bool(self.options.get("fp16")),
            profile=trt_profile_shapes(self.inputs, self.manifest.batch if self.manifest else None,
                                       self.options.get("max_batch"), self.size_range()),
            cache=_trt_cache() if wanted[0] == "TensorrtExecutionProvider" else None)
        try:
            self.sess = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as e:  # noqa: BLE001 - corrupt or unsupported file
            raise UserError(f"onnxruntime cannot load {self.path}: {first_line(e, 200)}") from None
        problem = fallback_problem(wanted, self.sess.get_providers())
        if problem:
            raise UserError(problem)
        if not self.inputs:  # no manifest: describe the graph itself
            self.inputs = [_sig(i) for i in self.sess.get_inputs()]
        if not self.outputs:
            self.outputs = [_sig(o) for o in self.sess.get_outputs()]
        # a batch can be split across streams only where the graph's batch is symbolic
        self._splittable = all(not isinstance(i.shape[0], int) for i in self.sess.get_inputs() if i.shape)

    def _options(self, threads: int | None):
        """Session options: every graph optimisation, ``threads`` intra-op threads (ORT's default: one
        per physical core), sequential execution."""
        so = self.ort.SessionOptions()
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        if self.options.get("shared_cores"):
            # ORT's idle threads spin after each run (its default, kept when it runs alone): measured
            # in turns with another runtime on the same cores, they took that runtime's CPU (eager
            # mobilenetv3_small_100 at 224 px: 28 ms beside a spinning session, 10.6 ms beside one
            # that does not spin), which made every ratio against eager unfair
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return so

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        if not self.on_gpu:
            return {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        return {k: self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), "cuda", self.device_id)
                for k, v in arrays.items()}

    def _throughput(self, batch: int) -> bool:
        """A batch split across streams: asked for (the profiler's batch sweeps; never a parity run),
        on the CPU, and only where the graph's batch is symbolic (a static batch takes no part)."""
        return (not self.on_gpu and batch > 1 and self._splittable and self.streams() > 1
                and self.options.get("batch_mode") == "throughput")

    def streams(self) -> int:
        """Concurrent runs of a throughput batch: one per thread asked for, else per physical core."""
        from autotimm_deploy.exporter.core.environment import physical_cores

        return int(self.threads or physical_cores())

    def run(self, prepared: Any) -> Any:
        if not self.on_gpu:
            batch = next(iter(prepared.values())).shape[0] if prepared else 1
            return self._run_streams(prepared, batch) if self._throughput(batch) else self.sess.run(None, prepared)
        binding = self.sess.io_binding()
        for name, value in prepared.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        self.sess.run_with_iobinding(binding)
        return binding.get_outputs()

    def _run_streams(self, prepared: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
        """The batch split across concurrent runs of a second session with one intra-op thread each
        (OpenVINO's streams, by hand: ONNX Runtime releases the GIL while it runs). Measured on 2 cores of
        an Intel Xeon (family 6, model 207) at batch 8, 224 px, on a loaded machine: resnet18 1.27x
        [1.13, 1.37] and mobilenetv3_small_100 1.09x [1.00, 1.20] the images/s of one run on both threads
        (load 3), 0.94x [0.83, 1.18] and 1.04x [0.97, 1.18] in a second run (load 4.3): never worse
        beyond the noise; ORT's parallel executor (inter-op) was slower, 0.76x and 0.79x
        (docs/benchmarks.md)."""
        if self._stream_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._stream_sess = self.ort.InferenceSession(str(self.path), sess_options=self._options(1),
                                                          providers=["CPUExecutionProvider"])
            self._stream_pool = ThreadPoolExecutor(self.streams(), thread_name_prefix="ort-stream")
        chunks = [c for c in np.array_split(np.arange(batch), min(self.streams(), batch)) if c.size]
        futures = [self._stream_pool.submit(self._stream_sess.run, None,
                                            {k: v[c[0]:c[-1] + 1] for k, v in prepared.items()}) for c in chunks]
        parts = [f.result() for f in futures]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    def run_settings(self, batch: int) -> dict[str, Any]:
        if self._throughput(batch):
            return {"mode": "throughput", "streams": min(self.streams(), batch), "intra_op_threads": 1,
                    "execution_mode": "sequential"}
        settings = {"mode": "latency", "provider": self.sess.get_providers()[0]}
        if not self.on_gpu:
            settings.update(intra_op_threads=self.streams(), execution_mode="sequential",
                            spinning=not self.options.get("shared_cores"))
        return settings

    def close(self) -> None:
        if self._stream_pool is not None:
            self._stream_pool.shutdown(wait=True)
            self._stream_pool = None

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        arrays = [o if isinstance(o, np.ndarray) else o.numpy() for o in outputs]
        return dict(zip(self.output_names, arrays))

    def synchronize(self) -> None:
        pass  # run / run_with_iobinding return after the device finished

    def timing_stream(self):
        return self.stream


def provider_options(wanted: list[str], device_id: int, stream: int | None, precision: str = "fp32",
                     fp16: bool = False, profile: dict[str, str] | None = None, cache: str | None = None) -> list:
    """ORT's provider list with options: every GPU provider on ``device_id`` (ORT otherwise computes
    on GPU 0 while IO is bound on GPU N) and on our ``stream``; the TensorRT provider with the
    artifact's precision (a Q/DQ graph needs ``trt_int8_enable`` on the TensorRT 10 that
    onnxruntime-gpu links, plus fp16 for the layers left unquantized), engine and timing caches on
    disk, and one optimization profile over the batch range, so engines are not rebuilt as the batch grows."""
    out: list = []
    for name in wanted:
        if name == "CPUExecutionProvider":
            out.append(name)
            continue
        opts: dict[str, Any] = {"device_id": device_id}
        if stream:
            opts["user_compute_stream"] = str(stream)
        if name == "TensorrtExecutionProvider":
            opts.update({"trt_fp16_enable": fp16 or precision in ("fp16", "int8"),
                         "trt_int8_enable": precision == "int8"})
            if cache:
                opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                             "trt_timing_cache_enable": True, "trt_timing_cache_path": cache})
            if profile:
                opts.update({f"trt_profile_{k}_shapes": v for k, v in profile.items()})
        out.append((name, opts))
    return out


DEFAULT_PROFILE_MAX_BATCH = 32  # as our TensorRT engines' default profile


def trt_profile_shapes(inputs: list[TensorSig], batch: dict | None, max_batch: int | None = None,
                       size: dict | None = None) -> dict | None:
    """``{"min": "input:1x3x224x224", "opt": ..., "max": ...}`` for the TensorRT provider, or None
    when an input has an unknown dimension besides the batch (and a height/width without ``size``,
    the manifest's range)."""
    if not inputs:
        return None
    batch = batch or {}
    lo = int(batch.get("min") or 1)
    hi = int(batch.get("max") or max(DEFAULT_PROFILE_MAX_BATCH, max_batch or 0))
    opt = min(max(int(batch.get("opt") or lo), lo), hi)
    shapes = {}
    for key, b in (("min", lo), ("opt", opt), ("max", hi)):
        dims = []
        named = {"height": size[key][0], "width": size[key][1]} if size else {}
        for sig in inputs:
            rest = [named.get(d, d) for d in sig.shape[1:]]
            if not all(isinstance(d, int) and d > 0 for d in rest):
                return None
            first = sig.shape[0] if isinstance(sig.shape[0], int) and sig.shape[0] > 0 else b
            dims.append(f"{sig.name}:{'x'.join(str(d) for d in (first, *rest))}")
        shapes[key] = ",".join(dims)
    return shapes


def fallback_problem(wanted: list[str], got: list[str]) -> str | None:
    """ORT silently drops a provider it cannot start (missing TensorRT or cuDNN libraries) and runs on
    the next one; a CPU run must never be reported as TensorRT."""
    if wanted[0] in got:
        return None
    return (f"onnxruntime could not start {wanted[0]} and fell back to {got[0] if got else 'nothing'} (its "
            "CUDA/cuDNN/TensorRT libraries are missing or do not match onnxruntime-gpu); see docs/tensorrt.md "
            "for the version pairings, or pick another --runtime")


def _trt_cache() -> str:
    from pathlib import Path

    cache = Path.home() / ".cache" / "autotimm-deploy" / "ort-trt"
    cache.mkdir(parents=True, exist_ok=True)
    return str(cache)


def _sig(node) -> TensorSig:
    shape = [d if isinstance(d, int) else (d or "batch") for d in node.shape]
    return TensorSig(node.name, _ORT_TYPES.get(node.type, node.type), shape)


@register_runtime
class OnnxRuntimeCudaSession(OnnxRuntimeSession):
    """ONNX Runtime's CUDA execution provider (``onnxruntime-gpu``, the ``[gpu]`` extra)."""
    extra = "gpu"
    requires = ("onnxruntime",)

    name = "onnxruntime-cuda"
    devices = ("cuda",)
    provider = "cuda"


@register_runtime
class OnnxRuntimeTensorRTSession(OnnxRuntimeSession):
    """ONNX Runtime's TensorRT execution provider, CUDA then CPU for what TensorRT cannot run."""
    extra = "gpu"
    requires = ("onnxruntime",)

    name = "onnxruntime-trt"
    devices = ("cuda",)
    provider = "tensorrt"
