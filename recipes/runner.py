"""Running a recipe: ``autotimm-export --recipe`` exports every `ExportJob` into
``<root>/artifacts/``; ``autotimm-profile --recipe`` profiles every `ProfileJob` (each artifact,
plus each model's eager baseline, per device) into ``<root>/results/profile/``. A job that
`is_current` is not redone, so an interrupted run resumes where it stopped; the rows so far are
written to ``<root>/results/<export|profile>.json`` after every job.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.files import atomic_write_text
from autotimm_deploy.exporter.formats import get_format
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.pipeline import accepted, export
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.pipeline import cuda_visible, profile
from autotimm_deploy.profiler.runtimes import runtime_class
from autotimm_deploy.profiler.targets import Target, resolve
from autotimm_deploy.recipes.jobs import JobStatus, ProfileJob, is_current
from autotimm_deploy.recipes.schema import Recipe

Progress = Callable[[str, int, int], None]


def _over_budget(start: float, max_time: float | None) -> bool:
    return max_time is not None and time.monotonic() - start > max_time


def run_exports(recipe: Recipe, max_time: float | None = None, progress: Progress | None = None,
                force: bool = False) -> list[dict]:
    """Export every job of the matrix not already done; one row per job."""
    jobs = recipe.export_jobs()
    check_no_links(recipe)
    recipe.artifacts_dir.mkdir(parents=True, exist_ok=True)
    recipe.results_dir.mkdir(parents=True, exist_ok=True)
    start, results = time.monotonic(), []
    built: dict[str, Any] = {}  # one eager build per (model, task) serves all its formats
    shared: dict[str, Any] = {}  # with eval:, its one eager --eval pass (and the fp32 ONNX graph formats share)
    for i, job in enumerate(jobs):
        if progress:
            progress(job.key, i, len(jobs))
        row = {"artifact": str(job.artifact), "model": job.model.name, "task": job.task.task, "label": job.task.label,
               "format": job.format, "precision": job.precision}
        reason = job.skipped or get_format(job.format).unavailable_reason()
        if reason:
            row.update(status=JobStatus.SKIPPED, reason=reason)
        elif not force and (done := job.current_manifest()) is not None:
            parity = done.parity
            acc = done.accuracy if job.evaluation else None  # a verdict from an `eval:` since removed is void
            failed = not accepted(parity, acc)
            row.update(status=JobStatus.FAILED if failed else JobStatus.UP_TO_DATE,
                       parity=str(parity.verdict) if parity else None, accuracy=acc.row() if acc else None,
                       error=_failure(parity, acc) if failed else None)
        elif _over_budget(start, max_time):
            row.update(status=JobStatus.NOT_RUN, reason=f"--max-time {max_time:g} s spent")
        else:
            key = repr(job.spec)
            try:
                if key not in built:
                    built.clear()  # keep one model in memory at a time
                    shared.clear()
                    built[key] = build_model(job.spec)
                (r,) = export(job.spec, [job.format], recipe.artifacts_dir, job.options(), force=True, name=job.stem,
                              model=built[key], cache=shared if job.evaluation else None)
            except UserError as e:  # this combination cannot be built (size, calibration ...): record, go on
                row.update(status=JobStatus.FAILED, error=str(e))
            else:
                row.update(status=JobStatus.EXPORTED if r.ok else JobStatus.FAILED,
                           error=r.error or (None if r.ok else _failure(r.parity, r.accuracy)),
                           parity=str(r.parity.verdict) if r.parity else None,
                           accuracy=r.accuracy.row() if r.accuracy else None,
                           seconds=round(r.export_seconds, 2))
        results.append(row)
        write_results(recipe, "export.json", results)
    return results


def _failure(parity, acc) -> str | None:
    """Why a job failed: the accuracy budget when it is what failed, else the first parity failure."""
    if acc is not None and acc.error:
        return f"evaluation failed: {acc.error}"
    if acc is not None and acc.verdict is not None and not acc.passed:
        return f"{acc.primary} {acc.drop:.2f} points below eager, past --max-drop {acc.max_drop:g}" if acc.drop is not None \
            else f"{acc.primary} undefined on the evaluation data"
    return (parity.failures or [None])[0] if parity else None


def profile_settings(recipe: Recipe, device: str) -> Settings:
    p = recipe.profile
    harness = HarnessConfig(max_time=float(p.get("max_time", 3.0)), warmup_time=float(p.get("warmup_time", 1.0)),
                            iterations=p.get("iterations"))
    return Settings(device=device, threads=p.get("threads"), batch_sizes=list(recipe.batch_sizes), harness=harness)


def _target(job: ProfileJob) -> Target:
    if job.kind == "eager":
        return Target(label=f"{job.key.removesuffix('.eager')} [eager]", runtime="eager", format="eager",
                      spec=job.export.spec)
    return resolve(str(job.export.artifact))


def _why_not(job: ProfileJob) -> str | None:
    """Why ``job`` cannot be profiled here, or None."""
    if job.device.startswith("cuda") and not cuda_visible():
        return "no CUDA GPU visible here"
    if job.kind == "eager":
        return None
    reason = get_format(job.export.format).unavailable_reason()
    if reason:
        return reason
    try:
        cls = runtime_class(job.runtime)
        if job.device.split(":")[0] not in cls.devices:
            return f"the {job.runtime} runtime does not run on {job.device}"
        if cls.unavailable_reason():
            return f"the {job.runtime} runtime cannot run here: {cls.unavailable_reason()}"
    except UserError as e:
        return str(e)
    return None if job.export.exported else "not exported (run autotimm-export --recipe first)"


def run_profiles(recipe: Recipe, max_time: float | None = None, progress: Progress | None = None,
                 force: bool = False) -> list[dict]:
    """Profile each job not already current; returns one summary row per job."""
    jobs = recipe.profile_jobs()
    if not any(j.export.exported for j in jobs):
        raise UserError(f"nothing of recipe {recipe.name} is exported under {recipe.artifacts_dir}; run "
                        f"autotimm-export --recipe {recipe.path} -o {recipe.out_dir} first")
    check_no_links(recipe)
    (recipe.results_dir / "profile").mkdir(parents=True, exist_ok=True)
    start, rows = time.monotonic(), []
    for i, job in enumerate(jobs):
        if progress:
            progress(f"{job.key} on {job.device}", i, len(jobs))
        out = job.result_path(recipe)
        row = {"key": job.key, "kind": job.kind, "device": job.device, "runtime": job.runtime,
               "model": job.export.model.name, "task": job.export.task.task, "result": str(out)}
        reason = _why_not(job)
        if reason:
            row.update(status=JobStatus.SKIPPED, reason=reason)
        else:
            settings = profile_settings(recipe, job.device)
            fingerprint = job.fingerprint(settings.to_dict())
            if not force and is_current(job.stored_fingerprint(recipe), fingerprint):
                row.update(status=JobStatus.UP_TO_DATE)
            elif _over_budget(start, max_time):
                row.update(status=JobStatus.NOT_RUN, reason=f"--max-time {max_time:g} s spent")
            else:
                try:
                    report = profile([_target(job)], settings, isolate=True)
                except (UserError, RuntimeError) as e:
                    row.update(status=JobStatus.FAILED, error=first_line(e, 300))
                else:
                    atomic_write_text(out, json.dumps({"fingerprint": fingerprint, "job": row, "report": report},
                                                      indent=1))
                    row.update(status=JobStatus.PROFILED)
        rows.append(row)
        write_results(recipe, "profile.json", rows)
    return rows


def check_no_links(recipe: Recipe) -> None:
    """A recipe writes only inside ``<out>/<name>/``: none of its folders may be a link elsewhere."""
    for d in (recipe.root, recipe.artifacts_dir, recipe.results_dir, recipe.results_dir / "profile",
              recipe.root / "report"):
        if d.is_symlink():
            raise UserError(f"{d} is a symbolic link; a recipe writes only inside {recipe.root}: remove the link")


def write_results(recipe: Recipe, name: str, rows: list[dict]) -> None:
    """``<root>/results/<name>``: the rows so far, replaced atomically after every job."""
    atomic_write_text(recipe.results_dir / name, json.dumps({"recipe": str(recipe.path), "name": recipe.name,
                                                             "rows": rows}, indent=2))
