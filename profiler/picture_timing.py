"""`profile_pictures()`: end-to-end timing over the user's picture files (``autotimm-profile ARTIFACT
--pictures DIR``). What one call of ``batch`` pictures costs from file to answer, split into its
steps and measured in interleaved rounds by the profiler's one harness (`measure.timing.measure`),
each with the median's 95 % CI:

- ``decode``: the files read and decoded as the manifest's reference loader does;
- ``preprocess``: the manifest's transform (resize, crop or letterbox, normalise) and the batch
  stacked; for an ``--embed-preprocessing`` artifact only the picture put in the graph's layout;
- ``compute only``: the artifact on the prepared batch (host arrays in and out);
- ``answers``: the outputs as answers in each picture's own pixels (boxes unletterboxed, masks
  pasted, top-k);
- ``end to end``: all of it, from the file, as ``autotimm-predict`` does it.

Each call takes the next ``batch`` pictures of the folder in turn, so every step sees the whole
folder alike. With ``compare_eager`` the model in eager PyTorch (built from the manifest, random
weights) is measured in the same rounds, compute only and end to end, and the end-to-end speedup
over it comes with its CI. Times are host wall-clock (``perf_counter_ns``): what a caller waits."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from autotimm_deploy.exporter.core.environment import environment
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.inputs.answers import answer, picture_geometry, picture_outputs
from autotimm_deploy.exporter.inputs.pictures import picture_input
from autotimm_deploy.exporter.inputs.preprocess import prepare
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.sweep import batches_in_range
from autotimm_deploy.profiler.measure.timing import CpuClock, measure
from autotimm_deploy.profiler.pipeline import SCHEMA_VERSION, check_settings, resolve_targets
from autotimm_deploy.profiler.predict import PicturePipeline, picture_files, picture_pipeline, read_picture
from autotimm_deploy.profiler.targets import Target, eager_twin, open_target

MAX_PICTURES = 64  # the first pictures (in name order) are used: enough to average over, bounded memory
STEPS = ("end to end", "decode", "preprocess", "compute only", "answers")
EAGER_STEPS = ("end to end (eager)", "compute only (eager)")
TOOL = "autotimm-profile --pictures"


@dataclass
class Folder:
    """The pictures, decoded and prepared once, so each step can be timed on its own inputs."""

    files: list[Path]
    pictures: list[np.ndarray]
    prepared: list[tuple[np.ndarray, Any]]  # (model input, geometry) per picture


def _prepared(picture: np.ndarray, pipe: PicturePipeline):
    """(model input, geometry of its answers) for one decoded picture: the manifest's transform, or
    for an embedded graph the picture in its layout (answers already in its pixels)."""
    if pipe.embedded:
        return picture_input(picture, pipe.embedded)[0], picture_geometry(picture)
    return prepare(picture, pipe.prep)


def _load(files: list[Path], pipe: PicturePipeline) -> Folder:
    pictures = [read_picture(f, pipe.prep) for f in files]
    return Folder(files, pictures, [_prepared(p, pipe) for p in pictures])


def _groups(n: int, batch: int) -> list[list[int]]:
    """The folder as calls of ``batch`` pictures, the last one filled from the start."""
    return [[(k * batch + j) % n for j in range(batch)] for k in range(math.ceil(n / batch))]


def _rotating(calls: int, fn: Callable[[int], Any]) -> Callable[[], Any]:
    """A step that runs ``fn`` on the next call's index (0, 1, ..., calls - 1, 0, ...) each time."""
    state = {"k": 0}

    def step():
        k = state["k"] % calls
        state["k"] += 1
        return fn(k)

    return step


class Steps:
    """The timed steps of one session over one folder at one batch size."""

    def __init__(self, session, pipe: PicturePipeline, folder: Folder, batch: int):
        self.session, self.pipe, self.folder, self.batch = session, pipe, folder, batch
        self.name = session.inputs[0].name
        self.groups = _groups(len(folder.files), batch)
        self.stacked = [self.stack([folder.prepared[i][0] for i in g]) for g in self.groups]
        self.outputs = [self.infer(x) for x in self.stacked]  # made once: answers are timed on real outputs

    def stack(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.ascontiguousarray(np.stack(inputs))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.session.infer({self.name: batch}).items()}

    def answers(self, outputs: dict[str, np.ndarray], idx: list[int], geometries: list) -> list:
        out = []
        for j, i in enumerate(idx):
            one = {k: v[j:j + 1] for k, v in outputs.items()}
            if self.pipe.embedded:
                one = picture_outputs(one, self.pipe.task)
            out.append(answer(one, geometries[j], self.pipe.task, self.pipe.names, self.folder.files[i]))
        return out

    def end_to_end(self, idx: list[int]) -> list:
        inputs = [_prepared(read_picture(self.folder.files[i], self.pipe.prep), self.pipe) for i in idx]
        outputs = self.infer(self.stack([x for x, _ in inputs]))
        return self.answers(outputs, idx, [g for _, g in inputs])

    def functions(self) -> dict[str, Callable[[], Any]]:
        f, pipe, groups = self.folder, self.pipe, self.groups
        steps = (lambda k: self.end_to_end(groups[k]),
                 lambda k: [read_picture(f.files[i], pipe.prep) for i in groups[k]],
                 lambda k: self.stack([_prepared(f.pictures[i], pipe)[0] for i in groups[k]]),
                 lambda k: self.infer(self.stacked[k]),
                 lambda k: self.answers(self.outputs[k], groups[k], [f.prepared[i][1] for i in groups[k]]))
        return {name: _rotating(len(groups), fn) for name, fn in zip(STEPS, steps)}


