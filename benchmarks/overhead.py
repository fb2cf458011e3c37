"""Does the harness measure what a bare loop measures? And how long does a real sweep take?

    .venv/bin/python benchmarks/overhead.py [--out bench-out]

1. resnet50 ONNX on onnxruntime, batch 1: the harness's median (default path: host arrays in and
   out) against a bare ``session.run`` loop, alternated in rounds so drift hits both; goal: within 3 %.
2. resnet50 ONNX batch sweep 1..32 through `autotimm_deploy.profiler.pipeline.profile` with default settings; goal: < 2 min.
3. Eager vs ONNX Runtime at batch 1 (interleaved, with CI) for resnet50, mobilenetv3_small_100,
   efficientnet_b0 at 224 px.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.sweep import powers_of_two, timed_call
from autotimm_deploy.profiler.measure.timing import HarnessConfig, measure
from autotimm_deploy.profiler.pipeline import profile
from autotimm_deploy.profiler.targets import open_target, resolve
from autotimm_deploy.profiler.report.table import interval_text


def artifact(model: str, out: Path) -> Path:
    path = out / f"{model}.onnx"
    if not path.exists():
        export(ModelSpec(model), ["onnx"], out, verify=True)
    return path


def harness_vs_bare(path: Path, rounds: int = 20, per_round: int = 20) -> dict:
    with open_target(resolve(str(path)), "cpu", None) as s:
        feed = s.random_arrays(1)
        fn = timed_call(s, 1, device_io=False)
        ort = s.sess
        for _ in range(20):
            ort.run(None, feed)
        harness, bare = [], []
        for _ in range(rounds):
            m = measure([fn], HarnessConfig(iterations=per_round, warmup_time=0.2, warmup_window=3))
            harness += m.samples[0]
            for _ in range(per_round):
                t0 = time.perf_counter_ns()
                ort.run(None, feed)
                bare.append((time.perf_counter_ns() - t0) / 1e6)
    h, b = statistics.median(harness), statistics.median(bare)
    return {"harness_ms": h, "bare_ms": b, "diff_pct": 100 * (h - b) / b, "n": len(harness)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-out")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(exist_ok=True)
    r50 = artifact("resnet50", out)

    o = harness_vs_bare(r50)
    print(f"1. harness median {o['harness_ms']:.3f} ms vs bare session.run loop {o['bare_ms']:.3f} ms: "
          f"{o['diff_pct']:+.2f} % (n={o['n']} each, interleaved rounds)", flush=True)

    t0 = time.perf_counter()
    rep = profile([str(r50)], Settings(batch_sizes=powers_of_two(32)))
    wall = time.perf_counter() - t0
    print(f"2. resnet50 ONNX Runtime sweep 1-32: {wall:.1f} s wall", flush=True)
    print("\n| batch | median ms | images/s | speedup vs batch 1 | n | stop |\n|---:|---:|---:|---:|---:|---|")
    for p in rep["runs"][0]["points"]:
        print(f"| {p['batch']} | {p['stats_ms']['p50']:.2f} | {p['images_per_s']:.1f} | {p['speedup_vs_batch1']:.2f} | "
              f"{p['stats_ms']['n']} | {p['stop']} |")

    print("\n3. eager vs ONNX Runtime, batch 1, 224 px, interleaved\n")
    print("| model | eager ms | ONNX Runtime ms | speedup [95% CI] |\n|---|---:|---:|---|")
    for model in ("resnet50", "mobilenetv3_small_100", "efficientnet_b0"):
        rep = profile([str(artifact(model, out))], Settings(batch_sizes=[1]), compare_eager=True)
        eager, onnx = rep["runs"]
        e, x = eager["points"][0], onnx["points"][0]
        vs = x["vs_baseline"]
        print(f"| {model} | {e['stats_ms']['p50']:.2f} | {x['stats_ms']['p50']:.2f} | "
              f"{vs['ratio']:.2f}x {interval_text(vs)} |", flush=True)


if __name__ == "__main__":
    main()
