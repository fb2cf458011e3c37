"""AOTInductor packages (``.aoti.pt2``) via ``torch._inductor.aoti_load_package``: compiled kernels
for one kind of device, recorded in the manifest (``export.device``); a package is opened on that
device unless another is asked for, which is refused in one line. A package with a model tuned for
one input shape (``export.tuned``: frozen weights packed for a static shape) runs it on inputs of that
shape and its any-batch ``model`` on the rest."""

from __future__ import annotations

from autotimm_deploy.exporter.core.environment import check_tmpdir
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.manifest import PACKAGE_INPUT_SHAPE
from autotimm_deploy.profiler.runtimes._torch import TorchSession
from autotimm_deploy.profiler.runtimes.base import register_runtime


def compiled_for(manifest, path=None) -> str | None:
    """The device kind a package was compiled for: its manifest's, else the package's own metadata."""
    if manifest:
        return (manifest.export or {}).get("device") or None
    if path is None:
        return None
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("wrapper_metadata.json")), None)
            return json.loads(z.read(name)).get("AOTI_DEVICE_KEY") if name else None
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


@register_runtime
class AOTISession(TorchSession):
    requires = ("torch",)
    name = "aoti"
    formats = ("aoti",)

    @classmethod
    def default_device(cls, manifest, path=None) -> str:
        return compiled_for(manifest, path) or "cpu"

    def load(self):
        built = compiled_for(self.manifest, self.path)
        if built and built != self.device.split(":")[0]:
            raise UserError(f"{self.path.name} was compiled for {built} and cannot run on {self.device}; profile it "
                            f"with --device {built}, or re-export with autotimm-export --format aoti --device "
                            f"{self.device.split(':')[0]}")
        check_tmpdir("AOTInductor")
        device = self.torch.device(self.device)
        index = (device.index or 0) if device.type == "cuda" else -1  # -1: the CPU runner
        from torch._inductor.package import load_package

        tuned = (self.manifest.export or {}).get("tuned") if self.manifest else None
        try:
            # one runner, no locking between runs: what CUDA-graph capture needs (aoti_load_package's docs)
            models = [load_package(str(self.path), name, device_index=index,
                                   run_single_threaded=bool(self.options.get("cuda_graph")))
                      for name in ("model", *([tuned["model"]] if tuned else []))]
        except Exception as e:  # noqa: BLE001 - corrupt package, or compiled by another torch
            raise UserError(f"cannot load AOTInductor package {self.path}: {first_line(e, 200)} (packages run "
                            "with the torch version that compiled them)") from None
        try:
            models = [Guarded(m, self.path.name) for m in models]
        except ValueError as e:  # its metadata edited
            raise UserError(f"{self.path.name}'s recorded input shape is malformed ({first_line(e)}): re-export "
                            "it") from None
        return ByShape(models[0], models[1], tuple(tuned["input_shape"])) if tuned else models[0]


class Guarded:
    """A package's model that refuses inputs of a shape it was not compiled for (the shape its own
    metadata records, `PACKAGE_INPUT_SHAPE`): its compiled kernels do not check, and on another size
    they read past their buffers and answer wrongly."""

    def __init__(self, model, name: str):
        import json

        self.model, self.name = model, name
        shape = model.get_metadata().get(PACKAGE_INPUT_SHAPE)
        self.shape = None if shape is None else tuple(json.loads(shape))
        if self.shape is not None and not all(d is None or type(d) is int for d in self.shape):
            raise ValueError(f"{shape!r} is not a list of sizes")
        self.accepted: tuple | None = None  # the last shape checked (the profiler runs one shape many times)

    def __call__(self, x, *rest):
        if self.shape is not None and tuple(x.shape) != self.accepted:
            if x.dim() != len(self.shape) or any(want is not None and want != got
                                                 for want, got in zip(self.shape, x.shape)):
                wanted = ", ".join("any" if d is None else str(d) for d in self.shape)
                raise UserError(f"{self.name} was compiled for inputs of shape [{wanted}] and cannot run "
                                f"{list(x.shape)}: feed it that shape (its manifest or --img-size says another), or "
                                "export it again for this one")
            self.accepted = tuple(x.shape)
        return self.model(x, *rest)


class ByShape:
    """A package's model tuned for one input shape where the input has it, its any-shape model otherwise."""

    def __init__(self, general, tuned, shape: tuple[int, ...]):
        self.general, self.tuned, self.shape = general, tuned, shape

    def __call__(self, x, *rest):
        return (self.tuned if tuple(x.shape) == self.shape else self.general)(x, *rest)
