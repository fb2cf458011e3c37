"""Answers drawn on the user's own picture (``autotimm-predict -o DIR``): boxes with class name and
score, instance masks as coloured overlays, a semantic class map blended over the picture, the
top-5 classes as text. What a person would rather look at than read."""

from __future__ import annotations

import colorsys
import io
from typing import Any

import numpy as np
from autotimm_deploy.exporter.inputs.answers import decode_mask

OVERLAY_ALPHA = 0.45


def colour(label: int) -> tuple[int, int, int]:
    """A distinct, stable colour per class (golden-ratio hues)."""
    h = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def palette(labels: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] colours of an int label map."""
    top = int(labels.max()) + 1 if labels.size else 1
    table = np.array([colour(k) for k in range(top)], np.uint8)
    return table[np.clip(labels, 0, top - 1)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one size only
        return ImageFont.load_default()


def _label(draw, xy: tuple[float, float], text: str, fill: tuple[int, int, int], font) -> None:
    """``text`` on a filled box whose bottom-left is ``xy`` (kept inside the picture)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 6, bottom - top + 4
    x = max(0, min(xy[0], draw.im.size[0] - w))
    y = max(0, xy[1] - h)
    draw.rectangle([x, y, x + w, y + h], fill=fill)
    draw.text((x + 3, y + 2 - top), text, fill=(0, 0, 0), font=font)


def draw(picture: np.ndarray, answer: Any) -> bytes:
    """PNG bytes of ``picture`` (HWC uint8 RGB) with ``answer`` (a `predict.Answer`) drawn on it."""
    from PIL import Image, ImageDraw

    img = picture.astype(np.float32)
    if answer.mask is not None:  # semantic segmentation: the class map over the picture
        img = img * (1 - OVERLAY_ALPHA) + palette(answer.mask).astype(np.float32) * OVERLAY_ALPHA
    for d in answer.detections if answer.masks else ():
        m = decode_mask(d["mask"])
        img[m] = img[m] * (1 - OVERLAY_ALPHA) + np.array(colour(d["label"]), np.float32) * OVERLAY_ALPHA
    out = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(out)
    size = max(11, min(out.size) // 40)
    font, width = _font(size), max(2, min(out.size) // 300)
    for d in answer.detections:
        c = colour(d["label"])
        pen.rectangle(d["box"], outline=c, width=width)
        _label(pen, (d["box"][0], d["box"][1]), f"{d['name']} {d['score']:.2f}", c, font)
    lines = [f"{t['name']}  {t['prob']:.1%}" for t in answer.top]
    if answer.mask is not None:
        lines = [f"class {c['label']}  {c['share']:.0%}" for c in answer.class_shares()[:5]]
    y = 0
    for i, text in enumerate(lines):
        c = colour(answer.top[i]["label"]) if answer.top else colour(answer.class_shares()[i]["label"])
        _label(pen, (0, y + size + 6), text, c, font)
        y += size + 6
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """A class-index map as a PNG (8-bit, or 16-bit past 255 classes): what a program reads back."""
    from PIL import Image

    arr = mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
