"""What a profiling run measures and how: device, threads, batch sizes, the harness, runtime options."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from autotimm_deploy.profiler.measure.timing import HarnessConfig


@dataclass
class Settings:
    device: str | None = "cpu"  # None: cuda when a target's runtime only runs there, else cpu
    threads: int | None = None
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    device_io: bool = False
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    eager_options: dict[str, Any] = field(default_factory=dict)  # channels_last, bf16
    # for artifact runtimes: cuda_graph, batch_mode (throughput: batches above 1 on each runtime's
    # throughput settings, the profiler's default; latency: batch 1's)
    runtime_options: dict[str, Any] = field(default_factory=lambda: {"batch_mode": "throughput"})
    img_size: tuple[int, int] | None = None  # for artifacts without a manifest

    def to_dict(self) -> dict:
        d = asdict(self)
        d["copies_timed"] = not self.device_io
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        d = {k: v for k, v in d.items() if k != "copies_timed"}
        d["harness"] = HarnessConfig(**d["harness"])
        d["img_size"] = tuple(d["img_size"]) if d.get("img_size") else None
        return cls(**d)
