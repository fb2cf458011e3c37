"""Everything that asks timm about a model name: validation, defaults, construction, preprocessing.

timm (with torchvision and torch's compiler behind it, ~2 s) is imported by `_timm` on first use:
profiling an exported artifact never needs it, only building a model does."""

from __future__ import annotations

import difflib
import functools

import torch
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.spec import DEFAULT_CLASSES, ModelSpec
from autotimm_deploy.exporter.models.weights import CHECKPOINT_SUFFIXES


def _timm():
    import timm

    return timm


@functools.lru_cache(maxsize=1)
def _all_names() -> tuple[str, ...]:
    return tuple(_timm().list_models())


def _is_hub_name(name: str) -> bool:
    return name.startswith(("hf-hub:", "hf_hub:", "local-dir:"))


def check_model_name(name: str) -> None:
    """A timm model name (or Hub/folder reference), or one of AutoTimm's own model names (its YOLOX
    variants, which AutoTimm builds itself: `autotimm_deploy.exporter.models.autotimm.tasks`)."""
    from autotimm_deploy.exporter.models.autotimm.tasks import VARIANTS

    base = name.split(".", 1)[0]
    if _is_hub_name(name) or name in VARIANTS or _timm().is_model(base):
        return
    close = difflib.get_close_matches(base, (*VARIANTS, *_all_names()), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    if name.lower().endswith(CHECKPOINT_SUFFIXES):
        hint += " (nor is there a checkpoint file of that name)"
    raise UserError(f"unknown timm model {name!r}{hint}")


def _cfg(name: str):
    if _is_hub_name(name):
        return None
    try:
        return _timm().models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - a missing cfg only means "no defaults known"
        return None


def _built_size(name: str) -> tuple[int, int] | None:
    """The (height, width) timm's pretrained config gives ``name``, None where it knows none."""
    cfg = _cfg(name)
    return tuple(cfg.input_size[-2:]) if cfg and cfg.input_size else None


def resolve_spec(spec: ModelSpec) -> ModelSpec:
    """Fill ``img_size`` and ``num_classes`` from timm's defaults; validate the name."""
    check_model_name(spec.model)
    cfg = _cfg(spec.model)
    changes = {}
    if spec.img_size is None:
        changes["img_size"] = _built_size(spec.model) or (224, 224)
    if spec.num_classes is None:
        if spec.task == "classification":
            changes["num_classes"] = int(cfg.num_classes) if cfg and cfg.num_classes else 1000
        else:
            changes["num_classes"] = DEFAULT_CLASSES[spec.task]
    return spec.replace(**changes) if changes else spec


def create_timm_model(spec: ModelSpec, **extra) -> torch.nn.Module:
    """``timm.create_model`` with ``exportable=True`` and the spec's geometry, errors made one line."""
    cfg = _cfg(spec.model)
    kwargs = dict(exportable=True, in_chans=spec.in_chans, **extra)
    if cfg is not None and cfg.fixed_input_size and spec.img_size != _built_size(spec.model):
        kwargs["img_size"] = spec.img_size
    pretrained = spec.weights == "pretrained"
    torch.manual_seed(spec.seed)
    try:
        model = _timm().create_model(spec.model, pretrained=pretrained, **kwargs)
    except Exception as e:  # noqa: BLE001 - timm raises many types; all become one line here
        reason = first_line(e)
        if pretrained:
            raise UserError(
                f"could not load pretrained weights for {spec.model}: {reason} "
                "(offline? download them once with network, or pass --checkpoint PATH)"
            ) from None
        if "img_size" in kwargs:
            raise UserError(f"{spec.model} cannot be built at {_hw(spec)}: {reason}") from None
        raise UserError(f"could not build {spec.model}: {reason}") from None
    return model.eval()


def preprocessing(model: torch.nn.Module, spec: ModelSpec) -> dict:
    """Mean/std/interpolation/crop a caller must apply: the model's pretrained config, with the
    spec's overrides (``--mean`` ...) on top; ``source`` says which values came from where."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    mean = list(cfg.get("mean") or _timm().data.IMAGENET_DEFAULT_MEAN)
    std = list(cfg.get("std") or _timm().data.IMAGENET_DEFAULT_STD)
    if len(mean) != spec.in_chans:  # timm adapts the stem to in_chans, not the stats: use their average
        mean = [sum(mean) / len(mean)] * spec.in_chans
        std = [sum(std) / len(std)] * spec.in_chans
    return preprocessing_record(spec, mean, std, cfg.get("interpolation", "bicubic"), float(cfg.get("crop_pct", 0.875)),
                                f"timm's pretrained config of {spec.model}", cfg.get("crop_mode", "center"))


def preprocessing_record(spec: ModelSpec, mean, std, interpolation: str, crop_pct: float, source: str,
                         crop_mode: str = "center", extra: dict | None = None) -> dict:
    """The manifest's preprocessing (`autotimm_deploy.exporter.inputs.preprocess` applies it): these
    defaults with the spec's overrides (``--mean``, ``--resize`` ...) on top, and ``source`` saying
    which values came from where. Without ``extra`` (``resize`` ...), a timm classifier's transform:
    the shorter side to ``size / crop_pct`` with PIL, centre crop; a dense task's: the picture
    stretched to the input size, as our built-in heads are evaluated."""
    prep = {
        "input_size": [spec.in_chans, *spec.img_size],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "resize": "crop" if spec.task == "classification" else "stretch",
        "library": "pil",
        **(extra or {}),
        "color_space": "RGB" if spec.in_chans == 3 else f"{spec.in_chans}-channel",
        "layout": "NCHW",
        "scale": "pixel / 255, then (x - mean) / std",
    }
    given = {k: ([float(x) for x in v] if isinstance(v, (list, tuple)) else v) for k, v in spec.preprocess.items()}
    prep.update(given)
    if prep["resize"] == "letterbox":
        prep.setdefault("pad_value", [114.0] * spec.in_chans)
        prep.setdefault("pad_position", "center")
    if "pad_value" in given and prep["resize"] != "letterbox":
        raise UserError("--pad-value applies to --resize letterbox (the picture padded to the input size)")
    if given.keys() & {"crop_pct", "resize"} and "resize_size" in prep:
        del prep["resize_size"]  # an override of how to resize replaces AutoTimm's fixed resize size
    prep["source"] = f"{source}; set by the user: {', '.join(sorted(given))}" if given else source
    return prep


def _hw(spec: ModelSpec) -> str:
    return f"{spec.img_size[0]}x{spec.img_size[1]}"


def check_forward(model: torch.nn.Module, spec: ModelSpec) -> None:
    """Run one zero batch so a size the architecture cannot take fails here, in one line. Shapes
    only, on the meta device (no arithmetic: the export runs the model for real soon enough); where
    that cannot tell (a data-dependent op, any error), the real forward decides and words the error."""
    if _runs_on_meta(model, spec):
        return
    x = torch.zeros(1, spec.in_chans, *spec.img_size)
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{spec.model} cannot run at {_hw(spec)} with {spec.in_chans} channel(s): "
                        f"{first_line(e).rstrip('.')}{_size_hint(spec)}") from None


def _size_hint(spec: ModelSpec) -> str:
    """'; it was built for HxW: try --img-size H,W' where timm knows another size for the model."""
    size = _built_size(spec.model)
    if size is None or size == tuple(spec.img_size):
        return ""
    return f"; it was built for {size[0]}x{size[1]}: try --img-size {size[0]},{size[1]}"


def _runs_on_meta(model: torch.nn.Module, spec: ModelSpec) -> bool:
    """The forward of one zero batch through shape inference alone, on a copy of ``model`` whose
    weights are meta tensors (what a forward caches on its modules stays on the copy): resnet50 in
    0.1 s, where a real forward took 0.1 s on a quiet 2-core VM and 3 s on a loaded one."""
    import copy

    memo = {id(t): t.detach().to("meta") for t in (*model.parameters(), *model.buffers())}
    try:
        twin = copy.deepcopy(model, memo)
        with torch.no_grad():
            twin(torch.zeros(1, spec.in_chans, *spec.img_size, device="meta"))
    except Exception:  # noqa: BLE001 - said by the real forward, or not an error there at all
        return False
    return True
