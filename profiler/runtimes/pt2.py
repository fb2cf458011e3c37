"""torch.export programs (``.pt2``) via ``torch.export.load(...).module()``."""

from autotimm_deploy.profiler.runtimes._torch import TorchSession


class PT2Session(TorchSession):
    name = "pt2"
    formats = ("pt2",)

    def load(self):
        program = self.torch.export.load(str(self.path))
        return program.module().to(self.device)
