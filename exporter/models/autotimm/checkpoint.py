"""Reading an AutoTimm (Lightning) checkpoint without trusting it, and telling what it holds.

The file is read with ``torch.load(weights_only=True)``: plain tensors and containers only, so a
malicious ``.ckpt`` cannot run code (Lightning's own ``load_from_checkpoint`` unpickles everything).
Which AutoTimm task wrote it is read from its ``hyper_parameters`` (Lightning does not record the
class): each task in `autotimm_deploy.exporter.models.autotimm.tasks` names the keys that mark it.
Nothing here imports AutoTimm, so a checkpoint is recognised (and a missing extra reported) before
the ~10 s import."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from autotimm_deploy.exporter.core.errors import UserError, first_line

COMPILED = "._orig_mod"  # torch.compile's wrapper, in keys saved with AutoTimm's compile_model=True


@dataclass(frozen=True)
class LightningCheckpoint:
    path: Path
    hparams: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    lightning_version: str | None
    compiled: bool  # saved from torch.compile'd modules (its keys held ._orig_mod, removed here)


def read_lightning_checkpoint(path: str | Path) -> LightningCheckpoint | None:
    """The checkpoint at ``path`` if it is a Lightning checkpoint (a dict with ``state_dict`` and
    ``hyper_parameters``), else None. Unreadable or unsafe files are a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated, pickled objects, ...
        raise UserError(
            f"cannot read checkpoint {path}: not a torch checkpoint of plain tensors and values "
            f"({type(e).__name__}: {first_line(str(e).replace('weights_only=False', 'weights_only=…'), 120)})"
        ) from None
    if not (isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)
            and isinstance(obj.get("hyper_parameters"), dict)):
        return None
    sd = obj["state_dict"]
    if not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise UserError(f"{path}: its state_dict does not hold tensors by name")
    compiled = any(COMPILED in k for k in sd)
    sd = {k.replace(COMPILED, ""): v for k, v in sd.items()}
    version = obj.get("pytorch-lightning_version")
    return LightningCheckpoint(path, dict(obj["hyper_parameters"]), sd, version if isinstance(version, str) else None,
                               compiled)
