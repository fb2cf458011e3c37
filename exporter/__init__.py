"""autotimm-deploy exporter: timm backbone + task head -> deployable artifacts, each parity-checked."""

import importlib

from autotimm_deploy.exporter.core.errors import ExportFailed, MissingExtra, UserError
from autotimm_deploy.exporter.core.spec import ModelSpec

__all__ = ["ModelSpec", "UserError", "MissingExtra", "ExportFailed", "export", "build_model", "spec_from_checkpoint",
           "from_module"]


# Loaded on first use: every module of the package imports this file first, and these pull in
# torch and timm, which a reader of manifests (the profiler, a CI job) should not pay for.
_LAZY = {"export": "autotimm_deploy.exporter.pipeline", "build_model": "autotimm_deploy.exporter.models",
         "spec_from_checkpoint": "autotimm_deploy.exporter.models", "from_module": "autotimm_deploy.exporter.models"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
