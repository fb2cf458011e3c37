"""torch.export programs (``.pt2``) via ``torch.export.load(...).module()``."""

from autotimm_deploy.profiler.runtimes._torch import TorchSession
from autotimm_deploy.profiler.runtimes.base import register_runtime


@register_runtime
class PT2Session(TorchSession):
    requires = ("torch",)
    name = "pt2"
    formats = ("pt2",)

    def load(self):
        program = self.torch.export.load(str(self.path))
        return program.module().to(self.device)
