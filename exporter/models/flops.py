"""The model's FLOPs per picture, counted once at export on the eager model (the manifest's
``model.flops``; the profiler's "% of peak" column divides by it).

Counted with PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` over the forward the
export already runs to learn its output shapes: 2 FLOPs per multiply-accumulate of convolutions
(transposed too), matrix products (linear, matmul, bmm, baddbmm) and attention (scaled dot
product), so FLOPs = 2 x MACs exactly. Not counted: bias adds, normalisations, activations,
pooling, resizes, elementwise arithmetic and NMS — a small share of a vision model's work, so the
count is a slight undercount and "% of peak" a slight understatement, never an overstatement."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

COUNTED_BY = "torch.utils.flop_counter.FlopCounterMode"
COUNTS = ("2 per multiply-accumulate of convolutions, matrix products and attention; bias adds, norms, "
          "activations, pooling, elementwise ops and NMS not counted")


class FlopCount:
    """What one counted forward found: ``record(batch, input_size)`` is the manifest's entry."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.error: str | None = None

    def record(self, batch: int, input_size: list[int]) -> dict[str, Any]:
        """The manifest's ``model.flops``: FLOPs per picture at ``input_size`` [c, h, w] (the counted
        forward ran ``batch`` pictures; every counted op is linear in the batch), or why there are none."""
        base = {"input_size": list(input_size), "counted_by": COUNTED_BY, "counts": COUNTS}
        if self.total is None:
            return {**base, "per_image": None, "error": self.error or "not counted"}
        return {**base, "per_image": int(self.total // max(1, batch))}


@contextlib.contextmanager
def counting_flops() -> Iterator[FlopCount]:
    """Count the FLOPs of what runs inside (under ``torch.no_grad`` or not). A counter that fails
    leaves the count empty with its reason; the forward inside is not affected."""
    from torch.utils.flop_counter import FlopCounterMode

    count = FlopCount()
    mode = FlopCounterMode(display=False)
    with mode:
        yield count
    try:
        count.total = int(mode.get_total_flops())
    except Exception as e:  # noqa: BLE001 - a count is a report, never a reason to fail an export
        count.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def counted(model, forward: Callable[[], Any]) -> tuple[Any, FlopCount]:
    """``forward()``'s result (a forward of ``model``) and its FLOPs. The weights stop requiring grad
    while it is counted (restored after): the counter's module tracker hooks tensors that require
    grad and asserts on some (CaiT's class-attention blocks: "Expected gradient function to be set").
    Where the counter still breaks the forward, the forward runs again uncounted and the count is
    empty with that reason."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.requires_grad_(False)
        with counting_flops() as count:
            return forward(), count
    except Exception as e:  # noqa: BLE001 - the same forward without the counter decides
        out, count = forward(), FlopCount()
        count.error = f"the counter broke the forward: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        return out, count
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
