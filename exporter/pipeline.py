"""`export()`: the Python API behind ``autotimm-export``. Build once, export each format into a
scratch folder, reload and verify it, then move it into place and write its manifest last."""

from __future__ import annotations

import dataclasses
import gc
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from autotimm_deploy.exporter.core.cli import raise_if_interrupted
from autotimm_deploy.exporter.core.environment import build_environment
from autotimm_deploy.exporter.core.errors import ExportFailed, Fault, RuntimeUnavailable, UserError, first_line
from autotimm_deploy.exporter.core.files import (
    check_free_space,
    check_out_dir,
    disk_full_is_fault,
    file_entries,
    folder_lock,
    install_artifact,
    out_dir_for,
    plain_name,
    remove_stale_scratch,
    replace_blocker,
    scratch_dir,
)
from autotimm_deploy.exporter.core.limits import MAX_IMG_SIDE, check_max_drop
from autotimm_deploy.exporter.core.manifest import Manifest, TensorSig, manifest_path
from autotimm_deploy.exporter.core.operators import recording
from autotimm_deploy.exporter.core.results import AccuracyReport, ParityReport, Verdict, accepted, tolerance_only
from autotimm_deploy.exporter.core.spec import ModelSpec, unprintable
from autotimm_deploy.exporter.end_to_end import against_python, end_to_end
from autotimm_deploy.exporter.evaluate import budget_report, evaluate
from autotimm_deploy.exporter.formats import (
    FORMATS,
    BatchRange,
    ExportContext,
    Exported,
    ExportOptions,
    export_order,
    get_format,
)
from autotimm_deploy.exporter.formats.command import reproduce_command
from autotimm_deploy.exporter.formats.dims import AUTO_MIN_SIZE
from autotimm_deploy.exporter.formats.base import AccuracyBudget
from autotimm_deploy.exporter.inputs.calibration import NEEDS_DATA, SAMPLE_PICTURES, load_calibration
from autotimm_deploy.exporter.inputs.labelled import Labelled, load_labelled
from autotimm_deploy.exporter.inputs.samples import sample_images
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.models.embedded import EmbeddedPreprocessing, embed
from autotimm_deploy.exporter.models.flops import counted
from autotimm_deploy.exporter.int8_retry import retry_int8
from autotimm_deploy.exporter.parity import BATCHES, TOLERANCES, keep_reference, parity_pictures, precision_untested
from autotimm_deploy.exporter.parity import verify as check_parity
from autotimm_deploy.exporter.parity import verify_pictures
from autotimm_deploy.profiler.artifact import open_artifact
from autotimm_deploy.profiler.runtimes import runtime_class


@dataclass
class ExportResult:
    format: str
    artifact: Path | None = None
    manifest: Path | None = None
    bytes: int = 0
    params: int = 0
    export_seconds: float = 0.0
    verify_seconds: float = 0.0
    parity: ParityReport | None = None
    accuracy: AccuracyReport | None = None
    diagnosis: dict[str, Any] | None = None  # the layers where a failed artifact departs (`Format.diagnose`)
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # the manifest's ``export`` record
    exporter: str | None = None  # what made the graph (a derived format: its source's)
    fallback: str | None = None  # why the artifact is not what was asked for (a fixed batch)
    command: str | None = None  # the autotimm-export command line that reproduces this export

    @property
    def ok(self) -> bool:
        return self.error is None and accepted(self.parity, self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "artifact": str(self.artifact) if self.artifact else None,
            "manifest": str(self.manifest) if self.manifest else None,
            "size_mb": self.bytes / 2**20,
            "params": self.params,
            "export_seconds": self.export_seconds,
            "verify_seconds": self.verify_seconds,
            "exporter": self.exporter,
            "parity": self.parity.to_dict() if self.parity else None,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
            "diagnosis": self.diagnosis,
            "error": self.error,
            "command": self.command,
            "ok": self.ok,
        }


def planned_paths(formats: Iterable[str], out_dir: Path, stem: str) -> dict[str, Path]:
    return {f: out_dir / f"{stem}{get_format(f).suffix}" for f in export_order(list(formats))}


