"""Running a recipe: ``autotimm-export --recipe`` exports every `ExportJob` into
``<root>/artifacts/``; ``autotimm-profile --recipe`` profiles every `ProfileJob` (each artifact,
plus each model's eager baseline, per device) into ``<root>/results/profile/``. A job that
`is_current` is not redone, so an interrupted run resumes where it stopped; the rows so far are
written to ``<root>/results/<export|profile>.json`` after every job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

from autotimm_deploy.exporter.core.cli import raise_if_interrupted
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.files import atomic_write_text
from autotimm_deploy.exporter.formats import get_format
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.core.results import accepted
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.pipeline import cuda_visible, profile
from autotimm_deploy.profiler.runtimes import runtime_class
from autotimm_deploy.profiler.targets import Target, resolve
from autotimm_deploy.recipes.jobs import (
    ExportJob,
    JobStatus,
    ProfileJob,
    device_kind,
    device_node,
    gpu_index,
    is_current,
)
from autotimm_deploy.recipes.schema import Recipe

Progress = Callable[[str, int, int], None]


def over_budget(start: float, max_time: float | None) -> bool:
    return max_time is not None and time.monotonic() - start > max_time


def run_exports(recipe: Recipe, max_time: float | None = None, progress: Progress | None = None,
                force: bool = False) -> list[dict]:
    """Export every job of the matrix not already done; one row per job."""
    jobs = prepare_exports(recipe)
    start, results = time.monotonic(), []
    built: dict[str, Any] = {}  # one eager build per (model, task) serves all its formats
    shared: dict[str, Any] = {}  # with eval:, its one eager --eval pass (and the fp32 ONNX graph formats share)
    for i, job in enumerate(jobs):
        raise_if_interrupted()
        if progress:
            progress(job.key, i, len(jobs))
        row = settled_export(job, force)
        if row is None and over_budget(start, max_time):
            row = {**export_row(job), "status": JobStatus.NOT_RUN, "reason": f"--max-time {max_time:g} s spent"}
        results.append(row or export_job(job, recipe.artifacts_dir, built, shared))
        write_results(recipe, "export.json", results)
    return results


def prepare_exports(recipe: Recipe) -> list[ExportJob]:
    """The recipe's export jobs, its folders made (and checked: no links out of it)."""
    jobs = recipe.export_jobs()
    check_no_links(recipe)
    recipe.artifacts_dir.mkdir(parents=True, exist_ok=True)
    recipe.results_dir.mkdir(parents=True, exist_ok=True)
    return jobs


def export_row(job: ExportJob) -> dict:
    row = {"artifact": str(job.artifact), "model": job.model.name, "model_label": job.model.label,
           "task": job.task.task, "label": job.task.label,
           "format": job.format, "precision": job.precision}
    return {**row, "device": job.device} if job.device else row


def missing_here(device: str) -> str | None:
    """Why ``device`` is not on this machine (a fleet node's device, no GPU, no such GPU), or None."""
    if device_node(device):
        return f"{device} is a fleet device (the node named {device_node(device)!r}): run with --ray"
    kind = device_kind(device)
    if not kind.startswith("cuda"):
        return None
    if not cuda_visible():
        return "no CUDA GPU visible here"
    import torch

    count = torch.cuda.device_count()
    return None if gpu_index(device) < count else f"{kind} is not here: this machine has {count} CUDA GPU(s)"


def on_device(device: str | None):
    """The context an export bound to ``device`` (a GPU of this machine) is built in."""
    if not device:
        return contextlib.nullcontext()
    import torch

    return torch.cuda.device(gpu_index(device))


def settled_export(job: ExportJob, force: bool = False, here: bool = True) -> dict | None:
    """The row of a job with nothing to export (skipped, up to date, or failed as its manifest says),
    else None. ``here``: the job would run on this machine, so a format this machine lacks is skipped."""
    row = export_row(job)
    reason = job.skipped or (missing_here(job.device) if here and job.device else None) \
        or (get_format(job.format).unavailable_reason() if here else None)
    if reason:
        return {**row, "status": JobStatus.SKIPPED, "reason": reason}
    done = None if force else job.current_manifest()
    if done is None:
        return None
    parity = done.parity
    acc = done.accuracy if job.evaluation else None  # a verdict from an `eval:` since removed is void
    failed = not accepted(parity, acc)
    return {**row, "status": JobStatus.FAILED if failed else JobStatus.UP_TO_DATE,
            "parity": str(parity.verdict) if parity else None, "accuracy": acc.row() if acc else None,
            "error": _failure(parity, acc) if failed else None}


