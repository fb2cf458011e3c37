"""The manifest: plain JSON beside every artifact (``<artifact>.json``). No torch import here: the
profiler reads manifests too."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.files import atomic_write_text, plain_name, sha256_file
from autotimm_deploy.exporter.core.limits import (
    MAX_BATCH,
    MAX_IMG_SIDE,
    MAX_IN_CHANS,
    MAX_OUTPUT_DIM,
    MAX_OUTPUT_VALUES,
    MAX_RANK,
)
from autotimm_deploy.exporter.core.results import AccuracyReport, ParityReport
from autotimm_deploy.exporter.core.spec import LIBRARIES, PREPROCESS_KEYS, ModelSpec, check_preprocess, is_number

SCHEMA_VERSION = 1
MANIFEST_SUFFIX = ".json"
MAX_MANIFEST_BYTES = 64 * 2**20  # ours are kilobytes (class names, layer rankings); a 300 MB one took 700 MB to read
# an AOTInductor package's own metadata: the input shape each of its models was compiled for, as JSON
# ([null, 3, 224, 224]: null where the dim is symbolic), which its runtime holds every input to
PACKAGE_INPUT_SHAPE = "autotimm_deploy.input_shape"


@dataclass
class TensorSig:
    """One graph input or output. ``shape`` holds ints and, for symbolic dims, their names."""

    name: str
    dtype: str
    shape: list[int | str]


@dataclass
class Manifest:
    format: str
    artifact: str  # file name, relative to the manifest's folder
    spec: dict[str, Any]
    precision: str = "fp32"
    task_outputs: list[str] = field(default_factory=list)
    inputs: list[TensorSig] = field(default_factory=list)
    outputs: list[TensorSig] = field(default_factory=list)
    batch: dict[str, Any] = field(default_factory=dict)  # {"dynamic": bool, "min":, "max":, "static":}
    # height and width range of an artifact whose input size is symbolic (--dynamic-size):
    # {"dynamic": True, "min": [h, w], "opt": [h, w], "max": [h, w]}; empty when the size is fixed
    size: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)  # exporter used, opset, options, seconds
    model: dict[str, Any] = field(default_factory=dict)  # params, build notes
    environment: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {sha256, bytes}
    parity: ParityReport | None = None
    accuracy: AccuracyReport | None = None  # --eval: the task metric on labelled data, vs eager
    # an artifact that failed its gate: where it departs from its reference, layer by layer
    diagnosis: dict[str, Any] | None = None
    target: dict[str, Any] | None = None  # set by --target: the candidates ranked and why this one won
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        d = dict(d)
        for key in ("inputs", "outputs"):
            d[key] = [TensorSig(**t) for t in d.get(key, [])]
        if d.get("parity") is not None:
            d["parity"] = ParityReport.from_dict(d["parity"])
        if d.get("accuracy") is not None:
            d["accuracy"] = AccuracyReport.from_dict(d["accuracy"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def manifest_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def artifact_given(path: str | Path) -> Path:
    """``path``, or, when it names a manifest whose artifact lies beside it, that artifact (a user
    who gives ``model.onnx.json`` where an artifact is asked means ``model.onnx``)."""
    path = Path(path)
    if path.name.endswith(MANIFEST_SUFFIX) and path.is_file():
        artifact = path.with_name(path.name[:-len(MANIFEST_SUFFIX)])
        if artifact.is_file():
            return artifact
    return path


def load_manifest(path: str | Path) -> Manifest:
    """Load a manifest, given its own path or its artifact's; validate ``schema_version``, and that
    an artifact's manifest is its own (not one copied beside it, or left by a rename: its hashes
    would vouch for the other file)."""
    path = artifact = Path(path)
    if not path.name.endswith(MANIFEST_SUFFIX) or path.suffix != ".json" or not path.is_file():
        path = manifest_path(path)
    else:
        artifact = None
    if path.exists() and not path.is_file():  # a FIFO would block the read forever; a folder, a device
        raise UserError(f"manifest {path} is not a regular file; re-export the artifact")
    if path.is_file() and path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UserError(f"manifest {path} is {path.stat().st_size / 2**20:.0f} MB, more than a manifest holds "
                        f"({MAX_MANIFEST_BYTES / 2**20:.0f} MB at most); re-export the artifact")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no manifest at {path}") from None
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"manifest {path} is not valid JSON: {first_line(e, 120)}") from None
    if not isinstance(data, dict):
        raise UserError(f"manifest {path} holds a JSON {type(data).__name__}, not a manifest; re-export the artifact")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise UserError(
            f"manifest {path} has schema_version {version!r}; this version reads {SCHEMA_VERSION} (re-export the artifact)"
        )
    try:
        missing = [f.name for f in dataclasses.fields(Manifest) if f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"it has no {', '.join(missing)}")
        manifest = Manifest.from_dict(data)
        # names are joined to the manifest's folder to read, replace and delete files: plain names only
        for name in [manifest.artifact, *manifest.files]:
            plain_name(name, "a file")
        if not isinstance(manifest.files, dict) or manifest.artifact not in manifest.files:
            raise ValueError("its artifact is not among its files")
        for key, kind in (("format", str), ("precision", str), ("spec", dict), ("batch", dict), ("export", dict),
                          ("size", dict)):
            if not isinstance(getattr(manifest, key), kind):
                raise ValueError(f"{key} must be a {kind.__name__}")
        check_bounds(manifest)
        if any(not isinstance(e, dict) or type(e.get("bytes")) is not int for e in manifest.files.values()):
            raise ValueError("every file needs an integer byte count")
        if manifest.spec:
            ModelSpec.from_dict(manifest.spec)  # the spec it claims must be a valid one
    except (TypeError, KeyError, ValueError, AttributeError, UserError) as e:
        raise UserError(f"manifest {path} is malformed: {first_line(e)}; re-export the artifact") from None
    if artifact is not None and manifest.artifact not in (artifact.name, artifact.resolve().name):
        raise UserError(f"{path} describes {manifest.artifact}, not {artifact.name}: a manifest copied or renamed "
                        f"beside another file; name the two as exported, or re-export {artifact.name}")
    return manifest


# (lowest, highest, what the highest is) of each number a manifest gives
_BATCH = (1, MAX_BATCH, "the largest batch")
_CHANS = (1, MAX_IN_CHANS, "the most input channels")
_SIDE = (1, MAX_IMG_SIDE, "the largest picture side")
_OUT_DIM = (0, MAX_OUTPUT_DIM, "the most an output dim holds")


def _bounded(value: Any, field: str, bound: tuple[int, int, str]) -> None:
    """``value`` is an integer within ``bound``, else a ValueError naming ``field`` and the bound."""
    lo, hi, what = bound
    if type(value) is not int or not lo <= value <= hi:
        shown = repr(value) if len(repr(value)) <= 24 else repr(value)[:24] + "..."
        raise ValueError(f"{field} is {shown}, not an integer from {lo} to {hi} ({what})")


def _check_dims(sig: TensorSig, field: str, bounds: list[tuple[int, int, str]]) -> int:
    """The dims of one input or output: integers within ``bounds`` (by position, the last repeating)
    or names; returns the product of the integer dims after the batch."""
    if not isinstance(sig.name, str) or not sig.name or not isinstance(sig.dtype, str):
        raise ValueError(f"{field} needs a name and a dtype")
    if not isinstance(sig.shape, list) or len(sig.shape) > MAX_RANK:
        raise ValueError(f"{field}.shape must be a list of at most {MAX_RANK} dims")
    values = 1
    for i, d in enumerate(sig.shape):
        if isinstance(d, str) and 0 < len(d) <= 128:
            continue
        _bounded(d, f"{field}.shape[{i}]", bounds[min(i, len(bounds) - 1)])
        values *= d if i else 1
    return values


def check_bounds(manifest: Manifest) -> None:
    """The numbers a manifest gives to what reads it (Triton configs, the profiler, predictions)
    within the bounds the command line applies (`autotimm_deploy.exporter.core.limits`): input
    dims, output dims, the batch and size records, the preprocessing's input size. A ValueError
    naming the field."""
    for i, sig in enumerate(manifest.inputs):
        _check_dims(sig, f"inputs[{i}]", [_BATCH, _CHANS, _SIDE])
    for i, sig in enumerate(manifest.outputs):
        values = _check_dims(sig, f"outputs[{i}]", [_BATCH, _OUT_DIM])
        if values > MAX_OUTPUT_VALUES:
            raise ValueError(f"outputs[{i}].shape {sig.shape} holds {values:,} values per picture, past "
                             f"{MAX_OUTPUT_VALUES:,}")
    for key in ("min", "opt", "max", "static"):
        if manifest.batch.get(key) is not None:
            _bounded(manifest.batch[key], f"batch.{key}", _BATCH)
    if not isinstance(manifest.batch.get("dynamic", False), bool):
        raise ValueError("batch.dynamic must be true or false")
    for key in ("min", "opt", "max") if manifest.size else ():
        hw = manifest.size.get(key)
        if not (isinstance(hw, list) and len(hw) == 2):
            raise ValueError(f"size.{key} must be [height, width] in pixels")
        for j, v in enumerate(hw):
            _bounded(v, f"size.{key}[{j}]", _SIDE)
    _check_preprocessing(manifest.preprocessing)


MAX_CROP_PCT = 2.0  # timm's own reach 1.15; far above, the resize before the crop is under a pixel
LOOSE = ("crop_pct", "pad_value")  # preprocessing keys `_check_preprocessing` bounds itself


def _check_preprocessing(prep: Any) -> None:
    """The record predictions follow: an input size, and mean, std, interpolation, crop, resize and
    padding as `check_preprocess` asks of the command line's (a hand-edited ``"std": [0, 0, 0]`` gave
    NaN answers, ``"mean": "abc"`` an internal error)."""
    if not isinstance(prep, dict):
        raise ValueError("preprocessing must be an object")
    if not prep:  # none recorded (a custom module's raw artifact)
        return
    size = prep.get("input_size")
    if not (isinstance(size, list) and len(size) == 3):
        raise ValueError(f"preprocessing.input_size is {size!r}, not [channels, height, width]")
    for j, (v, bound) in enumerate(zip(size, (_CHANS, _SIDE, _SIDE))):
        _bounded(v, f"preprocessing.input_size[{j}]", bound)
    # bounded more loosely than the command line's: crop_pct > 1 is timm's own (volo_d5_448: 1.15), and a
    # letterbox's pad value had 3 numbers whatever the channels before it followed them
    check_preprocess({k: prep[k] for k in PREPROCESS_KEYS if prep.get(k) is not None and k not in LOOSE}, size[0],
                     name=lambda key: f"preprocessing.{key}")
    crop, pad = prep.get("crop_pct"), prep.get("pad_value")
    if crop is not None and not (is_number(crop) and 0 < crop <= MAX_CROP_PCT):
        raise ValueError(f"preprocessing.crop_pct is {crop!r}, not a number in (0, {MAX_CROP_PCT}]")
    if pad is not None and not (isinstance(pad, list) and pad and all(is_number(v) and 0 <= v <= 255 for v in pad)):
        raise ValueError(f"preprocessing.pad_value is {pad!r}, not numbers from 0 to 255")
    if prep.get("library", "pil") not in LIBRARIES:
        raise ValueError(f"preprocessing.library takes one of {', '.join(LIBRARIES)}, got {prep['library']!r}")


def write_manifest(manifest: Manifest, artifact: str | Path) -> Path:
    path = manifest_path(artifact)
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def verify_files(manifest: Manifest, folder: Path) -> None:
    """Every file the manifest lists is in ``folder`` with its recorded size and sha256; a
    `UserError` naming the first that is not (missing, truncated, replaced or corrupt)."""
    for name, entry in manifest.files.items():
        f = Path(folder) / plain_name(name, "a file")
        if not f.is_file():
            raise UserError(f"{f} is listed in the manifest but missing; re-export it")
        size = f.stat().st_size
        if size != entry.get("bytes"):
            raise UserError(f"{f} has {size} bytes, its manifest says {entry.get('bytes')}: corrupt or replaced; "
                            "re-export it")
        if sha256_file(f) != entry.get("sha256"):
            raise UserError(f"{f} does not match the sha256 in its manifest: corrupt or replaced; re-export it")
