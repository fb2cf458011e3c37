"""``autotimm-profile``: a thin shell over `autotimm_deploy.profiler.pipeline.profile` and the report renderers."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from autotimm_deploy.exporter.core.cli import (
    EXIT_FAILED,
    EXIT_OK,
    OneLineParser,
    console,
    float_in,
    int_in,
    progress_bar,
    run_cli,
    stderr,
    threads_type,
)
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.files import atomic_write_text
from autotimm_deploy.exporter.core.limits import MAX_BATCH, MAX_ITERATIONS, MAX_SECONDS
from autotimm_deploy.exporter.core.outputs import artifact_files, check_report_paths
from autotimm_deploy.exporter.core.spec import parse_img_size
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.sweep import powers_of_two
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.report import RENDERERS, table
from autotimm_deploy.profiler.runtimes import runtime_names
from autotimm_deploy.recipes.console import any_failed, print_recipe_rows, recipe_progress
from rich.markup import escape

PROG = "autotimm-profile"

# As in autotimm-export: the pipelines (torch, timm) are imported by the command that runs them, so
# --help and input errors answer at once; nothing imports this top layer.


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Latency and throughput of deployed artifacts, eager vs deployed.")
    p.add_argument("targets", nargs="*", help="artifacts (.onnx, .pt, .pt2, ...) or timm model names (eager)")
    p.add_argument("--recipe", metavar="FILE.yaml", help="profile everything a recipe exported (autotimm-export --recipe)")
    p.add_argument("--report", choices=("benchmark", "seed"),
                   help="with --recipe: render the benchmark page, AutoTimm's benchmark tables regenerated from "
                        "this recipe's measurements (Markdown + PNG); seed is the old name of benchmark")
    p.add_argument("-o", "--out", default="out", help="with --recipe: the folder autotimm-export --recipe wrote into "
                   "(default out; . for the current folder)")
    p.add_argument("--force", action="store_true", help="with --recipe: re-profile even what is up to date")
    p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="with --recipe: time each job on the Ray node that declares its device (ADDRESS: a cluster; "
                   "none: the one `ray start` made; local: a Ray on this machine); needs the [ray] extra")
    p.add_argument("--runtime", help=f"force a runtime ({runtime_names()}; default: the artifact format's own)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda for TensorRT engines, else cpu)")
    p.add_argument("--threads", type=threads_type(), help="intra-op threads for every runtime alike")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--batch-sizes", help="comma-separated batch sizes (default 1)")
    b.add_argument("--max-batch", type=int_in(1, MAX_BATCH), help="sweep powers of two from 1 up to this")
    p.add_argument("--batch-mode", choices=("throughput", "latency"), default="throughput",
                   help="how batches above 1 run: throughput (default; each runtime's throughput settings: OpenVINO's "
                        "THROUGHPUT hint with its infer requests in flight together, ONNX Runtime's batch split across "
                        "concurrent single-threaded runs) or latency (the batch-1 settings); the table's settings column "
                        "says what each row used")
    p.add_argument("--compare-eager", action="store_true", help="measure each artifact interleaved with eager PyTorch")
    p.add_argument("--concurrency", metavar="N,N,...",
                   help="served models (triton://HOST:PORT/MODEL): also sweep these numbers of concurrent clients "
                        "(each level runs --max-time seconds at the first batch size)")
    p.add_argument("--pictures", action="append", metavar="PICTURE|FOLDER",
                   help="time each artifact from picture file to answer (decode, its manifest's preprocessing, "
                        "compute, answers in the picture's pixels) beside compute only, on these pictures (repeat for "
                        "more; folders searched); --compare-eager adds the eager model end to end")
    p.add_argument("--interleave", action="store_true", help="measure all targets interleaved; the first is the baseline")
    iso = p.add_mutually_exclusive_group()
    iso.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                     help="each group in its own process (default with more than one group)")
    iso.add_argument("--no-isolate", dest="isolate", action="store_false")
    h = p.add_argument_group("harness")
    h.add_argument("--max-time", type=float_in(0, MAX_SECONDS, low_open=True), help="seconds of sampling per batch size (default 10); with --recipe: "
                   "the run's time budget (sampling time then comes from the recipe)")
    h.add_argument("--warmup-time", type=float_in(0, 600), default=5.0, help="seconds of warm-up at most (default 5)")
    h.add_argument("--iterations", type=int_in(1, MAX_ITERATIONS), help="force this many timed iterations")
    h.add_argument("--target-ci", type=float_in(0, 0.5, low_open=True), default=0.02, help="stop when the median's 95%% CI is within ± this")
    h.add_argument("--device-io", action="store_true",
                   help="on CUDA: time compute only, inputs already on the device (refused on the CPU, which has no copy "
                        "to leave out)")
    h.add_argument("--cuda-graph", action="store_true",
                   help="on CUDA: capture and replay a CUDA graph per batch size (every runtime but ONNX Runtime, eager "
                        "too; refused on the CPU)")
    e = p.add_argument_group("eager options")
    e.add_argument("--channels-last", action="store_true")
    e.add_argument("--bf16", action="store_true", help="bf16 autocast for eager")
    p.add_argument("--img-size", metavar="H[,W]", help="input size for an artifact without a manifest, or an eager model")
    o = p.add_argument_group("reports (PATH - is standard output, for one text report at a time; the table then goes "
                             "to stderr)")
    o.add_argument("--json", nargs="?", const="-", metavar="PATH", help="JSON report to PATH, or stdout with no PATH or -")
    o.add_argument("--csv", metavar="PATH", help="CSV report to PATH, or stdout with -")
    o.add_argument("--markdown", metavar="PATH", help="Markdown report to PATH, or stdout with -")
    o.add_argument("--plot", metavar="PATH", help="PNG: latency and throughput vs batch size (a file, never stdout)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


def _integers(text: str) -> list[int] | None:
    """``"1,8,32"`` as integers; None when an item is not one, or is empty (``1,,8``, ``,8``, ``8,``)."""
    items = [v.strip() for v in text.split(",")]
    try:
        return [int(v) for v in items] if all(items) else None
    except ValueError:
        return None


def _batches(a) -> list[int]:
    if a.max_batch is not None:
        return powers_of_two(a.max_batch)
    if a.batch_sizes is None:
        return [1]
    values = _integers(a.batch_sizes)
    if not values or min(values) < 1 or max(values) > MAX_BATCH:
        raise UserError(f"--batch-sizes takes integers from 1 to {MAX_BATCH} like 1,8,32, got {a.batch_sizes!r}")
    return sorted(set(values))


STDOUT = "-"  # a report path that means standard output
TEXT_REPORTS = ("json", "csv", "markdown")  # the reports that may go to standard output


def _to_stdout(a) -> bool:
    """Whether a report goes to standard output (then the table goes to stderr); at most one may."""
    flags = [f"--{name}" for name in TEXT_REPORTS if getattr(a, name) == STDOUT]
    if len(flags) > 1:
        raise UserError(f"{flags[0]} - and {flags[1]} - both write to standard output; give one of them a file")
    return bool(flags)


def _check_outputs(a) -> None:
    """Report paths are refused before any work when they would replace what they should not,
    including the artifacts being profiled."""
    if a.plot == STDOUT:
        raise UserError("--plot writes a PNG file: give it a path (standard output takes --json, --csv or --markdown)")
    _to_stdout(a)
    protected = [q for target in a.targets if Path(target).exists() for q in artifact_files(Path(target))]
    if a.pictures:  # and the pictures --pictures reads
        from autotimm_deploy.profiler.predict import picture_files

        with contextlib.suppress(UserError):  # none to read: said when they are read
            protected += picture_files(a.pictures)
    check_report_paths({f"--{name}": (None if getattr(a, name) == STDOUT else getattr(a, name))
                        for name in (*TEXT_REPORTS, "plot")}, protected)


def _check_out(a) -> None:
    """``-o ''`` would be the current folder by accident: refused (``-o .`` says it)."""
    if not a.out.strip():
        raise UserError("-o takes a folder, got an empty path (pass -o . for the current folder)")


def _check_cpu_flags(a) -> None:
    """``--device-io`` and ``--cuda-graph`` change nothing on the CPU: refused there, not ignored. The
    device is ``--device``, or the one the pipeline picks for the targets (cuda for a GPU-only runtime)."""
    flags = [f for f, on in (("--cuda-graph", a.cuda_graph), ("--device-io", a.device_io)) if on]
    if not flags or (a.device is not None and a.device != "cpu"):
        return
    if a.device is None:
        if not a.targets or _gpu_runtime(a):
            return  # no target: the pipeline says so; a GPU runtime: the run is on CUDA
    why = "--device cpu" if a.device == "cpu" else "these targets run on the CPU (pass --device cuda for a GPU)"
    raise UserError(f"{flags[0]} applies on CUDA only, and {why}; drop {flags[0]}")


def _gpu_runtime(a) -> bool:
    """Whether the pipeline will put these targets on CUDA (a runtime that only runs there, or a package
    built for it); an unknown or unavailable runtime is left for the pipeline to report."""
    from autotimm_deploy.profiler.runtimes import RUNTIMES, runtime_class
    from autotimm_deploy.profiler.targets import resolve

    if a.runtime is not None and a.runtime not in RUNTIMES:
        return True
    for text in a.targets:
        t = resolve(text, a.runtime, parse_img_size(a.img_size) if a.img_size else None)
        cls = runtime_class(t.runtime)
        if cls.unavailable_reason() or "cpu" not in cls.devices or cls.default_device(t.manifest, t.path).startswith("cuda"):
            return True
    return False


def run_recipe(a) -> int:
    from autotimm_deploy.recipes import benchmark
    from autotimm_deploy.recipes.runner import check_no_links, run_profiles
    from autotimm_deploy.recipes.schema import load_recipe

    if a.targets:
        raise UserError("give artifacts or --recipe, not both")
    if a.pictures:
        raise UserError("--pictures times artifacts from picture file to answer: give artifacts, not --recipe")
    recipe = load_recipe(a.recipe, a.out)
    with progress_bar(counts=True) as bar:
        task = bar.add_task(f"recipe {recipe.name}", total=None)
        if a.ray:
            from autotimm_deploy.recipes import fleet

            rows = fleet.run_profiles(recipe, a.ray, a.max_time, recipe_progress(bar, task), force=a.force)
        else:
            rows = run_profiles(recipe, a.max_time, recipe_progress(bar, task), force=a.force)
    report = None
    if a.report:
        check_no_links(recipe)
        md, pngs, _ = benchmark.write(recipe)
        report = {"markdown": str(md), "png": [str(p) for p in pngs]}
    payload = json.dumps({"recipe": str(recipe.path), "out": str(recipe.root), "rows": rows, "report": report}, indent=2)
    if a.json == "-":
        print(payload)
    elif a.json:
        atomic_write_text(Path(a.json), payload)
    out = console(a.json == "-")
    print_recipe_rows(f"autotimm-profile --recipe {recipe.name}", rows, ("key", "device", "runtime"), out)
    if report:
        out.print(f"benchmark page: {report['markdown']}" + "".join(f", {p}" for p in report["png"]))
    return EXIT_FAILED if any_failed(rows) else EXIT_OK


def main(a) -> int:
    _check_out(a)
    if a.recipe:
        return run_recipe(a)
    if a.force:
        raise UserError("--force re-profiles a recipe's jobs that are up to date: use it with --recipe FILE.yaml")
    if a.report:
        raise UserError(f"--report {a.report} renders a recipe's results: use it with --recipe FILE.yaml")
    if a.ray:
        raise UserError("--ray runs a recipe's timings on a Ray cluster: use it with --recipe FILE.yaml")
    a.max_time = 10.0 if a.max_time is None else a.max_time

    _check_outputs(a)
    if a.pictures:
        _check_pictures_flags(a)
    if a.concurrency:
        concurrency_levels(a)  # checked before anything runs
    settings = _settings(a)
    if a.pictures:
        return run_pictures(a, settings)
    from autotimm_deploy.profiler.pipeline import profile

    with progress_bar() as bar:
        task = bar.add_task("starting", total=None)
        report = profile(a.targets, settings, runtime=a.runtime, compare_eager=a.compare_eager,
                         interleave=a.interleave, isolate=a.isolate,
                         on_progress=lambda text: bar.update(task, description=text))
    if a.concurrency:
        report["concurrency"] = concurrency_sweeps(a, settings, concurrency_levels(a))
    to_stdout = _to_stdout(a)
    table.render(report, console(to_stdout))
    if a.concurrency:
        print_concurrency(report["concurrency"], console(to_stdout))
    for name, path in (("json", a.json), ("csv", a.csv), ("markdown", a.markdown), ("plot", a.plot)):
        if path:
            RENDERERS[name](report, path)
    return _exit_code(report["runs"])


def _exit_code(runs: list[dict]) -> int:
    """Failed when a measurement failed (its row says why); the line names each."""
    failed = [f"{run['target']['label']} at batch {p['batch']}" for run in runs for p in run["points"] if p.get("error")]
    if failed:
        stderr.print(f"[red]{len(failed)} measurement(s) failed[/]: {escape(', '.join(failed))} (see the error rows)")
        return EXIT_FAILED
    return EXIT_OK


def _settings(a) -> Settings:
    batches = _batches(a)
    _check_cpu_flags(a)
    return Settings(
        device=a.device,
        threads=a.threads,
        batch_sizes=batches,
        device_io=a.device_io,
        harness=HarnessConfig(max_time=a.max_time, warmup_time=a.warmup_time, iterations=a.iterations,
                              target_ci=a.target_ci),
        eager_options={k: True for k in ("channels_last", "bf16", "cuda_graph") if getattr(a, k)},
        runtime_options={"batch_mode": a.batch_mode, **({"cuda_graph": True} if a.cuda_graph else {})},
        img_size=parse_img_size(a.img_size) if a.img_size else None,
    )


def _check_pictures_flags(a) -> None:
    """What ``--pictures`` cannot honour is refused before any work, not ignored."""
    for flag, given in (("--csv", a.csv), ("--plot", a.plot), ("--concurrency", a.concurrency),
                        ("--interleave", a.interleave), ("--isolate", a.isolate), ("--device-io", a.device_io),
                        ("--img-size", a.img_size)):
        if given:
            raise UserError(f"{flag} does not apply with --pictures, which times artifacts from picture file to "
                            "answer with their manifest's preprocessing (its reports: the table, --json, --markdown)")


def run_pictures(a, settings: Settings) -> int:
    from autotimm_deploy.profiler.picture_timing import profile_pictures
    from autotimm_deploy.profiler.report import end_to_end

    with progress_bar() as bar:
        task = bar.add_task("starting", total=None)
        report = profile_pictures(a.targets, a.pictures, settings, runtime=a.runtime, compare_eager=a.compare_eager,
                                  on_progress=lambda text: bar.update(task, description=text))
    end_to_end.render(report, console(_to_stdout(a)))
    if a.json:
        RENDERERS["json"](report, a.json)
    if a.markdown:
        end_to_end.write_markdown(report, a.markdown)
    return _exit_code(report["end_to_end"])


def concurrency_levels(a) -> list[int]:
    levels = _integers(a.concurrency)
    if not levels or any(not 1 <= v <= 256 for v in levels):
        raise UserError(f"--concurrency takes numbers of clients from 1 to 256, e.g. 1,4,16; got {a.concurrency!r}")
    served = [t for t in a.targets if t.startswith("triton://")]
    if not served:
        raise UserError("--concurrency measures served models: give a triton://HOST:PORT/MODEL target")
    return levels


def concurrency_sweeps(a, settings, levels: list[int]) -> list[dict]:
    """Each served target swept over the concurrency levels, after the latency runs."""
    from autotimm_deploy.profiler.measure.concurrency import sweep
    from autotimm_deploy.profiler.targets import open_target, resolve

    out = []
    batch = settings.batch_sizes[0]
    with progress_bar() as bar:
        task = bar.add_task("concurrency", total=None)
        for text in (t for t in a.targets if t.startswith("triton://")):
            target = resolve(text)
            session = open_target(target, "cpu", None)
            try:
                rows = sweep(lambda: session.caller(batch), levels, a.max_time, batch,
                             warmup=min(a.warmup_time, 2.0), progress=lambda t: bar.update(task, description=t))
            finally:
                session.close()
            out.append({"target": target.describe() | {"url": text}, "levels": rows})
    return out


def print_concurrency(sweeps: list[dict], out) -> None:
    from rich.table import Table

    for s in sweeps:
        t = Table(title=f"{escape(s['target']['url'])}: concurrent clients (client-side round trip)")
        for c in ("clients", "batch", "requests", "req/s", "img/s", "mean ms", "p50 ms", "p90 ms", "p99 ms", "error"):
            t.add_column(c, justify="left" if c == "error" else "right")
        for r in s["levels"]:
            t.add_row(*(str(r.get(k, "-")) for k in ("concurrency", "batch", "requests", "requests_per_s",
                                                      "images_per_s", "mean_ms", "p50_ms", "p90_ms", "p99_ms")),
                      escape(r.get("error", "")))
        out.print(t)


def entry(argv=None) -> int:
    return run_cli(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(entry())
