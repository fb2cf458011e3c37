"""LiteRT (``.tflite``, formerly TensorFlow Lite), for Android, iOS and microcontrollers. The model is
``torch.export``-ed here, saved, and converted by Google's ``litert-torch`` in its own environment
(`litert_env`: it cannot share ours) by `litert_convert` in a subprocess. The `litert` runtime
(``ai-edge-litert``'s interpreter, with its XNNPACK delegate) runs it here.

- fp32; fp16 (weights stored in fp16, fp32 compute on CPUs); int8 in two forms (``--litert-int8``):
  ``static`` (default: int8 weights and activations, calibrated on our calibration pictures, int8
  graph inputs and outputs inside, float32 at the signature) and ``dynamic`` (dynamic-range: int8
  weights, activations quantized at run time, float I/O; no calibration data).
- The input stays NCHW, as in PyTorch (the converter transposes inside the graph).
- litert-torch cannot export a symbolic batch (its lowering needs concrete shapes), so the graph is
  converted at ``--batch-size`` and the interpreter resizes the input at run time. Graphs whose
  reshapes bake the batch in (our detection postprocessing) cannot be resized: a run at another
  batch is tried after conversion, and where it fails the manifest records the fixed batch.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from autotimm_deploy.exporter.core.capture import captured_output
from autotimm_deploy.exporter.core.errors import ExportFailed, first_line
from autotimm_deploy.exporter.core.files import write_bytes
from autotimm_deploy.exporter.formats import litert_env
from autotimm_deploy.exporter.formats.edge_rewrite import LITERT_REWRITES, edge_program
from autotimm_deploy.exporter.formats.file_checks import flatbuffer_check
from autotimm_deploy.exporter.formats.base import (
    BatchRange,
    ExportContext,
    Exported,
    Format,
    cli_option,
    register_format,
    with_batch_fallback,
)
from autotimm_deploy.exporter.formats.torch_program import program_module

TIMEOUT_S = 3600
SCRIPT = Path(__file__).with_name("litert_convert.py")
INT8_FORMS = ("static", "dynamic")


@dataclass
class LiteRTOptions:
    """What only a LiteRT export takes (``ExportOptions.format_options["litert"]``)."""

    int8_form: str = cli_option(
        "--litert-int8", "the --int8 model's form: static (default: int8 weights and activations, calibrated on "
        "--calib-data), dynamic (dynamic-range: int8 weights, activations quantized at run time, float I/O; "
        "needs no calibration data)", default="static", choices=INT8_FORMS)


@register_format
class LiteRTFormat(Format):
    name = "litert"
    suffix = ".tflite"
    default_runtime = "litert"
    check_file = staticmethod(flatbuffer_check("a LiteRT / TensorFlow Lite model (.tflite)", (b"TFL3",)))
    description = ("LiteRT / TensorFlow Lite (.tflite) for Android, iOS, MCUs; fp32, fp16, int8 (--litert-int8 static | "
                   "dynamic; converter in its own env)")
    extra = "litert"
    requires = ("ai_edge_litert",)
    precisions = ("fp32", "fp16", "int8")
    Options = LiteRTOptions
    cli_title = "LiteRT"

    @staticmethod
    def calibrates(options) -> bool:
        return options.precision == "int8" and options.of("litert").int8_form == "static"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason is None and litert_env.env_python() is None:
            return f"the LiteRT converter is not set up; {litert_env.SETUP_HINT}"
        return reason

    def export(self, ctx: ExportContext) -> Exported:
        import numpy as np
        import torch

        options = ctx.options
        batch = options.batch_size
        example = ctx.example_input()[:batch]
        try:
            program = edge_program(program_module(ctx.model), example, also=LITERT_REWRITES)
        except Exception as e:  # noqa: BLE001
            raise ExportFailed(f"torch.export failed: {first_line(e)}") from e
        work = ctx.workdir / f".{ctx.stem}.litert"
        work.mkdir()
        buf = io.BytesIO()
        torch.export.save(program, buf)
        write_bytes(work / "program.pt2", buf.getvalue())
        dynamic_int8 = options.precision == "int8" and not self.calibrates(options)
        args = [str(litert_env.env_python()), str(SCRIPT), str(work / "program.pt2"), str(ctx.path(self.suffix)),
                "int8-dynamic" if dynamic_int8 else options.precision]
        if self.calibrates(options):
            np.save(work / "calibration.npy", ctx.calibration.astype(np.float32))
            args.append(str(work / "calibration.npy"))
        try:
            facts = _convert(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        path = ctx.path(self.suffix)

        def dynamic() -> BatchRange:  # the converter keeps one batch; the interpreter may resize it
            problem = _resizes(path, batch + 1, ctx)
            if problem is not None:
                raise ExportFailed(problem)
            return BatchRange.up_to(batch)

        batch_range, fallback = with_batch_fallback(ctx, dynamic, lambda: None,
                                                    "the graph does not resize to another batch")
        return Exported([path], {**facts, "layout": "NCHW"}, exporter="torch.export(strict=False)",
                        batch=batch_range, fallback=fallback)


def _convert(args: list[str], work: Path) -> dict:
    env = {**os.environ, **litert_env.QUIET}
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=work, env=env)
    except subprocess.TimeoutExpired:
        raise ExportFailed(f"the LiteRT converter did not finish in {TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise ExportFailed(f"LiteRT conversion failed: {first_line(lines[-1] if lines else 'no output')}")
    for line in reversed(done.stdout.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def _resizes(path: Path, batch: int, ctx: ExportContext) -> str | None:
    """None when the interpreter runs the graph at ``batch`` and answers every picture, else what
    failed (a reshape that bakes the batch in runs, but gives the converted batch's rows:
    cspdarknet53's)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    with captured_output():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
        try:
            runner = Interpreter(model_path=str(path)).get_signature_runner()
            ((name, details),) = runner.get_input_details().items()  # a full-integer int8 graph takes int8
            outputs = runner(**{name: np.zeros((batch, ctx.spec.in_chans, *ctx.spec.img_size), details["dtype"])})
        except Exception as e:  # noqa: BLE001 - the interpreter's own error, kept for the manifest
            return first_line(e, 200)
    rows = {np.asarray(v).shape[0] for v in outputs.values() if np.asarray(v).ndim}
    return None if rows <= {batch} else f"gave {sorted(rows)} rows for a batch of {batch}"
