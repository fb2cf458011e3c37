"""Files on disk: atomic writes (a temporary file in the same folder, then a rename) and sha256
digests, cached per file by size and modification time."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

_DIGESTS: dict[tuple[str, int, int], str] = {}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never a part."""
    path = Path(path)
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
    """The file's sha256 (hex); recomputed only when its size or modification time changed."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def file_entries(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """The manifest's ``files``: name -> sha256 and size."""
    return {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in paths}
