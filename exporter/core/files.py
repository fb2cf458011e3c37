"""Files on disk, and the rule that nothing outside the output folder is ever written or deleted:
names taken from manifests must be plain file names (`plain_name`), removals never follow links or
enter folders (`remove_file`), one export at a time writes into a folder (`folder_lock`), scratch
folders carry their owner's pid so a later run removes what a killed one left (`stale_scratch`).
Also atomic writes (a temporary file in the same folder, then a rename), a full disk as one `Fault`
(`disk_full_is_fault`), the one way an artifact goes into place (`install_artifact`, for the local
exporter and the fleet's driver alike) and sha256 digests, cached per file by size and modification
time."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from autotimm_deploy.exporter.core.errors import Fault, UserError

SCRATCH_PREFIX = ".autotimm-"
# ".autotimm-<pid>-…", or an older version's ".autotimm-[target-]xxxxxxxx" (mkdtemp's 8 characters)
_SCRATCH = re.compile(r"^\.autotimm-(?:(\d+)-|(?:target-)?[a-z0-9_]{8}$)")

_DIGESTS: dict[tuple[str, int, int], str] = {}
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


NEARLY_FULL = 16 * 2**20  # free bytes under which a library's failure to write is taken for a full disk


@contextlib.contextmanager
def disk_full_is_fault(what: object, folder: Path | None = None) -> Iterator[None]:
    """A full disk (or quota) inside the block is a `Fault` in one line: "no space left on the
    device writing ``what``: free some space and rerun". With ``folder``, so is any error while its
    disk is nearly full: libraries that write in C++ say so in their own words (OpenVINO's
    "basic_ios::clear: iostream error"). Every other error passes unchanged."""
    try:
        yield
    except Exception as e:
        ours = isinstance(e, (UserError, Fault))  # already one line, saying what is wrong
        if (isinstance(e, OSError) and e.errno in _DISK_FULL) or (not ours and folder is not None
                                                                    and _nearly_full(folder)):
            raise Fault(f"no space left on the device writing {what}: free some space and rerun") from None
        raise


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL
    except OSError:
        return False


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never a part."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a part."""
    path = Path(path)
    with disk_full_is_fault(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def file_mode() -> int:
    """The mode a new file gets from ``open()`` under this process's umask (0644 under 022), which
    ``mkstemp``'s private 0600 must be given before the rename."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


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


def check_encodable(path: Path, what: str) -> None:
    """``path`` can be handed to the converters and runtimes, whose C++ takes paths as UTF-8: under a
    non-UTF-8 locale (LC_ALL=C without Python's UTF-8 mode) a non-ASCII name reaches Python as
    undecodable bytes, and every library failed on it with its own "incompatible arguments"."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{what} {str(path).encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')} is not "
                        "valid UTF-8 under this locale, and the converters and runtimes take UTF-8 paths: use a UTF-8 "
                        "locale (LANG=C.UTF-8) or PYTHONUTF8=1, or an ASCII path") from None


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder we could not write, without creating anything yet."""
    check_encodable(out_dir, "output folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a folder")
    if out_dir.is_symlink() and not out_dir.exists():
        raise UserError(f"output path {out_dir} is a broken symbolic link (to {os.readlink(out_dir)}): give a folder, "
                        "or make the one it points to")
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


@contextlib.contextmanager
def out_dir_for(out_dir: Path) -> Iterator[None]:
    """``out_dir`` made (`make_out_dir`, parents too) for the block; the folders it made are removed
    again when the block returns or raises an error and leaves them empty (a refusal inside it, every
    format failed, Ctrl-C or a signal), so a refused or interrupted export leaves no empty folder
    behind. A folder that existed before is never removed."""
    made, p = [], Path(out_dir)
    while not p.exists() and not p.is_symlink() and p != p.parent:
        made.append(p)  # deepest first
        p = p.parent
    make_out_dir(Path(out_dir))
    try:
        yield
    finally:
        _remove_empty(made)


def _remove_empty(folders: list[Path]) -> None:
    """Remove each folder, deepest first, while it is empty (what another writer put there stays)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


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


def place_files(scratch: Path, folder: Path, names: list[str]) -> None:
    """Move the files ``names`` from ``scratch`` into ``folder`` (on one disk: renames), all or none:
    each file it replaces is first moved aside into ``scratch`` (deleted once all are in), and on any
    error or interrupt the files placed are taken back and those they replaced put back. Should one
    not go back, it stays in ``scratch`` (`keeps_replaced`), which the error names. A full disk is a `Fault`."""
    if Path(scratch).resolve().parent != Path(folder).resolve():  # every move stays inside ``folder``
        raise ValueError(f"{scratch} is not a scratch folder directly inside {folder}")
    moved: list[tuple[str, Path | None]] = []  # (name, where what it replaced waits), recorded before the move
    with disk_full_is_fault(folder):
        try:
            for name in names:
                target = folder / plain_name(name)
                aside = scratch / f"{REPLACED}{len(moved)}" if target.is_symlink() or target.exists() else None
                moved.append((name, aside))
                if aside is not None:
                    os.replace(target, aside)
                os.replace(scratch / name, target)
        except BaseException:
            lost = _put_back(folder, moved)
            if lost:
                raise Fault(f"could not put back {', '.join(lost)} in {folder}: they are in {scratch}") from None
            raise
    for _, aside in moved:
        if aside is not None:
            aside.unlink(missing_ok=True)


REPLACED = ".replaced-"  # what `place_files` moved aside, in its scratch folder


def _put_back(folder: Path, moved: list[tuple[str, Path | None]]) -> list[str]:
    """Undo `place_files`' moves, last first; the names whose old file could not go back."""
    lost = []
    for name, aside in reversed(moved):
        try:
            if aside is None:
                (folder / name).unlink(missing_ok=True)
            elif aside.is_symlink() or aside.exists():
                os.replace(aside, folder / name)
        except OSError:
            lost.append(name)
    return lost


def keeps_replaced(scratch: Path) -> bool:
    """Whether ``scratch`` still holds a file `place_files` could not put back (then it must stay)."""
    return any(p.name.startswith(REPLACED) for p in Path(scratch).iterdir()) if Path(scratch).is_dir() else False


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for one writer (an export, a predict's answers): a second is refused in one line."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    for _ in range(3):  # the folder may be removed under us by a writer that left it empty (`out_dir_for`)
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(f"another autotimm command is writing into {folder}; wait for it to finish, "
                                "or pass another -o") from None
            if _same_file(os.fstat(fd), folder):
                break
            os.close(fd)
        make_out_dir(Path(folder))
    else:
        raise UserError(f"output folder {folder} keeps disappearing; is another program removing it?")
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def _same_file(st: os.stat_result, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


_FS_IOC_GETFLAGS = 0x80086601  # Linux: a file's attributes (chattr)
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


def replace_blocker(path: Path) -> str | None:
    """Why ``path`` cannot be replaced even by its owner (Linux's immutable or append-only
    attribute, ``chattr +i`` / ``+a``), else None; None where the attributes cannot be read."""
    try:
        import fcntl
        import struct

        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except (ImportError, OSError):
        return None
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4])[0]
    except OSError:
        return None
    finally:
        os.close(fd)
    if flags & _FS_IMMUTABLE_FL:
        return "immutable (chattr +i)"
    return "append-only (chattr +a)" if flags & _FS_APPEND_FL else None


def cannot_replace(path: Path, e: OSError) -> UserError:
    """A file under --force the system will not let us replace, as one line naming it."""
    why = replace_blocker(path) or e.strerror or type(e).__name__
    return UserError(f"cannot replace {path}: {why}; make it writable (chattr -i, chmod, its owner) or pass "
                     "another -o or --name")


def scratch_dir(folder: Path, tag: str = "") -> Path:
    """A hidden scratch folder inside ``folder``, named with this process's pid; an absolute path, so
    the converters that run in a subprocess in a folder of their own find what is written there."""
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-{tag}", dir=Path(folder).absolute()))


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
        if not keeps_replaced(p):  # a user's file a killed `place_files` had moved aside: left for them
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
    with disk_full_is_fault(path):
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError:
            Path(path).unlink(missing_ok=True)
            raise


def install_artifact(folder: Path, artifact: str, files: Mapping[str, Path | bytes], manifest: Any) -> tuple[Path, Path]:
    """Put one artifact into ``folder``, where the local exporter and the fleet's driver both put
    theirs. ``files``: name -> a scratch file (moved) or its bytes (written), the artifact among them;
    ``manifest``: its `Manifest`, or the bytes of one. Each goes in by a rename, companions first, then
    the artifact, the manifest last, so a reader that sees the manifest sees complete files; on any
    error what went in is taken back (no artifact without its manifest) and a full disk is a `Fault`.
    Then the names the replaced manifest listed and this one does not are removed where they are the
    old artifact's own companions (`own_companion`). Returns the artifact's path and its manifest's."""
    # manifest.py writes and checks its files with this module's functions: imported here, not above
    from autotimm_deploy.exporter.core.manifest import load_manifest, manifest_path, write_manifest

    folder = Path(folder)
    target = folder / plain_name(artifact)
    written = manifest_path(target)
    names = [plain_name(n) for n in files]
    old: dict[str, dict] = {}
    if written.is_file():
        with contextlib.suppress(UserError):  # an unreadable old manifest names nothing to remove
            old = load_manifest(written).files
    placed: list[Path] = []
    path = target
    with disk_full_is_fault(target):
        try:
            for name in sorted(names, key=lambda n: n == artifact):  # companions first, in their order
                source, path = files[name], folder / name
                if isinstance(source, bytes):
                    atomic_write_bytes(path, source)
                else:
                    os.replace(source, path)
                placed.append(path)
            path = written
            if isinstance(manifest, bytes):
                atomic_write_bytes(written, manifest)
            else:
                write_manifest(manifest, target)
        except BaseException as e:
            for done in placed:
                done.unlink(missing_ok=True)
            if isinstance(e, PermissionError):  # an immutable file, a folder not ours (--force)
                raise cannot_replace(path, e) from None
            raise
    for name in set(old) - set(names):
        if own_companion(folder, name, target, old[name]):
            remove_file(folder, name)  # a plain name (load_manifest checked): never outside folder
    return target, written


def own_companion(folder: Path, name: str, artifact: Path, entry: dict) -> bool:
    """Whether ``folder/name``, which the replaced manifest of ``artifact`` listed as ``entry``, is
    that artifact's own companion, safe to remove: named after it, not a manifest nor an artifact
    with one, a plain file (not a link) still holding what the manifest recorded."""
    from autotimm_deploy.exporter.core.manifest import manifest_path

    path = Path(folder) / name
    stem = artifact.name[:-len(artifact.suffix)] if artifact.suffix else artifact.name
    return (name.startswith(stem) and not name.endswith(".json") and not manifest_path(path).exists()
            and path.is_file() and not path.is_symlink() and sha256_file(path) == entry.get("sha256"))
