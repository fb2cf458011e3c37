"""The one preprocessing path: an RGB picture -> the model's input, exactly as the manifest's
``preprocessing`` describes the transform the model was evaluated with, and back: where the
input's pixels lie in the picture (`Geometry`), so answers leave in the picture's own pixels.
Parity pictures, calibration, ``--eval``, the Triton ensemble's preprocessing and
``autotimm-predict`` all go through it.

A record says how the picture becomes the input (``resize``):

- ``crop``: resize, then take the centre ``H x W`` (timm's eval transform and AutoTimm's classifier
  transforms). ``resize_size`` ``[n]`` resizes the shorter side to ``n`` (torchvision's ``Resize(n)``,
  the longer side truncated), ``[h, w]`` to exactly that size (albumentations' ``A.Resize``); without
  it the shorter side goes to ``floor(min(H, W) / crop_pct)`` (timm).
- ``stretch``: the whole picture resized to ``H x W``, aspect not kept (AutoTimm's segmentation).
- ``letterbox``: the longer side resized to fit, aspect kept, then padded with ``pad_value`` to
  ``H x W``, centred (AutoTimm's detection: ``LongestMaxSize`` + ``PadIfNeeded``).

and with which library's pixels (``library``): ``pil`` resizes as PIL does (antialiased, as
torchvision and timm on PIL pictures), ``cv2`` as OpenCV does (no antialiasing, as albumentations),
on 8-bit pictures in both cases, so the result matches the reference within one 8-bit level.
Then pixel / 255 and ``(x - mean) / std``. A record written before this had no ``resize`` key: it
is read as ``crop`` with PIL (dense tasks: ``stretch``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.spec import LIBRARIES, RESIZE_MODES

DEFAULT_PAD_VALUE = (114, 114, 114)  # AutoTimm's (and YOLO's) letterbox grey
_PIL_FILTER = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values
_CV2_FLAG = {"nearest": 0, "bilinear": 1, "bicubic": 2, "lanczos": 4}  # cv2.INTER_* values


@dataclass(frozen=True)
class Geometry:
    """Where a picture lies in the model's input: it was resized to ``resized`` (h, w) and its
    top-left corner placed at ``offset`` (top, left) of the ``input`` (h, w): positive offsets are
    padding (letterbox), negative ones cropped away (centre crop)."""

    picture: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    input: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """(y, x) input pixels per picture pixel."""
        return self.resized[0] / self.picture[0], self.resized[1] / self.picture[1]

    def boxes_to_picture(self, boxes: np.ndarray) -> np.ndarray:
        """``[..., 4]`` x1, y1, x2, y2 in input pixels -> the picture's pixels, clipped to it."""
        (sy, sx), (top, left), (h0, w0) = self.scale, self.offset, self.picture
        b = np.asarray(boxes, dtype=np.float64).copy()
        b[..., 0::2] = np.clip((b[..., 0::2] - left) / sx, 0, w0)
        b[..., 1::2] = np.clip((b[..., 1::2] - top) / sy, 0, h0)
        return b.astype(np.float32)

    def dense_to_picture(self, maps: np.ndarray, interpolation: str = "bilinear", fill: float = 0.0) -> np.ndarray:
        """``[..., H, W]`` maps over the input (logits, probabilities, masks) -> ``[..., H0, W0]``
        over the picture: the part of the input the picture covers, resized back (``nearest`` for
        labels). Picture pixels the input never saw (cropped away) get ``fill``."""
        import cv2

        maps = np.asarray(maps)
        lead = maps.shape[:-2]
        flag = cv2.INTER_NEAREST_EXACT if interpolation == "nearest" else cv2.INTER_LINEAR  # (on pixel centres)
        flat = maps.reshape(-1, *maps.shape[-2:]).astype(np.float32)
        h, w = self.input
        if flat.shape[1:] != (h, w):  # maps at a stride of the input (H/4 prototype masks): to the input first
            flat = np.stack([cv2.resize(m, (w, h), interpolation=flag) for m in flat]) if len(flat) else \
                np.zeros((0, h, w), np.float32)
        (rh, rw), (top, left) = self.resized, self.offset
        canvas = np.full((flat.shape[0], rh, rw), fill, dtype=np.float32)
        y0, x0 = max(top, 0), max(left, 0)  # the input's rows/columns that hold the picture
        y1, x1 = min(top + rh, h), min(left + rw, w)
        canvas[:, y0 - top:y1 - top, x0 - left:x1 - left] = flat[:, y0:y1, x0:x1]
        out = np.stack([cv2.resize(c, (self.picture[1], self.picture[0]), interpolation=flag) for c in canvas]) \
            if len(canvas) else np.zeros((0, *self.picture), np.float32)
        return out.reshape(*lead, *self.picture).astype(maps.dtype if maps.dtype != bool else np.float32)


def describe(prep: dict[str, Any], task: str | None = None) -> dict[str, Any]:
    """``prep`` with every key the transform needs filled in (records from before ``resize``)."""
    out = dict(prep)
    out.setdefault("resize", "crop" if task in (None, "classification") else "stretch")
    out.setdefault("library", "pil")
    out.setdefault("interpolation", "bicubic" if out["library"] == "pil" else "bilinear")
    if out["resize"] == "letterbox":
        out.setdefault("pad_value", list(DEFAULT_PAD_VALUE))
        out.setdefault("pad_position", "center")
    return out