def _batches(session, pipe: PicturePipeline, asked: list[int]) -> tuple[list[int], list[int], str | None]:
    """(kept, dropped, why dropped): an embedded graph takes one picture per call."""
    if pipe.embedded:
        return [1], [b for b in asked if b != 1], "an --embed-preprocessing graph takes one picture per call"
    lo, hi = session.batch_range()
    kept, dropped = batches_in_range(asked, lo, hi)
    return kept, dropped, (f"outside the artifact's batch range [{lo}, {hi if hi is not None else 'any'}]"
                           if dropped else None)


def _point(batch: int, names: list[str], m, eager: bool) -> dict[str, Any]:
    stats = {name: m.stats(i).to_dict() for i, name in enumerate(names)}
    e2e = stats["end to end"]["p50"]
    point = {"batch": batch, "steps_ms": stats, "images_per_s": batch / (e2e / 1e3),
             "end_to_end_over_compute": e2e / stats["compute only"]["p50"], "samples": m.stats(0).n, "stop": m.stop}
    if eager:
        point["speedup_vs_eager"] = m.ratio(names.index("end to end"))  # eager end to end is the baseline
    return point


def _measure_target(target: Target, settings: Settings, files: list[Path], compare_eager: bool,
                    step: Callable[[str], None]) -> dict[str, Any]:
    pipe = picture_pipeline(target.path, target.manifest, tool=TOOL)
    folder = _load(files, pipe)
    run: dict[str, Any] = {"target": target.describe(), "device": settings.device, "embedded": pipe.embedded,
                           "task": pipe.task, "points": []}
    options = {**settings.runtime_options, "max_batch": max(settings.batch_sizes), "shared_cores": compare_eager}
    with contextlib.ExitStack() as stack:
        step(f"loading {target.label}")
        session = stack.enter_context(open_target(target, settings.device, settings.threads, options))
        twin = None
        if compare_eager:
            twin = stack.enter_context(open_target(eager_twin(target), settings.device, settings.threads,
                                                   settings.eager_options))
        run["runtime"] = session.name
        kept, dropped, why = _batches(session, pipe, settings.batch_sizes)
        run["batches_skipped"] = {"batches": dropped, "why": why} if dropped else None
        for batch in kept:
            step(f"{target.label}: {batch} picture(s) per call, file to answer")
            try:
                run["points"].append(_measure_batch(session, twin, pipe, folder, batch, settings))
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - out of memory, a shape the runtime refuses: a row, not a crash
                run["points"].append({"batch": batch, "error": first_line(e, 300)})
                break
    return run


def _measure_batch(session, twin, pipe: PicturePipeline, folder: Folder, batch: int, settings: Settings) -> dict:
    fns = Steps(session, pipe, folder, batch).functions()
    if twin is not None:
        python = PicturePipeline(pipe.task, pipe.prep, None, pipe.names)  # eager takes the prepared tensor
        eager = Steps(twin, python, _load(folder.files, python) if pipe.embedded else folder, batch).functions()
        fns = {EAGER_STEPS[0]: eager["end to end"], **fns, EAGER_STEPS[1]: eager["compute only"]}
    names = list(fns)
    m = measure(list(fns.values()), settings.harness, CpuClock())
    return _point(batch, names, m, twin is not None)


def profile_pictures(target_texts: Iterable, pictures: Iterable[str | Path], settings: Settings | None = None,
                     runtime: str | None = None, compare_eager: bool = False,
                     on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every artifact (paths or `Target`s, each with its manifest) from picture file to answer
    on the pictures given (files, folders searched); return the report (``end_to_end`` runs)."""
    settings = settings or Settings()
    check_settings(settings)
    files = picture_files(pictures)
    targets = resolve_targets(list(target_texts), settings, runtime)
    for t in targets:
        if t.runtime == "eager" and t.path is None:
            raise UserError(f"{t.label.split()[0]} is a model name: --pictures times artifacts, whose manifest holds "
                            "the preprocessing (add --compare-eager to time the eager model beside one)")
        if t.url:
            raise UserError(f"{t.url} is a served model: --pictures times artifact files (Triton's ensemble over "
                            "picture files is timed by benchmarks/triton_serving.py)")
    step = on_progress or (lambda _t: None)
    used = files[:MAX_PICTURES]
    runs = [_measure_target(t, settings, used, compare_eager, step) for t in targets]
    return {"schema_version": SCHEMA_VERSION, "tool": "autotimm-profile",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(settings.threads),
            "settings": {**settings.to_dict(), "compare_eager": compare_eager, "clock": CpuClock.name},
            "pictures": {"found": len(files), "used": [str(f) for f in used]},
            "runs": [], "end_to_end": runs}
