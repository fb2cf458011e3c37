"""Local checkpoints (`.safetensors`, `.pth/.pt/.bin` state dicts) and head seeding for random weights."""

from __future__ import annotations

import struct
import warnings
import zipfile
from pathlib import Path

import torch
from autotimm_deploy.exporter.core.environment import available_memory
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.limits import MAX_INFLATION

CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin", ".safetensors")  # what a checkpoint file is named

# Containers that training scripts wrap a state dict in, tried in this order.
_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module", "net")
# Prefixes added by DataParallel, Lightning modules, torch.compile, our own task wrappers.
_PREFIXES = ("module.", "model.", "_orig_mod.", "backbone.", "net.")
_SHOW = 5

_SMALL_ENTRY = 1 << 20  # entries below this may compress as they like (tiny all-zero buffers do)
_SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors' own bound on its JSON header
_ZIP_MAGIC = b"PK\x03\x04"  # what torch.load takes for a zip archive (the file's first bytes)


def _size(n: int) -> str:
    if n < 2**20:
        return f"{n / 2**10:,.0f} KB"
    return f"{n / 2**20:,.0f} MB" if n < 2**30 else f"{n / 2**30:,.1f} GB"


def check_unpacked_size(path: Path) -> None:
    """Bound what reading the checkpoint at ``path`` holds in memory, from what the file declares and
    before anything is read: a torch zip's entry sizes from its directory (each entry's inflation
    against its compressed size, and their total against the file's size), a safetensors file's
    header length; then that total against the memory available now. A `UserError` past either."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {first_line(e, 120)}") from None
    if path.suffix == ".safetensors":
        unpacked = _safetensors_data(path, head, size)
    elif head.startswith(_ZIP_MAGIC):
        unpacked = _zip_unpacked(path, size)
    else:  # a legacy torch file: its storages are read as they lie in it
        unpacked = size
    free = available_memory()
    if free is not None and unpacked > free:
        raise UserError(f"checkpoint {path} unpacks to {_size(unpacked)} in memory, {_size(free)} is available here: "
                        "free memory or read it on a larger machine")


def _zip_unpacked(path: Path, size: int) -> int:
    """The bytes a torch zip checkpoint inflates to, read from its directory (nothing inflated yet)."""
    try:
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except Exception as e:  # noqa: BLE001 - a truncated or forged directory, in any of zipfile's ways
        raise UserError(f"cannot read checkpoint {path}: its zip directory is damaged ({first_line(e, 120)})") from None
    for entry in entries:
        packed = max(entry.compress_size, 1)
        if entry.file_size > _SMALL_ENTRY and entry.file_size > MAX_INFLATION * packed:
            raise UserError(f"checkpoint {path}: {entry.filename} inflates {entry.file_size // packed:,}-fold, to "
                            f"{_size(entry.file_size)} from {_size(packed)}: not weights torch saved (a zip bomb?)")
    total = sum(entry.file_size for entry in entries)
    if total > max(MAX_INFLATION * size, 64 * _SMALL_ENTRY):
        raise UserError(f"checkpoint {path}: its {len(entries):,} entries inflate to {_size(total)} from a "
                        f"{_size(size)} file: not weights torch saved (a zip bomb?)")
    return total


def _safetensors_data(path: Path, head: bytes, size: int) -> int:
    """The tensor bytes of a safetensors file, its header length checked against the file first."""
    if len(head) < 8:
        raise UserError(f"cannot read checkpoint {path}: not a safetensors file ({size} bytes, no header)")
    header = struct.unpack("<Q", head)[0]
    if header > min(size - 8, _SAFETENSORS_MAX_HEADER):
        raise UserError(f"cannot read checkpoint {path}: not a safetensors file (its header says it is {header:,} "
                        f"bytes long, the file holds {size:,})")
    return size - 8 - header


def checkpoint_file(path: str | Path) -> Path:
    """``path`` when it is a file, else one line saying what it is."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} is a folder, not a file" if path.is_dir() else f"checkpoint not found: {path}")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = checkpoint_file(path)
    check_unpacked_size(path)
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
