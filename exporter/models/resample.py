"""PIL's antialiased resize written with plain graph ops (arange, floor, gather, multiply, sum), for a
graph whose picture has a symbolic height and width (``--embed-preprocessing``).

Each exporter's own antialiased resize is not PIL's: OpenVINO's ``Interpolate`` with antialiasing
differs by up to 70 levels of 8 bits on real pictures, TensorRT's resize layer has no antialiasing,
so one implementation serves every format. It is PIL's ``ImagingResample``: per output pixel the
input pixels within ``support = filter support * max(scale, 1)`` of its centre, weighted by the filter
(triangle for bilinear, Keys' cubic with a = -0.5 for bicubic) and normalised; the horizontal pass
first, rounded to 8 bits as PIL stores it, then the vertical pass. The taps per output pixel are a
symbolic bound (``2 * ceil(support) + 1``); taps outside the window weigh 0; ties round up, as PIL's
fixed-point sums do. Memory: the horizontal pass holds about ``2 * support / scale`` times the picture
(2x for bilinear, 4x for bicubic).

Pillow 13 runs the vertical pass first when the height shrinks much more than the width (Pillow
PR 9549; its exact rule is not reproduced here): then the 8-bit rounding between the passes falls
differently, which moves a bilinear pixel by at most one level and a bicubic one by a few levels on
under 1 % of the pixels (tests/test_embedded.py holds both bounds)."""

from __future__ import annotations

import torch

SUPPORT = {"bilinear": 1, "bicubic": 2}


def _filter(x: torch.Tensor, mode: str) -> torch.Tensor:
    x = x.abs()
    if mode == "bilinear":
        return (1.0 - x).clamp(min=0.0)
    a = -0.5  # PIL's (and torch's antialiased) bicubic
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def taps(in_size, out_size, mode: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input index [out, K], weight [out, K]) of each output pixel along one axis, as PIL's
    ``precompute_coeffs``; ``in_size``/``out_size`` may be symbolic."""
    fs = SUPPORT[mode]
    k = 2 * ((fs * torch.sym_max(in_size, out_size) + out_size - 1) // out_size) + 1  # >= PIL's ksize
    n_in = torch.full((), 1.0, dtype=torch.float32, device=like.device) * in_size
    scale = n_in / out_size
    filterscale = scale.clamp(min=1.0)
    support = filterscale * fs
    centre = (torch.arange(out_size, dtype=torch.float32, device=like.device) + 0.5) * scale
    xmin = torch.floor(centre - support + 0.5).clamp(min=0.0)
    xmax = torch.minimum(torch.floor(centre + support + 0.5), n_in)
    pos = xmin[:, None] + torch.arange(k, dtype=torch.float32, device=like.device)[None, :]
    inside = pos < xmax[:, None]
    w = torch.where(inside, _filter((pos - centre[:, None] + 0.5) / filterscale, mode), torch.zeros_like(pos))
    w = w / w.sum(dim=1, keepdim=True)
    index = torch.minimum(pos, n_in - 1).to(torch.int64)
    return index, w


def _pass(x: torch.Tensor, dim: int, out_size, mode: str) -> torch.Tensor:
    """One axis of ``x`` [N, C, H, W] (dim 2 or 3) resampled to ``out_size``."""
    index, w = taps(x.shape[dim], out_size, mode, x)
    k = index.shape[1]
    picked = x.index_select(dim, index.reshape(-1))
    if dim == 3:
        n, c, h = x.shape[0], x.shape[1], x.shape[2]
        return (picked.reshape(n, c, h, out_size, k) * w).sum(-1)
    n, c, wd = x.shape[0], x.shape[1], x.shape[3]
    return (picked.reshape(n, c, out_size, k, wd) * w[:, :, None]).sum(3)


def antialiased_resize(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    """``x`` [N, C, H, W] holding 8-bit values (as float) resized to ``size`` (h, w) as PIL resizes an
    8-bit picture; the result is left unrounded (the caller rounds it with `round_half_up`)."""
    if mode not in SUPPORT:
        raise ValueError(f"no antialiased {mode} resize (known: {', '.join(SUPPORT)})")
    x = round_half_up(_pass(x, 3, size[1], mode))  # PIL keeps the horizontal pass in 8 bits
    return _pass(x, 2, size[0], mode)


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """To 8 bits as PIL's fixed-point sums round (ties up, not to even: a 1.5x upscale is full of ties)."""
    return torch.floor(x + 0.5).clamp(0, 255)
