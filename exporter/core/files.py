"""Files on disk, and the rule that nothing outside the output folder is ever written or deleted:
names taken from manifests must be plain file names (`plain_name`), removals never follow links or
enter folders (`remove_file`), one export at a time writes into a folder (`folder_lock`), scratch
folders carry their owner's pid so a later run removes what a killed one left (`stale_scratch`).
Also atomic writes (a temporary file in the same folder, then a rename) and sha256 digests, cached
per file by size and modification time."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from autotimm_deploy.exporter.core.errors import Fault, UserError

SCRATCH_PREFIX = ".autotimm-"
# ".autotimm-<pid>-…", or an older version's ".autotimm-[target-]xxxxxxxx" (mkdtemp's 8 characters)
_SCRATCH = re.compile(r"^\.autotimm-(?:(\d+)-|(?:target-)?[a-z0-9_]{8}$)")

_DIGESTS: dict[tuple[str, int, int], str] = {}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never a part."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise Fault(f"no space left on the device writing {path}: free some space and rerun") from None
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


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder we could not write, without creating anything yet."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a folder")
    existing = out_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create output folder {out_dir}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output folder {out_dir} is not writable; pass -o with a folder you can write")


def make_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out_dir}: {e.strerror or e}") from None


def plain_name(name: object, what: str = "file name") -> str:
    """``name`` when it names a file directly inside a folder (no folder part, not ``.``/``..``)."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or Path(name).name != name):
        raise UserError(f"{what} {name!r} is not a plain file name (no folders, no ..)")
    return name


def remove_file(folder: Path, name: str) -> None:
    """Delete ``folder/name`` (a plain name); a link is removed itself, never what it points to."""
    path = Path(folder) / plain_name(name)
    if path.is_symlink() or path.is_file():
        path.unlink()


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "autotimm-export") -> Iterator[None]:
    """Hold ``folder`` for one writer: a second export into it is refused in one line."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another {what} is writing into {folder}; wait for it to finish, "
                            "or pass another -o") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def scratch_dir(folder: Path, tag: str = "") -> Path:
    """A hidden scratch folder inside ``folder``, named with this process's pid."""
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-{tag}", dir=folder))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def stale_scratch(folder: Path) -> list[Path]:
    """Scratch folders in ``folder`` whose process is gone (killed with -9, a crash, a power cut).
    Call it holding `folder_lock`: then no live export of ours writes there."""
    out = []
    with contextlib.suppress(OSError):
        for p in Path(folder).iterdir():
            m = _SCRATCH.match(p.name)
            if m and p.is_dir() and not p.is_symlink() and (m.group(1) is None or not _alive(int(m.group(1)))):
                out.append(p)
    return out


def remove_stale_scratch(folder: Path) -> None:
    for p in stale_scratch(folder):
        shutil.rmtree(p, ignore_errors=True)


def check_free_space(folder: Path, need_bytes: int, what: str) -> None:
    """Refuse before starting when ``folder``'s disk cannot hold ``need_bytes``."""
    existing = Path(folder)
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        raise UserError(f"{existing} has {free / 2**20:.0f} MB free; {what} needs about {need_bytes / 2**20:.0f} MB: "
                        "free some space or pass another -o")


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data``; a full disk is a `Fault` naming the file, with no partial file left."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        Path(path).unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise Fault(f"no space left on the device writing {path}: free some space and rerun") from None
        raise
