"""Batch sweeps with each runtime's throughput settings against its batch-1 (latency) settings
(issue #31 point 5): ONNX Runtime and OpenVINO, each measured interleaved with itself in the other
mode in one process by the profiler's harness, at one batch size; images/s, the ratio with its 95 %
CI, and "% of peak" from the manifest's FLOPs and the CPU's peak (profiler/measure/peak.py).

    .venv/bin/python benchmarks/throughput_settings.py [--models resnet18,mobilenetv3_small_100] [--batch 8]

Random weights. Name the CPU (``lscpu``) beside the numbers and run it alone."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.measure.peak import (CpuFacts, device_peak, percent_of_peak, read_cpu_facts,
                                                   with_measured_clock)
from autotimm_deploy.profiler.measure.sweep import timed_call
from autotimm_deploy.profiler.measure.timing import HarnessConfig, measure
from autotimm_deploy.profiler.runtimes import open_session

RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}


def run_model(model: str, size: int, batch: int, tmp: Path, max_time: float, facts: CpuFacts) -> list[dict]:
    results = export(ModelSpec(model, img_size=(size, size)), list(RUNTIMES), tmp, verify=False, force=True)
    out = []
    for r in results:
        manifest = load_manifest(r.manifest)
        flops = manifest.model["flops"]["per_image"]
        # measured in turns in one process: neither session may keep idle threads spinning (the profiler's
        # own rule for targets sharing the cores), or one mode's spin takes the other's CPU
        with open_session(r.artifact, RUNTIMES[r.format], manifest, batch_mode="latency", shared_cores=True) as one, \
                open_session(r.artifact, RUNTIMES[r.format], manifest, batch_mode="throughput",
                             shared_cores=True) as many:
            m = measure([timed_call(one, batch, False), timed_call(many, batch, False)],
                        HarnessConfig(max_time=max_time, warmup_time=3.0))
            peak = device_peak("cpu", many.compute_precision(), facts=facts)
            row = {"model": model, "runtime": RUNTIMES[r.format], "batch": batch, "gflops": flops / 1e9,
                   "peak": peak.how, "throughput_vs_latency": m.ratio(1)}
            for mode, i, s in (("latency", 0, one), ("throughput", 1, many)):
                ips = batch / (m.stats(i).p50 / 1e3)
                row[mode] = {"images_per_s": ips, "percent_of_peak": percent_of_peak(flops, ips, peak),
                             "settings": s.run_settings(batch)}
            out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenetv3_small_100")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-time", type=float, default=10.0)
    a = p.parse_args()
    facts = with_measured_clock(read_cpu_facts())  # the clock's GEMM, before any runtime holds threads
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for m in a.models.split(",")
                for row in run_model(m, a.size, a.batch, Path(tmp), a.max_time, facts)]
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
