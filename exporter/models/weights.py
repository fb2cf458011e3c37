"""Local checkpoints (`.safetensors`, `.pth/.pt/.bin` state dicts) and head seeding for random weights."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from autotimm_deploy.exporter.core.errors import UserError, first_line

# Containers that training scripts wrap a state dict in, tried in this order.
_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module", "net")
# Prefixes added by DataParallel, Lightning modules, torch.compile, our own task wrappers.
_PREFIXES = ("module.", "model.", "_orig_mod.", "backbone.", "net.")
_SHOW = 5


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # torch's advice to unpickle everything is not ours to give
                warnings.simplefilter("ignore")
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated, pickled objects, ...
        raise UserError(
            f"cannot read checkpoint {path}: not a safetensors file or a torch state dict of plain tensors "
            f"({type(e).__name__}: {first_line(str(e).replace('weights_only=False', 'weights_only=…'), 120)})"
        ) from None
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), dict) and obj[key]:
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors (a dict name -> tensor)")
    return obj


def _strip_prefixes(sd: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and not set(sd) & expected:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
                break
    return sd


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Load strictly; any missing/unexpected key or shape mismatch is one clear error."""
    expected = model.state_dict()
    sd = _strip_prefixes(read_state_dict(path), set(expected))
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:_SHOW])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:_SHOW])})")
    if mismatched:
        problems.append(f"{len(mismatched)} with another shape (e.g. {'; '.join(mismatched[:_SHOW])})")
    if problems:
        hint = _hint(model, sd)
        raise UserError(f"checkpoint {path} does not match the model: {'; '.join(problems)}{hint}")
    check_trained_floats(sd, expected, path)
    model.load_state_dict(sd, strict=True)


def check_trained_floats(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path) -> None:
    """A trained float model stores float weights and finite numbers: a tensor the model holds as
    float but the file holds as integers, or any NaN / Inf, means a broken or wrong file (it would
    otherwise load silently, and even pass parity against itself)."""
    for k, want in expected.items():
        got = sd[k]
        if want.is_floating_point() and not got.is_floating_point():
            raise UserError(f"checkpoint {path}: {k} is stored as {str(got.dtype).replace('torch.', '')} where the "
                            f"model holds {str(want.dtype).replace('torch.', '')}: not a trained float checkpoint")
        if got.is_floating_point() and got.numel() and not bool(torch.isfinite(got).all()):
            bad = int((~torch.isfinite(got)).sum())
            raise UserError(f"checkpoint {path}: {k} holds {bad} NaN/Inf value(s): training diverged or the file is "
                            "damaged")


def _hint(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> str:
    """Suggest --num-classes / --in-chans when the mismatch is only the classifier or the stem."""
    try:
        name = model.default_cfg.get("classifier")
        if isinstance(name, (list, tuple)):
            name = name[0]
        w = sd.get(f"{name}.weight")
        if w is not None and w.shape[0] != model.state_dict()[f"{name}.weight"].shape[0]:
            return f" (the checkpoint has {w.shape[0]} classes: pass --num-classes {w.shape[0]})"
        stem = model.default_cfg.get("first_conv")
        if isinstance(stem, (list, tuple)):
            stem = stem[0]
        w = sd.get(f"{stem}.weight")
        if w is not None and w.ndim == 4 and w.shape[1] != model.state_dict()[f"{stem}.weight"].shape[1]:
            return f" (the checkpoint has {w.shape[1]} input channels: pass --in-chans {w.shape[1]})"
    except Exception:  # noqa: BLE001 - the hint is best effort; the error itself stands
        pass
    return " (is it for another architecture?)"


def seed_zero_head(model: torch.nn.Module, seed: int) -> bool:
    """Re-initialise an all-zero classifier (timm zero-inits some) so random-weight outputs depend on
    the input and parity means something. Returns True when it changed the model."""
    try:
        head = model.get_classifier()
    except Exception:  # noqa: BLE001 - not every model has one
        return False
    params = [p for n, p in head.named_parameters() if n.endswith("weight") and p.dim() >= 2] if isinstance(
        head, torch.nn.Module
    ) else []
    if not params or any(bool(p.detach().abs().max() > 0) for p in params):
        return False
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) * fan_in**-0.5)
    return True
