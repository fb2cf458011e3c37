"""Bring your own model: any ``nn.Module`` that takes an image batch ``[B, C, H, W]``, with its own
postprocessing, made exportable by `from_module` (what `export(spec, model=...)` needs: a spec, output
names, the preprocessing its inputs get, build info)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.files import plain_name
from autotimm_deploy.exporter.core.spec import TASK_OUTPUTS, ModelSpec
from autotimm_deploy.exporter.models.timm_backbone import preprocessing_record
from torch import nn

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
INPUT_NAMES = {"input", "image"}  # what the graphs call their input (plain, and with preprocessing embedded)
COMPLEX = (torch.complex32, torch.complex64, torch.complex128)


def check_task_outputs(name: str, task: str, outs: dict[str, torch.Tensor], num_classes: int | None,
                       strict: bool = True) -> int | None:
    """The outputs are the ``task``'s, named as its answers read them, else one line; returns the number
    of classes they score (None where they do not say). Not ``strict``: outputs that are not the task's
    pass, unchecked."""
    detections, classes = None, None  # what every detection output holds; the classes scored
    for group in TASK_OUTPUTS[task]:
        key = next((k for k in group if k in outs), None)
        dims = group.get(key, "")
        shape = tuple(outs[key].shape[1:]) if key else None
        if key is None or len(shape) != len(dims) or any(d == "4" and s != 4 for d, s in zip(dims, shape)):
            if not strict:
                return None
            want = " or ".join(f"{k} [batch, {', '.join(d)}]" for k, d in group.items())
            raise UserError(f"{name} as a {task} model needs an output {want} (what its answers read), got "
                            + ", ".join(f"{k} {list(t.shape)}" for k, t in outs.items())
                            + ": name the outputs so (output_names), or give the right task")
        n = shape[dims.index("N")] if "N" in dims else None
        if n is not None and detections not in (None, n):
            raise UserError(f"{name}'s detection outputs hold different numbers of detections: "
                            + ", ".join(f"{k} {list(t.shape)}" for k, t in outs.items()))
        detections = n if n is not None else detections
        classes = shape[dims.index("C")] if "C" in dims else classes
    if num_classes is not None and classes is not None and classes != num_classes:
        raise UserError(f"{name} scores {classes} classes, not num_classes={num_classes}: give {classes}, or leave it out")
    return classes


class UserModel(nn.Module):
    """The user's module, its outputs as a tuple in ``output_names`` order (a tensor, a tuple or
    list, or a dict by name are all accepted)."""

    def __init__(self, module: nn.Module, output_names: Sequence[str]):
        super().__init__()
        self.module = module
        self.output_names = tuple(output_names)

    def forward(self, x: torch.Tensor):
        out = self.module(x)
        if isinstance(out, torch.Tensor):
            return (out,)
        if isinstance(out, dict):
            return tuple(out[n] for n in self.output_names)
        return tuple(out)


def from_module(module: nn.Module, name: str, img_size: int | tuple[int, int], output_names: Sequence[str] = ("logits",),
                task: str | None = None, in_chans: int = 3, num_classes: int | None = None,
                preprocessing: dict[str, Any] | None = None) -> nn.Module:
    """``module`` ready for `autotimm_deploy.exporter.pipeline.export` (``export(model.spec, formats,
    out, model=model)``). ``preprocessing`` (mean, std, interpolation, crop_pct) is what callers
    must apply to pictures; default ImageNet statistics, bilinear resize, no crop. One zero batch is
    run to check the outputs match ``output_names``; given a ``task``, that they are the outputs its
    answers read (`TASK_OUTPUTS`). Without one the module is a classifier for file names and reports,
    and its outputs are not checked against a task."""
    plain_name(name, "the model name")
    names = (output_names,) if isinstance(output_names, str) else tuple(output_names)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise UserError(f"output_names must be distinct identifiers, got {list(names)}")
    if INPUT_NAMES & set(names):
        raise UserError(f"output_names {sorted(INPUT_NAMES & set(names))}: a graph's input has that name; name the "
                        "outputs otherwise")
    spec = ModelSpec(name, task=task or "classification", img_size=img_size, in_chans=in_chans,
                     num_classes=num_classes, weights="module", preprocess=dict(preprocessing or {}))  # checked there
    model = UserModel(module, names).eval()
    try:
        with torch.no_grad():
            outs = model(torch.zeros(2, in_chans, *spec.img_size))
    except Exception as e:  # noqa: BLE001 - the user's code: any error is theirs, in one line
        raise UserError(f"{name} cannot run on a [2, {in_chans}, {spec.img_size[0]}, {spec.img_size[1]}] batch: "
                        f"{type(e).__name__}: {first_line(e)}") from None
    if len(outs) != len(names) or not all(isinstance(t, torch.Tensor) and t.shape[:1] == (2,) for t in outs):
        raise UserError(f"{name} returns {len(outs)} output(s) for the {len(names)} output_names {list(names)}; each "
                        "must be a tensor whose first dimension is the batch")
    for n, t in zip(names, outs):
        if t.dtype in (torch.bfloat16, *COMPLEX):
            fix = "its real and imaginary parts as two outputs" if t.dtype in COMPLEX else "it as float32 (.float())"
            raise UserError(f"{name}'s output {n} is {str(t.dtype)[6:]}, which the formats' runtimes do not all "
                            f"return: return {fix}")
    # a module left at the default task may be anything (a feature map): held to a task only when given one
    found = check_task_outputs(name, spec.task, dict(zip(names, outs)), spec.num_classes, strict=task is not None)
    spec = spec.replace(num_classes=found) if spec.num_classes is None and found else spec
    mean_std = IMAGENET if in_chans == 3 else {"mean": [0.5] * in_chans, "std": [0.25] * in_chans}
    model.spec = spec
    model.preprocessing = preprocessing_record(model.spec, mean_std["mean"], mean_std["std"], "bilinear", 1.0,
                                               "default for a custom module (ImageNet statistics)")
    model.build_info = {"params": sum(p.numel() for p in module.parameters()), "architecture": "custom nn.Module",
                        "class": f"{type(module).__module__}.{type(module).__qualname__}"}
    return model
