"""The software and machine an artifact was built with (manifests) and a measurement ran on
(profile reports): one package list, one GPU description, one TensorRT description."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from autotimm_deploy.exporter.core.errors import UserError

PACKAGES = ("torch", "timm", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "onnxslim", "openvino", "nncf",
            "tensorrt", "polygraphy", "numpy")


def check_tmpdir(who: str) -> None:
    """``$TMPDIR`` a writable folder, where ``who`` (a library that reads it itself, not through Python's
    `tempfile`, which falls back to /tmp) writes: else a one-line `UserError`."""
    tmp = os.environ.get("TMPDIR")
    if tmp and not (os.path.isdir(tmp) and os.access(tmp, os.W_OK | os.X_OK)):
        state = "is not writable" if os.path.isdir(tmp) else "does not exist"
        raise UserError(f"TMPDIR={tmp} {state}, and {who} unpacks into it: point TMPDIR at a writable folder "
                        "(or unset it)")


def package_versions(names=PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (absent packages are left out)."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def build_environment() -> dict[str, Any]:
    """What the manifest records about the machine that exported an artifact."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
           "packages": package_versions()}
    try:
        env["autotimm_deploy"] = metadata.version("autotimm-deploy")
    except metadata.PackageNotFoundError:
        pass
    return env


def gpu_environment(index: int = 0) -> dict[str, Any]:
    """The CUDA GPU ``index`` as torch sees it."""
    import torch

    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda, "driver": _nvidia_driver(),
            # eager PyTorch's TF32 use, to set beside a TF32 TensorRT engine's (cuDNN convs default on)
            "torch_tf32": {"cudnn": bool(torch.backends.cudnn.allow_tf32),
                           "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}}


def version_tuple(text: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; parts that are not numbers are left out."""
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def tensorrt_environment(index: int = 0) -> dict[str, str]:
    """The TensorRT version and GPU an engine is built for (recorded) or loaded on (checked)."""
    import tensorrt as trt

    gpu = gpu_environment(index)
    return {"version": trt.__version__, "cuda": gpu["cuda"], "gpu": gpu["name"],
            "compute_capability": gpu["compute_capability"]}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``: avx512_vnni, amx_bf16, ...); empty if unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# x86 int8 dot-product instructions that accumulate u8 x s8 products in 32 bits: without one (AVX2 or
# AVX-512 alone), ONNX Runtime's int8 kernels use VPMADDUBSW, which adds pairs of products in 16 bits
# and saturates on large activations and weights (ONNX Runtime's quantization docs: "reduce_range")
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_saturates(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """Whether this CPU runs int8 products through 16-bit pair sums (x86 without VNNI or AMX); False
    where that cannot be told (no flags read) or the CPU is not x86."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    return machine in ("x86_64", "amd64") and bool(flags) and not flags & set(INT8_DOT_FLAGS)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def cores_available() -> int:
    """The cores this process may run on (its CPU affinity), which may be fewer than the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpuinfo_blocks(path: str = "/proc/cpuinfo") -> list[dict[str, str]]:
    """One dict per logical CPU of ``/proc/cpuinfo`` (processor, vendor_id, cpu family, model, flags,
    physical id, core id, cpu MHz, ...); empty where it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    blocks = []
    for chunk in text.strip().split("\n\n"):
        pairs = (line.split(":", 1) for line in chunk.splitlines() if ":" in line)
        block = {k.strip(): v.strip() for k, v in pairs}
        if block:
            blocks.append(block)
    return blocks


def usable_cpu_blocks(blocks: list[dict[str, str]]) -> list[dict[str, str]]:
    """The ``cpuinfo_blocks`` of the CPUs this process may run on (all of them where unknown)."""
    allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    mine = [b for b in blocks if allowed is None or b.get("processor", "").isdigit() and int(b["processor"]) in allowed]
    return mine or blocks


def physical_cores(blocks: list[dict[str, str]] | None = None) -> int:
    """Physical cores (hyper-threads of one core counted once) among those this process may run on;
    the usable logical CPUs where ``/proc/cpuinfo`` does not tell."""
    mine = usable_cpu_blocks(cpuinfo_blocks() if blocks is None else blocks)
    cores = {(b.get("physical id", "0"), b.get("core id", b.get("processor"))) for b in mine}
    return len(cores) or cores_available()


def environment(threads: int | None = None) -> dict:
    import torch

    env = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": cores_available(),
        "threads": threads or torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "gpu": gpu_environment(0) if torch.cuda.is_available() else None,
    }
    return env


def _nvidia_driver() -> str | None:
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
        return first.split("Kernel Module")[1].split()[0] if "Kernel Module" in first else first.strip()
    except (OSError, IndexError):
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far. Linux: ``VmHWM``, which starts afresh at exec
    (``ru_maxrss`` keeps the forking parent's peak, so a worker process would report its parent's)."""
    import resource
    import sys

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()