def check_formats(order: list[str], spec: ModelSpec, options: ExportOptions) -> None:
    """Every format can run here and can make what is asked (precision, task, its own options,
    preprocessing in the graph); a one-line `UserError` before anything is built."""
    for fmt in order:
        cls = get_format(fmt)
        reason = cls.unavailable_reason()
        if reason:
            raise UserError(f"format {fmt!r} cannot run here: {reason}")
        if options.precision not in cls.precisions:
            raise UserError(f"format {fmt!r} does not support {options.precision}")
        cls.check_options(options)
        reason = cls.check_task(spec)
        if reason:
            raise UserError(f"format {fmt!r} cannot export {spec.task}: {reason}")
        reason = cls.check_precision(spec, options.precision)
        if reason:
            raise UserError(f"format {fmt!r} cannot export {spec.task} at {options.precision}: {reason}")
    if options.embed_preprocessing:
        check_embedding(order, options)


def check_embedding(order: list[str], options: ExportOptions) -> None:
    """--embed-preprocessing: formats that can take a picture of any size, and what it cannot combine with."""
    able = [n for n, c in FORMATS.items() if c.embeds_preprocessing]
    refused = next((f for f in order if not get_format(f).embeds_preprocessing), None)
    if refused:
        raise UserError(f"--embed-preprocessing: format {refused!r} cannot take pictures of any size with the "
                        f"preprocessing inside (it applies to {', '.join(able)})")
    clashes = (("--dynamic-size", options.dynamic_size), ("--int8", options.precision == "int8"),
               ("--eval", options.eval_data), ("--static --batch-size", options.static and options.batch_size > 1))
    clash = next((flag for flag, given in clashes if given), None)
    if clash:
        raise UserError(f"--embed-preprocessing takes one picture of any size: it does not combine with {clash}")


def calibrates(order: list[str], options: ExportOptions) -> bool:
    """Whether any of these formats reads calibration pictures at ``options`` (`Format.calibrates`:
    a weight-only or dynamic-range int8 needs none)."""
    return any(get_format(f).calibrates(options) for f in order)


def check_calibration_source(options: ExportOptions, order: list[str] | None = None) -> None:
    if options.precision != "int8" or (order is not None and not calibrates(order, options)):
        return
    if options.calib_data is None and not options.calib_random:
        raise UserError(NEEDS_DATA)
    if options.calib_data not in (None, SAMPLE_PICTURES) and not Path(options.calib_data).exists():
        raise UserError(f"calibration data not found: {options.calib_data}")


def check_eval_options(options: ExportOptions) -> None:
    if options.max_drop is not None and options.eval_data is None:
        raise UserError("--max-drop is an accuracy budget on labelled data: give the data with --eval DATA")
    if options.eval_samples is not None and options.eval_data is None:
        raise UserError("--eval-samples only applies with --eval DATA")
    if options.max_drop is not None:
        check_max_drop(options.max_drop)
    if options.eval_data is not None and not Path(options.eval_data).exists():
        raise UserError(f"evaluation data not found: {options.eval_data}")


SENSITIVITY_PICTURES = 16  # labelled pictures an accuracy-aware build measures its layers on


@dataclass
class Evaluation:
    """The labelled data, loaded and preprocessed once, and eager PyTorch's metrics on it."""

    task: str
    data: Labelled
    eager: dict[str, Any]

    def report(self, predict, output_names: list[str], batch_range, max_drop: float | None,
               progress: Callable[[int, int], None] | None = None) -> AccuracyReport:
        scored = evaluate(predict, self.data, self.task, output_names, batch_range, progress=progress)
        return budget_report(self.data, self.eager, scored, max_drop)

    def budget(self, output_names: list[str], max_drop: float) -> AccuracyBudget:
        """What an accuracy-aware int8 build scores its candidates with: the primary metric, in points."""
        primary = self.eager["primary"]

        def score(predict, batch_range, indices=None):
            return evaluate(predict, self.data, self.task, output_names, batch_range, indices)["metrics"][primary]

        return AccuracyBudget(score=score, metric=primary, eager=self.eager["metrics"][primary], max_drop=max_drop,
                              samples=len(self.data), pictures=self.data.images[:SENSITIVITY_PICTURES])


def eager_predict(model):
    """``predict(batch) -> {output: array}`` of the eager model (what every artifact is held against)."""
    import torch

    def predict(x):
        with torch.no_grad():
            return dict(zip(model.output_names, (t.numpy() for t in model(torch.from_numpy(x)))))

    return predict


