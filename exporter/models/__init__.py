"""Model building: `build_model(spec)` -> an eval-mode module whose forward returns a tuple of tensors.

Every built model carries ``output_names`` (one per returned tensor, fixed per task, see docs/formats.md)
and ``build_info`` (what the manifest should know about how it was built). Task builders register
themselves by task name; `autotimm_deploy.exporter.models.classification` is the first.
"""

from __future__ import annotations

import torch
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models import classification, detection, instance, segmentation  # noqa: F401  (register)
from autotimm_deploy.exporter.models.autotimm import build_autotimm, spec_from_checkpoint
from autotimm_deploy.exporter.models.custom import from_module
from autotimm_deploy.exporter.models.registry import TASK_BUILDERS, register_task
from autotimm_deploy.exporter.models.timm_backbone import check_model_name, resolve_spec

__all__ = ["build_model", "check_model_name", "from_module", "register_task", "spec_from_checkpoint", "TASK_BUILDERS"]


def _build_builtin(spec: ModelSpec) -> torch.nn.Module:
    builder = TASK_BUILDERS.get(spec.task)
    if builder is None:
        raise UserError(
            f"task {spec.task!r} is not supported by this version; supported: {', '.join(sorted(TASK_BUILDERS))}"
        )
    return builder(spec)


# whose task architecture a spec names (ModelSpec.architecture) -> its builder
ARCHITECTURE_BUILDERS = {"builtin": _build_builtin, "autotimm": build_autotimm}


def build_model(spec: ModelSpec) -> torch.nn.Module:
    """Resolve ``spec`` and build its model in eval mode. Raises `UserError` for bad specs."""
    spec = resolve_spec(spec)
    model = ARCHITECTURE_BUILDERS[spec.architecture](spec).eval()
    model.spec = spec
    return model

