"""The fp32 GEMM rate this process reaches, which proves the clock the cores run at is at least
rate / (cores x fp32 FLOPs per cycle) (``peak.with_measured_clock``): the read clock can be far below it.

In a VM without cpufreq, ``/proc/cpuinfo``'s "cpu MHz" is the hypervisor's nominal rate, and a model
name's "@ 2.60GHz" is the base clock: cores boost above both. On an AMD EPYC Zen 5 VM reporting
2596 MHz, an fp32 oneDNN GEMM ran at 445-505 GFLOP/s on 2 cores (between processes), which needs
3.5-3.9 GHz at AVX-512's 64 FLOPs per cycle; a peak from 2596 MHz put OpenVINO's int8 resnet50 at
117 % of it.

The GEMM runs through oneDNN (``aten.mkldnn_linear``), which picks the widest vector ISA from the
CPU's flags on any vendor (MKL's GEMM takes its AVX2 path on AMD, half the rate), in IEEE fp32 only:
where torch lets fp32 products run in bf16 or tf32, nothing is measured (the rate would prove a
clock several times too high). Its inputs come from a private generator: the caller's random
numbers do not move."""

from __future__ import annotations

import time
from functools import lru_cache

GEMM_N = 1024  # one 1024^3 product: ~2.1 GFLOP, a few ms on two cores
ROUNDS = 12


def gemm_flops_per_s(threads: int) -> float | None:
    """The best of ``ROUNDS`` timed fp32 oneDNN GEMMs (``GEMM_N``^3) on ``threads`` threads; None
    without oneDNN or where fp32 products may run in a reduced precision."""
    import torch

    fp32_math = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none")
    if (not torch.backends.mkldnn.is_available() or torch.get_float32_matmul_precision() != "highest"
            or fp32_math not in ("none", "ieee")):
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            numbers = torch.Generator().manual_seed(0)
            w = torch.rand(GEMM_N, GEMM_N, generator=numbers).to_mkldnn()
            x = torch.rand(GEMM_N, GEMM_N, generator=numbers).to_mkldnn()
            torch.ops.aten.mkldnn_linear(x, w, None)
            best = float("inf")
            for _ in range(ROUNDS):
                start = time.perf_counter()
                torch.ops.aten.mkldnn_linear(x, w, None)
                best = min(best, time.perf_counter() - start)
    except RuntimeError:  # a build whose oneDNN lacks this CPU's kernels
        return None
    finally:
        torch.set_num_threads(before)
    return 2.0 * GEMM_N ** 3 / best


@lru_cache(maxsize=8)
def measured_gemm(threads: int) -> float | None:
    """``gemm_flops_per_s``, measured once per thread count in a process."""
    return gemm_flops_per_s(threads)
