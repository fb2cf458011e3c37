"""``autotimm-export``: a thin shell over `autotimm_deploy.exporter.pipeline.export`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from autotimm_deploy.exporter.core.cli import (
    EXIT_FAILED,
    EXIT_OK,
    OneLineParser,
    console,
    csv_list,
    float_in,
    int_in,
    progress_bar,
    run_cli,
    stderr,
    threads_type,
)
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.files import atomic_write_text, check_out_dir
from autotimm_deploy.exporter.core.limits import (
    MAX_BATCH,
    MAX_CALIBRATION_SAMPLES,
    MAX_CLASSES,
    MAX_EVAL_SAMPLES,
    MAX_IN_CHANS,
    MAX_SECONDS,
    max_drop_arg,
)
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.outputs import artifact_files, check_report_paths
from autotimm_deploy.exporter.core.spec import (
    ALL_HEAD_OPTIONS,
    ARCHITECTURES,
    DETECTION_ARCHS,
    INTERPOLATIONS,
    PRECISIONS,
    RESIZE_MODES,
    SEG_HEADS,
    TASKS,
    ModelSpec,
    parse_img_size,
    read_class_names,
)
from autotimm_deploy.exporter.formats import FORMATS, ExportOptions, export_order
from autotimm_deploy.exporter.formats.dims import AUTO_MIN_SIZE, parse_dynamic_size
from autotimm_deploy.exporter.parity import reference_summary, summary
from autotimm_deploy.profiler.report.table import interval_text
from autotimm_deploy.exporter.triton.console import (
    add_serve_options,
    check_serve_options_used,
    print_models,
    serve_options,
)
from autotimm_deploy.recipes.console import any_failed, print_recipe_rows, recipe_progress
from autotimm_deploy.recipes.jobs import JobStatus
from rich.console import Console
from rich.markup import escape
from rich.table import Table

PROG = "autotimm-export"

# The command line is the top layer: nothing imports it, so deferring the pipelines (which load torch
# and timm, ~4 s) to the command that runs them hides no cycle; it lets --help, --list-formats and
# every input error answer at once. import-linter still checks these imports.


def build_parser() -> OneLineParser:
    """The common options first, then each registered format's own group (`Format.add_arguments`)."""
    p = OneLineParser(prog=PROG, description="Export a timm model to deployable artifacts, each parity-checked.")
    p.add_argument("model", nargs="?", help="timm model name, e.g. resnet50 (an AutoTimm --checkpoint names its own)")
    p.add_argument("--recipe", metavar="FILE.yaml", help="export a recipe's whole matrix into OUT/<recipe name>/ (see recipes/)")
    p.add_argument("-f", "--format", default="onnx",
                   help=f"comma-separated formats: {', '.join(FORMATS)} (see --list-formats); default onnx")
    p.add_argument("-o", "--out", default="out", help="output folder (default: out/; . for the current folder)")
    p.add_argument("--name", help="file stem for the artifacts (default: model name, plus task and precision)")
    for add in (_model_options, _head_options, _preprocessing_options, _export_options, _calibration_options,
                _accuracy_options, _target_options):
        add(p)
    p.add_argument("--triton-repo", metavar="DIR",
                   help="also write a Triton model repository for the artifacts that pass (a new folder; "
                        "see autotimm-triton --help and the options below)")
    add_serve_options(p)
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout (table to stderr)")
    p.add_argument("--list-formats", action="store_true", help="list formats and whether each can run here")
    p.add_argument("--setup-litert", action="store_true",
                   help="build the LiteRT converter's own environment once (litert-torch, ~780 MB; see "
                        "$AUTOTIMM_LITERT_ENV), then exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    for cls in FORMATS.values():
        cls.add_arguments(p)
    return p


def _model_options(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--task", choices=TASKS, help="default classification (an AutoTimm --checkpoint names its own)")
    g.add_argument("--architecture", choices=ARCHITECTURES, help="task heads: builtin (default, no dependency) or "
                   "autotimm (AutoTimm's own modules, the [autotimm] extra; implied by an AutoTimm checkpoint)")
    g.add_argument("--num-classes", type=int_in(1, MAX_CLASSES))
    g.add_argument("--img-size", metavar="H[,W]", help="input size (default: the model's own)")
    g.add_argument("--in-chans", type=int_in(1, MAX_IN_CHANS), default=3)
    w = g.add_mutually_exclusive_group()
    w.add_argument("--pretrained", action="store_true", help="timm's pretrained weights (needs network once)")
    w.add_argument("--checkpoint", metavar="PATH", help="local .safetensors / .pth / .pt / .bin state dict, or an "
                   "AutoTimm .ckpt (backbone, task, classes and head settings read from it)")
    g.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0, help="seed for random weights (default 0)")
    g.add_argument("--class-names", metavar="FILE", help="the name of each class, one per line (or a JSON list), kept "
                   "in the manifest and the artifact's metadata for the answers (autotimm-predict)")


def _head_options(p) -> None:
    th = p.add_argument_group("task heads")
    th.add_argument("--head", help=f"semantic segmentation head: {' or '.join(SEG_HEADS)} (default {SEG_HEADS[0]})")
    th.add_argument("--head-channels", type=int_in(1, 4096), help="segmentation head width")
    th.add_argument("--argmax", action="store_true", default=None, help="segmentation: also output mask [B,H,W]")
    th.add_argument("--fpn-channels", type=int_in(1, 4096), help="detection: FPN width")
    th.add_argument("--depthwise", action="store_true", default=None, help="detection: depthwise FPN/head convs")
    th.add_argument("--score-threshold", type=float_in(0, 1), help="detection: minimum score kept")
    th.add_argument("--iou-threshold", type=float_in(0, 1), help="detection: NMS IoU threshold")
    th.add_argument("--max-detections", type=int_in(1, 10000), help="detection: N, the padded output length")
    th.add_argument("--raw", action="store_true", default=None, help="detection: per-level head outputs, no decode/NMS")
    th.add_argument("--arch", choices=DETECTION_ARCHS, help="AutoTimm detection head (default fcos)")
    th.add_argument("--head-convs", type=int_in(1, 16), help="AutoTimm detection: convs per head branch (default 4)")
    th.add_argument("--roi-size", type=int_in(1, 64), help="AutoTimm instance segmentation: RoIAlign size (default 14)")
    th.add_argument("--multi-label", action="store_true", default=None, help="AutoTimm classification: sigmoid probs")
    th.add_argument("--strides", type=int_list, metavar="S,S,...", help="AutoTimm detection: FPN level strides")
    th.add_argument("--mask-threshold", type=float_in(0, 1), help="AutoTimm instance segmentation: mask probability cut")


def _preprocessing_options(p) -> None:
    pp = p.add_argument_group("preprocessing (default: the backbone's timm config)")
    pp.add_argument("--mean", metavar="R,G,B", help="per-channel mean of the normalisation")
    pp.add_argument("--std", metavar="R,G,B", help="per-channel std of the normalisation")
    pp.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter")
    pp.add_argument("--crop-pct", type=float_in(0, 1, low_open=True), help="centre crop share (1: no crop)")
    pp.add_argument("--resize", choices=RESIZE_MODES, help="how a picture becomes the input: crop (resize, centre "
                    "crop), stretch (the whole picture, aspect not kept) or letterbox (aspect kept, padded); default: "
                    "the transform the model was evaluated with")
    pp.add_argument("--pad-value", metavar="V|R,G,B", help="letterbox padding, 0-255 (default 114)")


def _export_options(p) -> None:
    e = p.add_argument_group("export")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; below 18 uses the TorchScript exporter)")
    e.add_argument("--static", action="store_true", help="fix the batch dimension to --batch-size")
    e.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=1, help="the fixed batch with --static; without it, the batch a dynamic "
                   "export is optimised for (TensorRT's opt profile, the manifest's batch.opt) and falls back to where "
                   "a format cannot keep the batch dynamic (default 1)")
    e.add_argument("--no-simplify", action="store_true", help="skip onnxslim graph simplification")
    pr = e.add_mutually_exclusive_group()
    pr.add_argument("--precision", choices=PRECISIONS,
                    help=f"default {PRECISIONS[0]}, or the formats' own where all share one (Core ML: fp16)")
    for name in PRECISIONS[1:]:
        pr.add_argument(f"--{name}", dest="precision", action="store_const", const=name, help=f"same as --precision {name}")
    sized = ", ".join(n for n, c in FORMATS.items() if c.dynamic_size)
    e.add_argument("--dynamic-size", nargs="?", const="auto", metavar="MIN:MAX",
                   help=f"symbolic input height and width in [MIN, MAX] px (default {AUTO_MIN_SIZE} to twice "
                        f"--img-size); {sized}; classification and semantic segmentation; parity at two sizes")
    embeds = ", ".join(n for n, c in FORMATS.items() if c.embeds_preprocessing)
    e.add_argument("--embed-preprocessing", nargs="?", const="nhwc", choices=("nhwc", "nchw"), metavar="nhwc|nchw",
                   help=f"the graph takes one 8-bit RGB picture of any size (NHWC, the default, or NCHW) and does the "
                        f"preprocessing itself; boxes and masks come out in the picture's pixels ({embeds})")
    e.add_argument("--no-verify", action="store_true", help="skip the parity check")
    e.add_argument("--force", action="store_true", help="overwrite existing artifacts")
    e.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="with --recipe: export the cells as Ray tasks across a cluster (ADDRESS: a cluster; none: the "
                   "one `ray start` made; local: a Ray on this machine); needs the [ray] extra")


