"""What is this file, and what runs it? The manifest says, else the file name's ending and its
magic, both declared by the formats (`autotimm_deploy.exporter.formats`). Unreadable or corrupt
files are refused here, in one line, before any runtime touches them. This module sits above the
formats and the runtimes (it reads both registries); neither imports it."""

from __future__ import annotations

from pathlib import Path

from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.files import check_encodable
from autotimm_deploy.exporter.core.manifest import Manifest, load_manifest, manifest_path, verify_files
from autotimm_deploy.exporter.formats import FORMATS, Format, get_format
from autotimm_deploy.profiler.runtimes import Session, open_session


def endings() -> dict[str, str]:
    """Every file-name ending a format declares -> that format, longest first (".aoti.pt2" before ".pt2")."""
    pairs = [(e.lower(), name) for name, cls in FORMATS.items() for e in cls.endings()]
    return dict(sorted(pairs, key=lambda p: -len(p[0])))


def format_of_name(path: Path) -> str | None:
    """The format a file name's ending says, or None."""
    name = path.name.lower()
    fmt = next((f for end, f in endings().items() if name.endswith(end)), None)
    if fmt is None:
        return None
    # a format sharing another's ending (an AOTInductor package is a .pt2) claims it by its content
    return next((n for n, c in FORMATS.items() if c.refines == fmt and c.recognizes(path)), fmt)


def default_runtime(fmt: str) -> str:
    """The runtime an artifact of ``fmt`` runs on unless the user picks another."""
    return get_format(fmt).default_runtime


def detect(path: Path) -> tuple[str, Manifest | None]:
    """(format, manifest or None) for an artifact path."""
    if not path.exists():
        raise UserError(f"no such file: {path}")
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    check_encodable(path.absolute(), "artifact")
    manifest = load_manifest(path) if manifest_path(path).exists() else None
    fmt = manifest.format if manifest else format_of_name(path)
    if fmt is None:
        owner = _owner(path)
        if owner is not None:
            raise UserError(f"{path.name} is part of the artifact {owner.name}: give {owner} instead")
        raise UserError(f"cannot tell what {path.name} is: unknown extension {path.suffix or '(none)'} and no manifest "
                        f"beside it; give a file autotimm-export wrote (known extensions: "
                        f"{', '.join(sorted(endings()))})")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    cls = FORMATS.get(fmt)
    if cls is not None:
        cls.check_file(path)
        _check_companions(cls, path)
    if manifest:
        verify_files(manifest, path.parent)  # sizes and sha256 (cached by size and mtime)
    return fmt, manifest


def _owner(path: Path) -> Path | None:
    """The artifact beside ``path`` that has it as a companion file (an ncnn .bin's .param, an
    OpenVINO .bin's .xml), or None."""
    for sibling in sorted(path.parent.iterdir()) if path.parent.is_dir() else ():
        fmt = format_of_name(sibling) if sibling != path and sibling.is_file() else None
        if fmt is not None and path in FORMATS[fmt].companion_paths(sibling):
            return sibling
    return None


def _check_companions(cls: type[Format], path: Path) -> None:
    for companion in cls.companion_paths(path):
        if not companion.is_file():
            raise UserError(f"{companion}: missing; a {cls.name} artifact needs its .{companion.name.rsplit('.', 1)[-1]} "
                            f"beside the .{cls.suffix.rsplit('.', 1)[-1]}")


def open_artifact(path: str | Path | None, manifest: Manifest | None = None, runtime: str | None = None,
                  **options) -> Session:
    """`open_session` on ``runtime``, by default the one ``manifest``'s format runs on."""
    if runtime is None:
        if manifest is None:
            raise UserError(f"cannot tell which runtime runs {path}: no manifest and no --runtime")
        if manifest.format not in FORMATS:
            raise UserError(f"the manifest of {path} names an unknown format {manifest.format!r} (known: "
                            f"{', '.join(FORMATS)}): re-export the artifact, or restore its manifest")
        runtime = default_runtime(manifest.format)
    return open_session(path, runtime, manifest, **options)
