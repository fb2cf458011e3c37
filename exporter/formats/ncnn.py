"""ncnn (``.ncnn.param`` + ``.ncnn.bin``): the traced model converted by ``pnnx`` (Tencent's PyTorch
-> ncnn converter, the binary its wheel ships), for Android / ARM CPUs and Vulkan GPUs. The `ncnn`
runtime runs it here with the ``ncnn`` Python package.

ncnn has no batch dimension: the model is exported at batch 1 (``torch.export``, constants folded),
rewritten where pnnx would leave PyTorch ops behind (`ncnn_rewrite`: transformers' attention,
window partitions, ``var``, ``unfold``...), traced, and the runtime runs a batch picture by
picture. fp16 stores the weights in fp16 (pnnx ``fp16=1``) and runs with ncnn's fp16 storage and
arithmetic where the CPU has them. int8 is ncnn's own: the fp32 model calibrated on our calibration
pictures (ncnn2table's KL method) and rewritten in ncnn2int8's format (`ncnn_int8`): Convolution,
ConvolutionDepthWise and InnerProduct in int8 by the table, Gemm, MultiHeadAttention and SDPA (a
transformer's linears and attention) in int8 with their inputs quantized at run time, the other
layers fp32. Operations ncnn has no layer
for (``torch.topk`` in our detection postprocessing) stay as pnnx's own ops in the graph, which ncnn
cannot load: such exports fail with the ops named; detection exports with ``--raw`` (no postprocessing) convert.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

from autotimm_deploy.exporter.core.environment import package_versions
from autotimm_deploy.exporter.core.errors import ExportFailed, UserError, first_line
from autotimm_deploy.exporter.formats.base import ExportContext, Exported, Format, register_format
from autotimm_deploy.exporter.formats.ncnn_int8 import quantize
from autotimm_deploy.exporter.formats.ncnn_rewrite import ncnn_module
from autotimm_deploy.exporter.formats.torch_program import program_module

TIMEOUT_S = 1800


@register_format
class NcnnFormat(Format):
    name = "ncnn"
    suffix = ".ncnn.param"
    companions = (".ncnn.bin",)
    default_runtime = "ncnn"
    description = ("ncnn (.ncnn.param + .ncnn.bin) via pnnx, for Android/ARM CPUs and Vulkan GPUs; fp32, fp16, int8 "
                   "(ncnn2table/ncnn2int8's calibration and format)")
    extra = "ncnn"
    requires = ("pnnx", "ncnn")
    precisions = ("fp32", "fp16", "int8")

    @staticmethod
    def check_task(spec) -> str | None:
        if spec.task == "detection" and not spec.head.get("raw"):
            return ("ncnn has no TopK layer for the detection postprocessing; export the raw head outputs with "
                    "--raw and decode on the device")
        if spec.task == "instance-segmentation":
            return "ncnn has no TopK or RoIAlign layers for instance segmentation's postprocessing"
        return None

    @staticmethod
    def check_file(path: Path) -> None:
        with path.open("rb") as f:
            head = f.readline(64).strip()
        if head != b"7767517":  # the magic number every ncnn .param starts with
            raise UserError(f"{path} is not an ncnn .param file (no 7767517 magic on its first line)")

    def export(self, ctx: ExportContext) -> Exported:
        import pnnx
        import torch

        spec = ctx.spec
        work = (ctx.workdir / f".{ctx.stem}.pnnx").resolve()
        work.mkdir()
        traced_path = work / "model.pt"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            example = ctx.example_input()[:1]
            traced = torch.jit.trace(ncnn_module(program_module(ctx.model), example), example, check_trace=False,
                                     strict=False)
            traced.save(str(traced_path))
        # pnnx runs in its work folder: every path it is given is absolute (a relative -o broke it)
        param, binary = ctx.path(self.suffix).resolve(), ctx.path(self.companions[0]).resolve()
        shape = f"[1,{spec.in_chans},{spec.img_size[0]},{spec.img_size[1]}]f32"
        fp16 = int(ctx.options.precision == "fp16")
        scratch = {k: str(work / name) for k, name in (("pnnxparam", "p.param"), ("pnnxbin", "p.bin"),
                                                        ("pnnxpy", "p.py"), ("pnnxonnx", "p.onnx"), ("ncnnpy", "n.py"))}
        args = [pnnx.EXEC_PATH, str(traced_path), f"inputshape={shape}", f"fp16={fp16}", f"ncnnparam={param}",
                f"ncnnbin={binary}", *(f"{k}={v}" for k, v in scratch.items())]
        try:
            run = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ExportFailed(f"pnnx did not finish in {TIMEOUT_S} s") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if run.returncode != 0 or not param.is_file() or not binary.is_file():
            said = [ln for ln in (run.stderr + run.stdout).splitlines() if ln.strip() and not ln.startswith("#")]
            raise ExportFailed(f"pnnx failed (exit {run.returncode}): {first_line(said[-1] if said else 'no output')}")
        unknown = unsupported_layers(param.read_text())
        if unknown:
            raise ExportFailed(f"ncnn has no layer for {', '.join(unknown)} (pnnx left them as PyTorch ops)")
        versions = package_versions(["pnnx", "ncnn"])
        info = {"converter": f"pnnx {versions['pnnx']}", "ncnn": versions["ncnn"], "weights": "fp16" if fp16 else "fp32"}
        if ctx.options.precision == "int8":
            info = {**info, "weights": "int8 (quantized layers), fp32 (the rest)",
                    **quantize(param, binary, ctx.calibration, "in0")}
        return Exported([param, binary], info,
                        exporter="torch.export (batch 1), rewritten for pnnx, torch.jit.trace")


def unsupported_layers(param_text: str) -> list[str]:
    """Layer types in an ncnn ``.param`` that ncnn cannot create: pnnx keeps ops it could not convert
    under their PyTorch names (``torch.topk``, ``Tensor.index``, ``pnnx.Expression``, all dotted) or,
    for an ATen op it does not know, under the op's own name (``aten::clamp_min``)."""
    types = [ln.split()[0] for ln in param_text.splitlines()[2:] if ln.split()]
    return sorted({t for t in types if "." in t or "::" in t})

