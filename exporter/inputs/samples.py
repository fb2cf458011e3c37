"""Deterministic, real-looking model inputs: the pictures that ship inside scikit-image, resized and
normalised the way the model expects. Used for parity (and calibration when no data is given)."""

from __future__ import annotations

import functools

import numpy as np

PICTURES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "cat", "immunohistochemistry", "hubble_deep_field")


@functools.lru_cache(maxsize=None)
def _picture(name: str) -> np.ndarray:
    """HWC float32 in [0, 1], always three channels."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    return img / 255.0 if img.max() > 1.0 else img


def sample_images(n: int, in_chans: int, size: tuple[int, int], mean, std, offset: int = 0) -> np.ndarray:
    """``n`` pictures as float32 NCHW, resized (bilinear, antialiased) to ``size`` and normalised.
    Picture ``i`` is ``PICTURES[(offset + i) % len]``, mirrored on every second pass through the list,
    with faint seeded noise (std 2/255)."""
    import torch
    import torch.nn.functional as F

    out = []
    for i in range(offset, offset + n):
        img = torch.from_numpy(_picture(PICTURES[i % len(PICTURES)])).permute(2, 0, 1)[None]
        if (i // len(PICTURES)) % 2:
            img = img.flip(-1)
        img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        if in_chans != 3:
            gray = img.mean(0, keepdim=True)
            img = gray.repeat(in_chans, 1, 1)
        out.append(img)
    x = torch.stack(out).numpy()
    # faint, seeded sensor noise: flat regions would otherwise give bit-identical features at many
    # locations, and runtimes may break such exact ties (top-k, NMS order) differently
    x = x + np.random.default_rng(offset).normal(0, 2 / 255, x.shape).astype(np.float32)
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)
