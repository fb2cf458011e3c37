"""A profiling target: an artifact file, or a timm model name measured in eager PyTorch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import Manifest, TensorSig, artifact_given
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models import build_model, check_model_name
from autotimm_deploy.exporter.models.flops import counted
from autotimm_deploy.profiler.artifact import default_runtime, detect, endings
from autotimm_deploy.profiler.runtimes import open_session


@dataclass
class Target:
    label: str
    runtime: str
    format: str  # "eager" for a model name
    path: Path | None = None
    manifest: Manifest | None = None
    spec: ModelSpec | None = None  # what eager builds
    url: str | None = None  # a served model: triton://HOST:PORT/MODEL

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "runtime": self.runtime, "format": self.format,
                "path": str(self.path) if self.path else None,
                "model": self.spec.model if self.spec else None,
                "img_size": list(self.spec.img_size) if self.spec and self.spec.img_size else None,
                "precision": self.manifest.precision if self.manifest else "fp32"}


def resolve(text: str | Path, runtime: str | None = None, img_size: tuple[int, int] | None = None) -> Target:
    """``text`` is a path to an artifact, a served model (``triton://HOST:PORT/MODEL``), or a timm
    model name (eager baseline)."""
    text = str(text)
    if text.startswith("triton://"):
        return _served(text, runtime)
    path = Path(text)
    if path.exists() or path.name.lower().endswith((*endings(), ".json")):
        path = artifact_given(path)
        fmt, manifest = detect(path)
        spec = ModelSpec.from_dict(manifest.spec) if manifest else None
        rt = runtime or default_runtime(fmt)
        return Target(label=f"{path.name} [{rt}]", runtime=rt, format=fmt, path=path, manifest=manifest, spec=spec)
    if runtime not in (None, "eager"):
        raise UserError(f"{text} is a model name, which only the eager runtime can profile (got --runtime {runtime})")
    check_model_name(text)  # one line naming close matches when it is neither file nor model
    return Target(label=f"{text} [eager]", runtime="eager", format="eager", spec=ModelSpec(text, img_size=img_size))


def _served(url: str, runtime: str | None) -> Target:
    from autotimm_deploy.profiler.runtimes import runtime_class

    if runtime not in (None, "triton"):
        raise UserError(f"{url} is a served model, which only the triton runtime measures (got --runtime {runtime})")
    manifest = runtime_class("triton").served_manifest(url)
    if any(sig.dtype not in ("float32", "float16") for sig in manifest.inputs):
        raise UserError(f"{url} takes {manifest.inputs[0].dtype} input (an ensemble over picture files?): profile the "
                        "model behind it (<name>_python or the native one)")
    spec = ModelSpec.from_dict(manifest.spec) if manifest.spec else None
    protocol = "grpc" if "protocol=grpc" in url else "http"
    return Target(label=f"{manifest.artifact} [triton {protocol}]", runtime="triton", format="triton", manifest=manifest,
                  spec=spec, url=url)


def eager_twin(target: Target) -> Target:
    """The eager baseline for an artifact, built from its manifest's spec (random weights: speed
    does not depend on them, and this keeps the profiler offline)."""
    if target.spec is None:
        raise UserError(f"--compare-eager needs the manifest beside {target.path} to know the model")
    spec = target.spec.replace(weights="random", checkpoint=None)
    return Target(label=f"{spec.model} [eager]", runtime="eager", format="eager", spec=spec)


def open_target(target: Target, device: str, threads: int | None, options: dict[str, Any] | None = None,
                img_size: tuple[int, int] | None = None):
    options = dict(options or {})
    if target.runtime == "eager":
        model = build_model(target.spec)
        target.spec = model.spec
        spec = model.spec
        manifest = Manifest(format="eager", artifact="", spec=spec.to_dict(),
                            inputs=[TensorSig("input", "float32", ["batch", spec.in_chans, *spec.img_size])],
                            outputs=[TensorSig(n, "float32", ["batch"]) for n in model.output_names],
                            batch={"dynamic": True, "min": 1, "max": None}, model={"flops": _count(model)})
        return open_session(None, "eager", manifest, device=device, threads=threads, model=model, **options)
    if target.url:
        options["url"] = target.url
    session = open_session(target.path, target.runtime, target.manifest if target.manifest else None,
                           device=device, threads=threads, **options)
    if not session.inputs or not _concrete(session):
        if img_size is None:
            raise UserError(f"{target.path} has no manifest and its input shape is unknown; pass --img-size H,W")
        session.inputs = [TensorSig("input", "float32", ["batch", 3, *img_size])]
    return session


def _count(model) -> dict:
    """The eager model's FLOPs per picture, counted as an export counts them (one picture, untimed)."""
    import torch

    spec = model.spec
    with torch.no_grad():
        _, flops = counted(model, lambda: model(torch.zeros(1, spec.in_chans, *spec.img_size)))
    return flops.record(1, [spec.in_chans, *spec.img_size])


def _concrete(session) -> bool:
    """Every input dim but the batch is known: a number, or a symbolic height/width with a range."""
    sized = {"height", "width"} if session.size_range() else set()
    return all(isinstance(d, int) or d in sized for sig in session.inputs for d in sig.shape[1:])
