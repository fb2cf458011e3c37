"""What the PyTorch formats (TorchScript, torch.export) compile: the task model, except that a model
with one output returns that tensor rather than a one-element tuple, so ``torch.jit.load(p)(x)``
gives the logits a user expects; multi-output tasks keep their tuple of named outputs."""

from __future__ import annotations


def program_module(model):
    import torch

    class SingleOutput(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.model = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)[0]

    return SingleOutput(model).eval() if len(model.output_names) == 1 else model


def folded_program(module, example, dims=None):
    """``torch.export`` of ``module`` with what depends on weights alone computed once and stored as
    constants (torch.fx's ``const_fold``), then exported again. A ViT's position-embedding resampling
    (a bicubic op outside Core ATen, which ExecuTorch and LiteRT cannot lower) becomes a constant."""
    import warnings

    import torch
    from torch.fx.experimental import const_fold

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # const_fold's get_attr notices
        program = torch.export.export(module, (example,), dynamic_shapes=dims, strict=False)
        folded = const_fold.split_const_subgraphs(program.module())
        folded.run_folding()
        return torch.export.export(folded, (example,), dynamic_shapes=dims, strict=False)
