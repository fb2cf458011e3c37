"""The benchmark page of a recipe: records collected from its export manifests and profile result
files, rendered by `autotimm_deploy.profiler.report.benchmark_page` into ``<root>/report/``."""

from __future__ import annotations

import json
from pathlib import Path

from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.results import ProfileRun
from autotimm_deploy.profiler.report import benchmark_page
from autotimm_deploy.recipes.jobs import ExportJob
from autotimm_deploy.recipes.schema import ModelEntry, Recipe


def collect(recipe: Recipe) -> benchmark_page.PageData:
    """Flat records from the recipe's export manifests and profile result files."""
    data = benchmark_page.PageData(recipe.name, recipe.description, list(recipe.batch_sizes),
                                   references={_entry_name(m): m.reference for m in recipe.models if m.reference})
    params, eager_accuracy = {}, {}
    for job in recipe.export_jobs():
        if job.skipped or not job.exported:
            continue
        m = load_manifest(job.artifact)
        params[_model_key(job)] = m.model.get("params")
        data.artifacts.append({"artifact": job.artifact.name, "model": _model_name(job), "task": _task_label(job),
                               "format": job.format, "precision": job.precision, "device": job.device,
                               "mb": sum(e["bytes"] for e in m.files.values()) / 2**20,
                               "parity": str(m.parity.verdict) if m.parity else "not checked",
                               "params": m.model.get("params"),
                               "accuracy": {**m.accuracy.row(), "data": m.accuracy.data.get("source")}
                               if m.accuracy and not m.accuracy.error else None})
        if m.accuracy and not m.accuracy.error:  # eager's metric on the same data, from any of its artifacts
            eager_accuracy[_model_key(job)] = {"metric": m.accuracy.primary, "data": m.accuracy.data.get("source"),
                                               "value": m.accuracy.eager.get(m.accuracy.primary)}
    verdicts = {a["artifact"]: a["parity"] for a in data.artifacts}
    accuracies = {a["artifact"]: a["accuracy"] for a in data.artifacts}
    for pj in recipe.profile_jobs():
        path = pj.result_path(recipe)
        if not path.exists():
            continue
        report = json.loads(path.read_text())["report"]
        data.environments.setdefault(pj.device, report["environment"])
        run = ProfileRun.from_dict(report["runs"][0])
        points = {p.batch: p for p in run.points if not p.error}
        data.records.append({
            "model": _model_name(pj.export), "task": _task_label(pj.export), "device": pj.device,
            "runtime": "eager" if pj.kind == "eager" else f"{pj.runtime} {pj.export.precision}",
            "params": params.get(_model_key(pj.export)), "img_size": pj.export.spec.img_size,
            "ms": {b: p.median_ms for b, p in points.items()},
            "ips": {b: p.images_per_s for b, p in points.items()},
            "peak_mb": _inference_memory(run.memory),
            "reference": pj.export.model.reference, "task_kind": pj.export.task.task,
            "parity": "pass" if pj.kind == "eager" else verdicts.get(pj.export.artifact.name),
            "accuracy": eager_accuracy.get(_model_key(pj.export)) if pj.kind == "eager"
            else accuracies.get(pj.export.artifact.name),
        })
    return data


def write(recipe: Recipe, folder: Path | None = None) -> tuple[Path, list[Path], benchmark_page.PageData]:
    """Render ``<root>/report/benchmarks.md`` and its PNGs; returns (markdown, PNGs, the data)."""
    data = collect(recipe)
    md, pngs = benchmark_page.write(data, Path(folder or recipe.root / "report"))
    return md, pngs, data


def _inference_memory(mem: dict) -> float | None:
    """What inference cost: torch's peak allocation on a GPU; on the CPU the process's peak resident
    memory above what it held before loading the model (the Python runtime and its imports)."""
    if mem.get("peak_gpu_mb") is not None:
        return mem["peak_gpu_mb"]
    if mem.get("peak_rss_mb") is None:
        return None
    return max(0.0, mem["peak_rss_mb"] - (mem.get("baseline_rss_mb") or 0.0))


def _entry_name(model: ModelEntry) -> str:
    """A model entry as the page names it: its name, and its label where it has one."""
    return f"{model.name} [{model.label}]" if model.label else model.name


def _model_name(job: ExportJob) -> str:
    return _entry_name(job.model)


def _model_key(job: ExportJob) -> str:
    return f"{job.model.name}|{job.model.label}|{_task_label(job)}"


def _task_label(job: ExportJob) -> str:
    label = job.spec.task_label()
    return f"{label} [{job.task.label}]" if job.task.label else label
