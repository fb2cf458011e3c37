"""The one preprocessing path: an RGB picture -> the model's input, as the manifest's
``preprocessing`` describes it (timm's eval transform). Calibration images, scikit-image's sample
pictures (parity) and the benchmark inputs all go through it."""

from __future__ import annotations

import numpy as np

_RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0, "lanczos": 1}  # PIL.Image.Resampling values


def preprocess(img: np.ndarray, prep: dict) -> np.ndarray:
    """HWC uint8/float RGB image -> CHW float32, the timm eval transform: resize the shorter side to
    size / crop_pct, centre-crop to size, scale to [0, 1], normalise."""
    c, h, w = prep["input_size"]
    pil = _pil(img, c)
    scale = max(h, w) / prep.get("crop_pct", 1.0)
    ratio = scale / min(pil.size)
    new = (max(w, round(pil.size[0] * ratio)), max(h, round(pil.size[1] * ratio)))
    pil = pil.resize(new, resample=_RESAMPLE.get(prep.get("interpolation"), 3))
    left, top = (new[0] - w) // 2, (new[1] - h) // 2
    return _normalise(pil.crop((left, top, left + w, top + h)), prep)


def preprocess_stretch(img: np.ndarray, prep: dict) -> np.ndarray:
    """HWC RGB image -> CHW float32 for the dense tasks (detection, segmentation): the whole picture
    resized to the input size (no crop, aspect not kept, as AutoTimm's dense eval transforms), scaled
    and normalised as ``prep`` says. A pixel (x, y) of the input maps back to (x * W0 / w, y * H0 / h)."""
    c, h, w = prep["input_size"]
    pil = _pil(img, c).resize((w, h), resample=_RESAMPLE.get(prep.get("interpolation"), 3))
    return _normalise(pil, prep)


def _pil(img: np.ndarray, c: int):
    from PIL import Image

    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(img).convert("RGB" if c != 1 else "L")


def _normalise(pil, prep: dict) -> np.ndarray:
    c = prep["input_size"][0]
    arr = np.asarray(pil, dtype=np.float32) / 255.0
    arr = arr[..., None] if arr.ndim == 2 else arr
    if arr.shape[2] != c:
        arr = np.repeat(arr.mean(2, keepdims=True), c, axis=2)
    mean = np.asarray(prep["mean"], dtype=np.float32)
    std = np.asarray(prep["std"], dtype=np.float32)
    return ((arr - mean) / std).transpose(2, 0, 1).astype(np.float32)
