"""Model building: `build_model(spec)` -> an eval-mode module whose forward returns a tuple of tensors.

Every built model carries ``output_names`` (one per returned tensor, fixed per task, see DESIGN.md)
and ``build_info`` (what the manifest should know about how it was built). Task builders register
themselves by task name; `exporter.models.classification` is the first.
"""

from __future__ import annotations

from typing import Callable

import torch

from exporter.errors import UserError
from exporter.models.timm_backbone import resolve_spec
from exporter.spec import ModelSpec

INPUT_NAME = "input"

TASK_BUILDERS: dict[str, Callable[[ModelSpec], torch.nn.Module]] = {}


def register_task(name: str):
    def deco(fn):
        TASK_BUILDERS[name] = fn
        return fn

    return deco


def build_model(spec: ModelSpec) -> torch.nn.Module:
    """Resolve ``spec`` and build its model in eval mode. Raises `UserError` for bad specs."""
    spec = resolve_spec(spec)
    builder = TASK_BUILDERS.get(spec.task)
    if builder is None:
        raise UserError(
            f"task {spec.task!r} is not supported by this version; supported: {', '.join(sorted(TASK_BUILDERS))}"
        )
    model = builder(spec).eval()
    model.spec = spec
    return model


from exporter.models import classification, detection, instance, segmentation  # noqa: E402,F401  (register the tasks)
