"""AOTInductor package (``.aoti.pt2``): ``torch.export`` -> ``torch._inductor.aot_compile`` ->
``package_aoti`` (``aoti_compile_and_package``'s steps, so one package can hold two models).

The package holds C++/CUDA kernels that Inductor generated and compiled for one device, plus the
weights, and runs without Python (``torch::inductor::AOTIModelPackageLoader``; see
docs/examples/aoti/) or from Python (``torch._inductor.aoti_load_package``). It is compiled for the
CPU unless ``--device cuda``, and only runs on the kind of device it was compiled for: the manifest
records it and the `aoti` runtime refuses another.

Compiling needs a C++ compiler (Inductor calls ``g++`` / ``$CXX``) and takes tens of seconds (the
small test models) to minutes (resnet50 on 2 cores).

Precisions and Inductor's options (each a ``--target cpu`` candidate, see `autotimm_deploy.exporter.select`):

- ``--freezing``: weights folded into the graph as constants and prepacked for the CPU's GEMM kernels
  (oneDNN); off by default, since on this project's 2-core CPU it made resnet18 slower, not faster.
- ``--max-autotune``: Inductor benchmarks its GEMM templates (C++ micro-kernels, AMX where the CPU has
  it) against the library kernels while compiling: much longer compiles.
- ``--bf16``: the model's weights and compute in bfloat16 behind float32 input and outputs, frozen;
  fast only on CPUs with AMX-BF16 or AVX512-BF16. Classification and segmentation only: boxes in
  bfloat16 lose whole pixels.
- ``--int8``: PT2E post-training quantization with torchao's ``X86InductorQuantizer`` (int8
  activations and per-channel weights), calibrated on the calibration pictures, frozen, so Inductor
  lowers it to oneDNN's quantized convolutions and matmuls (VNNI / AMX-INT8). Without VNNI, oneDNN
  adds pairs of u8 x s8 products in 16 bits, which 8-bit weights can saturate: an artifact that then
  misses its gate is retried with 7-bit weights first (`int8_plan`).

A frozen CPU package with a dynamic batch holds two compiled models: ``model``, any batch, and
``batch<N>``, the batch fixed to ``--batch-size`` (1 unless given) at the model's size. Inductor
packs a frozen convolution's weights for oneDNN only where the input shape is static; with a
symbolic batch it packs them again on every call (resnet50 int8 at batch 1: 134 ms any-batch against
19 ms with the batch fixed, both in one profile run on an AVX-512 VNNI Xeon). The manifest records the tuned
model (``export.tuned``) and the `aoti` runtime runs it on inputs of its shape, ``model`` otherwise;
a C++ program picks it by name (``AOTIModelPackageLoader(path, "batch1")``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from autotimm_deploy.exporter.core.environment import check_tmpdir
from autotimm_deploy.exporter.core.errors import ExportFailed, MissingExtra, UserError, first_line
from autotimm_deploy.exporter.core.manifest import PACKAGE_INPUT_SHAPE
from autotimm_deploy.exporter.formats.base import ExportContext, Exported, Format, cli_option, register_format
from autotimm_deploy.exporter.formats.dims import export_program
from autotimm_deploy.exporter.formats.file_checks import zip_check, zip_names
from autotimm_deploy.exporter.formats.torch_program import program_module


AOTI_MARKER = "/data/aotinductor/"  # where a package keeps its compiled kernels


@dataclass
class AOTIOptions:
    """What only an AOTInductor build takes (``ExportOptions.format_options["aoti"]``)."""

    device: str = cli_option("--device", "compile the package's kernels for cpu (default), cuda or cuda:N",
                             default="cpu", metavar="DEVICE")  # the device the kernels are compiled for
    freezing: bool = cli_option("--freezing", "fold the weights into the graph and prepack them (Inductor's "
                                "freezing; bf16 and int8 are always frozen)", default=False, action="store_true")
    max_autotune: bool = cli_option("--max-autotune", "let Inductor benchmark its GEMM templates while compiling "
                                    "(much longer compiles)", default=False, action="store_true")


def compiler() -> str | None:
    """The C++ compiler Inductor will call, or None."""
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")


def check_device(device: str) -> None:
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise UserError(f"--device takes cpu, cuda or cuda:N, got {device!r}")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible here; compile for the CPU (the default) or "
                            "run this on the GPU machine that will run the package")
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")


@register_format
class AOTIFormat(Format):
    name = "aoti"
    suffix = ".aoti.pt2"
    cli_title = "AOTInductor"
    refines = "pt2"
    default_runtime = "aoti"
    check_file = staticmethod(zip_check("AOTInductor package (.pt2)", AOTI_MARKER))
    description = "AOTInductor package: compiled C++/CUDA kernels + weights, runs without Python (CPU or --device cuda)"
    precisions = ("fp32", "bf16", "int8")
    keeps_float = True  # int8 layers kept in float get no qconfig (`int8_plan`)
    int8_narrow_weights = True  # 7-bit weights where oneDNN's int8 kernels saturate (no VNNI)
    dynamic_size = True
    embeds_preprocessing = True
    Options = AOTIOptions

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if compiler() is None:
            return "AOTInductor compiles C++: no C++ compiler found (install g++, or set CXX)"
        return None

    @staticmethod
    def check_options(options) -> None:
        import importlib.util

        check_device(options.of("aoti").device)
        check_tmpdir("AOTInductor")
        if options.precision != "fp32" and options.embed_preprocessing:
            raise UserError(f"AOTInductor --{options.precision} does not combine with --embed-preprocessing (the "
                            "picture's preprocessing stays in float32): export fp32 with it, or drop it")
        if options.precision == "int8" and importlib.util.find_spec("torchao") is None:
            raise MissingExtra("torchao (for AOTInductor int8)", "executorch")

    @staticmethod
    def recognizes(path: Path) -> bool:
        """An AOTInductor package is a .pt2 archive too, with compiled kernels under data/aotinductor/."""
        return any(AOTI_MARKER in n for n in zip_names(path) or ())

    @staticmethod
    def check_precision(spec, precision: str) -> str | None:
        if precision == "bf16" and spec.task in ("detection", "instance-segmentation"):
            return ("its boxes would be computed in bfloat16, which loses whole pixels: export fp32, or OpenVINO "
                    "--bf16 (it keeps them in float32)")
        return None

    def export(self, ctx: ExportContext) -> Exported:
        import torch

        own, precision = ctx.options.of("aoti"), ctx.options.precision
        device = torch.device(own.device)
        model = program_module(ctx.model)
        example = ctx.example_input()
        if device.type != "cpu":  # a copy on the GPU: the other formats keep exporting the CPU model
            model, example = copy.deepcopy(model).to(device), example.to(device)
        if precision == "bf16":
            model = _bfloat16_module()(model)
        program, multiple = export_program(model, example, ctx.options)
        quantization = None
        if precision == "int8":
            program, quantization = _quantize_x86(program, example, ctx)
        configs = {"freezing": own.freezing or precision != "fp32", "max_autotune": own.max_autotune}
        programs, tuned = {"model": program}, None
        if device.type == "cpu" and configs["freezing"] and not ctx.options.static \
                and not ctx.options.embed_preprocessing:
            tuned, static = _tuned_program(program, example, ctx.options)
            programs[tuned["model"]] = static
        path = ctx.path(self.suffix)
        _compile(programs, path, {k: v for k, v in configs.items() if v})
        info = {"compiler": "torch._inductor.aot_compile + package_aoti", "device": device.type, "cxx": compiler(),
                "inductor_configs": configs}
        if tuned:
            info["tuned"] = tuned
        if quantization:
            info["quantization"] = quantization
        if device.type == "cuda":
            from autotimm_deploy.exporter.core.environment import gpu_environment

            gpu = gpu_environment(device.index or 0)
            info["gpu"] = {"name": gpu["name"], "compute_capability": gpu["compute_capability"], "cuda": gpu["cuda"]}
        return Exported([path], info, exporter="torch.export(strict=False)", size_multiple=multiple)


def _tuned_program(program, example, options) -> tuple[dict, object]:
    """``program`` again with its input shape fixed: the batch to ``options.batch_size``, the size to
    the example's. Returns (the manifest's ``tuned`` record, the program)."""
    batch = options.batch_size
    fixed = example[:1].expand(batch, *example.shape[1:]).contiguous()
    static, _ = export_program(program.module(), fixed, dataclasses.replace(options, static=True, dynamic_size=None))
    return {"model": f"batch{batch}", "input_shape": list(fixed.shape),
            "why": "frozen weights are packed for oneDNN only at a static input shape"}, static


def _compile(programs: dict, path: Path, configs: dict) -> None:
    """Each exported program compiled by AOTInductor, all packaged in one ``.pt2`` under their names
    (``aoti_compile_and_package``'s steps, once per program)."""
    import torch
    from torch._inductor.package import package_aoti

    try:
        with torch.no_grad():
            files = {}
            for name, program in programs.items():
                args, kwargs = program.example_inputs
                shape = _input_shape(program)
                metadata = {"aot_inductor.metadata": {PACKAGE_INPUT_SHAPE: json.dumps(shape)}} if shape else {}
                files[name] = torch._inductor.aot_compile(program.module(check_guards=False), args, kwargs,
                                                          options={**configs, "aot_inductor.package": True, **metadata})
            package_aoti(str(path), files)
    except Exception as e:  # noqa: BLE001 - Inductor lowering or the C++ compiler failed
        raise ExportFailed(f"AOTInductor compile failed: {first_line(e)}") from e
    if not path.is_file() or path.stat().st_size == 0:
        raise ExportFailed("AOTInductor produced no package")


def _input_shape(program) -> list[int | None] | None:
    """The shape of ``program``'s input, None where a dim is symbolic: what the package is compiled for
    (the compiled kernels do not check it, and read past their buffers on another size). None when the
    program has no tensor input it records (the package is then not held to a shape)."""
    inputs = program.graph_signature.user_inputs
    node = next((n for n in program.graph.nodes if n.op == "placeholder" and inputs and n.name == inputs[0]), None)
    value = node.meta.get("val") if node is not None else None
    return [d if isinstance(d, int) else None for d in value.shape] if hasattr(value, "shape") else None


def _bfloat16_module():
    import torch

    class Bfloat16Module(torch.nn.Module):
        """``model`` in bfloat16 behind float32 input and outputs."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.model = copy.deepcopy(inner).to(torch.bfloat16).eval()
            self.output_names = getattr(inner, "output_names", None)

        def forward(self, x):
            out = self.model(x.to(torch.bfloat16))
            if isinstance(out, (tuple, list)):
                return tuple(o.float() if o.is_floating_point() else o for o in out)
            return out.float()

    return Bfloat16Module


def x86_int8_config(narrow_weights: bool = False, reduce_range: bool = False):
    """X86InductorQuantizer's default config as the int8 build uses it: scales below its 2**-12
    floor allowed, weights in 7 bits with ``narrow_weights``; ``reduce_range`` (7-bit activations,
    torchao's own remedy for CPUs without VNNI) is for comparison only (benchmarks/int8_saturation.py)."""
    from autotimm_deploy.exporter.formats.torch_program import fine_activation_scales, seven_bit_weights
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config

    config = fine_activation_scales(get_default_x86_inductor_quantization_config(reduce_range=reduce_range))
    return seven_bit_weights(config) if narrow_weights else config


def _quantize_x86(program, example, ctx: ExportContext):
    """PT2E int8 for Inductor's x86 lowering: ``program`` quantized and exported again with its dims."""
    from autotimm_deploy.exporter.formats.dims import export_program
    from autotimm_deploy.exporter.formats.int8_plan import narrow_weights_record
    from autotimm_deploy.exporter.formats.torch_program import planned_float, quantize_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    info = {"tool": "torchao pt2e + X86InductorQuantizer",
            "scheme": "int8 activations (asymmetric uint8), per-channel int8 weights; frozen",
            "calibration": ctx.calibration_info}
    graph = program.module()
    narrow = ctx.int8_plan is not None and ctx.int8_plan.narrow_weights
    if narrow:
        info["weights"] = narrow_weights_record("per-channel weights in [-64, 63] (oneDNN behind Inductor)")
    quantizer = X86InductorQuantizer().set_global(x86_int8_config(narrow))
    for name in sorted(planned_float(graph, ctx.int8_plan, info)):
        quantizer.set_module_name_qconfig(name, None)
    dims = None if ctx.options.static else True
    quantized = quantize_pt2e(graph, quantizer, ctx, dims)
    requantized, _ = export_program(quantized, example, ctx.options)
    return requantized, info
