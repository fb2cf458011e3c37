"""Cheap checks that a file is what its ending says (its container and magic), for the formats'
`Format.check_file`: a corrupt or truncated artifact is refused in one line before a runtime opens it."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

from autotimm_deploy.exporter.core.errors import UserError


def zip_names(path: Path) -> list[str] | None:
    """The member names of a zip archive, None when ``path`` is not one."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def zip_check(kind: str, marker: str) -> Callable[[Path], None]:
    """A zip archive whose members pass their checksums, one of which contains ``marker``."""

    def check(path: Path) -> None:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"{path} is not a valid {kind} file (corrupt or truncated: {e})") from None
        if bad is not None:
            raise UserError(f"{path} is corrupt: member {bad} fails its checksum")
        if not any(marker in n for n in names):
            raise UserError(f"{path} is a zip file but not a {kind} archive")

    return check


def flatbuffer_check(kind: str, identifiers: tuple[bytes, ...]) -> Callable[[Path], None]:
    """Flatbuffer files carry a 4-byte file identifier after their root offset."""

    def check(path: Path) -> None:
        with path.open("rb") as f:
            head = f.read(8)
        if head[4:8] not in identifiers:
            raise UserError(f"{path} is not {kind}: no {identifiers[0].decode()} identifier (corrupt or truncated?)")

    return check
