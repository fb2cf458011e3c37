"""Triton ``config.pbtxt`` for our artifacts, built as plain dicts from the manifest and written
through Triton's own ``ModelConfig`` protobuf (shipped in ``tritonclient``): a field or value the
schema does not know fails here, not in the server.

One entry per native backend in `NATIVE` (the backend, the file name it loads, the names it gives
tensors); every artifact also gets a Python-backend variant that runs it through our own runtime."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from autotimm_deploy.exporter.core.errors import MissingExtra, UserError

DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
          "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8",
          "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "object": "TYPE_STRING"}
DEFAULT_MAX_BATCH = 32  # an unbounded dynamic batch is served up to this (--max-batch)


@dataclass
class ServeOptions:
    """How the models are served: the instance kind and count, batching, and ONNX Runtime's
    TensorRT accelerator on GPU."""

    kind: str = "cpu"  # cpu | gpu
    instances: int = 1
    max_batch: int = DEFAULT_MAX_BATCH
    queue_delay_us: int = 100
    ort_tensorrt: bool = False  # onnxruntime backend on GPU: TensorRT execution accelerator
    warmup: bool = True

    def check(self) -> None:
        if self.kind not in ("cpu", "gpu"):
            raise UserError(f"--kind takes cpu or gpu, got {self.kind!r}")
        if not 1 <= self.instances <= 64:
            raise UserError(f"--instances takes 1 to 64, got {self.instances}")
        if not 1 <= self.max_batch <= 4096:
            raise UserError(f"--max-batch takes 1 to 4096, got {self.max_batch}")
        if not 0 <= self.queue_delay_us <= 10_000_000:
            raise UserError(f"--queue-delay-us takes 0 to 10000000, got {self.queue_delay_us}")
        if self.ort_tensorrt and self.kind != "gpu":
            raise UserError("--ort-tensorrt needs --kind gpu (TensorRT runs on the GPU)")


@dataclass(frozen=True)
class Native:
    """A Triton backend that loads one of our formats itself."""

    backend: str
    filename: str  # what the backend loads from the version folder
    kinds: tuple[str, ...]  # instance kinds it runs on
    tensor_name: Callable[[str, int, str], str] | None = None  # (kind: input/output, index, our name) -> its name
    extra: Callable[[dict, Any, ServeOptions], None] | None = None  # adds backend-specific fields


def _libtorch_name(kind: str, index: int, _name: str) -> str:
    """The PyTorch backend names a TorchScript module's tensors by position."""
    return f"{'INPUT' if kind == 'input' else 'OUTPUT'}__{index}"


def _onnxruntime_extra(config: dict, manifest, options: ServeOptions) -> None:
    """ONNX Runtime's TensorRT execution provider: INT8 for our Q/DQ graphs (explicit quantization),
    FP16 for fp16 graphs, FP32 otherwise; engines cached, so instances and restarts reuse them."""
    if options.ort_tensorrt:
        mode = {"int8": "INT8", "fp16": "FP16"}.get(manifest.precision, "FP32")
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": {
                "precision_mode": mode, "max_workspace_size_bytes": str(1 << 30), "trt_engine_cache_enable": "true",
                "trt_engine_cache_path": f"/tmp/autotimm-ort-trt-cache/{config['name']}"}}]}}


NATIVE: dict[str, Native] = {
    "onnx": Native("onnxruntime", "model.onnx", ("cpu", "gpu"), extra=_onnxruntime_extra),
    "trt": Native("tensorrt", "model.plan", ("gpu",)),
    "torchscript": Native("pytorch", "model.pt", ("cpu", "gpu"), tensor_name=_libtorch_name),
    "openvino": Native("openvino", "model.xml", ("cpu",)),
}


# the devices our own runtime runs each format on (the Python-backend variant's instance kind)
RUNTIME_KINDS = {"openvino": ("cpu",), "trt": ("gpu",), "torch-trt": ("gpu",)}


def python_kind(manifest, options: ServeOptions) -> str:
    kinds = RUNTIME_KINDS.get(manifest.format, ("cpu", "gpu"))
    return options.kind if options.kind in kinds else kinds[0]


def one_picture(manifest) -> bool:
    """Whether the artifact runs one picture at a time (what the raw-picture ensemble sends)."""
    dim0 = manifest.inputs[0].shape[0]
    return dim0 == 1 if isinstance(dim0, int) else int((manifest.batch or {}).get("min") or 1) <= 1


def max_batch(manifest, options: ServeOptions) -> int:
    """Triton's ``max_batch_size``: 0 for a fixed-batch artifact, or one whose smallest batch is
    above 1 (a TensorRT profile from 4, say: Triton's batcher would send it fewer), so the batch is
    part of the dims and the client sends whole batches; else the artifact's largest batch, capped
    by ``--max-batch``."""
    batch = manifest.batch or {}
    dim0 = manifest.inputs[0].shape[0]
    if isinstance(dim0, int) or not batch.get("dynamic", True) or int(batch.get("min") or 1) > 1:
        return 0
    hi = batch.get("max")
    return min(options.max_batch, int(hi)) if hi else options.max_batch


