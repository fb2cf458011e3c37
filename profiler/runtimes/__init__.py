"""Runtime registry: one module per runtime, each `Session` class registered by name with
`register_runtime`. Every module of this package is imported below; they import their heavy
libraries lazily, inside the session, so listing runtimes loads nothing heavy. Adding a runtime is
adding one module here."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path

from autotimm_deploy.exporter.core.errors import MissingExtra, RuntimeUnavailable, UserError
from autotimm_deploy.exporter.core.manifest import Manifest
from autotimm_deploy.profiler.runtimes.base import RUNTIMES, Session, register_runtime

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["RUNTIMES", "Session", "available_runtimes", "open_session", "register_runtime", "runtime_class",
           "runtime_names"]


def runtime_names() -> str:
    """The registered runtimes, for help texts and errors."""
    return ", ".join(RUNTIMES)


def runtime_class(name: str) -> type[Session]:
    """The runtime ``name``, its modules installed (else `MissingExtra` naming its extra)."""
    if name not in RUNTIMES:
        raise UserError(f"unknown runtime {name!r} (available: {runtime_names()})")
    cls = RUNTIMES[name]
    missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"the {name} runtime ({', '.join(missing)})", cls.extra)
    return cls


def open_session(path: str | Path | None, runtime: str, manifest: Manifest | None = None,
                 device: str | None = None, threads: int | None = None, **options) -> Session:
    """Load an artifact for execution on ``runtime`` (`autotimm_deploy.profiler.artifact.open_artifact`
    picks its format's default one); ``device`` defaults to the runtime's first (the CPU, or the GPU
    for GPU-only runtimes)."""
    cls = runtime_class(runtime)
    reason = cls.unavailable_reason()
    if reason:
        raise RuntimeUnavailable(f"the {runtime} runtime cannot run here: {reason}")
    device = device or cls.default_device(manifest, path)
    if device.split(":")[0] not in cls.devices:
        raise UserError(f"the {runtime} runtime does not run on {device} (it runs on: {', '.join(cls.devices)})")
    if manifest is not None and manifest.format not in cls.formats:
        able = ", ".join(n for n, c in RUNTIMES.items() if manifest.format in c.formats) or "none"
        raise UserError(f"the {runtime} runtime cannot run {manifest.format} artifacts: leave --runtime out, or "
                        f"pass one that can ({able})")
    try:
        return cls(path, manifest, device=device, threads=threads, **options)
    except ImportError as e:  # installed, but its import fails (a shared library missing, a version clash)
        extra = f"'autotimm-deploy[{cls.extra}]'" if cls.extra else "autotimm-deploy"
        raise UserError(f"the {runtime} runtime is installed but cannot be imported ({' '.join(str(e).split())[:200]}):"
                        f" install it again (pip install --force-reinstall {extra})") from None


def available_runtimes(device: str = "cpu") -> list[str]:
    """The runtimes installed here that run on ``device`` (cpu, cuda), in registry order."""
    out = []
    for name in RUNTIMES:
        try:
            cls = runtime_class(name)
        except MissingExtra:
            continue
        if cls.unavailable_reason():
            continue
        if device.split(":")[0] in cls.devices:
            out.append(name)
    return out
