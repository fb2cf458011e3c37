"""AutoTimm's own task modules, rebuilt: from a checkpoint (weights and settings from the file) or
with random weights (the speed tables of the architectures AutoTimm trains).

The module is AutoTimm's class itself, constructed from the checkpoint's ``hyper_parameters`` with
the backbone's ``pretrained=False`` (nothing is downloaded), no ``torch.compile`` and no global
seeding; the inference submodules' weights are then loaded strictly. A timm backbone is given in
AutoTimm's ``(Feature)BackboneConfig``; YOLOXDetector takes the name of one of its own variants
(``yolox-s``), which is the spec's model name. The deployable model is a
fixed-shape wrapper (`wrappers`) around it."""

from __future__ import annotations

import importlib.metadata
import inspect
import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from autotimm_deploy.exporter.core.capture import captured_output
from autotimm_deploy.exporter.core.errors import MissingExtra, UserError, first_line
from autotimm_deploy.exporter.core.files import sha256_file
from autotimm_deploy.exporter.core.limits import MAX_IMG_SIDE
from autotimm_deploy.exporter.core.spec import DETECTION_ARCHS, ModelSpec
from autotimm_deploy.exporter.models.autotimm.checkpoint import LightningCheckpoint, read_lightning_checkpoint
from autotimm_deploy.exporter.models.autotimm.tasks import STRUCTURAL, TASKS, AutoTimmTask, for_spec, identify
from autotimm_deploy.exporter.models.autotimm.preprocessing import eval_transform
from autotimm_deploy.exporter.models.timm_backbone import preprocessing, preprocessing_record
from autotimm_deploy.exporter.models.weights import check_trained_floats

SUPPORTED = (0, 7)  # AutoTimm 0.7.x: the modules and predict() this code reproduces
SUPPORTED_PIN = "autotimm>=0.7,<0.8"
# constructor arguments we set ourselves (not part of the network settings the manifest records)
RESERVED = ("backbone", "compile_model", "compile_kwargs", "seed", "deterministic", "metrics", "logging_config",
            "transform_config")
_SHOW = 4
HUB_PREFIXES = ("hf-hub:", "hf_hub:", "timm/", "local-dir:")
# AutoTimm's detection and segmentation eval transforms resize to the input size (letterbox or
# stretch) with bilinear filtering and never crop; timm's classifier config would centre-crop
PRIVATE = ("username",)  # AutoTimm records the trainer's login; manifests travel, so it stays out


def autotimm_version() -> str | None:
    try:
        return importlib.metadata.version("autotimm")
    except importlib.metadata.PackageNotFoundError:
        return None


def import_autotimm():
    """AutoTimm, imported (~10 s: PyTorch Lightning); a missing or unsupported version is one line."""
    version = autotimm_version()
    if version is None:
        raise MissingExtra("autotimm (needed for AutoTimm checkpoints and architectures)", "autotimm")
    found = tuple(int(v) for v in re.findall(r"\d+", version)[:2])
    if found != SUPPORTED:
        raise UserError(f"autotimm {version} is installed; this autotimm-deploy rebuilds AutoTimm "
                        f"{SUPPORTED[0]}.{SUPPORTED[1]}.x models: pip install '{SUPPORTED_PIN}'")
    try:
        with warnings.catch_warnings(), captured_output():
            warnings.simplefilter("ignore")
            import autotimm
    except Exception as e:  # noqa: BLE001 - a broken install: say which package
        raise UserError(f"autotimm {version} is installed but does not import: {first_line(e)} "
                        f"(reinstall it: pip install --force-reinstall '{SUPPORTED_PIN}')") from None
    return autotimm


def load_autotimm_checkpoint(path: str | Path) -> tuple[LightningCheckpoint, AutoTimmTask]:
    ck = read_lightning_checkpoint(path)
    if ck is None:
        raise UserError(f"{path} is not an AutoTimm (Lightning) checkpoint; to load a plain state dict into a timm "
                        f"model, name the model: autotimm-export MODEL --checkpoint {path}")
    found = identify(ck.hparams)
    if found is None:
        raise UserError(f"{path} is a Lightning checkpoint, but not of an AutoTimm task (its hyper_parameters name "
                        f"none of {', '.join(t.cls_name for t in TASKS)}); to load its weights into a timm model, "
                        f"name the model: autotimm-export MODEL --task TASK --checkpoint {path}")
    return ck, found


