"""The clock the cores reach on vector code, at least, measured: the read clock can be far below it.

In a VM without cpufreq, ``/proc/cpuinfo``'s "cpu MHz" is the hypervisor's nominal rate, and a model
name's "@ 2.60GHz" is the base clock: cores boost above both. On an AMD EPYC Zen 5 VM reporting
2596 MHz, an fp32 oneDNN GEMM ran at 470-505 GFLOP/s on 2 cores, which needs at least 3.7-3.9 GHz at
AVX-512's 64 FLOPs per cycle; a peak from 2596 MHz put OpenVINO's int8 resnet50 at 117 % of it.

    clock >= GEMM FLOP/s / (cores x fp32 FLOPs per cycle per core)

is a lower bound (no kernel exceeds its instruction set's rate), so the peak built on the larger of
the read and the measured clocks can still understate, and no longer overstates for that reason.
The GEMM goes through oneDNN (``torch.utils.mkldnn``), which picks the widest vector ISA from the
CPU's flags on any vendor; MKL's GEMM takes its AVX2 path on AMD, half the rate."""

from __future__ import annotations

import time
import warnings
from functools import lru_cache

GEMM_N = 1024  # one 1024^3 product: ~2.1 GFLOP, a few ms on two cores
ROUNDS = 16


def gemm_flops_per_s(threads: int) -> float | None:
    """The best of ``ROUNDS`` timed fp32 oneDNN GEMMs on ``threads`` threads; None without oneDNN."""
    import torch
    from torch.utils import mkldnn

    if not torch.backends.mkldnn.is_available():
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # to_mkldnn defines TorchScript classes: torch warns
            layer = mkldnn.to_mkldnn(torch.nn.Linear(GEMM_N, GEMM_N, bias=False).eval())
            x = torch.randn(GEMM_N, GEMM_N).to_mkldnn()
            layer(x)
            layer(x)
            best = float("inf")
            for _ in range(ROUNDS):
                start = time.perf_counter()
                layer(x)
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
