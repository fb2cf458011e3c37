"""The manifest: plain JSON beside every artifact (``<artifact>.json``). No torch import here: the
profiler reads manifests too."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.files import atomic_write_text, plain_name, sha256_file
from autotimm_deploy.exporter.core.results import AccuracyReport, ParityReport
from autotimm_deploy.exporter.core.spec import ModelSpec

SCHEMA_VERSION = 1
MANIFEST_SUFFIX = ".json"


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


def load_manifest(path: str | Path) -> Manifest:
    """Load a manifest, given its own path or its artifact's; validate ``schema_version``."""
    path = Path(path)
    if not path.name.endswith(MANIFEST_SUFFIX) or path.suffix != ".json" or not path.is_file():
        path = manifest_path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no manifest at {path}") from None
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"manifest {path} is not valid JSON: {first_line(e, 120)}") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise UserError(
            f"manifest {path} has schema_version {version!r}; this version reads {SCHEMA_VERSION} (re-export the artifact)"
        )
    try:
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
        for key in ("min", "opt", "max") if manifest.size else ():
            hw = manifest.size.get(key)
            if not (isinstance(hw, list) and len(hw) == 2 and all(type(v) is int and 0 < v <= 65536 for v in hw)):
                raise ValueError(f"size.{key} must be [height, width] in pixels")
        if any(not isinstance(e, dict) or type(e.get("bytes")) is not int for e in manifest.files.values()):
            raise ValueError("every file needs an integer byte count")
        if manifest.spec:
            ModelSpec.from_dict(manifest.spec)  # the spec it claims must be a valid one
    except (TypeError, KeyError, ValueError, AttributeError, UserError) as e:
        raise UserError(f"manifest {path} is malformed: {first_line(e)}; re-export the artifact") from None
    return manifest


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
