"""A toy format and its runtime, declared in this one file and registered by importing it: what
`tests/test_registry.py` checks every consumer sees (the CLI, --list-formats, the pipeline, the
profiler's artifact detection, the docs check). It writes a frozen TorchScript program under its own
ending and magic-free name, and runs it through a TorchScript session of its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.formats import FORMATS, Format, get_format, register_format
from autotimm_deploy.exporter.formats.base import cli_option
from autotimm_deploy.profiler.runtimes import RUNTIMES, register_runtime
from autotimm_deploy.profiler.runtimes.torchscript import TorchScriptSession


@dataclass
class ToyOptions:
    flavour: str = cli_option("--toy-flavour", "what the toy format records", default="plain", metavar="NAME")


@register_format
class ToyFormat(Format):
    name = "toy"
    suffix = ".toy"
    companions = (".toy.txt",)
    description = "a test's toy format: TorchScript under another name, with a companion"
    default_runtime = "toy-runtime"
    Options = ToyOptions

    @staticmethod
    def check_file(path: Path) -> None:
        if not path.read_bytes().startswith(b"PK"):
            raise UserError(f"{path} is not a toy artifact (no zip header)")

    def export(self, ctx):
        exported = get_format("torchscript")().export(ctx)
        path, note = ctx.path(self.suffix), ctx.path(self.companions[0])
        exported.artifact.rename(path)
        note.write_text(ctx.options.of(self.name).flavour)
        exported.files = [path, note]
        exported.info["flavour"] = ctx.options.of(self.name).flavour
        return exported


@register_runtime
class ToySession(TorchScriptSession):
    name = "toy-runtime"
    formats = ("toy",)


def unregister() -> None:
    FORMATS.pop(ToyFormat.name, None)
    RUNTIMES.pop(ToySession.name, None)