def prepare_evaluation(options: ExportOptions, model, cache: dict | None = None,
                       step: Callable[[str], None] | None = None) -> Evaluation | None:
    """Load ``--eval`` data for ``model`` and score eager PyTorch on it (kept in ``cache``, so
    `--target`'s candidates share one load and one eager pass)."""
    if options.eval_data is None:
        return None
    key = ("evaluation", repr(model.spec), str(options.eval_data), options.eval_samples)
    if cache is not None and key in cache:
        return cache[key]
    spec = model.spec
    step = step or (lambda _t, advance=True: None)
    step("load the evaluation data")
    data = load_labelled(options.eval_data, spec.task, model.preprocessing, spec.num_classes,
                         bool(spec.head.get("multi_label")), options.eval_samples)
    eager = evaluate(eager_predict(model), data, spec.task, list(model.output_names),
                     progress=pictures_progress(step, "evaluate eager PyTorch"))
    result = Evaluation(spec.task, data, eager)
    if cache is not None:
        cache[key] = result
    return result


def pictures_progress(step: Callable[..., None], what: str) -> Callable[[int, int], None]:
    """``progress(done, total)`` for `evaluate`, shown through ``step`` without advancing a step."""
    return lambda done, total: step(f"{what}: {done}/{total} pictures", advance=False)


def export(
    spec: ModelSpec,
    formats: Iterable[str] = ("onnx",),
    out_dir: str | Path = "out",
    options: ExportOptions | None = None,
    verify: bool = True,
    force: bool = False,
    name: str | None = None,
    progress: Callable[..., None] | None = None,
    model=None,
    cache: dict | None = None,
) -> list[ExportResult]:
    """Export ``spec`` to each of ``formats``; every artifact is verified unless ``verify=False``.

    Raises `UserError` for bad input before anything is written. A format that fails to export, or
    an artifact that fails parity, is reported in its `ExportResult` (``ok`` is False).
    ``model`` (built from ``spec`` by `build_model`) and ``cache`` let several calls share one build
    and its intermediates (the fp32 ONNX graph), as ``--target`` does. ``progress(text)`` starts
    each step; ``progress(text, advance=False)`` tells how far the current one is."""
    options = options or ExportOptions()
    step = progress or (lambda _text, advance=True: None)
    out_dir = Path(out_dir)
    if isinstance(formats, str):  # export(spec, "onnx"): one format, not its letters
        formats = [f.strip() for f in formats.split(",")]
    order = export_order(list(formats))
    if not order:
        raise UserError("no formats to export: name at least one (see autotimm-export --list-formats)")
    check_formats(order, spec, options)
    if verify:  # the runtimes that check the artifacts, installed (onnxruntime missing: every ONNX artifact "failed")
        for fmt in order:
            runtime_class(get_format(fmt).default_runtime)
    stem = check_stem(name) if name is not None else spec.stem(options.precision)
    targets = planned_paths(order, out_dir, stem)
    _refuse_taken(targets, force)
    check_out_dir(out_dir)
    check_calibration_source(options, order)
    check_eval_options(options)

    if model is None:
        step(f"build {spec.model}")
        model = build_model(spec)
    if options.embed_preprocessing:
        model, options = embed(model, options.embed_preprocessing), dataclasses.replace(options, static=True,
                                                                                       batch_size=1)
    spec = model.spec
    options = resolve_dynamic_size(options, model, order)
    evaluation = prepare_evaluation(options, model, cache, step)
    calibration, calibration_info = None, None
    if options.precision == "int8" and calibrates(order, options):
        calibration, calibration_info = load_calibration(options.calib_data, options.calib_samples,
                                                         model.preprocessing, options.calib_random, spec.seed,
                                                         exact=options.calib_samples_given)
    with out_dir_for(out_dir), folder_lock(out_dir):  # a refusal from here on leaves no empty -o behind
        _refuse_taken(targets, force)  # again, now that no other export can write here
        remove_stale_scratch(out_dir)
        check_free_space(out_dir, _space_needed(model, order), f"exporting {spec.model} to {', '.join(order)}")
        workdir = scratch_dir(out_dir)
        try:
            ctx = ExportContext(model=model, spec=spec, options=options, workdir=workdir, stem=stem,
                                calibration=calibration, calibration_info=calibration_info)
            if evaluation and options.max_drop is not None and options.precision == "int8" and \
                    evaluation.eager["metrics"].get(evaluation.eager["primary"]) is not None:
                ctx.budget = evaluation.budget(list(model.output_names), options.max_drop)
            if cache is not None:
                ctx.cache, ctx.share_intermediates = cache, True
            io = _io_signature(model, options, parity=verify)
            results = []
            for i, fmt in enumerate(order):
                raise_if_interrupted()
                results.append(_export_format(fmt, ctx, io, targets[fmt], verify, step, evaluation))
                if not ctx.share_intermediates:
                    _free_intermediates(ctx, order[i + 1:])
            _note_calibration(results, calibration_info)
            return results
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _note_calibration(results: list[ExportResult], calibration_info: dict | None) -> None:
    """A calibration on fewer samples than the default (all the data held) is said beside each
    artifact, as a fallback is."""
    note = (calibration_info or {}).get("note")
    for r in results:
        if note and r.error is None:
            r.fallback = "; ".join(filter(None, (r.fallback, note)))