def dims(shape: list, batched: bool) -> list[int]:
    """Triton dims: without the batch when Triton batches, symbolic dims as -1."""
    return [d if isinstance(d, int) else -1 for d in (shape[1:] if batched else shape)]


def data_type(dtype: str) -> str:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise UserError(f"Triton has no data type for {dtype!r}") from None


def io_entries(signatures, batched: bool, kind: str, name_of=None) -> list[dict]:
    """Inputs or outputs; one scalar per batch item (``num_detections``) is dims [1] reshaped to
    [], as Triton asks of a batched model."""
    entries = []
    for i, s in enumerate(signatures):
        entry = {"name": name_of(kind, i, s.name) if name_of else s.name, "data_type": data_type(s.dtype),
                 "dims": dims(list(s.shape), batched)}
        if not entry["dims"]:
            entry.update(dims=[1], reshape={"shape": []})
        entries.append(entry)
    return entries


def instance_group(options: ServeOptions, kind: str | None = None) -> list[dict]:
    return [{"kind": f"KIND_{(kind or options.kind).upper()}", "count": options.instances}]


def batching(mb: int, options: ServeOptions) -> dict:
    """Dynamic batching preferring the three largest powers of two from 4 to 128 within ``mb``."""
    preferred = [b for b in (4, 8, 16, 32, 64, 128) if b <= mb][-3:]
    return {"dynamic_batching": {"preferred_batch_size": preferred,
                                 "max_queue_delay_microseconds": options.queue_delay_us}} if mb > 1 else {}


def warmup(inputs: list[dict], manifest, mb: int) -> list[dict]:
    """One all-zeros request at the smallest batch and at the export size."""
    size = dict(zip(("height", "width"), manifest.spec.get("img_size") or []))
    size["batch"] = int((manifest.batch or {}).get("min") or 1)
    sigs = {s.name: s for s in manifest.inputs}
    feeds = {}
    for entry, sig in zip(inputs, sigs.values()):
        shape = list(sig.shape[1:] if mb else sig.shape)
        feeds[entry["name"]] = {"data_type": entry["data_type"], "zero_data": True,
                                "dims": [d if isinstance(d, int) else int(size.get(d, 1)) for d in shape]}
    return [{"name": "zeros", "batch_size": 1, "inputs": feeds}]


def spec_parameter(manifest) -> dict:
    """The model's spec, for clients (``autotimm-profile triton://...`` builds the eager twin from it);
    backends ignore parameters they do not know."""
    return {"autotimm_spec": {"string_value": json.dumps(manifest.spec, separators=(",", ":"))}}


def native_config(name: str, manifest, options: ServeOptions) -> dict:
    native = NATIVE[manifest.format]
    mb = max_batch(manifest, options)
    config = {"name": name, "backend": native.backend, "max_batch_size": mb,
              "default_model_filename": native.filename,
              "input": io_entries(manifest.inputs, mb > 0, "input", native.tensor_name),
              "output": io_entries(manifest.outputs, mb > 0, "output", native.tensor_name),
              "instance_group": instance_group(options), **batching(mb, options),
              "parameters": spec_parameter(manifest)}
    if options.warmup:
        config["model_warmup"] = warmup(config["input"], manifest, mb)
    if native.extra:
        native.extra(config, manifest, options)
    return config


def python_config(name: str, manifest, options: ServeOptions, artifact: str) -> dict:
    """The Python-backend variant: our runtime runs the artifact (``parameters.artifact``)."""
    mb = max_batch(manifest, options)
    config = {"name": name, "backend": "python", "max_batch_size": mb,
              "input": io_entries(manifest.inputs, mb > 0, "input"),
              "output": io_entries(manifest.outputs, mb > 0, "output"),
              "instance_group": instance_group(options, python_kind(manifest, options)), **batching(mb, options),
              "parameters": {"artifact": {"string_value": artifact}, **spec_parameter(manifest)}}
    if options.warmup:
        config["model_warmup"] = warmup(config["input"], manifest, mb)
    return config


def to_pbtxt(config: dict) -> str:
    """``config`` checked against Triton's ``ModelConfig`` schema and written as protobuf text."""
    message = parse(config)
    from google.protobuf import text_format

    return text_format.MessageToString(message)


def parse(config: dict):
    model_config_pb2 = schema()
    from google.protobuf import json_format

    try:
        return json_format.ParseDict(config, model_config_pb2.ModelConfig())
    except json_format.ParseError as e:
        raise UserError(f"config for {config.get('name')!r} does not fit Triton's ModelConfig: {e}") from None


def schema():
    """Triton's ``model_config_pb2`` from ``tritonclient``."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise MissingExtra("tritonclient", "triton") from e
    return model_config_pb2