def export_job(job: ExportJob, out_dir: Path, built: dict | None = None, shared: dict | None = None) -> dict:
    """Export ``job`` into ``out_dir`` (its name, its options); its row. ``built`` keeps one eager
    model between jobs of the same spec, ``shared`` what an ``eval:`` run shares."""
    row = export_row(job)
    built = {} if built is None else built
    shared = {} if shared is None else shared
    key = repr(job.spec)
    try:
        if key not in built:
            built.clear()  # keep one model in memory at a time
            shared.clear()
            built[key] = build_model(job.spec)
        with on_device(job.device):  # an engine is built on the GPU it is for
            (r,) = export(job.spec, [job.format], out_dir, job.options(), force=True, name=job.stem,
                          model=built[key], cache=shared if job.evaluation else None)
    except UserError as e:  # this combination cannot be built (size, calibration ...): record, go on
        return {**row, "status": JobStatus.FAILED, "error": str(e)}
    return {**row, "status": JobStatus.EXPORTED if r.ok else JobStatus.FAILED,
            "error": r.error or (None if r.ok else _failure(r.parity, r.accuracy)),
            **({} if r.ok else {"command": r.command}),
            "parity": str(r.parity.verdict) if r.parity else None,
            "accuracy": r.accuracy.row() if r.accuracy else None, "seconds": round(r.export_seconds, 2)}


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


def profile_target(job: ProfileJob, artifact: Path | None = None) -> Target:
    if job.kind == "eager":
        return Target(label=f"{job.key.removesuffix('.eager')} [eager]", runtime="eager", format="eager",
                      spec=job.export.spec)
    return resolve(str(artifact or job.export.artifact))


def _why_not(job: ProfileJob, here: bool = True) -> str | None:
    """Why ``job`` cannot be profiled (``here``: on this machine; else anywhere), or None."""
    if here and (reason := missing_here(job.device)):
        return reason
    if job.kind == "eager":
        return None
    reason = get_format(job.export.format).unavailable_reason() if here else None
    if reason:
        return reason
    try:
        cls = runtime_class(job.runtime)
        if device_kind(job.device).split(":")[0] not in cls.devices:
            return f"the {job.runtime} runtime does not run on {job.device}"
        if here and cls.unavailable_reason():
            return f"the {job.runtime} runtime cannot run here: {cls.unavailable_reason()}"
    except UserError as e:
        return str(e)
    return None if job.export.exported else "not exported (run autotimm-export --recipe first)"


def run_profiles(recipe: Recipe, max_time: float | None = None, progress: Progress | None = None,
                 force: bool = False) -> list[dict]:
    """Profile each job not already current; returns one summary row per job."""
    jobs = prepare_profiles(recipe)
    start, rows = time.monotonic(), []
    for i, job in enumerate(jobs):
        raise_if_interrupted()
        if progress:
            progress(f"{job.key} on {job.device}", i, len(jobs))
        row, settings, fingerprint = plan_profile(job, recipe, force)
        if settings is not None:
            if over_budget(start, max_time):
                row.update(status=JobStatus.NOT_RUN, reason=f"--max-time {max_time:g} s spent")
            else:
                try:
                    report = profile([profile_target(job)], settings, isolate=True)
                except (UserError, RuntimeError) as e:
                    row.update(status=JobStatus.FAILED, error=first_line(e, 300))
                else:
                    store_profile(recipe, job, row, fingerprint, report)
        rows.append(row)
        write_results(recipe, "profile.json", rows)
    return rows


def prepare_profiles(recipe: Recipe) -> list[ProfileJob]:
    """The recipe's profile jobs, once something of it is exported."""
    jobs = recipe.profile_jobs()
    if not any(j.export.exported for j in jobs):
        raise UserError(f"nothing of recipe {recipe.name} is exported under {recipe.artifacts_dir}; run "
                        f"autotimm-export --recipe {recipe.path} -o {recipe.out_dir} first")
    check_no_links(recipe)
    (recipe.results_dir / "profile").mkdir(parents=True, exist_ok=True)
    return jobs


def plan_profile(job: ProfileJob, recipe: Recipe, force: bool = False, here: bool = True,
                 ) -> tuple[dict, Settings | None, dict | None]:
    """(row, settings, fingerprint): settings None when the row is already settled (skipped, up to
    date). The settings measure on the device's kind (a fleet device ``cpu@box`` is a ``cpu``)."""
    row = {"key": job.key, "kind": job.kind, "device": job.device, "runtime": job.runtime,
           "model": job.export.model.name, "task": job.export.task.task, "result": str(job.result_path(recipe))}
    if job.kind != "eager" and job.export.artifact.exists() and not job.export.exported:
        return {**row, "status": JobStatus.FAILED, "reason": f"{job.export.artifact.name} has no manifest beside it "
                "(deleted, or an export cut off): re-export it (autotimm-export --recipe ... --force)"}, None, None
    reason = _why_not(job, here)
    if reason:
        return {**row, "status": JobStatus.SKIPPED, "reason": reason}, None, None
    settings = profile_settings(recipe, job.device)
    fingerprint = job.fingerprint(settings.to_dict())
    if not force and is_current(job.stored_fingerprint(recipe), fingerprint):
        return {**row, "status": JobStatus.UP_TO_DATE}, None, None
    return row, dataclasses.replace(settings, device=device_kind(job.device)), fingerprint


def store_profile(recipe: Recipe, job: ProfileJob, row: dict, fingerprint: dict, report: dict) -> None:
    """Write one job's result (its fingerprint, row and report); the row is then PROFILED."""
    atomic_write_text(job.result_path(recipe), json.dumps({"fingerprint": fingerprint, "job": row, "report": report},
                                                          indent=1))
    row["status"] = JobStatus.PROFILED


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