def _free_intermediates(ctx: ExportContext, later: list[str]) -> None:
    """Drop the cached intermediates (the fp32 ONNX graph: gigabytes for a large model) that no later
    format of this export reads (`Format.intermediates`)."""
    needed = {key for fmt in later for key in get_format(fmt).intermediates}
    for key in [k for k in ctx.cache if isinstance(k, tuple) and k[0] not in needed]:
        del ctx.cache[key]


DYNAMIC_SIZE_TASKS = ("classification", "semantic-segmentation")


def second_size(hw: tuple[int, int], lo: int, hi: int, multiple: int = 1) -> tuple[int, int]:
    """Another input size inside [lo, hi] for the parity check, different from the export size in
    each dim where the range allows, and not square where it allows (so output dims that follow the
    height and those that follow the width tell apart): about 3/4 of each side on a multiple of 32
    first, then 32 or 64 px more or less; only multiples of ``multiple`` (a stride torch.export
    proved the model needs)."""
    out: list[int] = []
    for d in hw:
        tries = [(d * 3 // 4) // 32 * 32, d + 32, d - 32, d + 64, d - 64, lo, hi,
                 d + multiple, d - multiple, d + 2 * multiple]
        ok = [t for t in tries if lo <= t <= hi and t != d and t % multiple == 0]
        pick = next((t for t in ok if t not in out), ok[0] if ok else d)
        out.append(pick)
    return out[0], out[1]


def resolve_dynamic_size(options: ExportOptions, model, order: list[str]) -> ExportOptions:
    """Check ``--dynamic-size`` against the formats, the task and the model itself (it must run at
    the range's smallest size and at a second size), and fill in an ``auto`` range."""
    if options.dynamic_size is None:
        return options
    import torch

    fixed = [f for f in order if not get_format(f).dynamic_size]
    if fixed:
        able = ", ".join(n for n, c in FORMATS.items() if c.dynamic_size)
        raise UserError(f"--dynamic-size: format {fixed[0]!r} fixes the input size (it applies to {able})")
    spec = model.spec
    h, w = spec.img_size
    if spec.task not in DYNAMIC_SIZE_TASKS:
        raise UserError(f"--dynamic-size: the {spec.task} head's postprocessing is built for one input size "
                        f"({h}x{w}); export it at a fixed size (--img-size)")
    lo, hi = options.dynamic_size
    if (lo, hi) == (0, 0):
        lo, hi = min(AUTO_MIN_SIZE, h, w), 2 * max(h, w)
    if not lo <= min(h, w) <= max(h, w) <= hi:
        raise UserError(f"--dynamic-size {lo}:{hi} must contain the export size {h}x{w} (--img-size)")
    for size in ((lo, lo), second_size((h, w), lo, hi)):
        try:
            with torch.no_grad():
                model(torch.zeros(1, spec.in_chans, *size))
        except Exception as e:  # noqa: BLE001 - the model's own shape check
            raise UserError(f"--dynamic-size: {spec.model} cannot run at {size[0]}x{size[1]} ({type(e).__name__}: "
                            f"{first_line(e, 120)}); its shape math fixes the input size (a ViT's position "
                            "embedding, for one) or needs a larger MIN: export without --dynamic-size or narrow "
                            "the range") from None
    return dataclasses.replace(options, dynamic_size=(lo, hi))


def _refuse_taken(targets: dict[str, Path], force: bool = False) -> None:
    for t in targets.values():
        for p in (t, manifest_path(t)):
            if p.is_dir() and not p.is_symlink():
                raise UserError(f"{p} is a folder where the artifact goes; move it or pass --name")
    if force:  # what the system will not let us replace is said now, not after the export
        for p in (p for t in targets.values() for p in (t, manifest_path(t)) if p.is_file()):
            why = replace_blocker(p)
            if why:
                raise UserError(f"{p} is {why}: --force cannot replace it; make it writable (chattr -i) or pass "
                                "another -o or --name")
        return
    taken = [p for t in targets.values() for p in (t, manifest_path(t)) if p.exists() or p.is_symlink()]
    if taken:
        raise UserError(f"{taken[0]} already exists; pass --force to overwrite it")


def check_stem(name: str) -> str:
    """A user's ``--name``: a plain file stem in the output folder."""
    plain_name(name, "--name")
    if not name.strip() or len(name.encode()) > 200 or unprintable(name):
        raise UserError(f"--name takes 1 to 200 bytes of visible characters, got {name[:40]!r}")
    if name.startswith("."):
        raise UserError(f"--name {name!r} would make hidden files; give a name that starts with a letter or digit")
    return name


def _space_needed(model, order: list[str]) -> int:
    """fp32 weights once per format, plus one intermediate ONNX graph, plus a margin."""
    weights = 4 * int(model.build_info.get("params") or sum(p.numel() for p in model.parameters()))
    return int(weights * (len(order) + 1) * 1.1) + 16 * 2**20


def _export_format(fmt: str, ctx: ExportContext, io: dict, target: Path, verify: bool,
                   step: Callable[..., None], evaluation: Evaluation | None = None) -> ExportResult:
    """One format: export into the scratch folder, verify (int8 that misses its gate: retried along
    `int8_retry`'s ladder), install at ``target``."""
    template = ExportResult(format=fmt, params=ctx.model.build_info.get("params", 0),
                            command=reproduce_command(ctx.model.spec, fmt, ctx.options, target.parent, ctx.stem))
    parent = get_format(fmt).derives_from
    if parent and parent not in ctx.done:
        template.error = f"needs the {parent} artifact, which failed"
        return template
    made = _attempt(fmt, ctx, io, template, target.parent, verify, step, evaluation)
    if verify and _retries_int8(fmt, ctx, made[0]):
        def attempt(plan):
            sub = Path(tempfile.mkdtemp(prefix=f"{fmt}-int8-", dir=ctx.workdir))
            return _attempt(fmt, dataclasses.replace(ctx, workdir=sub, int8_plan=plan), io, template,
                            target.parent, verify, step, evaluation)

        made = retry_int8(get_format(fmt), ctx.model, made, attempt, lambda r: r.ok)
    result, exported, manifest = made
    if exported is None:
        return result
    ctx.done[fmt] = exported
    if result.parity is not None and result.parity.computed_in:  # said beside the result and in the manifest
        said = precision_untested(result.parity.runtime, result.parity.precision, result.parity.computed_in)
        exported.fallback = "; ".join(filter(None, (exported.fallback, said)))
    result.info, result.fallback = exported.record(), exported.fallback
    manifest.export.update(result.info)
    if result.parity is not None or result.accuracy is not None:
        t0 = time.perf_counter()
        if not accepted(result.parity, result.accuracy):
            result.diagnosis = _diagnose(fmt, ctx, exported, exported.gate or ctx.options.precision, evaluation)
        result.verify_seconds += time.perf_counter() - t0
        manifest.parity, manifest.accuracy, manifest.diagnosis = result.parity, result.accuracy, result.diagnosis
    exported.reference = None  # the fp32 graph can be gigabytes: not kept past the check
    result.artifact, result.manifest = install_artifact(target.parent, target.name,
                                                        {f.name: f for f in exported.files}, manifest)
    result.bytes = sum(v["bytes"] for v in manifest.files.values())
    return result


def _retries_int8(fmt: str, ctx: ExportContext, result: ExportResult) -> bool:
    """An int8 artifact that missed its proxy gate on tolerances alone, without a budget (``--max-drop``
    keeps layers in float by measured accuracy instead), in a format that can retry."""
    cls = get_format(fmt)
    return (ctx.options.precision == "int8" and ctx.budget is None and result.error is None
            and result.parity is not None and not result.ok and tolerance_only(result.parity)
            and (len(cls.int8_calibrators) > 1 or cls.keeps_float))


def _attempt(fmt: str, ctx: ExportContext, io: dict, template: ExportResult, out_dir: Path, verify: bool,
             step: Callable[..., None], evaluation: Evaluation | None):
    """Export ``fmt`` once into ``ctx.workdir`` (for ``out_dir``) and check it: (result, exported,
    manifest), the last two None when the export failed."""
    model, options = ctx.model, ctx.options
    result = dataclasses.replace(template)
    step(f"export {fmt}")
    t0 = time.perf_counter()
    try:
        with disk_full_is_fault(f"{fmt} into {out_dir}", ctx.workdir), recording() as trace:
            exported = get_format(fmt)().export(ctx)
    except Fault:
        raise
    except (ExportFailed, UserError) as e:
        result.error = first_line(e, 1000)
        return result, None, None
    except Exception as e:  # noqa: BLE001 - an exporter crash on one format must not stop the rest
        result.error = f"{type(e).__name__}: {first_line(e)}"
        return result, None, None
    result.export_seconds = time.perf_counter() - t0
    if trace.nms is not None:  # the NMS the artifact holds (a graph made once and shared says it itself)
        exported.info.setdefault("nms", trace.nms)
    result.exporter = exported.exporter
    gc.collect()  # a large model's export graph is gigabytes: free it before the next format
    manifest = _manifest(fmt, exported, model, io, options, result.export_seconds, result.command)
    if verify or evaluation:
        step(f"verify {fmt}" if verify else f"evaluate {fmt}")
        t0 = time.perf_counter()
        sizes = _parity_sizes(options, model, exported.size_multiple or 1)
        gate = exported.gate or options.precision
        result.parity, result.accuracy = _check(model, exported, manifest, gate if verify else None, sizes,
                                                evaluation, options.max_drop,
                                                pictures_progress(step, f"evaluate {fmt}"))
        result.verify_seconds = time.perf_counter() - t0
    return result, exported, manifest


DIAGNOSIS_PICTURES = 4


def _diagnose(fmt: str, ctx: ExportContext, exported: Exported, gate: str,
              evaluation: Evaluation | None) -> dict | None:
    """Layer-by-layer divergence of a failed artifact (where its format can say), on labelled
    pictures when there are some, else on the parity pictures; never fails the export itself."""
    import numpy as np

    options = ctx.options
    n = options.batch_size if options.static else DIAGNOSIS_PICTURES
    if evaluation is not None and len(evaluation.data) >= n:
        pictures = evaluation.data.images[:n]
    else:
        pictures = sample_images(n, ctx.model.preprocessing)
    try:
        return get_format(fmt).diagnose(ctx, exported, np.ascontiguousarray(pictures), TOLERANCES[gate].cosine)
    except Exception as e:  # noqa: BLE001 - a diagnosis that cannot run is said, not raised
        return {"error": f"{type(e).__name__}: {first_line(e, 200)}"}


def _parity_sizes(options: ExportOptions, model, multiple: int = 1) -> list[tuple[int, int]] | None:
    """Two input sizes for an artifact with a symbolic size: the export size and a second one."""
    if not options.dynamic_size:
        return None
    size = tuple(model.spec.img_size)
    return [size, second_size(size, *options.dynamic_size, multiple)]


def _check(model, exported: Exported, manifest: Manifest, precision: str | None,
           sizes: list[tuple[int, int]] | None = None, evaluation: Evaluation | None = None,
           max_drop: float | None = None, progress: Callable[[int, int], None] | None = None,
           ) -> tuple[ParityReport | None, AccuracyReport | None]:
    """Reload the artifact through its runtime once: parity against eager (``precision``: its gate;
    None skips it) and, with ``evaluation``, the task metric on the labelled data."""
    parity = accuracy = None
    try:
        with open_artifact(exported.artifact, manifest=manifest) as session:
            if precision is not None and isinstance(model, EmbeddedPreprocessing):
                parity = verify_pictures(model, session, precision)
                _end_to_end(model, session, parity)
            elif precision is not None:
                parity = check_parity(model, session, precision=precision, sizes=sizes)
                _end_to_end(model, session, parity)
            if evaluation is not None:
                name = session.inputs[0].name
                accuracy = evaluation.report(lambda x: session.infer({name: x}), session.output_names,
                                             session.batch_range(), max_drop, progress)
    except Exception as e:  # noqa: BLE001 - an artifact its runtime cannot load (or score) fails, in one line
        reason = first_line(e)
        if precision is not None and parity is None:
            # a runtime this platform lacks (Core ML off macOS): exported, its interface checked, not compared
            unavailable = isinstance(e, RuntimeUnavailable)
            parity = ParityReport.not_run(precision, reason) if unavailable else \
                ParityReport.failed(precision, "reload", reason)
        if evaluation is not None and accuracy is None and not isinstance(e, RuntimeUnavailable):
            accuracy = budget_report(evaluation.data, evaluation.eager, {"metrics": {}, "seconds": 0.0}, max_drop)
            accuracy.error = reason  # (off its platform an artifact is not scored, like its parity: not run)
    return parity, accuracy


def _end_to_end(model, session, parity: ParityReport) -> None:
    """AutoTimm models: raw pictures through AutoTimm's transform and predict() vs through ours and the
    artifact, into ``parity.end_to_end``; a failure fails an fp32 artifact (reduced precision: recorded)."""
    import numpy as np

    if parity.verdict == Verdict.NOT_RUN:
        return
    name = session.inputs[0].name
    if isinstance(model, EmbeddedPreprocessing):  # against our own Python pipeline, on raw pictures
        parity.end_to_end = against_python(model, lambda x: session.infer({name: x}))
        return _fail_on(parity)
    if session.size_range():
        return
    low = session.batch_range()[0]

    def predict(x):
        out = session.infer({name: np.repeat(x, low, axis=0) if low > 1 else x})
        return {k: np.asarray(v)[:1] for k, v in out.items()}

    try:
        parity.end_to_end = end_to_end(model, predict)
    except Exception as e:  # noqa: BLE001 - the comparison itself broke: said, and an fp32 artifact fails
        parity.end_to_end = {"verdict": "fail", "failures": [f"end-to-end check failed: {first_line(e, 200)}"]}
    _fail_on(parity)


def _fail_on(parity: ParityReport) -> None:
    """An end-to-end failure fails an fp32 artifact (at reduced precision it is recorded)."""
    e2e = parity.end_to_end
    if e2e and e2e["verdict"] == "fail" and parity.precision in ("fp32", "tf32"):
        parity.verdict = Verdict.FAIL
        parity.failures += [f"end to end: {f}" for f in e2e["failures"]]


def _follow_size(dims: list, moved: list, size: tuple[int, int], other: tuple[int, int], name: str) -> list:
    """An output's dims at the export ``size`` and at ``other``: those that moved with the input's
    height or width are named after it (when both keys coincide, the earlier dim is the height), the
    rest that moved ``NAME_dimI``."""
    keys = {"height": (size[0], other[0]), "width": (size[1], other[1])}
    out, taken = [], set()
    for i, (d, m) in enumerate(zip(dims, moved)):
        if i == 0 or d == m:
            out.append(d)
            continue
        label = next((k for k, v in keys.items() if v == (d, m) and k not in taken), None)
        if label:
            taken.add(label)
        out.append(label or f"{name}_dim{i}")
    return out


def _io_signature(model, options: ExportOptions, parity: bool = True) -> dict[str, Any]:
    """The manifest's inputs, outputs (run once to learn their shapes), size range and FLOPs. With
    ``parity`` to come, the run is parity's at its larger batch, on its pictures, and kept for it."""
    import numpy as np
    import torch

    if options.embed_preprocessing:
        return _picture_signature(model, options.embed_preprocessing)

    spec = model.spec
    batch = options.batch_size if options.static else (BATCHES[-1] if parity else 2)
    if parity and list(model.preprocessing["input_size"]) == [spec.in_chans, *spec.img_size]:
        x = parity_pictures(model.preprocessing, batch, (batch,) if options.static else BATCHES)
    else:
        x = np.zeros((batch, spec.in_chans, *spec.img_size), np.float32)
    try:
        with torch.no_grad():  # counted once, on the forward that is run anyway (on a copy: it may write it)
            outs, flops = counted(model, lambda: model(torch.from_numpy(x.copy())))
    except Exception as e:  # noqa: BLE001 - a user's own module (from_module): its error, in one line
        if spec.weights != "module":
            raise
        what = "the parity pictures" if x.any() else "zeros"
        raise UserError(f"{spec.model} failed on a batch of {what} {list(x.shape)}: {type(e).__name__}: "
                        f"{first_line(e)}") from None
    if parity:
        keep_reference(model, x, outs)
    dim0 = options.batch_size if options.static else "batch"
    out_dims = [[dim0, *t.shape[1:]] for t in outs]
    size: dict[str, Any] = {}
    in_hw: list[Any] = list(spec.img_size)
    if options.dynamic_size:  # dims that follow the input size are named after it
        lo, hi = options.dynamic_size
        other = second_size(tuple(spec.img_size), lo, hi)
        with torch.no_grad():
            moved = model(torch.zeros(batch, spec.in_chans, *other))
        out_dims = [_follow_size(dims, [dim0, *t.shape[1:]], tuple(spec.img_size), other, n)
                    for dims, t, n in zip(out_dims, moved, model.output_names)]
        in_hw = ["height", "width"]
        size = {"dynamic": True, "min": [lo, lo], "opt": list(spec.img_size), "max": [hi, hi]}
    return {
        "inputs": [TensorSig("input", "float32", [dim0, spec.in_chans, *in_hw])],
        "outputs": [TensorSig(n, str(t.dtype).replace("torch.", ""), dims)
                    for n, t, dims in zip(model.output_names, outs, out_dims)],
        "size": size,
        "flops": flops.record(batch, [spec.in_chans, *spec.img_size]),
    }


def _picture_signature(model, layout: str) -> dict[str, Any]:
    """An embedded graph's inputs and outputs: one 8-bit picture of any size; output dims that follow
    the picture's size are named after it (run at two picture sizes to tell)."""
    import numpy as np
    import torch

    from autotimm_deploy.exporter.inputs.pictures import MIN_SIDE, example_picture, picture_input

    c, h, w = model.preprocessing["input_size"]
    first = example_picture(model.preprocessing, layout)
    other = np.zeros((h + 17, w * 3 // 4 + 3, c), np.uint8)
    sizes = [tuple(first.shape[1:3] if layout == "nhwc" else first.shape[2:]), other.shape[:2]]
    with torch.no_grad():
        outs, flops = counted(model, lambda: model(first))
        moved = model(torch.from_numpy(picture_input(other, layout)))
    out_dims = [_follow_size([1, *t.shape[1:]], [1, *u.shape[1:]], sizes[0], sizes[1], n)
                for t, u, n in zip(outs, moved, model.output_names)]
    shape = [1, "height", "width", c] if layout == "nhwc" else [1, c, "height", "width"]
    outputs = [TensorSig(n, str(t.dtype).replace("torch.", ""), d) for n, t, d in zip(model.output_names, outs, out_dims)]
    return {"inputs": [TensorSig("image", "uint8", shape)], "outputs": outputs,
            "size": {"dynamic": True, "min": [MIN_SIDE, MIN_SIDE], "opt": [h, w], "max": [MAX_IMG_SIDE, MAX_IMG_SIDE],
                     "picture": layout},
            "flops": flops.record(1, [c, h, w])}


def _size_record(size: dict, multiple: int | None) -> dict:
    """The manifest's ``size``; on a stride multiple, the range narrowed to the sizes that work."""
    if not size or not multiple:
        return size
    lo, hi = -(-size["min"][0] // multiple) * multiple, size["max"][0] // multiple * multiple
    return {**size, "min": [lo, lo], "max": [hi, hi], "multiple_of": multiple}


def _manifest(fmt, exported: Exported, model, io, options: ExportOptions, seconds: float, command: str) -> Manifest:
    batch = exported.batch or BatchRange.of_options(options)
    inputs, outputs = io["inputs"], io["outputs"]
    if not batch.dynamic:  # a static batch (asked for, or the exporter's fallback) is a concrete dim
        inputs, outputs = ([TensorSig(s.name, s.dtype, [batch.min, *s.shape[1:]]) for s in sigs]
                           for sigs in (inputs, outputs))
    return Manifest(
        format=fmt,
        artifact=exported.artifact.name,
        spec=model.spec.to_dict(),
        precision=options.precision,
        task_outputs=list(model.output_names),
        inputs=inputs,
        outputs=outputs,
        batch=batch.to_dict(),
        size=_size_record(io["size"], exported.size_multiple),
        preprocessing=model.preprocessing,
        export={**exported.record(), "seconds": round(seconds, 3), "options": options.record(fmt), "command": command},
        model={**model.build_info, "flops": io.get("flops")},
        environment=build_environment(),
        files=file_entries(exported.files),
    )
