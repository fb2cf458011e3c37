"""Deterministic, real model inputs: the pictures that ship inside scikit-image, preprocessed as the
model's manifest says (`preprocess`). Used for parity (and calibration when no data is given)."""

from __future__ import annotations

import functools

import numpy as np
from autotimm_deploy.exporter.inputs.preprocess import preprocess

PICTURES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "cat", "immunohistochemistry", "hubble_deep_field")
# the files behind those pictures in skimage.data's folder, read with PIL as skimage.io reads them (the
# same pixels: tests/test_preprocess.py), without importing skimage.io (imageio, scipy: ~0.5 s of an export)
FILES = {"astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg",
         "camera": "camera.png", "cat": "chelsea.png", "immunohistochemistry": "ihc.png",
         "hubble_deep_field": "hubble_deep_field.jpg"}


def read_picture(name: str) -> np.ndarray:
    """skimage.data's picture ``name`` as it stores it (HW or HWC)."""
    from pathlib import Path

    import skimage.data

    path = Path(skimage.data.data_dir) / FILES.get(name, "")
    if name in FILES and path.is_file():
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    return np.asarray(getattr(skimage.data, name)())


@functools.lru_cache(maxsize=None)
def _picture(name: str) -> np.ndarray:
    """HWC uint8 RGB."""
    img = read_picture(name)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def non_square_pictures() -> dict[str, np.ndarray]:
    """Four real pictures that are not square (HWC uint8 RGB): landscape 600x400, 640x427 and 451x300,
    and a 280x512 portrait crop of the astronaut. What letterbox, stretch and crop treat differently."""
    return {"coffee": _picture("coffee"), "rocket": _picture("rocket"), "chelsea": _picture("chelsea"),
            "astronaut-crop": np.ascontiguousarray(_picture("astronaut")[:, 100:380])}


def sample_images(n: int, prep: dict, offset: int = 0) -> np.ndarray:
    """``n`` pictures as float32 NCHW, preprocessed as ``prep`` (a manifest's ``preprocessing``).
    Picture ``i`` is ``PICTURES[(offset + i) % len]``, mirrored on every second pass through the list,
    with faint seeded noise (std 2/255)."""
    c = prep["input_size"][0]
    unit = {**prep, "mean": [0.0] * c, "std": [1.0] * c}  # [0, 1]: the noise is added before normalising
    out = []
    for i in range(offset, offset + n):
        img = _picture(PICTURES[i % len(PICTURES)])
        if (i // len(PICTURES)) % 2:
            img = np.ascontiguousarray(img[:, ::-1])
        out.append(preprocess(img, unit))
    x = np.stack(out)
    # faint, seeded sensor noise: flat regions would otherwise give bit-identical features at many
    # locations, and runtimes may break such exact ties (top-k, NMS order) differently
    x = x + np.random.default_rng(offset).normal(0, 2 / 255, x.shape).astype(np.float32)
    m = np.asarray(prep["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(prep["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)