def is_autotimm_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a Lightning checkpoint that one of AutoTimm's tasks wrote."""
    ck = read_lightning_checkpoint(path)
    return ck is not None and identify(ck.hparams) is not None


def _plain(v: Any) -> Any:
    """Hyper-parameter values as JSON holds them (tuples as lists, infinities as strings)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def spec_from_checkpoint(checkpoint: str | Path, model: str | None = None, task: str | None = None,
                         num_classes: int | None = None, head: dict[str, Any] | None = None,
                         **fields: Any) -> ModelSpec:
    """The `ModelSpec` of an AutoTimm checkpoint: backbone, task, classes and head settings read from
    its hyper-parameters. ``model``, ``task`` and ``num_classes``, when given, must agree with it;
    ``head`` may change thresholds, not what shapes the weights. ``fields`` go to the spec as given
    (img_size, preprocess, seed, ...)."""
    ck, t = load_autotimm_checkpoint(checkpoint)
    hp = ck.hparams
    what = f"{checkpoint} holds an AutoTimm {t.describe(hp)}"
    classes = hp["num_classes"]
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise UserError(f"{what} whose num_classes is {classes!r}, not a positive integer: a damaged checkpoint")
    name, kind = hp[t.model_key], "model" if t.variants else "backbone"
    if t.variants and name not in t.variants:
        raise UserError(f"{what}: {name!r} is none of AutoTimm's {t.cls_name} models ({', '.join(t.variants)}): a "
                        "damaged checkpoint, or one of another AutoTimm version")
    if model is None and name.startswith(HUB_PREFIXES):
        raise UserError(f"{what}: its backbone {name!r} is read from the Hugging Face Hub or a folder; name "
                        "it on the command line to allow that")
    if model is not None and model != name:
        raise UserError(f"{what}: its {kind} is {name}, not {model}; leave the model name out (the "
                        "checkpoint names it)")
    if task is not None and task != t.task:
        raise UserError(f"{what}, a {t.task} model, not {task}: leave --task out")
    if num_classes is not None and num_classes != hp["num_classes"]:
        raise UserError(f"{what} with {hp['num_classes']} classes, not {num_classes}: leave --num-classes out")
    settings = {**t.fixed, **{opt: _plain(hp[arg]) for opt, arg in t.options.items()
                               if arg in hp and hp[arg] is not None}}
    try:  # the checkpoint's own values, before any flag (less those a flag replaces): a refusal says whose
        own = {k: v for k, v in settings.items() if k in STRUCTURAL or k not in (head or {})}
        ModelSpec(model=name, task=t.task, num_classes=classes, head=own, architecture="autotimm")
    except UserError as e:
        raise UserError(f"{what} whose hyper-parameters are refused ({e}; a value read from the checkpoint, not a "
                        "flag): a damaged or edited checkpoint") from None
    for key, value in (head or {}).items():
        _check_option(t, key, what)
        if key in STRUCTURAL and key in settings and value != settings[key]:
            raise UserError(f"{what} trained with --{key.replace('_', '-')} {settings[key]}, not {value}: only "
                            "thresholds can change after training")
        settings[key] = value
    size = (ck.transform_config or {}).get("image_size", ck.datamodule.get("image_size"))  # a TransformConfig's wins
    if fields.get("img_size") is None and size is not None:  # the DataModule's training size, when it was saved
        sides = list(size) if isinstance(size, (list, tuple)) and len(size) == 2 else [size, size]
        if not all(type(s) is int and 0 < s <= MAX_IMG_SIDE for s in sides):  # one side, or (h, w) of one's own
            raise UserError(f"{what} whose training image_size is {size!r}, not a size in pixels: give --img-size")
        fields["img_size"] = tuple(sides)
    if fields.get("img_size") is None and t.variants:
        fields["img_size"] = (t.variants[name],) * 2  # the variant's own size, not timm's 224 for an unknown name
    return ModelSpec(model=name, task=t.task, num_classes=classes, weights="checkpoint",
                     checkpoint=str(checkpoint), head=settings, architecture="autotimm", **fields)


def _check_option(t: AutoTimmTask, key: str, what: str) -> None:
    """A head option ``t`` has no setting of (the spec allows it for other classes of the task)."""
    if key not in t.options and key not in t.fixed:
        takes = ", ".join("--" + k.replace("_", "-") for k in (*t.fixed, *t.options))
        raise UserError(f"{what}: --{key.replace('_', '-')} does not apply to AutoTimm's {t.cls_name} (it takes: "
                        f"{takes})")


def _check_spec(t: AutoTimmTask, spec: ModelSpec) -> None:
    """What AutoTimm's ``t`` cannot build: another channel count, head options it has no setting of,
    another value of one it fixes, pretrained weights it has none of, input sides its network refuses."""
    if spec.in_chans != 3:
        raise UserError(f"AutoTimm models take 3-channel RGB input; --in-chans {spec.in_chans} does not apply")
    what = f"{spec.model} is AutoTimm's {t.cls_name} model" if t.variants else f"AutoTimm {t.cls_name}({spec.model})"
    for key in spec.head:
        _check_option(t, key, what)
    for key, value in t.fixed.items():
        if spec.head.get(key) != value:
            raise UserError(f"{what}, whose --{key.replace('_', '-')} is {value}: give --{key.replace('_', '-')} "
                            f"{value}" + (f", not {spec.head[key]}" if key in spec.head else ""))
    if t.variants and spec.weights == "pretrained":
        raise UserError(f"{what}: AutoTimm has no pretrained weights for it; give a checkpoint, or random weights")
    h, w = spec.img_size
    if h % t.size_multiple or w % t.size_multiple:
        raise UserError(f"{what}: its input sides must be multiples of {t.size_multiple}, not {h}x{w} (--img-size)")


def _load_weights(net: torch.nn.Module, ck: LightningCheckpoint, t: AutoTimmTask, version: str) -> int:
    """Load the inference submodules' weights strictly; returns how many other entries (losses,
    metrics) the checkpoint held and inference does not need."""
    expected = {k: v for k, v in net.state_dict().items() if k.split(".", 1)[0] in t.parts}
    given = {k: v for k, v in ck.state_dict.items() if k.split(".", 1)[0] in t.parts}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                if k in given and given[k].shape != v.shape]
    problems = [f"{len(v)} {what} (e.g. {', '.join(v[:_SHOW])})" for v, what in
                ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "with another shape")) if v]
    if problems:
        raise UserError(f"{ck.path} does not match the {t.describe(ck.hparams)} that autotimm {version} builds from "
                        f"its hyper-parameters: {'; '.join(problems)} (written by another AutoTimm version, or edited?)")
    check_trained_floats(given, expected, ck.path)
    net.load_state_dict(given, strict=False)
    return len(ck.state_dict) - len(given)


def _spread_random_head(net: torch.nn.Module, seed: int) -> None:
    """Random weights: AutoTimm initialises detection heads to score ~0.01 everywhere (below any
    threshold), so nothing would be detected and parity would compare empty lists. Spread the final
    layers (seeded) so scores and boxes differ across locations and pictures, and classes apart by a
    bias each: where features vanish (YOLOX's 2x2 top level at 64 px), the classes' scores would tie
    to 1e-7 and any runtime's rounding would pick another label."""
    gen = torch.Generator().manual_seed(seed)
    head = getattr(net, "detection_head", None) or net.head
    with torch.no_grad():
        for name in ("cls_pred", "centerness_pred", "reg_pred"):
            layer = getattr(head, name, None)
            if layer is not None:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.05)
                layer.bias.zero_()
        head.cls_pred.bias.copy_(torch.randn(head.cls_pred.bias.shape, generator=gen) * 0.1)
        head.reg_pred.bias.fill_(16.0)  # boxes of a few dozen pixels, not degenerate ones


