"""torch.export program with a dynamic batch dimension, saved with ``torch.export.save`` (``.pt2``)."""

from __future__ import annotations

import io

from autotimm_deploy.exporter.core.files import write_bytes
from autotimm_deploy.exporter.formats.file_checks import zip_check
from autotimm_deploy.exporter.formats.base import ExportContext, Exported, Format, register_format
from autotimm_deploy.exporter.formats.dims import export_program
from autotimm_deploy.exporter.formats.torch_program import program_module


@register_format
class PT2Format(Format):
    name = "pt2"
    suffix = ".pt2"
    default_runtime = "pt2"
    check_file = staticmethod(zip_check("torch.export (.pt2)", "archive_format"))
    description = "torch.export ExportedProgram (AOTInductor / ExecuTorch input)"
    dynamic_size = True
    embeds_preprocessing = True

    def export(self, ctx: ExportContext) -> Exported:
        import torch

        path = ctx.path(self.suffix)
        program, multiple = export_program(program_module(ctx.model), ctx.example_input(), ctx.options)
        buf = io.BytesIO()  # serialised in memory: a full disk is then an OSError, not a C++ abort
        torch.export.save(program, buf)
        write_bytes(path, buf.getvalue())
        return Exported([path], exporter="torch.export(strict=False)", size_multiple=multiple)

