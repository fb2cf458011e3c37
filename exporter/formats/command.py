"""The one ``autotimm-export`` command line that reproduces an export of one format: recorded in a
failed export's row and in every manifest (``export.command``), so a failure can be rerun alone
(what Model Navigator's reproduction scripts do, in one line)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from autotimm_deploy.exporter.core.spec import ALL_HEAD_OPTIONS, PREPROCESS_KEYS, ModelSpec
from autotimm_deploy.exporter.formats.base import ExportOptions, get_format

PROG = "autotimm-export"
DEFAULTS = ExportOptions()


def _text(value: Any) -> str:
    return ":".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _model_args(spec: ModelSpec) -> list[str]:
    args = [spec.model, "--task", spec.task]
    if spec.checkpoint:
        args += ["--checkpoint", str(spec.checkpoint), "--architecture", spec.architecture]
    elif spec.architecture != "builtin":
        args += ["--architecture", spec.architecture]
    if spec.weights == "pretrained":
        args.append("--pretrained")
    if spec.num_classes is not None:
        args += ["--num-classes", str(spec.num_classes)]
    if spec.img_size:
        args += ["--img-size", ",".join(str(v) for v in spec.img_size)]
    args += ["--in-chans", str(spec.in_chans), "--seed", str(spec.seed)]
    for name in ALL_HEAD_OPTIONS:
        value = spec.head.get(name)
        if value is True:
            args.append(_flag(name))
        elif value is not None and value is not False:
            args += [_flag(name), ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    for name in PREPROCESS_KEYS:
        value = spec.preprocess.get(name)
        if value is not None:
            args += [_flag(name), ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    if spec.class_names:
        args += ["--class-names", "<a file naming the classes: " + ", ".join(spec.class_names[:3])
                 + (", ..." if len(spec.class_names) > 3 else "") + ">"]
    return args


def _export_args(options: ExportOptions) -> list[str]:
    args = ["--precision", options.precision]
    if options.opset != DEFAULTS.opset:
        args += ["--opset", str(options.opset)]
    if options.static:
        args.append("--static")
    if options.batch_size != DEFAULTS.batch_size:
        args += ["--batch-size", str(options.batch_size)]
    if not options.simplify:
        args.append("--no-simplify")
    if options.embed_preprocessing:
        args += ["--embed-preprocessing", options.embed_preprocessing]
    if options.dynamic_size:
        args += ["--dynamic-size", f"{options.dynamic_size[0]}:{options.dynamic_size[1]}"]
    if options.precision == "int8":
        if getattr(options, "calib_samples_given", True):
            args += ["--calib-samples", str(options.calib_samples)]
        args += ["--calib-random"] if options.calib_random else ["--calib-data", str(options.calib_data)] \
            if options.calib_data else []
    for flag, value in (("--eval", options.eval_data), ("--eval-samples", options.eval_samples),
                        ("--max-drop", options.max_drop)):
        if value is not None:
            args += [flag, str(value)]
    return args


def _format_args(fmt: str, options: ExportOptions) -> list[str]:
    cls = get_format(fmt)
    own = options.of(fmt)
    args = []
    for f in cls.cli_fields():
        value, cli = getattr(own, f.name), f.metadata["cli"]
        if value == f.default:
            continue
        args += [cli["flag"]] if cli.get("action") in ("store_true", "store_const") else [cli["flag"], _text(value)]
    return args


def reproduce_command(spec: ModelSpec, fmt: str, options: ExportOptions, out_dir: Path | str,
                      name: str | None = None) -> str:
    """The shell command that exports ``spec`` to ``fmt`` with ``options`` into ``out_dir`` again."""
    args = [PROG, *_model_args(spec), "--format", fmt, *_export_args(options), *_format_args(fmt, options),
            "-o", str(out_dir)]
    if name is not None:
        args += ["--name", name]
    return shlex.join(args)