def build_autotimm(spec: ModelSpec) -> torch.nn.Module:
    """AutoTimm's module for ``spec`` (a checkpoint's, or random weights), in its deployable wrapper."""
    t = for_spec(spec.task, spec.model)
    _check_spec(t, spec)
    ck, hp = None, {}
    if spec.weights == "checkpoint":
        ck, found = load_autotimm_checkpoint(spec.checkpoint)
        if found is not t:
            raise UserError(f"{spec.checkpoint} holds an AutoTimm {found.cls_name}, not a {spec.task} model")
        hp = ck.hparams
    autotimm = import_autotimm()
    version = autotimm_version()
    cls = getattr(autotimm, t.cls_name)
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: hp[k] for k in t.keys if k in hp and k in params and hp[k] is not None}
    kwargs["num_classes"] = spec.num_classes
    kwargs.update({t.options[k]: (tuple(v) if isinstance(v, list) else v) for k, v in spec.head.items()
                   if k in t.options})
    if "arch" in t.options:
        kwargs.setdefault("detection_arch", DETECTION_ARCHS[0])
    if spec.seg_head:
        kwargs.setdefault("head_type", spec.seg_head)  # our default (fcn), which the spec's name and label say
    if t.variants:
        kwargs[t.model_key] = spec.model
    else:
        config = autotimm.FeatureBackboneConfig if t.features else autotimm.BackboneConfig
        kwargs[t.model_key] = config(model_name=spec.model, pretrained=spec.weights == "pretrained")
    kwargs.update(compile_model=False, compile_kwargs=None, seed=None, deterministic=False, **t.construct)
    torch.manual_seed(spec.seed)
    try:
        with warnings.catch_warnings(), captured_output():
            warnings.simplefilter("ignore")
            net = cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - AutoTimm raises many types; one line here
        raise UserError(f"autotimm {version} could not build {t.cls_name}({spec.model}): {first_line(e)}") from None
    ignored = _load_weights(net, ck, t, version) if ck else 0
    if ck is None and t.task in ("detection", "instance-segmentation"):
        _spread_random_head(net, spec.seed)
    net.eval()
    try:
        with torch.no_grad():
            model = t.wrapper(net, spec.img_size).eval()
            model(torch.zeros(1, 3, *spec.img_size))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"AutoTimm's {t.cls_name}({spec.model}) cannot run at {spec.img_size[0]}x{spec.img_size[1]}: "
                        f"{first_line(e)}") from None
    model.build_info = {
        "params": sum(p.numel() for p in model.parameters()),
        "backbone_params": sum(p.numel() for p in net.backbone.parameters()),
        "architecture": f"autotimm {t.cls_name}",
        "autotimm": {
            "version": version,
            "class": t.cls_name,
            "settings": _plain({k: v for k, v in kwargs.items() if k not in RESERVED}),
            **({"checkpoint": Path(ck.path).name, "checkpoint_sha256": sha256_file(Path(ck.path)),
                "compiled": ck.compiled, "lightning_version": ck.lightning_version,
                "hyper_parameters": _plain({k: v for k, v in hp.items() if k not in PRIVATE}),
                "unused_entries": ignored} if ck else {"weights": spec.weights}),
        },
    }
    model.preprocessing = _preprocessing(net, spec, ck)
    return model


def _preprocessing(net: torch.nn.Module, spec: ModelSpec, ck: LightningCheckpoint | None) -> dict[str, Any]:
    """AutoTimm's eval transform for the task (from the checkpoint's DataModule settings, or its
    defaults), with the spec's overrides (``--mean``, ``--resize`` ...) on top."""
    timm_cfg = preprocessing(net.backbone, spec)
    at = eval_transform(spec.task, spec.img_size[0], ck.datamodule if ck else None,
                        ck.transform_config if ck else None, timm_cfg)
    if ck is not None and ck.custom_eval_transforms:
        at["source"] += "; the DataModule was given eval transforms of its own, which a checkpoint cannot describe: " \
                        "give them with --resize/--mean/--std/--interpolation if they differ"
    return preprocessing_record(spec, at.pop("mean"), at.pop("std"), at.pop("interpolation"), at.pop("crop_pct"),
                                at.pop("source"), extra=at)
