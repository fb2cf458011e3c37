"""autotimm-deploy exporter: timm backbone + task head -> deployable artifacts, each parity-checked."""

from exporter.errors import ExportFailed, MissingExtra, UserError
from exporter.spec import ModelSpec

__all__ = ["ModelSpec", "UserError", "MissingExtra", "ExportFailed", "export", "build_model"]


def __getattr__(name):  # lazy: keep `import exporter` cheap
    if name == "export":
        from exporter.api import export

        return export
    if name == "build_model":
        from exporter.models import build_model

        return build_model
    raise AttributeError(name)
