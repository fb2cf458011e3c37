"""What an int8 export keeps in float and how it fits activation ranges, when plain int8 misses its
parity gate (issue #31 point 3).

Without labelled data the gate is a proxy (cosine, top-1 agreement against eager on sample pictures).
When the plain int8 artifact misses it, the pipeline retries along a ladder, cheapest in speed first,
and keeps the first artifact that passes:

1. on a CPU whose int8 kernels saturate (x86 without VNNI or AMX: ONNX Runtime adds pairs of u8 x s8
   products in 16 bits there), weights quantized to 7 bits, which cannot saturate (formats that say
   `Format.int8_narrow_weights`); then the format's other calibrators (how activation ranges are
   fitted: percentile and histogram fits clip the outliers that min/max keeps), both at no cost in speed;
2. with the weights and calibrator that came closest, the model's first and last compute layers kept in float (the
   stem sees raw pixels, the classifier's inputs are few and decide the answer);
3. those plus the layers its family is known to lose in int8: depthwise convolutions and
   squeeze-excite gates in CNNs (few weights a channel, ranges that differ per channel), attention
   output projections and MLP output layers in transformers (their inputs carry outliers).

A format takes part by naming its calibrators (`Format.int8_calibrators`, its default first) and
whether it can keep named modules in float (`Format.keeps_float`); it reads the step to build from
``ctx.int8_plan`` and records it with its quantization info. ``--max-drop`` with labelled data stays
the accurate path: it ranks layers by their measured error instead (onnx_int8, NNCF), after 7-bit
weights where ONNX Runtime's kernels saturate (onnx_int8's ``_hold_budget``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterable

from autotimm_deploy.exporter.core.environment import cpu_model, int8_saturates

WRAPPERS = ("model.", "net.", "module.")  # our wrappers' attributes in front of the model's own module path
SQUEEZE_EXCITE = re.compile(r"SqueezeExcit|SEModule|SEBlock|^SE[A-Z]?$|EcaModule|CecaModule|GatherExcite")
ATTENTION = re.compile(r"Attention|Attn")
MLP = re.compile(r"Mlp|FeedForward|FFN")
FAMILY_GROUPS = ("depthwise", "squeeze-excite", "attention-out", "mlp-out")


@dataclass(frozen=True)
class Int8Plan:
    calibrator: str | None = None  # None: the format's default
    groups: tuple[str, ...] = ()  # which kinds of layer are kept in float
    modules: tuple[str, ...] = ()  # their timm module paths
    narrow_weights: bool = False  # weights in 7 bits (`Format.int8_narrow_weights`): no 16-bit saturation

    def record(self) -> dict[str, Any]:
        return {"calibrator": self.calibrator, "weight_bits": 7 if self.narrow_weights else 8,
                "kept_float": {"groups": list(self.groups), "modules": list(self.modules)}}

    @property
    def label(self) -> str:
        parts = ["7-bit weights"] if self.narrow_weights else []
        parts += [f"calibrator {self.calibrator}"] if self.calibrator else []
        if self.groups:
            parts.append(f"{len(self.modules)} layers in float ({', '.join(self.groups)})")
        return ", ".join(parts) or "plain"


def timm_path(path: str) -> str:
    """A module path inside our wrappers (``model.net.blocks.0``) -> the timm model's own path."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPERS:
            if path.startswith(prefix):
                path, stripped = path[len(prefix):], True
    return path


def kept(plan: "Int8Plan | None", paths: Iterable[str]) -> list[str]:
    """The ``paths`` (module paths as a format's graph names them) that ``plan`` keeps in float."""
    if plan is None or not plan.modules:
        return []
    wanted = set(plan.modules)
    return [p for p in paths if timm_path(p) in wanted]


def sensitive_layers(model) -> dict[str, list[str]]:
    """Group -> timm paths of the compute layers (convolutions, linears) int8 is known to hurt."""
    import torch

    compute = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, compute)]
    groups: dict[str, list[str]] = {g: [] for g in ("edges", *FAMILY_GROUPS)}
    if not layers:
        return groups
    groups["edges"] = list(dict.fromkeys([layers[0][0], layers[-1][0]]))
    groups["depthwise"] = [n for n, m in layers if isinstance(m, torch.nn.Conv2d) and 1 < m.groups == m.in_channels]
    for name, module in model.named_modules():
        kind = type(module).__name__
        inside = [n for n, _ in layers if n.startswith(name + ".")] if name else []
        if SQUEEZE_EXCITE.search(kind):
            groups["squeeze-excite"] += inside
        elif ATTENTION.search(kind) and inside:
            groups["attention-out"].append(inside[-1])
        elif MLP.search(kind) and inside:
            groups["mlp-out"].append(inside[-1])
    return {g: [timm_path(n) for n in dict.fromkeys(paths)] for g, paths in groups.items()}


def narrow_plans(fmt, saturates: bool | None = None) -> list[Int8Plan]:
    """Step 1, first: 7-bit weights, where the format's int8 kernels saturate on this CPU."""
    saturates = int8_saturates() if saturates is None else saturates
    return [Int8Plan(narrow_weights=True)] if fmt.int8_narrow_weights and saturates else []


def narrow_weights_record(how: str) -> str:
    """The manifest's ``quantization.weights`` for a `narrow_plans` step, ``how`` the tool's own words."""
    return (f"7-bit {how}: on the exporting CPU ({cpu_model()}, no VNNI or AMX) int8 kernels add pairs of products "
            "in 16 bits, which 8-bit weights can saturate; 7-bit weights run everywhere, one bit less exact")


def calibrator_plans(fmt, base: Int8Plan | None = None) -> list[Int8Plan]:
    """Step 1: the format's calibrators after its default, with ``base``'s weights."""
    return [dataclasses.replace(base or Int8Plan(), calibrator=c) for c in fmt.int8_calibrators[1:]]


def float_plans(fmt, model, base: Int8Plan | None = None) -> list[Int8Plan]:
    """Steps 2 and 3 with ``base``'s weights and calibrator: the edges, then the edges and the family's layers."""
    if not fmt.keeps_float:
        return []
    base = base or Int8Plan()
    layers = sensitive_layers(model)
    plans, groups = [], []
    for step in (("edges",), FAMILY_GROUPS):
        groups += [g for g in step if layers[g]]
        if groups and (not plans or len(groups) > len(plans[-1].groups)):
            modules = tuple(dict.fromkeys(p for g in groups for p in layers[g]))
            plans.append(dataclasses.replace(base, groups=tuple(groups), modules=modules))
    return plans