def geometry(picture: tuple[int, int], prep: dict[str, Any]) -> Geometry:
    """Where a picture of ``picture`` (h, w) pixels lies in the model's input under ``prep``: a
    function of its size alone, so a box can be mapped back knowing only the picture's size."""
    prep = describe(prep)
    _, h, w = prep["input_size"]
    h0, w0 = int(picture[0]), int(picture[1])
    mode = prep["resize"]
    if mode == "stretch":
        return Geometry((h0, w0), (h, w), (0, 0), (h, w))
    if mode == "letterbox":  # albumentations' LongestMaxSize, then PadIfNeeded centred (odd pixel after)
        s = min(h / h0, w / w0)
        resized = (max(1, round(h0 * s)), max(1, round(w0 * s)))
        return Geometry((h0, w0), resized, ((h - resized[0]) // 2, (w - resized[1]) // 2), (h, w))
    if mode == "crop":
        resized = _crop_resize_size(prep, (h0, w0), (h, w))
        top, left = _centre(resized[0], h, prep["library"]), _centre(resized[1], w, prep["library"])
        return Geometry((h0, w0), resized, (-top, -left), (h, w))
    raise ValueError(f"unknown resize mode {mode!r} (known: {', '.join(RESIZE_MODES)})")


def prepare(img: np.ndarray, prep: dict[str, Any]) -> tuple[np.ndarray, Geometry]:
    """HWC uint8 (or [0, 1] float) RGB picture -> (CHW float32 model input, its `Geometry`)."""
    prep = describe(prep)
    c, h, w = prep["input_size"]
    pic = _uint8(img, c)
    g = geometry(pic.shape[:2], prep)
    out = _resize(pic, g.resized, prep["interpolation"], prep["library"])
    if prep["resize"] == "letterbox":  # padded to the input size
        out = _placed(out, (h, w), g.offset, np.resize(np.asarray(prep.get("pad_value", DEFAULT_PAD_VALUE), np.uint8),
                                                       out.shape[2]))
    elif prep["resize"] == "crop":  # the centre of the resized picture, black around it where it is smaller
        out = _placed(out, (h, w), g.offset, 0)
    return _normalise(out, prep), g


def _placed(img: np.ndarray, size: tuple[int, int], offset: tuple[int, int], fill) -> np.ndarray:
    """``img`` on a ``size`` canvas of ``fill``, its top-left corner at ``offset`` (negative: cut off)."""
    (h, w), (oy, ox) = size, offset
    canvas = np.empty((h, w, img.shape[2]), np.uint8)
    canvas[...] = fill
    y0, x0, y1, x1 = max(oy, 0), max(ox, 0), min(oy + img.shape[0], h), min(ox + img.shape[1], w)
    canvas[y0:y1, x0:x1] = img[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return canvas


def preprocess(img: np.ndarray, prep: dict[str, Any]) -> np.ndarray:
    """HWC RGB picture -> CHW float32 model input (`prepare` without the geometry)."""
    return prepare(img, prep)[0]


def _crop_resize_size(prep: dict, picture: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The size a picture is resized to before its centre crop."""
    (h0, w0), (h, w) = picture, size
    target = prep.get("resize_size")
    if target and len(target) == 2:
        return int(target[0]), int(target[1])
    crop_pct = float(prep.get("crop_pct") or 1.0)
    if not target and h != w:  # timm's ResizeKeepRatio: both sides at least their target, aspect kept
        ratio = max(math.floor(h / crop_pct) / h0, math.floor(w / crop_pct) / w0)
        return max(h, round(h0 * ratio)), max(w, round(w0 * ratio))
    short = int(target[0]) if target else math.floor(h / crop_pct)
    # torchvision's Resize(int): the shorter side to `short`, the longer one truncated
    if h0 <= w0:
        return short, int(short * w0 / h0)
    return int(short * h0 / w0), short


def _centre(have: int, want: int, library: str) -> int:
    """The first row (column) of a centre crop: torchvision rounds half to even, albumentations floors.
    Smaller than the crop (timm's crop_pct over 1: volo_d5_448), torchvision's CenterCrop pads it with
    black first, ``(want - have) // 2`` before it: the first row is minus that."""
    if have < want:
        return -((want - have) // 2)
    return int(round((have - want) / 2.0)) if library == "pil" else (have - want) // 2


def _uint8(img: np.ndarray, c: int) -> np.ndarray:
    """HWC uint8 with ``c`` channels (1: grey; else RGB)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 4:
        img = img[..., :3]
    if c == 1 and img.shape[2] == 3:  # PIL's "L": ITU-R 601-2 luma
        img = (img.astype(np.float32) @ np.array([299, 587, 114], np.float32) / 1000 + 0.5).astype(np.uint8)[..., None]
    elif c != 1 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def _resize(img: np.ndarray, size: tuple[int, int], interpolation: str, library: str) -> np.ndarray:
    """An 8-bit HWC picture resized to ``size`` (h, w) as ``library`` resizes."""
    if tuple(img.shape[:2]) == tuple(size):
        return img
    if library == "cv2":
        import cv2

        out = cv2.resize(img, (size[1], size[0]), interpolation=_CV2_FLAG.get(interpolation, cv2.INTER_LINEAR))
        return out[..., None] if out.ndim == 2 else out
    if library != "pil":
        raise ValueError(f"unknown resize library {library!r} (known: {', '.join(LIBRARIES)})")
    from PIL import Image

    pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
    out = np.asarray(pil.resize((size[1], size[0]), resample=_PIL_FILTER.get(interpolation, 3)))
    return out[..., None] if out.ndim == 2 else out


def _normalise(img: np.ndarray, prep: dict) -> np.ndarray:
    c = prep["input_size"][0]
    arr = img.astype(np.float32) / 255.0
    if arr.shape[2] != c:
        arr = np.repeat(arr.mean(2, keepdims=True), c, axis=2)
    mean = np.asarray(prep["mean"], dtype=np.float32)
    std = np.asarray(prep["std"], dtype=np.float32)
    return ((arr - mean) / std).transpose(2, 0, 1).astype(np.float32)
