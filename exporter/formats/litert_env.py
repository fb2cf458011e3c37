"""The LiteRT converter's own environment. ``litert-torch`` (Google's PyTorch -> LiteRT converter)
cannot share our environment: its dependency xdsl pins ``typing-extensions<4.13``, which breaks
the pydantic we (and AutoTimm) use, and it brings jax. So it lives in a venv of its own that reuses
this environment's torch, timm and numpy: a ``.pth`` file appends our site-packages after the venv's
own, so the venv's older typing-extensions and pydantic win there and only there, and pip counts our
torch as installed (it never downloads another). pip refuses to touch packages outside the venv.

The venv is built once (about 780 MB, mostly jaxlib and the converter) by ``autotimm-export
--setup-litert``, into ``$AUTOTIMM_LITERT_ENV`` or ``~/.cache/autotimm-deploy/litert-env``; one set up
beside the running venv (``<venv>/litert-env``, where ``make setup`` puts it) is found there first. It is
written beside its final place and renamed into it, so a failed setup leaves nothing half-made.
The converter runs there in a subprocess on a saved ``torch.export`` program (`litert_convert`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from autotimm_deploy.exporter.core.errors import Fault, UserError, first_line

# the converter and its quantizer, pinned: what this code was written and tested against
PACKAGES = ("litert-torch==0.10.0", "ai-edge-quantizer==0.10.0")
READY = ".autotimm-ready"  # written last: a venv without it is not used
SETUP_HINT = "run: autotimm-export --setup-litert (a separate ~780 MB environment for Google's litert-torch)"


def env_dir() -> Path:
    """``$AUTOTIMM_LITERT_ENV``; else the one beside the running venv when set up there (``make setup``
    builds it at ``<venv>/litert-env``), so ``.venv/bin/autotimm-export`` finds it without the variable;
    else the user's cache."""
    given = os.environ.get("AUTOTIMM_LITERT_ENV")
    if given:
        return Path(given).expanduser()
    beside = Path(sys.prefix) / "litert-env"
    if (beside / READY).is_file():
        return beside
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "autotimm-deploy" / "litert-env"


def env_python(folder: Path | None = None) -> Path | None:
    """The converter venv's python, or None when it is not set up (or was set up for another Python)."""
    folder = folder or env_dir()
    python = folder / "bin" / "python"
    try:
        ready = (folder / READY).read_text().split()
    except OSError:
        return None
    return python if python.exists() and ready[:1] == [_main_site()] else None


def _main_site() -> str:
    return sysconfig.get_paths()["purelib"]


def setup(progress=print, force: bool = False) -> Path:
    """Build the converter venv (see the module doc); returns its python."""
    final = env_dir()
    if env_python(final) and not force:
        progress(f"the LiteRT converter environment is ready: {final}")
        return final / "bin" / "python"
    if final.exists() and not (final / READY).is_file():
        raise UserError(f"{final} exists and is not a LiteRT converter environment made here: remove it or set "
                        "AUTOTIMM_LITERT_ENV to a new folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", str(work)], "creating the venv")
        python = work / "bin" / "python"
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        Path(site, "zz_autotimm_main.pth").write_text(_main_site() + "\n")
        guard = [str(python), "-c", "import sys, torch; assert torch.__file__.startswith(sys.argv[1]), torch.__file__",
                 _main_site()]
        _run(guard, "checking that the venv sees this environment's torch")
        progress(f"installing {', '.join(PACKAGES)} into {final} (about 780 MB) ...")
        _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES],
             "pip install")
        _run(guard, "checking that pip kept this environment's torch")
        _run([str(python), "-c", "import litert_torch, ai_edge_quantizer"], "importing the converter")
        (work / READY).write_text(_main_site() + "\n")
        if final.exists():  # only a converter venv this code made is replaced, never another folder
            if not (final / READY).is_file() or final.resolve().parent != final.parent.resolve():
                raise UserError(f"{final} exists and is not a LiteRT converter environment made here: remove it or "
                                "set AUTOTIMM_LITERT_ENV to a new folder")
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    progress(f"the LiteRT converter environment is ready: {final}")
    return final / "bin" / "python"


def _run(args: list[str], what: str) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **QUIET})
    except OSError as e:
        raise Fault(f"LiteRT setup failed {what}: {e}") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        raise UserError(f"LiteRT setup failed {what}: {first_line(lines[-1] if lines else done.stdout)} "
                        "(network and disk space are needed once)")


# what keeps the converter's imports quiet (TensorFlow's oneDNN banner, the converter's progress bars)
QUIET = {"TF_ENABLE_ONEDNN_OPTS": "0", "LITERT_TORCH_SHOW_PROGRESS": "n", "TF_CPP_MIN_LOG_LEVEL": "2",
         "PYTHONWARNINGS": "ignore"}
