"""The manifest: plain JSON beside every artifact (``<artifact>.json``). No torch import here: the
profiler reads manifests too."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from exporter.errors import UserError

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
    preprocessing: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)  # exporter used, opset, options, seconds
    model: dict[str, Any] = field(default_factory=dict)  # params, build notes
    environment: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {sha256, bytes}
    parity: dict[str, Any] | None = None
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
    except (OSError, ValueError) as e:
        raise UserError(f"manifest {path} is not valid JSON: {e}") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise UserError(
            f"manifest {path} has schema_version {version!r}; this version reads {SCHEMA_VERSION} (re-export the artifact)"
        )
    try:
        return Manifest.from_dict(data)
    except TypeError as e:
        raise UserError(f"manifest {path} is malformed: {e}") from None


def write_manifest(manifest: Manifest, artifact: str | Path) -> Path:
    path = manifest_path(artifact)
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(paths: list[Path]) -> dict[str, dict[str, Any]]:
    return {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in paths}


def package_versions(names=("torch", "timm", "onnx", "onnxscript", "onnxruntime", "onnxslim", "numpy")) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def build_environment(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": package_versions(),
    }
    try:
        env["autotimm_deploy"] = metadata.version("autotimm-deploy")
    except metadata.PackageNotFoundError:
        pass
    env.update(extra or {})
    return env
