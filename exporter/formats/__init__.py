"""Format registry: one module per artifact kind, registered by name with `register_format`.

A format turns the built model (or the artifact of the format it ``derives_from``) into files in a
scratch folder; `autotimm_deploy.exporter.pipeline` verifies them and moves them into place. Adding
a format is adding one module here: every module of this package is imported below (they import
their heavy libraries lazily), so its `register_format` is all the registration there is.
"""

import importlib
import pkgutil

from autotimm_deploy.exporter.formats.base import (
    FORMATS,
    BatchRange,
    ExportContext,
    Exported,
    ExportOptions,
    Format,
    available_formats,
    export_order,
    get_format,
    register_format,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FORMATS", "BatchRange", "ExportContext", "ExportOptions", "Exported", "Format", "available_formats",
           "export_order", "get_format", "register_format"]
