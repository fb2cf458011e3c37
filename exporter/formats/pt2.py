"""torch.export program with a dynamic batch dimension, saved with ``torch.export.save`` (``.pt2``)."""

from __future__ import annotations

import io

from autotimm_deploy.exporter.core.errors import ExportFailed, first_line
from autotimm_deploy.exporter.core.files import write_bytes
from autotimm_deploy.exporter.formats.base import ExportContext, Exported, Format, register_format
from autotimm_deploy.exporter.formats.torch_program import program_module


@register_format
class PT2Format(Format):
    name = "pt2"
    suffix = ".pt2"
    description = "torch.export ExportedProgram (AOTInductor / ExecuTorch input)"

    def export(self, ctx: ExportContext) -> Exported:
        import torch
        from torch.export import Dim

        path = ctx.path(self.suffix)
        dynamic = None if ctx.options.static else ({0: Dim("batch", min=1)},)
        try:
            with torch.no_grad():
                program = torch.export.export(program_module(ctx.model), (ctx.example_input(),), dynamic_shapes=dynamic, strict=False)
        except Exception as e:  # noqa: BLE001
            hint = " (try --static: the model may fix its batch size)" if dynamic else ""
            raise ExportFailed(f"torch.export failed: {first_line(e)}{hint}") from e
        buf = io.BytesIO()  # serialised in memory: a full disk is then an OSError, not a C++ abort
        torch.export.save(program, buf)
        write_bytes(path, buf.getvalue())
        return Exported([path], {"exporter": "torch.export(strict=False)"})

