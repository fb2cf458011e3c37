"""`profile()`: the Python API behind ``autotimm-profile``.

Targets are measured in *groups*: a group's sessions live in one process and are measured
interleaved (an artifact with its eager twin under ``compare_eager``; every target under
``interleave``); otherwise each target is its own group. With ``isolate`` each group runs in its own
subprocess (`autotimm_deploy.profiler.worker`), so peak memory belongs to that group alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from typing import Callable

from autotimm_deploy.exporter.core.capture import captured_output
from autotimm_deploy.exporter.core.cli import raise_if_interrupted

from autotimm_deploy.exporter.core.environment import cores_available, current_rss_mb, environment, peak_rss_mb
from autotimm_deploy.exporter.core.errors import RuntimeUnavailable, UserError, first_line
from autotimm_deploy.exporter.core.limits import MAX_BATCH, MAX_ITERATIONS, MAX_SECONDS
from autotimm_deploy.exporter.core.results import ProfilePoint, ProfileRun
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.profiler.measure.load import CpuSnapshot, assess, loadavg
from autotimm_deploy.profiler.measure.peak import (CpuFacts, Peak, device_peak, percent_of_peak, read_cpu_facts,
                                                   with_measured_clock)
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.sweep import batches_in_range, phase_split, sweep
from autotimm_deploy.profiler.measure.timing import clock_for
from autotimm_deploy.profiler.runtimes import RUNTIMES, runtime_class, runtime_names
from autotimm_deploy.profiler.targets import Target, eager_twin, open_target, resolve

SCHEMA_VERSION = 1


def check_settings(settings: Settings) -> None:
    """Numbers that would make a run endless, exhaust memory or slow every runtime are refused."""
    if not settings.batch_sizes or any(not 1 <= b <= MAX_BATCH for b in settings.batch_sizes):
        raise UserError(f"batch sizes take 1 to {MAX_BATCH}, got {settings.batch_sizes}")
    if settings.threads is not None and not 1 <= settings.threads <= cores_available():
        raise UserError(f"--threads takes 1 to {cores_available()} (the cores usable here), got {settings.threads}")
    h = settings.harness
    if not (0 < h.max_time <= MAX_SECONDS and 0 <= h.warmup_time <= MAX_SECONDS):
        raise UserError(f"sampling and warm-up times take seconds up to {MAX_SECONDS:g}, got {h.max_time}, "
                        f"{h.warmup_time}")
    if not 0 < h.target_ci < 1 or (h.iterations is not None and not 1 <= h.iterations <= MAX_ITERATIONS):
        raise UserError(f"--target-ci takes a fraction above 0 and --iterations 1 to {MAX_ITERATIONS}, got {h.target_ci}, "
                        f"{h.iterations}")


def cuda_visible() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def check_device(device: str) -> None:
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}; use cpu or cuda[:N]")
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA GPU is visible here; use --device cpu")


def target_to_dict(t: Target) -> dict:
    if t.runtime == "eager" and t.path is None:
        return {"eager": t.spec.to_dict()}
    return {"path": str(t.path), "runtime": t.runtime}


def target_from_dict(d: dict, img_size) -> Target:
    if "eager" in d:
        spec = ModelSpec.from_dict(d["eager"])
        return Target(label=f"{spec.model} [eager]", runtime="eager", format="eager", spec=spec)
    return resolve(d["path"], d["runtime"], img_size)


def cpu_facts(settings: Settings) -> CpuFacts | None:
    """The CPU's facts for "% of peak", the clock measured by a GEMM (None on a GPU). Measured before
    any runtime holds threads (5 % lower beside an OpenVINO model here), once for a whole report."""
    return None if settings.device.startswith("cuda") else with_measured_clock(read_cpu_facts(), settings.threads)


def run_group(targets: list[Target], settings: Settings, on_progress: Callable[[str], None] | None = None,
              facts: CpuFacts | None = None) -> list[ProfileRun]:
    """Open every target of one group, sweep them together, return one run record per target
    (``facts``: the report's `cpu_facts`, measured here when not given).

    Every session opened is closed on every path out: success, an error, Ctrl-C."""
    step = on_progress or (lambda _t: None)
    facts = facts or cpu_facts(settings)
    for t in targets:  # import each runtime's libraries first: the baseline holds them, not the model
        for module in RUNTIMES[t.runtime].requires:
            # opening the session below names the extra to install; what libraries print on import is noise
            with contextlib.suppress(ImportError), captured_output():
                importlib.import_module(module)
    baseline_rss = current_rss_mb()
    with contextlib.ExitStack() as stack:
        sessions, loaded = _open_sessions(targets, settings, stack, step)
        kept, dropped = _common_batches(sessions, targets, settings)
        points, machine, peak_gpu = _sweep_group(sessions, targets, settings, kept, step)
        phases = _gpu_phases(sessions, targets, settings, kept, points, step)
        memory = {"loaded_mb": loaded, "baseline_rss_mb": baseline_rss, "peak_gpu_mb": peak_gpu}
        return _assemble_runs(targets, sessions, settings, points, kept, dropped, machine, phases, memory, facts)


def _open_sessions(targets: list[Target], settings: Settings, stack: contextlib.ExitStack,
                   step: Callable[[str], None]) -> tuple[list, list[float]]:
    """Open one session per target, each registered on ``stack`` (closed when it unwinds); return the
    sessions and the memory each took (MB)."""
    sessions, loaded = [], []
    for t in targets:
        step(f"loading {t.label}")
        before = current_rss_mb()
        # shared_cores: measured in turns with others in this process, so no runtime may keep idle
        # threads spinning on the cores the others need (ONNX Runtime's default)
        options = (settings.eager_options if t.runtime == "eager"
                   else {**settings.runtime_options, "max_batch": max(settings.batch_sizes),
                         "shared_cores": len(targets) > 1})
        sessions.append(stack.enter_context(open_target(t, settings.device, settings.threads, options,
                                                        settings.img_size)))
        loaded.append(current_rss_mb() - before)
    return sessions, loaded


def _common_batches(sessions: list, targets: list[Target], settings: Settings) -> tuple[list[int], list[int]]:
    """The asked batch sizes every session accepts (kept) and the others (dropped)."""
    lo = max(s.batch_range()[0] for s in sessions)
    his = [s.batch_range()[1] for s in sessions if s.batch_range()[1] is not None]
    hi = min(his) if his else None
    if hi is not None and hi < lo:
        raise UserError("these targets accept no common batch size: " + ", ".join(t.label for t in targets))
    kept, dropped = batches_in_range(settings.batch_sizes, lo, hi)
    if not kept:
        raise UserError(f"none of the batch sizes {settings.batch_sizes} fits the batch range "
                        f"[{lo}, {hi if hi is not None else 'any'}] of " + ", ".join(t.label for t in targets))
    return kept, dropped


def _sweep_group(sessions: list, targets: list[Target], settings: Settings, kept: list[int],
                 step: Callable[[str], None]) -> tuple[list, dict, float | None]:
    """Measure the sessions interleaved at each kept batch size; return the points, the machine's
    load assessment and the peak GPU memory (MB; None on CPU)."""
    gpu = settings.device.startswith("cuda")
    if gpu:
        import torch

        torch.cuda.reset_peak_memory_stats()
    load_before, before = loadavg(), CpuSnapshot.take()
    points = sweep(sessions, kept, settings.harness, clock_for(settings.device), settings.device_io,
                   on_point=lambda b, _s: step(f"{' vs '.join(t.label for t in targets)}: batch {b}"))
    unsettled = [t.label for i, t in enumerate(targets) if any(p.warmup_settled and p.warmup_settled[i] is False
                                                               for p in points)]
    machine = assess(_threads_used(settings), load_before, before, CpuSnapshot.take(), unsettled).to_dict()
    peak_gpu = None
    if gpu:
        import torch

        peak_gpu = torch.cuda.max_memory_allocated() / 2**20
    return points, machine, peak_gpu


def _gpu_phases(sessions: list, targets: list[Target], settings: Settings, kept: list[int], points: list,
                step: Callable[[str], None]) -> dict[int, dict]:
    """On a GPU, after a clean sweep: each session's copy / compute split at the first kept batch."""
    phases = {}
    if not settings.device.startswith("cuda") or not kept or any(p.error for p in points):
        return phases
    short = dataclasses.replace(settings.harness, max_time=min(settings.harness.max_time, 3.0))
    for i, s in enumerate(sessions):
        step(f"{targets[i].label}: copy / compute split at batch {kept[0]}")
        phases[i] = {"batch": kept[0], **phase_split(s, kept[0], short, clock_for(settings.device))}
    return phases


def _point_rows(points: list, i: int, kept: list[int], flops: int | None = None,
                peak: Peak | None = None) -> list[ProfilePoint]:
    """Target ``i``'s row at each swept batch size; "% of peak" from ``flops`` per picture and ``peak``."""
    base = None
    rows = []
    for p in points:
        if p.error:
            rows.append(ProfilePoint(p.batch, error=p.error))
            continue
        st = p.stats[i]
        ips = p.batch / (st["p50"] / 1e3)
        base = base or (ips if p.batch == kept[0] else None)
        rows.append(ProfilePoint(p.batch, stats_ms=st, images_per_s=ips,
                                 speedup_vs_batch1=ips / base if base and kept[0] == 1 else None,
                                 vs_baseline=p.speedup[i], samples=p.samples, stop=p.stop,
                                 settings=p.settings[i] if p.settings else None,
                                 percent_of_peak=percent_of_peak(flops, ips, peak)))
    return rows


def flops_per_image(session) -> int | None:
    """The FLOPs per picture counted at export (the manifest's ``model.flops``), if any."""
    record = (session.manifest.model or {}).get("flops") if getattr(session, "manifest", None) else None
    value = record.get("per_image") if isinstance(record, dict) else None
    return value if type(value) is int and value > 0 else None


def _assemble_runs(targets: list[Target], sessions: list, settings: Settings, points: list, kept: list[int],
                   dropped: list[int], machine: dict, phases: dict[int, dict], memory: dict,
                   facts: CpuFacts | None) -> list[ProfileRun]:
    """One run record per target; ``memory`` holds loaded_mb (one per target), baseline_rss_mb, peak_gpu_mb;
    ``facts`` the CPU's (None on a GPU)."""
    flops = [flops_per_image(s) for s in sessions]
    peaks = [device_peak(settings.device, _precision(s), settings.threads, facts) for s in sessions]
    return [ProfileRun(
        target=t.describe(),
        runtime=s.name,
        device=settings.device,
        baseline=targets[0].label if i > 0 else None,
        batches_skipped=dropped,
        phases_ms=phases.get(i),
        points=_point_rows(points, i, kept, flops[i], peaks[i]),
        flops_per_image=flops[i],
        peak=peaks[i].to_dict(),
        machine=machine,
        memory={"loaded_mb": memory["loaded_mb"][i], "peak_rss_mb": peak_rss_mb(),
                "baseline_rss_mb": memory["baseline_rss_mb"], "peak_gpu_mb": memory["peak_gpu_mb"],
                "process_holds": [x.label for x in targets]},
    ) for i, (t, s) in enumerate(zip(targets, sessions))]


def _precision(session) -> str:
    """The precision ``session`` computes in (a duck-typed session without `compute_precision`: fp32)."""
    precision = getattr(session, "compute_precision", None)
    return precision() if precision is not None else "fp32"


def _threads_used(settings: Settings) -> int:
    import torch

    return settings.threads or torch.get_num_threads()


def _run_isolated(targets: list[Target], settings: Settings, on_progress, facts: CpuFacts | None) -> list[ProfileRun]:
    job = {"targets": [target_to_dict(t) for t in targets], "settings": settings.to_dict(),
           "cpu_facts": facts.to_dict() if facts else None}
    # -P (-I before Python 3.11): the worker never imports from the current folder, where a stray
    # module of the same name as one of ours or a dependency's could otherwise run
    isolation = "-P" if sys.version_info >= (3, 11) else "-I"
    with tempfile.TemporaryFile("w+") as results:  # a file, not a pipe: a large result cannot block the worker
        proc = subprocess.Popen([sys.executable, isolation, "-m", "autotimm_deploy.profiler.worker"],
                                stdin=subprocess.PIPE, stdout=results, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            raise_if_interrupted()  # a signal in the fork's at-fork hooks (``preexec_fn``) is dropped
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
            last = ""
            for line in proc.stderr:
                last = line.strip() or last
                if last.startswith("progress: ") and on_progress:
                    on_progress(last[len("progress: "):])
            proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM, a crash here: the worker goes with us, now
            proc.kill()
            proc.wait()
            raise
        results.seek(0)
        out = results.read()
    if proc.returncode == 2:
        raise UserError(last.removeprefix("error: "))
    if proc.returncode != 0:  # killed (out of memory, a signal) or crashed: error rows, the others go on
        how = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit {proc.returncode}"
        why = f"the profiling worker died ({how}{': ' + first_line(last, 200) if last else ''})"
        return [ProfileRun(target=t.describe(), runtime=t.runtime, device=settings.device,
                           points=[ProfilePoint(b, error=why) for b in settings.batch_sizes]) for t in targets]
    return [ProfileRun.from_dict(d) for d in json.loads(out)]


def _die_with_parent() -> None:
    """In the worker, before it starts: the kernel kills it if this process dies (even by SIGKILL)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def plan_groups(targets: list[Target], compare_eager: bool, interleave: bool) -> list[list[Target]]:
    if interleave:
        return [targets]
    groups = []
    for t in targets:
        groups.append([eager_twin(t), t] if compare_eager and t.runtime != "eager" else [t])
    return groups


def profile(target_texts: list, settings: Settings | None = None, runtime: str | None = None,
            compare_eager: bool = False, interleave: bool = False, isolate: bool | None = None,
            on_progress: Callable[[str], None] | None = None) -> dict:
    """Measure every target (artifact paths, timm names, or `Target`s); return the report
    (schema_version 1, raw floats, times in ms)."""
    settings = settings or Settings()
    check_settings(settings)
    targets = resolve_targets(target_texts, settings, runtime)
    groups = plan_groups(targets, compare_eager, interleave)
    if isolate is None:
        isolate = len(groups) > 1
    facts = cpu_facts(settings)  # one clock for every row of the report, whichever process measures it
    runs = []
    for group in groups:
        runs += (_run_isolated(group, settings, on_progress, facts) if isolate
                 else run_group(group, settings, on_progress, facts))
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "autotimm-profile",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(settings.threads),
        "settings": {**settings.to_dict(), "isolate": isolate, "compare_eager": compare_eager,
                     "interleave": interleave, "clock": clock_for(settings.device).name},
        "runs": [r.to_dict() for r in runs],
        "warnings": list(dict.fromkeys(w for r in runs for w in r.machine.get("warnings", []))),
    }


def resolve_targets(target_texts: list, settings: Settings, runtime: str | None) -> list[Target]:
    """The targets (texts resolved), each runtime checked to run here; ``settings.device`` set when
    it was left to the targets (cuda when one only runs there), and checked."""
    if not target_texts:
        raise UserError("give at least one artifact or timm model name")
    if runtime is not None and runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r} (available: {runtime_names()})")
    targets = [t if isinstance(t, Target) else resolve(t, runtime, settings.img_size) for t in target_texts]
    for t in targets:
        reason = runtime_class(t.runtime).unavailable_reason()
        if reason:
            raise RuntimeUnavailable(f"the {t.runtime} runtime cannot run here: {reason}")
    if settings.device is None:  # a GPU-only runtime (TensorRT), or a package compiled for CUDA, puts the
        # whole comparison on the GPU
        gpu_only = [t.runtime for t in targets if "cpu" not in runtime_class(t.runtime).devices
                    or runtime_class(t.runtime).default_device(t.manifest, t.path).startswith("cuda")]
        settings.device = "cuda" if gpu_only else "cpu"
        if gpu_only and not cuda_visible():
            raise UserError(f"the {gpu_only[0]} runtime needs a CUDA GPU and none is visible here")
    check_device(settings.device)
    if settings.runtime_options.get("cuda_graph") and not settings.device.startswith("cuda"):
        raise UserError("--cuda-graph captures CUDA graphs: it needs --device cuda (a GPU)")
    return targets
