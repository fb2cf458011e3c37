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
