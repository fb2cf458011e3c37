"""Core ML packages (``.mlpackage.zip``, see `exporter.formats.coreml`) through ``coremltools``'
``MLModel.predict``, which Core ML offers on macOS only: elsewhere this runtime says so, and the
exporter reports the parity check as not run.

The package is unzipped (`safe_extract`: every entry checked first, no absolute path, no ``..``, no
link, a bounded total size) into a temporary folder for the life of the session and run on Core ML's
CPU compute unit (``CPU_ONLY``: what ``--device cpu`` means everywhere else; the GPU and Neural
Engine are not offered yet). Core ML takes the whole batch at once within the range the package
declares; outputs come back in the manifest's dtypes (Core ML has no int64: integer outputs arrive
as int32)."""

from __future__ import annotations

import re
import stat
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.capture import quiet_import
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.manifest import TensorSig
from autotimm_deploy.profiler.runtimes.base import Session, register_runtime


MAX_UNZIPPED = 32 * 2**30  # bytes a package may unzip to at most
MAX_ENTRIES = 10_000
# autotimm-export stores the package uncompressed: an archive that unzips to many times its size is not ours
MAX_RATIO, SLACK = 16, 64 * 2**20


def safe_extract(archive: Path, folder: Path) -> None:
    """Unzip ``archive`` into ``folder`` after checking every entry: a relative path inside the folder
    (no absolute path, drive, ``..``), a plain file or folder (no link, device), and, all together, at most
    `MAX_ENTRIES` entries and min(`MAX_UNZIPPED`, `MAX_RATIO` x the archive + `SLACK`) bytes, counted
    again while writing (a header may lie). A `UserError` naming the entry otherwise; what was written
    stays in ``folder`` for its owner to remove."""
    archive, folder = Path(archive), Path(folder)
    limit = min(MAX_UNZIPPED, MAX_RATIO * archive.stat().st_size + SLACK)
    with zipfile.ZipFile(archive) as z:
        entries = z.infolist()
        if len(entries) > MAX_ENTRIES:
            raise UserError(f"{archive.name} holds {len(entries)} entries, more than a Core ML package's "
                            f"{MAX_ENTRIES}; not unzipped")
        for info in entries:
            _check_entry(archive, info)
        names = [i.filename.rstrip("/") for i in entries]
        if len(set(names)) != len(names):
            raise UserError(f"{archive.name} holds an entry twice; not unzipped (not a package autotimm-export wrote)")
        declared = sum(i.file_size for i in entries)
        if declared > limit:
            raise UserError(f"{archive.name} would unzip to {declared / 2**20:.0f} MiB, more than the "
                            f"{limit / 2**20:.0f} MiB allowed for it; not unzipped (a zip bomb?)")
        written = 0
        for info in entries:
            target = folder / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "xb") as dst:
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > limit:
                        raise UserError(f"{archive.name} unzips to more than the {limit / 2**20:.0f} MiB allowed "
                                        f"for it ({info.filename} is larger than its header says); stopped")
                    dst.write(block)


def _check_entry(archive: Path, info: zipfile.ZipInfo) -> None:
    """One entry of a package to unzip: a relative path that stays inside, a plain file or folder."""
    name = info.filename
    parts = re.split(r"[/\\]", name)
    why = None
    if not name or "\0" in name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        why = "an absolute path"
    elif ".." in parts:
        why = "a path with .."
    else:
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            why = "a symbolic link"
        elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            why = "not a plain file or folder"
    if why:
        raise UserError(f"{archive.name} holds {why} ({name!r}); not unzipped (not a package autotimm-export wrote)")


@register_runtime
class CoreMLSession(Session):
    extra = "coreml"
    requires = ("coremltools",)
    name = "coreml"
    formats = ("coreml",)
    devices = ("cpu",)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if sys.platform != "darwin":
            return f"Core ML runs models only on macOS (this is {sys.platform}); run it on a Mac"
        return None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        ct = quiet_import("coremltools")
        self._folder = tempfile.TemporaryDirectory(prefix="autotimm-coreml-")
        try:
            safe_extract(self.path, Path(self._folder.name))
            package = next(Path(self._folder.name).glob("*.mlpackage"))
            self.model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY)
        except UserError:
            self._folder.cleanup()
            raise
        except Exception as e:  # noqa: BLE001 - a broken zip, no package inside, Core ML's own refusal
            self._folder.cleanup()
            raise UserError(f"Core ML cannot load {self.path.name}: {first_line(e, 200)} (not a zipped .mlpackage "
                            "as autotimm-export writes, or corrupt)") from None
        described = self.model.get_spec().description
        self.in_names = [f.name for f in described.input]
        self.out_names = [f.name for f in described.output]
        if not self.inputs:
            self.inputs = [TensorSig(n, "float32", [int(d) for d in f.type.multiArrayType.shape])
                           for n, f in zip(self.in_names, described.input)]
        if not self.outputs:
            self.outputs = [TensorSig(n, "float32", ["batch"]) for n in self.out_names]
        if len(self.out_names) != len(self.outputs):
            self._folder.cleanup()
            raise UserError(f"{self.path.name} has {len(self.out_names)} outputs; its manifest names {len(self.outputs)}")

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        return {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(self.in_names, arrays.values())}

    def run(self, prepared: Any) -> Any:
        return self.model.predict(prepared)

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        return {sig.name: np.asarray(outputs[n]).astype(sig.dtype, copy=False)
                for sig, n in zip(self.outputs, self.out_names)}

    def close(self) -> None:
        self.model = None
        self._folder.cleanup()
