"""A recipe as a list of jobs: one `ExportJob` per artifact of the matrix, one `ProfileJob` per
(artifact or eager baseline, device); the `JobStatus` each run reports; and the one rule that says
a job is already done: the fingerprint stored with its output equals the job's fingerprint now,
and every file the output lists still has its recorded sha256.

Plain data: building the list imports no runtime and no exporter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import Manifest, load_manifest, manifest_path, verify_files
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions, get_format
from autotimm_deploy.profiler.artifact import default_runtime

if TYPE_CHECKING:  # the recipe module builds the job list from itself
    from autotimm_deploy.recipes.schema import ModelEntry, Recipe, TaskEntry


class JobStatus(str, Enum):
    """What happened to one job. A str, so rows compare and serialise as the plain words."""

    EXPORTED = "exported"
    PROFILED = "profiled"
    UP_TO_DATE = "up to date"
    SKIPPED = "skipped"
    NOT_RUN = "not run"  # the run's time budget was spent first
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def style(self) -> str:
        return {"exported": "green", "profiled": "green", "up to date": "cyan", "failed": "red"}.get(self.value,
                                                                                                    "yellow")


# The spec fields a recipe decides; img_size and num_classes count only where the recipe sets them
# (else the model's own, which the manifest records resolved).
SPEC_KEYS = ("model", "task", "head", "in_chans", "weights", "img_size", "num_classes", "architecture")
SPEC_DEFAULTS = {"architecture": "builtin"}  # what a manifest written before the key existed means
CALIBRATION_OPTIONS = ("calib_data", "calib_samples", "calib_random")  # what int8 results depend on
EVAL_OPTIONS = ("eval_data", "eval_samples", "max_drop")  # what an evaluated job's verdict depends on


DEVICE_FORMS = "cpu, cuda or cuda:N, optionally @NODE for a node of a Ray fleet (cpu@edgebox, cuda:0@a100)"


def parse_device(text: object) -> str | None:
    """``text`` when it names a device (``KIND[@NODE]``, KIND cpu / cuda / cuda:N), else None."""
    if not isinstance(text, str):
        return None
    kind, sep, node = text.partition("@")
    kind_ok = kind in ("cpu", "cuda") or (kind.startswith("cuda:") and kind[5:].isdigit())
    node_ok = not sep or (bool(node) and all(c.isalnum() or c in "-_." for c in node))
    return text if kind_ok and node_ok else None


def device_kind(device: str) -> str:
    """``cuda:0@a100`` -> ``cuda:0``: what the runtimes on that node are asked for."""
    return device.partition("@")[0]


def device_node(device: str) -> str | None:
    """``cuda:0@a100`` -> ``a100``; None for a device of this machine."""
    return device.partition("@")[2] or None


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), so stored and fresh fingerprints compare."""
    return json.loads(json.dumps(value))


def is_current(stored: dict | None, wanted: dict) -> bool:
    """The one "already done" rule; file integrity is part of ``stored`` being readable at all."""
    return stored is not None and _plain(stored) == _plain(wanted)


@dataclass
class ExportJob:
    model: ModelEntry
    task: TaskEntry
    format: str
    precision: str
    spec: ModelSpec
    stem: str
    artifact: Path
    calibration: dict[str, Any]
    evaluation: dict[str, Any] = field(default_factory=dict)  # the recipe's `eval:` (data, samples, max_drop)
    skipped: str | None = None  # why this combination is not made (format lacks the precision, ...)
    device: str | None = None  # a format built on the GPU that runs it (TensorRT): built and timed on this one
    format_options: dict[str, Any] = field(default_factory=dict)  # the recipe's format_options for this format

    @property
    def key(self) -> str:
        return self.artifact.name

    @property
    def exported(self) -> bool:
        """The artifact and its manifest are on disk (the manifest is written last)."""
        return self.artifact.exists() and manifest_path(self.artifact).exists()

    def options(self) -> ExportOptions:
        return ExportOptions(precision=self.precision, calib_data=self.calibration.get("data"),
                             calib_samples=self.calibration.get("samples", 32),
                             calib_random=bool(self.calibration.get("random")),
                             eval_data=self.evaluation.get("data"), eval_samples=self.evaluation.get("samples"),
                             max_drop=self.evaluation.get("max_drop"),
                             format_options={self.format: get_format(self.format).Options(**self.format_options)}
                             if self.format_options else {})

    def fingerprint(self) -> dict[str, Any]:
        spec = self.spec.to_dict()
        fp = {"format": self.format, "precision": self.precision,
              "spec": {k: spec[k] for k in SPEC_KEYS if spec[k] is not None}}
        if self.precision == "int8":
            options = self.options().record(self.format)
            fp["calibration"] = {k: options[k] for k in CALIBRATION_OPTIONS}
        if self.evaluation:
            options = self.options().record(self.format)
            fp["evaluation"] = {k: options[k] for k in EVAL_OPTIONS}
        if self.format_options:
            fp["format_options"] = {k: self.options().record(self.format)[self.format][k] for k in self.format_options}
        return fp

    def stored_fingerprint(self, manifest: Manifest) -> dict[str, Any]:
        """The fingerprint of what ``manifest`` describes, over the same keys as `fingerprint`."""
        wanted = self.fingerprint()
        fp = {"format": manifest.format, "precision": manifest.precision,
              "spec": {k: manifest.spec.get(k, SPEC_DEFAULTS.get(k)) for k in wanted["spec"]}}
        if "calibration" in wanted:
            options = manifest.export.get("options", {})
            fp["calibration"] = {k: options.get(k) for k in CALIBRATION_OPTIONS}
        if "evaluation" in wanted:
            options = manifest.export.get("options", {})
            fp["evaluation"] = {k: options.get(k) for k in EVAL_OPTIONS}
        if "format_options" in wanted:
            own = manifest.export.get("options", {}).get(self.format, {})
            fp["format_options"] = {k: own.get(k) for k in wanted["format_options"]}
        return fp

    def current_manifest(self) -> Manifest | None:
        """The manifest when this job is already done (`is_current`), else None."""
        if not self.exported:
            return None
        try:
            manifest = load_manifest(self.artifact)
            verify_files(manifest, self.artifact.parent)
        except UserError:
            return None
        return manifest if is_current(self.stored_fingerprint(manifest), self.fingerprint()) else None


