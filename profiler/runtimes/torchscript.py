"""TorchScript artifacts via ``torch.jit.load``."""

from autotimm_deploy.profiler.runtimes._torch import TorchSession
from autotimm_deploy.profiler.runtimes.base import register_runtime


@register_runtime
class TorchScriptSession(TorchSession):
    requires = ("torch",)
    name = "torchscript"
    formats = ("torchscript",)

    def load(self):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.torch.jit.load(str(self.path), map_location=self.device).eval()
