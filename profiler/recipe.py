"""``autotimm-profile --recipe``: profile every artifact a recipe exported on each of its devices,
plus each model's eager baseline. One result file per (artifact or eager model, device) under
``<root>/results/profile/``, written as it finishes; a result whose artifact and settings are
unchanged is skipped, so an interrupted run resumes where it stopped.

(Reads `exporter.recipe` for the plain recipe data: the one import of the exporter beyond
``exporter.models`` the profiler CLI makes.)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from exporter.errors import UserError, first_line
from exporter.manifest import atomic_write_text, load_manifest
from exporter.recipe import ExportJob, Recipe, write_results


@dataclass
class ProfileJob:
    kind: str  # artifact | eager
    key: str  # result file stem
    device: str
    export: ExportJob

    @property
    def runtime(self) -> str:
        from profiler.runtimes import DEFAULT_RUNTIME

        return "eager" if self.kind == "eager" else DEFAULT_RUNTIME.get(self.export.format, "?")


def profile_jobs(recipe: Recipe) -> list[ProfileJob]:
    """Per device: each model's eager baseline (once per model and task), then its artifacts."""
    from exporter.api import default_stem

    jobs = []
    for device in recipe.devices:
        eager_seen = set()
        for job in recipe.export_jobs():
            if job.skipped:
                continue
            stem = default_stem(job.spec) + (f"-{job.task.label}" if job.task.label else "")
            if stem not in eager_seen:
                eager_seen.add(stem)
                jobs.append(ProfileJob("eager", f"{stem}.eager", device, job))
            jobs.append(ProfileJob("artifact", job.artifact.name, device, job))
    return jobs


def result_path(recipe: Recipe, job: ProfileJob) -> Path:
    return recipe.results_dir / "profile" / f"{job.key}.{job.device.replace(':', '')}.json"


def _settings(recipe: Recipe, device: str):
    from profiler.api import Settings
    from profiler.timing import HarnessConfig

    p = recipe.profile
    harness = HarnessConfig(max_time=float(p.get("max_time", 3.0)), warmup_time=float(p.get("warmup_time", 1.0)),
                            iterations=p.get("iterations"))
    return Settings(device=device, threads=p.get("threads"), batch_sizes=list(recipe.batch_sizes), harness=harness)


def _fingerprint(job: ProfileJob, settings) -> dict[str, Any]:
    fp = {"settings": settings.to_dict(), "runtime": job.runtime}
    if job.kind == "eager":
        fp["spec"] = job.export.spec.to_dict()
    else:
        m = load_manifest(job.export.artifact)
        fp["files"] = {n: e["sha256"] for n, e in m.files.items()}
    return fp


def _target(job: ProfileJob):
    from profiler.targets import Target, resolve

    if job.kind == "eager":
        return Target(label=f"{job.key.removesuffix('.eager')} [eager]", runtime="eager", format="eager",
                      spec=job.export.spec)
    return resolve(str(job.export.artifact))


def run_profiles(recipe: Recipe, max_time: float | None = None,
                 progress: Callable[[str, int, int], None] | None = None, force: bool = False) -> list[dict]:
    """Profile each job not already current; returns one summary row per job."""
    from exporter.formats import get_format
    from profiler.api import cuda_visible, profile
    from profiler.runtimes import runtime_class

    jobs = profile_jobs(recipe)
    if not any(j.export.exported for j in jobs):
        raise UserError(f"nothing of recipe {recipe.name} is exported under {recipe.artifacts_dir}; run "
                        f"autotimm-export --recipe {recipe.path} -o {recipe.out_dir} first")
    (recipe.results_dir / "profile").mkdir(parents=True, exist_ok=True)
    start, rows = time.monotonic(), []
    for i, job in enumerate(jobs):
        if progress:
            progress(f"{job.key} on {job.device}", i, len(jobs))
        out = result_path(recipe, job)
        row = {"key": job.key, "kind": job.kind, "device": job.device, "runtime": job.runtime,
               "model": job.export.model.name, "task": job.export.task.task, "result": str(out)}
        reason = None
        if job.device.startswith("cuda") and not cuda_visible():
            reason = "no CUDA GPU visible here"
        elif job.kind == "artifact":
            reason = get_format(job.export.format).unavailable_reason()
            if reason is None:
                try:
                    if job.device.split(":")[0] not in runtime_class(job.runtime).devices:
                        reason = f"the {job.runtime} runtime does not run on {job.device}"
                except UserError as e:
                    reason = str(e)
            if reason is None and not job.export.exported:
                reason = "not exported (run autotimm-export --recipe first)"
        if reason:
            rows.append({**row, "status": "skipped", "reason": reason})
            write_results(recipe, "profile.json", rows)
            continue
        settings = _settings(recipe, job.device)
        fingerprint = _fingerprint(job, settings)
        if not force and _current(out, fingerprint):
            rows.append({**row, "status": "up to date"})
        elif max_time is not None and time.monotonic() - start > max_time:
            rows.append({**row, "status": "not run", "reason": f"--max-time {max_time:g} s spent"})
        else:
            try:
                report = profile([_target(job)], settings, isolate=True)
            except (UserError, RuntimeError) as e:
                rows.append({**row, "status": "failed", "error": first_line(e, 300)})
            else:
                atomic_write_text(out, json.dumps({"fingerprint": fingerprint, "job": row, "report": report}, indent=1))
                rows.append({**row, "status": "profiled"})
        write_results(recipe, "profile.json", rows)
    return rows


def _current(path: Path, fingerprint: dict) -> bool:
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("fingerprint") == json.loads(json.dumps(fingerprint))
    except (OSError, ValueError):
        return False
