"""The 8-bit picture a graph with its preprocessing inside takes (``--embed-preprocessing``): its
layout, the range of its height and width, an example to trace with, and a decoded picture put in
that layout. Below the formats and the parity check, which all need them."""

from __future__ import annotations

from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.limits import MAX_IMG_SIDE

LAYOUTS = ("nhwc", "nchw")
MIN_SIDE = 8  # a picture smaller than this on a side is outside the graph's shape range


def picture_input(img: np.ndarray, layout: str = "nhwc") -> np.ndarray:
    """An HWC uint8 RGB picture as the embedded graph's input: [1, H, W, C] or [1, C, H, W]."""
    x = np.asarray(img, dtype=np.uint8)[None]
    return np.ascontiguousarray(x if layout == "nhwc" else x.transpose(0, 3, 1, 2))


def example_picture(prep: dict[str, Any], layout: str = "nhwc"):
    """A non-square 8-bit picture (a torch tensor) to trace with: height and width differ from each
    other and from the model's input, so no exporter specialises either."""
    import torch

    c, h, w = prep["input_size"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, c, h * 3 // 4 + 5, w + 11), generator=gen, dtype=torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else x


def picture_dims(layout: str = "nhwc"):
    """torch.export ``dynamic_shapes`` for the picture input: height and width from MIN_SIDE to the limit."""
    from torch.export import Dim

    h, w = Dim("height", min=MIN_SIDE, max=MAX_IMG_SIDE), Dim("width", min=MIN_SIDE, max=MAX_IMG_SIDE)
    return ({1: h, 2: w},) if layout == "nhwc" else ({2: h, 3: w},)
