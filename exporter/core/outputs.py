"""Where a report (JSON, CSV, Markdown, PNG, a recipe YAML) may be written: a regular file or a new
path in an existing, writable folder; never through a link, never onto a FIFO, device or folder, and
never over an artifact, its companions or its manifest."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import MANIFEST_SUFFIX, load_manifest, manifest_path


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def artifact_files(path: Path) -> list[Path]:
    """An artifact, its manifest and every file the manifest lists (what a report must not replace)."""
    out = [path, manifest_path(path)]
    if manifest_path(path).is_file():
        try:
            out += [path.parent / n for n in load_manifest(path).files]
        except UserError:
            pass
    return out


def check_report_path(path: str | Path, flag: str, protected: Iterable[Path] = ()) -> Path:
    """``path`` when a report may be written there; else a one-line `UserError` naming ``flag``."""
    p = Path(path)
    if p.is_symlink():
        raise UserError(f"{flag} {path} is a symbolic link; give the path of a regular file (reports are never "
                        "written through links)")
    if p.exists() and not p.is_file():
        hint = "; --json - writes to standard output" if flag == "--json" else ""
        raise UserError(f"{flag} {path} is a {_kind(p.stat().st_mode)}, not a file{hint}")
    parent = p.resolve().parent
    if not parent.is_dir():
        raise UserError(f"cannot write {flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {flag} {path}: folder {parent} is not writable")
    if manifest_path(p).is_file():
        raise UserError(f"{flag} {path} is an exported artifact (its manifest is beside it); give another path")
    if p.name.endswith(MANIFEST_SUFFIX) and p.with_name(p.name[:-len(MANIFEST_SUFFIX)]).is_file() and p.is_file():
        try:
            load_manifest(p)
        except UserError:
            pass
        else:
            raise UserError(f"{flag} {path} is the manifest of {p.name[:-len(MANIFEST_SUFFIX)]}; give another path")
    resolved = p.resolve()
    for q in protected:
        if resolved == Path(q).resolve():
            raise UserError(f"{flag} {path} would overwrite {q}, which this command reads; give another path")
    return p


def check_report_paths(flags: dict[str, str | None], protected: Iterable[Path] = ()) -> None:
    """Every report path given (flag -> path or None), each checked, no two the same file."""
    protected = list(protected)
    seen: dict[Path, str] = {}
    for flag, path in flags.items():
        if path is None:
            continue
        resolved = check_report_path(path, flag, protected).resolve()
        if resolved in seen:
            raise UserError(f"{flag} and {seen[resolved]} both write {path}; give each report its own path")
        seen[resolved] = flag
