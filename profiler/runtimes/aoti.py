"""AOTInductor packages (``.aoti.pt2``) via ``torch._inductor.aoti_load_package``: compiled kernels
for one kind of device, recorded in the manifest (``export.device``); a package is opened on that
device unless another is asked for, which is refused in one line."""

from __future__ import annotations

from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.profiler.runtimes._torch import TorchSession


def compiled_for(manifest) -> str | None:
    return ((manifest.export or {}).get("device") if manifest else None) or None


class AOTISession(TorchSession):
    name = "aoti"
    formats = ("aoti",)

    @classmethod
    def default_device(cls, manifest) -> str:
        return compiled_for(manifest) or "cpu"

    def load(self):
        built = compiled_for(self.manifest)
        if built and built != self.device.split(":")[0]:
            raise UserError(f"{self.path.name} was compiled for {built} and cannot run on {self.device}; profile it "
                            f"with --device {built}, or re-export with autotimm-export --format aoti --device "
                            f"{self.device.split(':')[0]}")
        device = self.torch.device(self.device)
        index = (device.index or 0) if device.type == "cuda" else -1  # -1: the CPU runner
        try:
            return self.torch._inductor.aoti_load_package(str(self.path), device_index=index)
        except Exception as e:  # noqa: BLE001 - corrupt package, or compiled by another torch
            raise UserError(f"cannot load AOTInductor package {self.path}: {first_line(e, 200)} (packages run "
                            "with the torch version that compiled them)") from None
