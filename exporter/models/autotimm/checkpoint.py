"""Reading an AutoTimm (Lightning) checkpoint without trusting it, and telling what it holds.

The file is read with ``torch.load(weights_only=True)``: plain tensors and containers only, so a
malicious ``.ckpt`` cannot run code (Lightning's own ``load_from_checkpoint`` unpickles everything).
Lightning also saves the DataModule's hyper-parameters, which name classes (a ``Path``, AutoTimm's
``TransformConfig``) that ``weights_only`` refuses; such a file is read again with an unpickler that
resolves only the globals ``weights_only`` allows and puts an inert stand-in for every other, so
nothing the file names is ever imported or called.
Which AutoTimm task wrote it is read from its ``hyper_parameters`` (Lightning does not record the
class): each task in `autotimm_deploy.exporter.models.autotimm.tasks` names the keys that mark it.
Nothing here imports AutoTimm, so a checkpoint is recognised (and a missing extra reported) before
the ~10 s import."""

from __future__ import annotations

import functools
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.models.weights import check_unpacked_size, checkpoint_file

COMPILED = "._orig_mod"  # torch.compile's wrapper, in keys saved with AutoTimm's compile_model=True


class _NotLoaded:
    """Stands in for every class or function a checkpoint names beyond torch's tensor building blocks
    (a DataModule's paths and transform configs, ...): never the real thing, so reading a file cannot
    run its code. It keeps the state the file gives an object (a dataclass's fields, such as
    AutoTimm's ``TransformConfig``), to be read as plain values only (`_plain_values`)."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slots)
            state = {**(state[0] or {}), **state[1]}
        object.__setattr__(self, "_state", state if isinstance(state, dict) else None)

    def fields(self) -> dict[str, Any]:
        """The plain values of the state the file gave this object (none when it gave none)."""
        return _plain_values(getattr(self, "_state", None))

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __repr__(self) -> str:
        return "<not loaded>"


def _tensors_only_pickle_module():
    """A pickle module for `torch.load` whose unpickler resolves only the globals torch's own
    ``weights_only`` loader allows and replaces every other with `_NotLoaded`."""
    import pickle
    import types

    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = _get_allowed_globals()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            found = allowed.get(f"{module}.{name}")
            return found if found is not None else _NotLoaded

    return types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, __name__="tensors_only_pickle")


@dataclass(frozen=True)
class LightningCheckpoint:
    path: Path
    hparams: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    lightning_version: str | None
    compiled: bool  # saved from torch.compile'd modules (its keys held ._orig_mod, removed here)
    datamodule: dict[str, Any]  # the DataModule's plain hyper-parameters (image_size, ...), if it saved any
    # the plain fields of the DataModule's TransformConfig (backend, image_size, mean, ...), if it had one
    transform_config: dict[str, Any] | None = None
    custom_eval_transforms: bool = False  # the DataModule was given eval transforms of the user's own


def _load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "global" not in str(e).lower():
                raise
            return torch.load(str(path), map_location="cpu", weights_only=False,
                              pickle_module=_tensors_only_pickle_module())


def _plain_values(d: Any) -> dict[str, Any]:
    """The entries of a dict whose values are plain (numbers, strings, flags, lists of them)."""
    plain = (bool, int, float, str, type(None))
    if not isinstance(d, dict):
        return {}
    return {k: v for k, v in d.items() if isinstance(k, str) and (isinstance(v, plain) or (
        isinstance(v, (list, tuple)) and all(isinstance(x, plain) for x in v)))}


def read_lightning_checkpoint(path: str | Path) -> LightningCheckpoint | None:
    """The checkpoint at ``path`` if it is a Lightning checkpoint (a dict with ``state_dict`` and
    ``hyper_parameters``), else None. Unreadable files are a `UserError`. The last file read is
    kept, so recognising, describing and building one checkpoint reads it once."""
    path = checkpoint_file(path)
    st = path.stat()
    return _read(path.resolve(), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _read(path: Path, _size: int, _mtime_ns: int) -> LightningCheckpoint | None:
    # size and mtime are only the cache key: a file rewritten in place is read again
    if path.suffix == ".safetensors":
        return None
    if _size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes): an interrupted save or copy? give the file again")
    check_unpacked_size(path)  # a zip bomb is refused from its directory, before torch inflates it
    try:
        obj = _load(path)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated, not a torch file, ...
        # torch's weights-only refusal is a paragraph of advice to unpickle (never taken here): its own line
        why = ("its pickle holds objects other than tensors and plain values, or is no pickle" if
               isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e) else
               f"{type(e).__name__}: {first_line(e, 120)}")
        raise UserError(f"cannot read checkpoint {path}: not a torch checkpoint of tensors and plain values ({why})"
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
    hparams = {k: v for k, v in obj["hyper_parameters"].items() if not isinstance(v, _NotLoaded)}
    dm = obj.get("datamodule_hyper_parameters")
    dm = dm if isinstance(dm, dict) else {}
    config = dm.get("transform_config")
    custom = any(dm.get(k) is not None for k in ("eval_transforms", "custom_val_transforms", "val_transforms"))
    return LightningCheckpoint(path, hparams, sd, version if isinstance(version, str) else None, compiled,
                               _plain_values(dm), config.fields() if isinstance(config, _NotLoaded) else None, custom)
