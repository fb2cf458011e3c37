"""``autotimm-export``: a thin shell over `exporter.api.export`."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from exporter.cli_common import EXIT_FAILED, EXIT_OK, OneLineParser, console, csv_list, run_cli, stderr
from exporter.errors import UserError
from exporter.spec import TASKS, ModelSpec, parse_img_size

PROG = "autotimm-export"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Export a timm model to deployable artifacts, each parity-checked.")
    p.add_argument("model", nargs="?", help="timm model name, e.g. resnet50")
    p.add_argument("-f", "--format", default="onnx", help="comma-separated formats (see --list-formats); default onnx")
    p.add_argument("-o", "--out", default="out", help="output folder (default: out/)")
    p.add_argument("--name", help="file stem for the artifacts (default: model name, plus task and precision)")
    g = p.add_argument_group("model")
    g.add_argument("--task", default="classification", choices=TASKS)
    g.add_argument("--num-classes", type=int)
    g.add_argument("--img-size", metavar="H[,W]", help="input size (default: the model's own)")
    g.add_argument("--in-chans", type=int, default=3)
    w = g.add_mutually_exclusive_group()
    w.add_argument("--pretrained", action="store_true", help="timm's pretrained weights (needs network once)")
    w.add_argument("--checkpoint", metavar="PATH", help="local .safetensors / .pth / .pt / .bin state dict")
    g.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    e = p.add_argument_group("export")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; below 18 uses the TorchScript exporter)")
    e.add_argument("--static", action="store_true", help="fix the batch dimension to --batch-size")
    e.add_argument("--batch-size", type=int, default=1, help="the batch for --static (default 1)")
    e.add_argument("--no-simplify", action="store_true", help="skip onnxslim graph simplification")
    pr = e.add_mutually_exclusive_group()
    pr.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"), default="fp32")
    for name in ("fp16", "bf16", "int8"):
        pr.add_argument(f"--{name}", dest="precision", action="store_const", const=name, help=f"same as --precision {name}")
    c = p.add_argument_group("int8 calibration")
    c.add_argument("--calib-data", metavar="DIR|FILE.npy", help="images (a folder) or a .npy array for int8 calibration")
    c.add_argument("--calib-samples", type=int, default=32, help="calibration samples to use (default 32)")
    c.add_argument("--calib-random", action="store_true", help="calibrate on random data (smoke tests only; flagged)")
    e.add_argument("--no-verify", action="store_true", help="skip the parity check")
    e.add_argument("--force", action="store_true", help="overwrite existing artifacts")
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout (table to stderr)")
    p.add_argument("--list-formats", action="store_true", help="list formats and whether each can run here")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


def list_formats(as_json: bool) -> int:
    from exporter.formats import FORMATS

    rows = [
        {"format": n, "suffix": c.suffix, "derives_from": c.derives_from, "precisions": list(c.precisions),
         "available": c.unavailable_reason() is None, "reason": c.unavailable_reason(), "description": c.description}
        for n, c in FORMATS.items()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    t = Table(title="formats")
    for col in ("format", "file", "from", "precisions", "available here", "what"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["format"], r["suffix"], r["derives_from"] or "model", ",".join(r["precisions"]),
                  "yes" if r["available"] else f"[red]no[/]: {r['reason']}", r["description"])
    console().print(t)
    return EXIT_OK


def spec_from_args(a) -> ModelSpec:
    if a.checkpoint:
        weights = "checkpoint"
    else:
        weights = "pretrained" if a.pretrained else "random"
    return ModelSpec(
        model=a.model,
        task=a.task,
        num_classes=a.num_classes,
        img_size=parse_img_size(a.img_size) if a.img_size else None,
        in_chans=a.in_chans,
        weights=weights,
        checkpoint=a.checkpoint,
        seed=a.seed,
    )


def main(a) -> int:
    if a.list_formats:
        return list_formats(a.json)
    if not a.model:
        raise UserError("give a timm model name, e.g. autotimm-export resnet50 (or --list-formats)")
    from exporter.api import export
    from exporter.formats import ExportOptions, export_order

    formats = csv_list(a.format)
    if not formats:
        raise UserError("--format needs at least one format")
    if a.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {a.batch_size}")
    spec = spec_from_args(a)
    if a.calib_samples < 1:
        raise UserError(f"--calib-samples must be positive, got {a.calib_samples}")
    if (a.calib_data or a.calib_random) and a.precision != "int8":
        raise UserError("--calib-data and --calib-random only apply to --int8")
    options = ExportOptions(opset=a.opset, static=a.static, batch_size=a.batch_size, simplify=not a.no_simplify,
                            precision=a.precision, calib_data=a.calib_data, calib_samples=a.calib_samples,
                            calib_random=a.calib_random)
    steps = 1 + len(export_order(formats)) * (1 if a.no_verify else 2)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=stderr, transient=True,
                  disable=not stderr.is_terminal) as bar:
        task = bar.add_task(f"{spec.model}", total=steps)
        first = [True]

        def progress(text: str) -> None:
            if not first[0]:
                bar.advance(task)
            first[0] = False
            bar.update(task, description=text)

        results = export(spec, formats, a.out, options, verify=not a.no_verify, force=a.force, progress=progress)
        bar.advance(task)
    if a.json:
        print(json.dumps({"model": spec.model, "results": [r.to_dict() for r in results]}, indent=2, default=str))
    print_table(results, console(a.json))
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def print_table(results, out: Console) -> None:
    from exporter.verify import summary

    t = Table(title="autotimm-export")
    for col, just in (("format", "left"), ("file", "left"), ("size (MB)", "right"), ("export s", "right"),
                      ("exporter", "left"), ("parity", "left")):
        t.add_column(col, justify=just)
    for r in results:
        if r.error:
            t.add_row(r.format, "-", "-", "-", "-", f"[red]error[/]: {r.error}")
            continue
        verdict = summary(r.parity)
        style = "green" if r.ok else "red"
        t.add_row(r.format, r.artifact.name, f"{r.bytes / 2**20:.1f}", f"{r.export_seconds:.1f}",
                  str(r.info.get("exporter", "")), f"[{style}]{verdict}[/]")
    out.print(t)
    for r in results:
        for f in (r.parity or {}).get("failures", []):
            out.print(f"[red]{r.format} parity[/]: {f}")


def entry(argv=None) -> int:
    return run_cli(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(entry())