@dataclass
class ProfileJob:
    kind: str  # artifact | eager
    key: str  # result file stem
    device: str
    export: ExportJob
    runtime: str

    def result_path(self, recipe: Recipe) -> Path:
        return recipe.results_dir / "profile" / f"{self.key}.{self.device.replace(':', '')}.json"

    def fingerprint(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Settings, runtime, and what is measured: the eager spec, or the artifact's file hashes."""
        fp = {"settings": settings, "runtime": self.runtime}
        if self.kind == "eager":
            fp["spec"] = self.export.spec.to_dict()
        else:
            fp["files"] = {n: e["sha256"] for n, e in load_manifest(self.export.artifact).files.items()}
        return fp

    def stored_fingerprint(self, recipe: Recipe) -> dict[str, Any] | None:
        try:
            return json.loads(self.result_path(recipe).read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return None


def canonical_device(device: str) -> str:
    """One spelling per device: ``cuda`` is ``cuda:0`` (``cuda@a100`` is ``cuda:0@a100``)."""
    kind, sep, node = device.partition("@")
    return ("cuda:0" if kind == "cuda" else kind) + sep + node


def device_tag(device: str) -> str:
    """The part of an artifact's name that says which device built it: ``cuda:0@a100`` -> ``cuda0@a100``."""
    return canonical_device(device).replace(":", "")


def gpu_index(device: str) -> int:
    """The CUDA index of a ``cuda[:N][@NODE]`` device on its machine."""
    return int(device_kind(canonical_device(device)).partition(":")[2])


def labels(model: ModelEntry, task: TaskEntry) -> str:
    """What a model's and a task's ``label:`` add to their file stems: ``-<model label>-<task label>``."""
    return "".join(f"-{label}" for label in (model.label, task.label) if label)


def export_jobs(recipe: Recipe) -> list[ExportJob]:
    """Every (model, task, format, precision) of the recipe, in order; name collisions are errors. A
    format built on the GPU that runs it (TensorRT engines are tied to the GPU model) is one job per
    CUDA device of the recipe, its name tagged with the device (``resnet50-fp16-cuda0@a100.engine``)."""
    jobs, seen = [], {}
    gpus = [d for d in recipe.devices if device_kind(d).startswith("cuda")]
    for m in recipe.models:
        for t in recipe.tasks:
            spec = ModelSpec(m.name, task=t.task, head=dict(t.head), img_size=t.img_size or m.img_size,
                             num_classes=t.num_classes or m.num_classes, architecture=t.architecture)
            for fmt in recipe.formats:
                cls = get_format(fmt)
                for p in recipe.precisions:
                    for device in (gpus or [None]) if cls.needs_cuda else [None]:
                        tag = f"-{device_tag(device)}" if device else ""
                        stem = spec.stem(p) + labels(m, t) + tag
                        job = ExportJob(m, t, fmt, p, spec, stem, recipe.artifacts_dir / f"{stem}{cls.suffix}",
                                        recipe.calibration, recipe.evaluation, device=device,
                                        format_options=dict(recipe.format_options.get(fmt, {})))
                        if p not in cls.precisions:
                            job.skipped = f"{fmt} has no {p} (it has {', '.join(cls.precisions)})"
                        elif (reason := cls.check_task(spec)) is not None:
                            job.skipped = f"{fmt} cannot export {t.task}: {reason}"
                        elif cls.needs_cuda and not gpus:
                            job.skipped = f"{fmt} is built on the GPU that runs it: the recipe's devices name no CUDA GPU"
                        elif job.key in seen:
                            raise UserError(f"{recipe.path}: two entries make {job.key}; give one of the models or "
                                            "tasks that make it a `label:` of its own")
                        seen[job.key] = job
                        jobs.append(job)
    return jobs


def profile_jobs(recipe: Recipe) -> list[ProfileJob]:
    """Per device: each model's eager baseline (once per model and task), then its artifacts."""
    jobs = []
    for device in recipe.devices:
        eager_seen = set()
        for job in recipe.export_jobs():
            if job.skipped:
                continue
            stem = job.spec.stem() + labels(job.model, job.task)
            if stem not in eager_seen:
                eager_seen.add(stem)
                jobs.append(ProfileJob("eager", f"{stem}.eager", device, job, "eager"))
            if job.device in (None, device):  # an engine is timed on the GPU it was built on only
                jobs.append(ProfileJob("artifact", job.artifact.name, device, job,
                                       default_runtime(job.format)))
    return jobs
