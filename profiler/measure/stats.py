"""Statistics of latency samples: percentiles and a distribution-free confidence interval of the
median (order statistics, normal approximation of the binomial), in milliseconds."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from autotimm_deploy.exporter.core.results import MIN_CI_SAMPLES

Z95 = 1.959963984540054


def median_ci_ranks(n: int, z: float = Z95) -> tuple[int, int]:
    """0-based ranks (lo, hi) of the sorted sample that bound the median's 95 % CI: the 1-based
    ranks j = floor(n/2 - z*sqrt(n)/2) and k = ceil(1 + n/2 + z*sqrt(n)/2), clipped to the sample."""
    half = z * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half) - 1)
    hi = min(n - 1, math.ceil(1 + n / 2 + half) - 1)
    return lo, hi


def median_ci(values, z: float = Z95) -> tuple[float, float] | tuple[None, None]:
    """The median's 95 % CI, or (None, None) under `MIN_CI_SAMPLES` samples."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size < MIN_CI_SAMPLES:
        return None, None
    lo, hi = median_ci_ranks(v.size, z)
    return float(v[lo]), float(v[hi])


def ci_halfwidth_rel(values) -> float:
    """Half-width of the median's CI relative to the median (0.02 = ±2 %)."""
    if len(values) < MIN_CI_SAMPLES:
        return math.inf
    lo, hi = median_ci(values)
    med = float(np.median(values))
    return (hi - lo) / 2 / med if med > 0 else math.inf


@dataclass
class Stats:
    n: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    ci_low: float | None  # 95 % CI of the median (None under MIN_CI_SAMPLES samples)
    ci_high: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(samples_ms) -> Stats:
    v = np.asarray(samples_ms, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no samples")
    p50, p90, p95, p99 = np.percentile(v, [50, 90, 95, 99])
    lo, hi = median_ci(v)
    return Stats(n=int(v.size), mean=float(v.mean()), std=float(v.std(ddof=1)) if v.size > 1 else 0.0,
                 min=float(v.min()), p50=float(p50), p90=float(p90), p95=float(p95), p99=float(p99),
                 max=float(v.max()), ci_low=lo, ci_high=hi)


def ratio_summary(ratios) -> dict:
    """Median of per-round ratios with its distribution-free 95 % CI."""
    v = np.asarray(ratios, dtype=np.float64)
    lo, hi = median_ci(v)
    return {"ratio": float(np.median(v)), "ci_low": lo, "ci_high": hi, "rounds": int(v.size)}
