"""TorchScript: ``torch.jit.trace`` then ``torch.jit.freeze``; saved as ``.pt``."""

from __future__ import annotations

import io
import warnings

from autotimm_deploy.exporter.core.files import write_bytes
from autotimm_deploy.exporter.formats.file_checks import zip_check
from autotimm_deploy.exporter.formats.base import ExportContext, Exported, Format, register_format
from autotimm_deploy.exporter.formats.torch_program import program_module


@register_format
class TorchScriptFormat(Format):
    name = "torchscript"
    suffix = ".pt"
    aliases = (".ts", ".torchscript", ".jit")
    default_runtime = "torchscript"
    check_file = staticmethod(zip_check("TorchScript", "constants.pkl"))
    description = "TorchScript (traced, frozen) for libtorch / torch.jit.load"

    def export(self, ctx: ExportContext) -> Exported:
        import torch

        path = ctx.path(self.suffix)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings and torch.jit's deprecation notice
            traced = torch.jit.trace(program_module(ctx.model), ctx.example_input(), check_trace=False, strict=False)
            frozen = torch.jit.freeze(traced.eval())
            buf = io.BytesIO()  # serialised in memory: a full disk is then an OSError, not a C++ abort
            torch.jit.save(frozen, buf)
        write_bytes(path, buf.getvalue())
        return Exported([path], exporter="torch.jit.trace+freeze")
