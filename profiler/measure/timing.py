"""The one timing harness. Runtimes never time themselves: the harness calls a prepared function
(run + synchronize, plus host<->device copies unless compute-only was asked for) around its clock.

Several functions can be measured together, interleaved in rounds (A B A B ...), so that drift of
a noisy machine hits all of them alike; per-round ratios against the first give a speedup with a CI.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from autotimm_deploy.profiler.measure.stats import Stats, ci_halfwidth_rel, ratio_summary, summarize


class CpuClock:
    """Host wall clock: ``perf_counter_ns`` around the call."""

    name = "perf_counter_ns"

    def time(self, fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / 1e6

    def wall(self) -> float:
        return time.monotonic()


class CudaClock(CpuClock):
    """CUDA events recorded around the call on the stream the runtime computes on (``fn.stream``,
    see `autotimm_deploy.profiler.measure.sweep.on_stream`; else the current stream), then
    synchronized. ``fn`` synchronizes its runtime, so the time also covers the host's launch work,
    alike for eager PyTorch, TensorRT and ONNX Runtime."""

    name = "cuda_events"

    def __init__(self, device: str = "cuda"):
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def time(self, fn: Callable[[], Any]) -> float:
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        with self.torch.cuda.device(self.device):
            stream = getattr(fn, "stream", None) or self.torch.cuda.current_stream(self.device)
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
        return float(start.elapsed_time(end))


def clock_for(device: str):
    return CudaClock(device) if device.startswith("cuda") else CpuClock()


@dataclass
class HarnessConfig:
    max_time: float = 10.0  # seconds of sampling per measurement (all functions together)
    warmup_time: float = 5.0  # seconds at most per function for warm-up
    warmup_window: int = 5  # warm-up ends when two consecutive windows' medians agree ...
    warmup_tolerance: float = 0.05  # ... within this fraction
    min_samples: int = 10
    target_ci: float = 0.02  # stop once the median's 95 % CI is within ± this (and the ratios')
    iterations: int | None = None  # force exactly this many samples per function
    round_time: float = 0.05  # seconds per function per interleaved round (sets the block size)


@dataclass
class Measurement:
    samples: list[list[float]]  # ms, per function
    warmup_iterations: list[int]
    warmup_settled: list[bool | None] = field(default_factory=list)  # per function; None: not judged
    ratios: list[list[float]] = field(default_factory=list)  # per function i>0: round medians fn_i / fn_0
    stop: str = ""  # converged | time budget | iterations

    def stats(self, i: int = 0) -> Stats:
        return summarize(self.samples[i])

    def ratio(self, i: int) -> dict:
        """fn_0 time / fn_i time, i.e. the speedup of function i over the first (baseline)."""
        return ratio_summary([1.0 / r for r in self.ratios[i - 1]])


# A warm-up budget shorter than this cannot show whether latency settled; it is not judged.
JUDGE_WARMUP_FROM = 1.0


def _warm_up(fn: Callable[[], Any], clock, cfg: HarnessConfig) -> tuple[int, float, bool | None]:
    """Run until the latency is stable (or the warm-up budget is spent); return (iterations, last
    median, settled): settled is None when the budget was too short to tell."""
    times: list[float] = []
    start = clock.wall()
    w = cfg.warmup_window
    while True:
        times.append(clock.time(fn))
        if len(times) >= 2 * w:
            a, b = np.median(times[-2 * w:-w]), np.median(times[-w:])
            if abs(b - a) <= cfg.warmup_tolerance * a:
                return len(times), float(b), True
        if clock.wall() - start >= cfg.warmup_time and len(times) >= 2:
            judged = cfg.warmup_time >= JUDGE_WARMUP_FROM and len(times) >= 2 * w
            return len(times), float(np.median(times[-w:])), False if judged else None


def measure(fns: Sequence[Callable[[], Any]], cfg: HarnessConfig | None = None, clock=None,
            progress: Callable[[int, float], None] | None = None) -> Measurement:
    """Warm each function up, then sample them in interleaved rounds until every median's CI (and
    every ratio's CI) is within ``target_ci``, or ``max_time`` runs out, or ``iterations`` are done."""
    cfg = cfg or HarnessConfig()
    clock = clock or CpuClock()
    warm = [_warm_up(fn, clock, cfg) for fn in fns]
    if cfg.iterations:
        blocks = [1] * len(fns)
    else:
        blocks = [max(1, min(100, int(cfg.round_time * 1e3 / max(ms, 1e-6)))) for _, ms, _ in warm]
    samples: list[list[float]] = [[] for _ in fns]
    ratios: list[list[float]] = [[] for _ in fns[1:]]
    start = clock.wall()
    while True:
        round_medians = []
        for i, fn in enumerate(fns):
            block = [clock.time(fn) for _ in range(blocks[i])]
            samples[i].extend(block)
            round_medians.append(float(np.median(block)))
        for i in range(1, len(fns)):
            ratios[i - 1].append(round_medians[i] / round_medians[0] if round_medians[0] > 0 else math.inf)
        n = min(len(s) for s in samples)
        if progress:
            progress(n, clock.wall() - start)
        if cfg.iterations:
            if n >= cfg.iterations:
                stop = "iterations"
                break
            continue
        if n >= cfg.min_samples and all(ci_halfwidth_rel(s) <= cfg.target_ci for s in samples) and all(
            ci_halfwidth_rel(r) <= cfg.target_ci for r in ratios
        ):
            stop = "converged"
            break
        if clock.wall() - start >= cfg.max_time:
            stop = "time budget"
            break
    return Measurement(samples=samples, warmup_iterations=[w for w, _, _ in warm], ratios=ratios, stop=stop,
                       warmup_settled=[s for _, _, s in warm])
