"""AutoTimm's task modules (PyPI ``autotimm``, the [autotimm] extra): its checkpoints rebuilt and
wrapped so that every format computes what AutoTimm's ``predict()`` returns. AutoTimm itself is
imported only when such a model is built."""

from autotimm_deploy.exporter.models.autotimm.build import build_autotimm, is_autotimm_checkpoint, spec_from_checkpoint

__all__ = ["build_autotimm", "is_autotimm_checkpoint", "spec_from_checkpoint"]
