"""``torchvision.ops.roi_align`` as matrix products, for the edge converters that have no RoIAlign
(ExecuTorch: "Missing out variants: torchvision::roi_align"; LiteRT and Core ML cannot read the op):
AutoTimm's InstanceSegmentor pools its mask features with it.

RoIAlign averages bilinear samples over a grid in each output bin. A bilinear sample is separable
(a weight per row times a weight per column, and torchvision's "outside the map" test is one per
axis), so a bin's average is ``rows @ feature_map @ columns.T`` with ``rows`` the average of its
samples' row weights and ``columns`` likewise: two matrix products per RoI, no gather of data-dependent
size. The adaptive grid (``sampling_ratio <= 0``: ``ceil(roi_size / bins)`` samples a bin per axis)
is a fixed number of slots with the slots past a RoI's own count weighted zero. The slots cover a RoI
as large as the feature map plus one pixel (boxes inside the picture, as the detectors clip them);
samples of a larger RoI past that are left out, which the export's parity check would show.
Positions follow torchvision's kernel operation for operation; the sums run in another order, so
values agree to float rounding (~1e-7), not bit for bit.
"""

from __future__ import annotations

import math


def roi_align(features, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int,
              aligned: bool):
    """``torch.ops.torchvision.roi_align`` (same arguments: ``features [B, C, H, W]``, ``rois [K, 5]``
    as batch index, x1, y1, x2, y2) -> ``[K, C, pooled_height, pooled_width]``."""
    import torch

    batch, channels, height, width = features.shape
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    rows = _axis_weights(y1, y2, height, pooled_height, sampling_ratio, aligned)  # [K, P, H]
    columns = _axis_weights(x1, x2, width, pooled_width, sampling_ratio, aligned)  # [K, Q, W]
    # each RoI reads its own picture: the batch folded into the rows, [K, P, B * H]
    own = (rois[:, 0:1] == torch.arange(batch, device=rois.device, dtype=rois.dtype)).to(features.dtype)
    rows = (own[:, None, :, None] * rows[:, :, None, :]).reshape(rois.shape[0], pooled_height, batch * height)
    maps = features.permute(1, 0, 2, 3).reshape(channels, batch * height, width)
    pooled = torch.einsum("kpr,crw->kcpw", rows, maps)
    return torch.einsum("kcpw,kqw->kcpq", pooled, columns)


def _axis_weights(start, end, size: int, bins: int, sampling_ratio: int, aligned: bool):
    """``[K, bins, size]``: for each RoI and bin, the mean over the bin's samples along this axis of
    each sample's bilinear weight on each pixel (torchvision's ``bilinear_interpolate``, one axis)."""
    import torch

    length = end - start
    if not aligned:
        length = length.clamp(min=1.0)
    step = length / bins
    if sampling_ratio > 0:
        slots, grid = sampling_ratio, torch.full_like(length, float(sampling_ratio))
    else:
        slots, grid = max(1, math.ceil((size + 1) / bins)), torch.ceil(length / bins)
    b = torch.arange(bins, device=start.device, dtype=start.dtype)[None, :, None]
    i = torch.arange(slots, device=start.device, dtype=start.dtype)[None, None, :]
    g = grid[:, None, None]
    pos = start[:, None, None] + b * step[:, None, None] + (i + 0.5) * step[:, None, None] / g.clamp(min=1.0)
    used = (i < g) & (pos >= -1.0) & (pos <= size)  # [K, bins, slots]
    pos = pos.clamp(min=0.0)
    low = torch.floor(pos)
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    pos = torch.where(edge, low, pos)
    frac = pos - low
    pixel = torch.arange(size, device=start.device, dtype=start.dtype)
    weights = ((1 - frac)[..., None] * (pixel == low[..., None]) + frac[..., None] * (pixel == high[..., None]))
    weights = torch.where(used[..., None], weights, torch.zeros_like(weights))
    return weights.sum(2) / grid.clamp(min=1.0)[:, None, None]
