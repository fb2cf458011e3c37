"""The one `Session` interface every runtime implements. Runtimes never time themselves: the
harness in `autotimm_deploy.profiler.measure.timing` calls `run` and `synchronize` around its own clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
from autotimm_deploy.exporter.core.capture import captured_output
from autotimm_deploy.exporter.core.manifest import Manifest, TensorSig


RUNTIMES: dict[str, type["Session"]] = {}

_KINDS = {"f": "float", "i": "integer", "u": "integer", "b": "bool"}  # numpy dtype kinds, as compared


class WrongOutputs(RuntimeError):
    """A call's answer lacks an output the session declares, or holds one of another shape or dtype."""


def quiet_first(seen: set, key: Any, call: Callable[[], Any]) -> Any:
    """``call()``, what it prints to the process's stdout and stderr dropped the first time at each
    ``key`` (the input shapes): a runtime's C++ creates its delegates and plans memory then, and logs
    it ("Created TensorFlow Lite XNNPACK delegate", ExecuTorch's resize messages before its error)."""
    if key in seen:
        return call()
    with captured_output():
        result = call()
    seen.add(key)
    return result


def register_runtime(cls: type["Session"]) -> type["Session"]:
    """Class decorator: ``cls`` runs artifacts under its ``name`` (`autotimm_deploy.profiler.runtimes`)."""
    RUNTIMES[cls.name] = cls
    return cls


class Session:
    """One runtime, declared in one module: its name, the artifact formats it opens, the devices it
    runs on and what it needs installed are class attributes; the methods load and run an artifact."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]] = ()  # artifact formats this runtime executes
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    extra: ClassVar[str | None] = None  # the pip extra that provides `requires`
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules it needs (imported lazily, inside it)

    def __init__(self, path: str | Path | None, manifest: Manifest | None = None, device: str = "cpu",
                 threads: int | None = None, **options: Any):
        self.path = Path(path) if path is not None else None
        self.manifest = manifest
        self.device = device
        self.threads = threads
        self.options = options
        self.inputs: list[TensorSig] = list(manifest.inputs) if manifest else []
        self.outputs: list[TensorSig] = list(manifest.outputs) if manifest else []

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this runtime can run on this platform, else why not (Core ML off macOS)."""
        return None

    @classmethod
    def default_device(cls, manifest: Manifest | None, path: str | Path | None = None) -> str:
        """Where an artifact runs when no device is given: the runtime's first device."""
        return cls.devices[0]

    # --- description -------------------------------------------------------------------------
    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def batch_range(self) -> tuple[int, int | None]:
        """(min, max) batch this artifact accepts; max None means unbounded."""
        if not self.inputs:
            return 1, None
        dim0 = self.inputs[0].shape[0]
        if isinstance(dim0, int) and dim0 > 0:
            return dim0, dim0
        if self.manifest and self.manifest.batch:
            return int(self.manifest.batch.get("min") or 1), self.manifest.batch.get("max")
        return 1, None

    def size_range(self) -> dict[str, list[int]] | None:
        """{"min", "opt", "max"} [h, w] of an artifact with a symbolic input size, else None."""
        size = self.manifest.size if self.manifest else None
        return size if size and size.get("dynamic") else None

    def input_shapes(self, batch: int, size: tuple[int, int] | None = None) -> dict[str, tuple[int, ...]]:
        """Input shapes at ``batch``; symbolic height and width at ``size`` (default: the export size)."""
        hw = size or (self.size_range() or {}).get("opt")
        named = {"height": hw[0], "width": hw[1]} if hw else {}
        shapes = {}
        for sig in self.inputs:
            dims = [batch if i == 0 and not isinstance(d, int) else named.get(d, d) for i, d in enumerate(sig.shape)]
            if not all(isinstance(d, int) and d > 0 for d in dims):
                raise ValueError(f"input {sig.name} has unknown dimensions {sig.shape}")
            shapes[sig.name] = tuple(dims)
        return shapes

    # --- data --------------------------------------------------------------------------------
    def random_arrays(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {n: rng.standard_normal(s, dtype=np.float32) for n, s in self.input_shapes(batch).items()}

    def make_inputs(self, batch: int, seed: int = 0) -> Any:
        """Inputs for one batch, already where `run` wants them (untimed)."""
        return self.prepare(self.random_arrays(batch, seed))

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        raise NotImplementedError

    def run(self, prepared: Any) -> Any:
        raise NotImplementedError

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        """Runtime-native outputs -> host numpy arrays by output name."""
        raise NotImplementedError

    def check_outputs(self, got: Any, batch: int) -> None:
        """``got``, what `fetch` returned for one call at ``batch``, holds every declared output as an
        array of its declared rank, sizes (a symbolic ``batch`` dim is ``batch``, other names any size)
        and kind of dtype (float for float: runtimes hand fp16 back as float32); else `WrongOutputs`,
        naming the first that does not. Where the signatures are placeholders (no manifest, the eager
        twin) only the names are checked."""
        if not isinstance(got, dict) or not got:
            raise WrongOutputs(f"{self.name} answered batch {batch} with no outputs")
        real = self.manifest is not None and self.manifest.format != "eager"
        for sig in self.outputs:
            value = got.get(sig.name)
            declared = f"declared {sig.dtype} {list(sig.shape)}"
            if not isinstance(value, np.ndarray):
                raise WrongOutputs(f"{self.name} answered batch {batch} without output {sig.name!r} ({declared})")
            if not real:
                continue
            want = [batch if d == "batch" else d for d in sig.shape]
            if len(value.shape) != len(want) or any(isinstance(w, int) and w != v for w, v in zip(want, value.shape)):
                raise WrongOutputs(f"{self.name} answered batch {batch} with {sig.name!r} of shape {list(value.shape)} "
                                   f"({declared})")
            kind = _dtype_kind(sig.dtype)
            if kind is not None and _KINDS.get(value.dtype.kind) != kind:
                raise WrongOutputs(f"{self.name} answered batch {batch} with {sig.name!r} as {value.dtype} "
                                   f"({declared})")

    def compute_precision(self) -> str:
        """The precision the arithmetic runs in (fp32, bf16, fp16, int8): what "% of peak" compares
        with. Default: the artifact's precision."""
        return self.manifest.precision if self.manifest else "fp32"

    def run_settings(self, batch: int) -> dict[str, Any]:
        """How a call at ``batch`` runs, for the report (after it ran: lazily made settings exist):
        ``mode`` (latency: one call on every thread; throughput: the batch split across concurrent
        requests) and the runtime's own knobs."""
        return {"mode": "latency", "threads": self.threads}

    def synchronize(self) -> None:
        """Block until queued work is done (CUDA runtimes); no-op on the CPU."""

    def timing_stream(self) -> Any:
        """The CUDA stream (a ``torch.cuda.Stream``) this runtime enqueues its work on, where the
        harness records its CUDA events; None: the current stream (eager PyTorch, CPU runtimes)."""
        return None

    def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Convenience for parity checks: prepare, run, fetch."""
        return self.fetch(self.run(self.prepare(arrays)))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _dtype_kind(dtype: str) -> str | None:
    """float, integer or bool for a declared dtype name (bfloat16 is a float); None when unknown."""
    if dtype == "bfloat16":
        return "float"
    try:
        return _KINDS.get(np.dtype(dtype).kind)
    except TypeError:
        return None
