"""Served vs in-process latency: a model exported once, run in this process by its own runtime and
served by a real Triton (the tritonserver nvidia-pytriton bundles, Python backend: the ``_python``
variant running the same artifact through the same runtime), measured at batch 1 through the
profiler's one harness (the client's round trip for the served model, HTTP and gRPC), then a
concurrency sweep against the server.

Not interleaved call by call: on two cores the server's ONNX Runtime threads, still spinning after
a served request, slow the in-process session down (and the other way round), which made the
in-process runtime look slower than itself served. Instead each target is measured alone, in turn,
``--rounds`` times; the table gives the median of the rounds' medians and its spread.

Run by hand on a quiet machine (the server and its clients share its cores):

    .venv/bin/python benchmarks/triton_serving.py [--model resnet18] [--size 224] [--format onnx]
        [--max-time 10] [--concurrency 1,4,16] [--instances 1] [--out bench-triton]

Prints a Markdown table of the batch-1 latencies (with the served/in-process ratio and its 95 % CI)
and one of the concurrency sweep; writes both as JSON to OUT/triton_serving.json."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--format", default="onnx")
    p.add_argument("--max-time", type=float, default=10.0)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="bench-triton")
    a = p.parse_args()

    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.exporter.formats import ExportOptions
    from autotimm_deploy.exporter.pipeline import export
    from autotimm_deploy.exporter.triton import ServeOptions, build_repository
    from autotimm_deploy.exporter.triton.server import serving
    from autotimm_deploy.profiler.measure.concurrency import sweep
    from autotimm_deploy.profiler.measure.settings import Settings
    from autotimm_deploy.profiler.measure.timing import HarnessConfig
    from autotimm_deploy.profiler.pipeline import profile
    from autotimm_deploy.profiler.targets import open_target, resolve

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        (r,) = export(ModelSpec(a.model, img_size=(a.size, a.size)), [a.format], Path(tmp) / "art", ExportOptions())
        assert r.ok, r.error
        repo = Path(tmp) / "repo"
        models = build_repository([r.artifact], repo, ServeOptions(instances=a.instances))
        python = next(m.name for m in models if m.role == "python")
        with serving(repo, models=[python]) as server:
            urls = {"http": f"triton://{server.http_url}/{python}",
                    "grpc": f"triton://{server.grpc_url}/{python}?protocol=grpc"}
            settings = Settings(batch_sizes=[1], harness=HarnessConfig(max_time=a.max_time, warmup_time=2.0))
            medians: dict[str, list[float]] = {}
            for _ in range(a.rounds):
                for target in (str(r.artifact), *urls.values()):
                    (run,) = profile([target], settings, isolate=False)["runs"]
                    medians.setdefault(run["target"]["label"], []).append(run["points"][0]["stats_ms"]["p50"])
            base = statistics.median(next(iter(medians.values())))
            latency = [{"target": label, "median_ms": statistics.median(v), "rounds_ms": v,
                        "vs_in_process": statistics.median(v) / base} for label, v in medians.items()]
            levels = [int(v) for v in a.concurrency.split(",")]
            sweeps = {}
            for protocol, url in urls.items():
                session = open_target(resolve(url), "cpu", None)
                try:
                    sweeps[protocol] = sweep(lambda: session.caller(1), levels, a.max_time, 1, warmup=2.0)
                finally:
                    session.close()
    (out / "triton_serving.json").write_text(json.dumps({"model": a.model, "size": a.size, "format": a.format,
                                                         "latency": latency, "concurrency": sweeps}, indent=2))
    print(f"\n{a.model} {a.format} at {a.size} px, batch 1, {a.rounds} rounds (served: Python backend, same runtime)\n")
    print("| target | median ms (median of rounds) | rounds | time / in-process |\n|---|---:|---|---:|")
    for row in latency:
        print(f"| {row['target']} | {row['median_ms']:.2f} | {', '.join(f'{v:.2f}' for v in row['rounds_ms'])} | "
              f"{row['vs_in_process']:.2f}x |")
    print("\n| protocol | clients | req/s | p50 ms | p90 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|")
    for protocol, rows in sweeps.items():
        for row in rows:
            print(f"| {protocol} | {row['concurrency']} | {row.get('requests_per_s', '-')} | {row.get('p50_ms', '-')} | "
                  f"{row.get('p90_ms', '-')} | {row.get('p99_ms', '-')} |" + (f" {row['error']}" if row.get("error") else ""))


if __name__ == "__main__":
    main()