def _calibration_options(p) -> None:
    c = p.add_argument_group("int8 calibration")
    c.add_argument("--calib-data", metavar="DIR|FILE.npy", help="images (a folder), a .npy array, or sample-pictures (scikit-image's) for int8 calibration")
    c.add_argument("--calib-samples", type=int_in(1, MAX_CALIBRATION_SAMPLES), metavar="N",
                   help=f"with --int8 (or --target): calibration samples to use (default {ExportOptions.calib_samples}, "
                        "or all the data holds if fewer); fewer than N in the data is an error")
    c.add_argument("--calib-random", action="store_true", help="calibrate on random data (smoke tests only; flagged)")


def _accuracy_options(p) -> None:
    ev = p.add_argument_group("accuracy on labelled data")
    ev.add_argument("--eval", metavar="DATA", help="score eager PyTorch and every artifact with the task's metric: an "
                    "image folder DATA/<class>/ or .csv (classification), a COCO .json (detection, instance), a folder "
                    "with images/ + masks/ (semantic segmentation); see docs/accuracy.md")
    ev.add_argument("--eval-samples", type=int_in(1, MAX_EVAL_SAMPLES), metavar="N",
                    help="score N pictures of DATA (a seeded choice; default all)")
    ev.add_argument("--max-drop", type=max_drop_arg, metavar="POINTS",
                    help="accuracy budget: an artifact whose metric (top-1 %%, mAP x 100, mIoU %%) is more than POINTS "
                         "below eager's fails; a reduced-precision artifact within it passes even if its parity "
                         "proxy does not")


