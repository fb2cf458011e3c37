"""AOTInductor package (``.aoti.pt2``): ``torch.export`` -> ``torch._inductor.aoti_compile_and_package``.

The package holds C++/CUDA kernels that Inductor generated and compiled for one device, plus the
weights, and runs without Python (``torch::inductor::AOTIModelPackageLoader``; see
docs/examples/aoti/) or from Python (``torch._inductor.aoti_load_package``). It is compiled for the
CPU unless ``--device cuda``, and only runs on the kind of device it was compiled for: the manifest
records it and the `aoti` runtime refuses another.

Compiling needs a C++ compiler (Inductor calls ``g++`` / ``$CXX``) and takes tens of seconds (the
small test models) to minutes (resnet50 on 2 cores). Inductor's ``freezing`` (weights folded into
the graph) is left off: on this project's CPU it made resnet18 slower, not faster (docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from autotimm_deploy.exporter.core.errors import ExportFailed, UserError, first_line
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
    precisions = ("fp32",)
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
        check_device(options.of("aoti").device)

    @staticmethod
    def recognizes(path: Path) -> bool:
        """An AOTInductor package is a .pt2 archive too, with compiled kernels under data/aotinductor/."""
        return any(AOTI_MARKER in n for n in zip_names(path) or ())

    def export(self, ctx: ExportContext) -> Exported:
        import torch

        device = torch.device(ctx.options.of("aoti").device)
        model = program_module(ctx.model)
        example = ctx.example_input()
        if device.type != "cpu":  # a copy on the GPU: the other formats keep exporting the CPU model
            model, example = copy.deepcopy(model).to(device), example.to(device)
        program, multiple = export_program(model, example, ctx.options)
        path = ctx.path(self.suffix)
        try:
            with torch.no_grad():
                torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        except Exception as e:  # noqa: BLE001 - Inductor lowering or the C++ compiler failed
            raise ExportFailed(f"AOTInductor compile failed: {first_line(e)}") from e
        if not path.is_file() or path.stat().st_size == 0:
            raise ExportFailed("AOTInductor produced no package")
        info = {"compiler": "torch._inductor.aoti_compile_and_package", "device": device.type, "cxx": compiler()}
        if device.type == "cuda":
            from autotimm_deploy.exporter.core.environment import gpu_environment

            gpu = gpu_environment(device.index or 0)
            info["gpu"] = {"name": gpu["name"], "compute_capability": gpu["compute_capability"], "cuda": gpu["cuda"]}
        return Exported([path], info, exporter="torch.export(strict=False)", size_multiple=multiple)