def _target_options(p) -> None:
    t = p.add_argument_group("choose for a target")
    t.add_argument("--target", choices=("cpu",), help="export every CPU candidate, keep the fastest that passes parity")
    t.add_argument("--recipe-out", metavar="PATH", help="with --target: write the chosen configuration as YAML")
    t.add_argument("--max-time", type=float_in(0, MAX_SECONDS, low_open=True), help="with --target: seconds to time the candidates (default 15); "
                   "with --recipe: the run's time budget (no new export starts after it)")
    t.add_argument("--threads", type=threads_type(), help="with --target: intra-op threads for every runtime alike")


def list_formats(as_json: bool) -> int:
    """The format registry: what each writes, what it derives from and runs on, and whether it can run here."""
    rows = [
        {"format": n, "suffix": c.suffix, "endings": list(c.endings()), "companions": list(c.companions),
         "derives_from": c.derives_from, "runtime": c.default_runtime, "precisions": list(c.precisions),
         "dynamic_size": c.dynamic_size, "options": [f.metadata["cli"]["flag"] for f in c.cli_fields()],
         "available": c.unavailable_reason() is None, "reason": c.unavailable_reason(), "description": c.description}
        for n, c in FORMATS.items()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    t = Table(title="formats")
    for col in ("format", "file", "from", "runs on", "precisions", "available here", "what"):
        t.add_column(col)
    for r in rows:
        files = " + ".join([r["suffix"], *r["companions"]])
        t.add_row(r["format"], files, r["derives_from"] or "model", r["runtime"], ",".join(r["precisions"]),
                  "yes" if r["available"] else f"[red]no[/]: {escape(r['reason'])}", escape(r["description"]))
    console().print(t)
    return EXIT_OK


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated integers (their range is the spec's to check)."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated integers, e.g. 8,16,32,64,128; got {text!r}") from None


def _floats(text: str, flag: str) -> list[float]:
    items = [v.strip() for v in text.split(",")]
    try:
        if all(items):  # an empty item (0.5,,0.4) is a typo, not a default
            return [float(v) for v in items]
    except ValueError:
        pass
    raise UserError(f"{flag} takes comma-separated numbers, e.g. 0.485,0.456,0.406; got {text!r}")


def preprocess_from_args(a) -> dict:
    pad = _floats(a.pad_value, "--pad-value") if a.pad_value else None
    pre = {"mean": _floats(a.mean, "--mean") if a.mean else None, "std": _floats(a.std, "--std") if a.std else None,
           "interpolation": a.interpolation, "crop_pct": a.crop_pct, "resize": a.resize,
           "pad_value": pad * a.in_chans if pad and len(pad) == 1 else pad}
    return {k: v for k, v in pre.items() if v is not None}


def spec_from_args(a) -> ModelSpec:
    from autotimm_deploy.exporter.models.autotimm import is_autotimm_checkpoint, spec_from_checkpoint

    head = {k: getattr(a, k) for k in ALL_HEAD_OPTIONS if getattr(a, k) is not None}
    common = dict(img_size=parse_img_size(a.img_size) if a.img_size else None, in_chans=a.in_chans, seed=a.seed,
                  preprocess=preprocess_from_args(a), class_names=read_class_names(a.class_names) if a.class_names else None)
    autotimm = bool(a.checkpoint) and is_autotimm_checkpoint(a.checkpoint)
    if a.architecture == "builtin" and autotimm:
        raise UserError(f"{a.checkpoint} is an AutoTimm checkpoint: its architecture is AutoTimm's; drop "
                        "--architecture builtin")
    if a.checkpoint and (autotimm or a.architecture == "autotimm" or (a.model is None and a.architecture is None)):
        return spec_from_checkpoint(a.checkpoint, model=a.model, task=a.task, num_classes=a.num_classes, head=head,
                                    **common)
    if a.checkpoint:
        weights = "checkpoint"
    else:
        weights = "pretrained" if a.pretrained else "random"
    return ModelSpec(model=a.model, task=a.task or TASKS[0], num_classes=a.num_classes, weights=weights,
                     checkpoint=a.checkpoint, head=head, architecture=a.architecture or ARCHITECTURES[0], **common)


def default_precision(formats: list[str]) -> str:
    """fp32, unless every format asked for ships another by default (Core ML: fp16)."""
    own = {FORMATS[f].default_precision if f in FORMATS else PRECISIONS[0] for f in formats}
    return own.pop() if len(own) == 1 else PRECISIONS[0]


def _format_options(a, formats: list[str]) -> dict:
    """Each format's own options (`Format.options_from_args`), each refused when its format is not asked for."""
    out = {}
    for name, cls in FORMATS.items():
        options, given = cls.options_from_args(a)
        if given and name not in formats:
            raise UserError(f"{given[0]} only applies to --format {name}")
        if options is not None:
            out[name] = options
    for name, own in out.items():  # --onnx-int8, --litert-int8, --coreml-int8: the form of an --int8 artifact
        form = getattr(own, "int8_form", None)
        if form is not None and form != type(own).int8_form and a.precision != "int8" and not a.target:
            flag = next(f.metadata["cli"]["flag"] for f in dataclasses.fields(own) if f.name == "int8_form")
            what = "graph" if name == "onnx" else "model"
            raise UserError(f"{flag} {form} sets the form of the int8 {what}: add --int8")
    return out


def export_options(a, formats: list[str]) -> ExportOptions:
    """The `ExportOptions` the parsed command line asks for."""
    given = a.calib_samples is not None
    return ExportOptions(opset=a.opset, static=a.static, batch_size=a.batch_size, simplify=not a.no_simplify,
                         precision=a.precision, calib_data=a.calib_data,
                         calib_samples=a.calib_samples if given else ExportOptions.calib_samples,
                         calib_samples_given=given,
                         calib_random=a.calib_random, format_options=_format_options(a, formats),
                         dynamic_size=parse_dynamic_size(a.dynamic_size) if a.dynamic_size else None,
                         eval_data=a.eval, eval_samples=a.eval_samples, max_drop=a.max_drop,
                         embed_preprocessing=a.embed_preprocessing)


def check_out(a) -> None:
    """``-o ''`` would be the current folder by accident: refused (``-o .`` says it)."""
    if not a.out.strip():
        raise UserError("-o takes a folder, got an empty path (pass -o . for the current folder)")


def check_mode_flags(a) -> None:
    """Flags of another mode are refused, not ignored: --max-time times a --target search or bounds
    a --recipe run; --calib-samples, --calib-data and --calib-random calibrate int8 (--int8, or --target's
    int8 candidates)."""
    if a.max_time is not None and not a.target:
        raise UserError("--max-time bounds a --target cpu search (or a --recipe run): use it with one of them")
    calib = [f for f, v in (("--calib-data", a.calib_data), ("--calib-random", a.calib_random),
                            ("--calib-samples", a.calib_samples is not None)) if v]
    if calib and a.precision != "int8" and not a.target:
        raise UserError(f"{calib[0]}: the calibration options only apply to --int8 (or --target)")


def checkpoint_as_model(a) -> None:
    """``autotimm-export model.ckpt``: an existing checkpoint file given where the model name goes is
    taken as ``--checkpoint`` (an AutoTimm checkpoint names its own model; a state dict still needs one).
    A name that is no file stays a name: timm has some with these suffixes (``beit3_base_patch16_224.pt``)."""
    from autotimm_deploy.exporter.models.weights import CHECKPOINT_SUFFIXES

    if not a.model or a.checkpoint or not a.model.lower().endswith(CHECKPOINT_SUFFIXES):
        return
    if Path(a.model).is_dir():
        raise UserError(f"{a.model} is a folder, not a checkpoint file: give the checkpoint file itself")
    if Path(a.model).is_file():
        a.model, a.checkpoint = None, a.model


def main(a) -> int:
    if a.list_formats:
        return list_formats(a.json)
    if a.setup_litert:
        from autotimm_deploy.exporter.formats import litert_env

        litert_env.setup(lambda text: console().print(escape(text)))
        return EXIT_OK
    check_out(a)
    if a.recipe:
        if a.model:
            raise UserError("give a model name or --recipe, not both")
        return run_recipe(a)
    if a.ray:
        raise UserError("--ray runs a recipe's cells on a Ray cluster: use it with --recipe FILE.yaml")
    checkpoint_as_model(a)
    if a.checkpoint and a.pretrained:
        raise UserError(f"--pretrained does not apply with a checkpoint ({a.checkpoint}): the weights are the "
                        "checkpoint's; leave --pretrained out")
    if not a.model and a.checkpoint and a.architecture == "builtin" and Path(a.checkpoint).is_file():
        raise UserError(f"give a timm model name with a checkpoint and --architecture builtin (autotimm-export MODEL "
                        f"--checkpoint {a.checkpoint}); an AutoTimm checkpoint names its own model: leave "
                        "--architecture builtin out")
    if not a.model and not a.checkpoint:
        raise UserError("give a timm model name, e.g. autotimm-export resnet50, or an AutoTimm --checkpoint "
                        "(or --list-formats, --recipe)")
    formats = csv_list(a.format)
    if not formats:
        raise UserError("--format needs at least one format")
    a.precision = a.precision or default_precision(formats)
    check_mode_flags(a)
    spec = spec_from_args(a)
    check_triton_repo(a)
    if (a.recipe_out or a.threads) and not a.target:
        raise UserError(f"{'--recipe-out' if a.recipe_out else '--threads'} only applies with --target cpu")
    options = export_options(a, formats)
    if a.target:
        return run_target(a, spec, options)
    from autotimm_deploy.exporter.pipeline import export

    checks = 0 if a.no_verify and not a.eval else 1
    steps = 1 + (1 if a.eval else 0) + len(export_order(formats)) * (1 + checks)
    with progress_bar(counts=True) as bar:
        task = bar.add_task(f"{spec.model}", total=steps)
        first = [True]

        def progress(text: str, advance: bool = True) -> None:
            if advance and not first[0]:
                bar.advance(task)
            first[0] = False
            bar.update(task, description=text)

        results = export(spec, formats, a.out, options, verify=not a.no_verify, force=a.force, name=a.name,
                         progress=progress)
        bar.advance(task)
    if a.json:
        print(json.dumps({"model": spec.model, "results": [r.to_dict() for r in results]}, indent=2, default=str))
    print_table(results, console(a.json))
    print_preprocessing(results, console(a.json))
    write_triton_repo(a, [r.artifact for r in results if r.ok])
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def print_preprocessing(results, out: Console) -> None:
    """An AutoTimm checkpoint does not record its transforms: say which ones the manifest holds."""
    done = next((r for r in results if r.manifest), None)
    if done is None:
        return
    m = load_manifest(done.artifact)
    if m.spec.get("architecture") != "autotimm" or m.spec.get("weights") != "checkpoint":
        return
    out.print(f"preprocessing in the manifest: {escape(preprocessing_line(m.preprocessing, m.spec.get('task')))}")


def preprocessing_line(prep: dict, task: str | None) -> str:
    """How a picture becomes the input, in one line, with the flags that change each part."""
    from autotimm_deploy.exporter.inputs.preprocess import describe

    p = describe(prep, task)
    library = {"pil": "PIL", "cv2": "OpenCV"}.get(p["library"], p["library"])
    resize = {"crop": f"resized to crop {p.get('crop_pct') or 1:g}, centre-cropped",
              "stretch": "stretched to the input size",
              "letterbox": f"letterboxed (longest side to the input, padded {p.get('pad_value')} "
                           f"{p.get('pad_position', 'center')})"}[p["resize"]]
    flags = {"crop": "--resize/--crop-pct", "stretch": "--resize", "letterbox": "--resize/--pad-value"}[p["resize"]]
    source = f" ({p['source']})" if p.get("source") else ""
    return (f"{resize}, {p['interpolation']} as {library} reads it, mean {[round(v, 4) for v in p['mean']]}, "
            f"std {[round(v, 4) for v in p['std']]}{source}; AutoTimm checkpoints do not record their transforms: "
            f"pass {flags}/--interpolation/--mean/--std if you trained with others")


def run_recipe(a) -> int:
    from autotimm_deploy.recipes.runner import run_exports
    from autotimm_deploy.recipes.schema import load_recipe

    recipe = load_recipe(a.recipe, a.out)
    check_out_dir(Path(a.out))
    check_triton_repo(a)
    with progress_bar(counts=True) as bar:
        task = bar.add_task(f"recipe {recipe.name}", total=None)
        if a.ray:
            from autotimm_deploy.recipes import fleet

            rows = fleet.run_exports(recipe, a.ray, a.max_time, recipe_progress(bar, task), force=a.force)
        else:
            rows = run_exports(recipe, a.max_time, recipe_progress(bar, task), force=a.force)
    if a.json:
        print(json.dumps({"recipe": str(recipe.path), "out": str(recipe.root), "rows": rows}, indent=2))
    print_recipe_rows(f"autotimm-export --recipe {recipe.name} -> {recipe.artifacts_dir}", rows,
                      ("model", "task", "format", "precision"), console(a.json))
    done = [r["artifact"] for r in rows if r["status"] in (JobStatus.EXPORTED, JobStatus.UP_TO_DATE)]
    write_triton_repo(a, done)
    return EXIT_FAILED if any_failed(rows) else EXIT_OK


def run_target(a, spec: ModelSpec, options) -> int:
    from autotimm_deploy.exporter.select import target_cpu

    if a.no_verify:
        raise UserError("--target needs parity: it cannot be combined with --no-verify")
    if a.recipe_out:  # checked now, not after the whole search
        check_report_paths({"--recipe-out": a.recipe_out})
    a.max_time = 15.0 if a.max_time is None else a.max_time
    with progress_bar() as bar:
        task = bar.add_task(f"{spec.model}: --target {a.target}", total=None)
        winner, ranked, eager = target_cpu(spec, a.out, options, force=a.force, max_time=a.max_time,
                                           threads=a.threads, progress=lambda t, advance=True: bar.update(task, description=t))
    rows = [c.row(c is winner) for c in ranked]
    if a.json:
        print(json.dumps({"model": spec.model, "target": a.target, "eager_ms": eager.get("median_ms"),
                          "chosen": str(winner.result.artifact) if winner else None, "candidates": rows,
                          "warnings": eager.get("warnings", [])}, indent=2))
    print_ranking(rows, eager, console(a.json))
    if winner is None:
        stderr.print("[red]no candidate passed its parity gate[/]")
        return EXIT_FAILED
    for w in eager.get("warnings", []):
        stderr.print(f"[yellow]warning: the timing was disturbed, the choice may be wrong[/]: {escape(w)}")
    if a.recipe_out:  # checked again: the winner's files now exist and must not be replaced
        check_report_paths({"--recipe-out": a.recipe_out}, artifact_files(winner.result.artifact))
        write_recipe(a.recipe_out, spec, winner, options)
    write_triton_repo(a, [winner.result.artifact])
    return EXIT_OK


def check_triton_repo(a) -> None:
    """--triton-repo: a new folder, the [triton] extra, valid options, and (formats named on the
    command line) one format Triton serves among them; before any export starts."""
    if not a.triton_repo:
        check_serve_options_used(a)
    else:
        from autotimm_deploy.exporter.triton.repository import KNOWN_FORMATS, check_destination

        repository, out = Path(a.triton_repo).resolve(), Path(a.out).resolve()
        if repository == out or repository in out.parents:
            raise UserError(f"--triton-repo {a.triton_repo} would hold -o {a.out}: give the repository a folder of its "
                            f"own, e.g. -o {a.out} --triton-repo {Path(a.out) / 'repository'}")
        check_destination(a.triton_repo, made_by_export=repository.parent == out)
        serve_options(a).check()
        formats = csv_list(a.format) if not (a.recipe or a.target) else []
        if formats and not set(formats) & set(KNOWN_FORMATS):
            raise UserError(f"--triton-repo: Triton serves none of {', '.join(formats)}; add a format it serves "
                            f"({', '.join(KNOWN_FORMATS)}) or leave --triton-repo out")
        if formats and a.ort_tensorrt and "onnx" not in formats:
            raise UserError("--ort-tensorrt applies to the ONNX model of the repository (ONNX Runtime's TensorRT "
                            "accelerator): add onnx to -f, or drop it")


def write_triton_repo(a, artifacts: list) -> None:
    """The repository for the artifacts that passed and that Triton serves; those it does not
    (edge formats: ncnn, LiteRT, ...) are listed as not written, with why. None passed, or none of
    those served: said, nothing written."""
    if not a.triton_repo:
        return
    if not artifacts:
        stderr.print(f"[yellow]no artifact passed: no Triton repository written at {escape(a.triton_repo)}[/]")
        return
    from autotimm_deploy.exporter.triton.repository import NothingServed, build_repository

    try:
        models = build_repository(artifacts, a.triton_repo, serve_options(a), ensemble_over=a.ensemble_over,
                                  skip_unserved=True)
    except NothingServed as e:  # the formats it serves failed: said, as when none passed
        stderr.print(f"[yellow]{escape(str(e))}[/]")
        return
    print_models(models, a.triton_repo, console(True))


def write_recipe(path: str, spec: ModelSpec, winner, options) -> None:
    import yaml

    resolved = load_manifest(winner.result.artifact).spec
    speedup = f", {winner.speedup['ratio']:.2f}x eager" if winner.speedup else ""
    extra = {"architecture": spec.architecture} if spec.architecture != ARCHITECTURES[0] else {}
    task = {"task": spec.task, **spec.head, **extra} if spec.head or extra else spec.task
    recipe = {"recipe": 1, "description": f"chosen by autotimm-export --target cpu: {winner.format} "
                                          f"{winner.precision}, {winner.median_ms:.2f} ms at batch 1{speedup}",
              "models": [spec.model], "tasks": [task], "img_size": resolved["img_size"],
              "num_classes": resolved["num_classes"], "formats": [winner.format], "precisions": [winner.precision],
              "batch_sizes": [1], "devices": ["cpu"]}
    if winner.precision == "int8":
        recipe["calibration"] = ({"data": options.calib_data, "samples": options.calib_samples}
                                 if options.calib_data else {"random": True, "samples": options.calib_samples})
    if winner.format_options:  # the variant that won (ONNX's u8s8, a frozen AOTInductor package)
        recipe["format_options"] = {fmt: dataclasses.asdict(own) for fmt, own in winner.format_options.items()}
    atomic_write_text(Path(path), yaml.safe_dump(recipe, sort_keys=False))


def print_ranking(rows: list[dict], eager: dict, out: Console) -> None:
    t = Table(title=f"--target cpu (eager fp32: {eager.get('median_ms') or float('nan'):.2f} ms at batch 1)")
    scored = next((r["accuracy"] for r in rows if r.get("accuracy")), None)
    cols = ["", "format", "precision", "median ms", "speedup vs eager [95% CI]", "parity", "max_rel", "top1"]
    cols += [f"{scored['metric']} (drop)"] if scored else []
    numeric = {"median ms", "max_rel", "top1", f"{scored['metric']} (drop)" if scored else ""}
    for col in (*cols, "note"):
        t.add_column(col, justify="right" if col in numeric else "left")
    for r in rows:
        sp = r["speedup_vs_eager"]
        a = r.get("accuracy")
        acc = ([_ranking_accuracy(a)] if scored else [])
        precision = r["precision"] + (f" ({r['variant']})" if r.get("variant") else "")
        t.add_row("[green]chosen[/]" if r["chosen"] else "", r["format"], precision,
                  f"{r['median_ms']:.2f}" if r["median_ms"] is not None else "-",
                  f"{sp['ratio']:.2f}x {interval_text(sp)}" if sp else "-",
                  r["parity"] or "-", f"{r['max_rel']:.1e}" if r["max_rel"] is not None else "-",
                  f"{r['top1_agreement']:.0%}" if r["top1_agreement"] is not None else "-", *acc,
                  escape(r["note"] or "; ".join(r["failures"])[:80]))
    out.print(t)


def _ranking_accuracy(a: dict | None) -> str:
    """An `AccuracyReport.row()`: the primary metric, its drop from eager and, with a budget, the verdict."""
    if a and a.get("error"):
        return f"[red]failed[/]: {escape(a['error'][:60])}"
    if not a or a.get("value") is None:
        return "-"
    text = f"{a['value']:.2f}" + (f" ({-a['drop']:+.2f})" if a.get("drop") is not None else "")
    return text if a.get("verdict") is None else f"[{'green' if a['verdict'] == 'pass' else 'red'}]{text}[/]"


def print_table(results, out: Console) -> None:
    t = Table(title="autotimm-export")
    scored = next((r.accuracy for r in results if r.accuracy), None)
    columns = [("format", "left"), ("file", "left"), ("params (M)", "right"), ("size (MB)", "right"),
               ("export s", "right"), ("exporter", "left"), ("parity", "left")]
    if scored:
        columns.append((f"{scored.primary} (eager {_points(scored.eager.get(scored.primary))})", "right"))
    for col, just in columns:
        t.add_column(col, justify=just)
    for r in results:
        if r.error:
            t.add_row(r.format, "-", "-", "-", "-", "-", f"[red]error[/]: {escape(r.error)}", *(["-"] if scored else []))
            continue
        verdict = summary(r.parity)
        style = "green" if r.ok else "red"
        t.add_row(r.format, escape(r.artifact.name), f"{r.params / 1e6:.1f}", f"{r.bytes / 2**20:.1f}",
                  f"{r.export_seconds:.1f}", escape(r.exporter or ""), f"[{style}]{escape(verdict)}[/]",
                  *([accuracy_cell(r.accuracy)] if scored else []))
    out.print(t)
    if scored:
        d = scored.data
        out.print(f"accuracy on {escape(d['source'])} ({d['samples']} pictures, {escape(d['kind'])}): "
                  + ", ".join(f"{k} {_points(v)}" for k, v in scored.eager.items()) + " in eager PyTorch"
                  + (f"; budget: at most {scored.max_drop:g} points below" if scored.max_drop is not None else ""))
    for r in results:
        if r.parity and r.parity.reference:
            out.print(f"{r.format} vs {escape(r.parity.reference['against'])}: {escape(reference_summary(r.parity))}")
        if r.parity and r.parity.end_to_end:
            out.print(f"{r.format} end to end: {escape(end_to_end_line(r.parity.end_to_end))}")
    for r in results:
        for f in r.parity.failures if r.parity else []:
            out.print(f"[red]{r.format} parity[/]: {escape(f)}")
        if r.diagnosis:
            out.print(f"[red]{r.format} layers[/]: {escape(diagnosis_line(r.diagnosis))}")
        if r.fallback:
            out.print(f"[yellow]{r.format}[/]: {escape(r.fallback)}")
        if not r.ok and r.command:
            out.print(f"[red]{r.format}[/] again on its own: {escape(r.command)}")


def end_to_end_line(e: dict) -> str:
    """Raw pictures through our pipeline vs AutoTimm's, in one line."""
    if e["verdict"] == "not run":
        return f"not run ({e['reason']})"
    rows = e.get("pictures", [])
    if rows and "matched" in rows[0]:
        detail = f"{sum(r['matched'] for r in rows)}/{sum(r['reference'] for r in rows)} detections matched"
        displaced = sum(r.get("displaced", 0) for r in rows)
        detail += f" ({displaced} displaced at the lists' edge by near ties)" if displaced else ""
        ious = [r["min_iou"] for r in rows if r["min_iou"] is not None]
        detail += f", IoU >= {min(ious):.4f}" if ious else ""
        masks = [r["min_mask_iou"] for r in rows if r.get("min_mask_iou") is not None]
        detail += f", mask IoU >= {min(masks):.4f}" if masks else ""
    elif rows and "mask_iou" in rows[0]:
        detail = f"class-map IoU >= {min(r['mask_iou'] for r in rows):.4f}"
    else:
        detail = f"top-1 the same on {sum(bool(r.get('top1_same')) for r in rows)}/{len(rows)}"
    return f"{e['verdict']} vs {e.get('against', 'AutoTimm')} on {len(rows)} non-square pictures: {detail}"


def diagnosis_line(d: dict) -> str:
    """Where a failed artifact departs from its reference, in one line."""
    if d.get("error"):
        return f"the layer comparison could not run: {d['error']}"

    def name(r: dict) -> str:
        cosine = "nan" if r["cosine"] is None else f"{r['cosine']:.4f}"
        return f"{r['module'] or r['node']} ({r['op']}, cosine {cosine})"

    first = ", ".join(name(r) for r in d["first"][:3]) or f"none below cosine {d['cosine_gate']}"
    worst = ", ".join(name(r) for r in d["worst"][:3])
    line = f"vs {d['against']}, {d['compared']} tensors: first departs at {first}; worst: {worst}"
    return f"{line} ({d['note']})" if d.get("note") else line


def _points(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def accuracy_cell(acc) -> str:
    return _ranking_accuracy(acc.row() if acc else None)


def entry(argv=None) -> int:
    return run_cli(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(entry())
