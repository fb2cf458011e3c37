"""Preprocessing inside the graph (``--embed-preprocessing``): the model wrapped so that it takes one
8-bit picture of any height and width (``image``, NHWC as decoders give it, or NCHW) and does what
`autotimm_deploy.exporter.inputs.preprocess` does in Python, with the same record: resize (stretch,
letterbox with its pad value, or resize-then-centre-crop), round to 8 bits as the reference libraries
do, normalise; then the model; then the answers into the picture's own pixels: detection boxes with
the letterbox or stretch undone and clipped, a semantic ``mask`` at the picture's size.

Every size is computed from the input's shape with integer arithmetic (no branches on it), so the
exporters keep height and width symbolic: ``round(h * S / max(h, w))`` is
``(2 * h * S + m) // (2 * m)``. The resize is bilinear or bicubic without antialiasing for records read
with OpenCV (``library: cv2``); for PIL's (``pil``) it is PIL's antialiased resample written with plain
ops (`autotimm_deploy.exporter.models.resample`), since no exporter's own antialiased resize is PIL's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.inputs.pictures import LAYOUTS
from autotimm_deploy.exporter.inputs.preprocess import describe
from autotimm_deploy.exporter.models.resample import antialiased_resize, round_half_up
from torch import nn

EMBEDDED_TASKS = ("classification", "detection", "semantic-segmentation", "instance-segmentation")
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


def _half_even(d):
    """round(d / 2) with ties to even, as torchvision's centre crop rounds, in integer arithmetic."""
    return d // 2 + (d % 2) * ((d // 2) % 2)


class EmbeddedPreprocessing(nn.Module):
    """``model`` behind its own preprocessing: picture in, answers in picture pixels out."""

    def __init__(self, model: nn.Module, layout: str = "nhwc"):
        super().__init__()
        spec = model.spec
        if layout not in LAYOUTS:
            raise UserError(f"--embed-preprocessing takes {' or '.join(LAYOUTS)}, got {layout!r}")
        if spec.task not in EMBEDDED_TASKS or spec.head.get("raw"):
            raise UserError(f"--embed-preprocessing: the {spec.task} outputs{' (--raw)' if spec.head.get('raw') else ''} "
                            "cannot be mapped to the picture's pixels in the graph")
        prep = describe(model.preprocessing, spec.task)
        if spec.task == "instance-segmentation" and prep["resize"] != "stretch":
            raise UserError(f"--embed-preprocessing: instance masks stay at the input's size, which maps back to the "
                            f"picture only when it was stretched (this model's resize is {prep['resize']}); export "
                            "without --embed-preprocessing")
        if prep["resize"] == "crop" and float(prep.get("crop_pct") or 1.0) > 1 and not prep.get("resize_size"):
            raise UserError(f"--embed-preprocessing: this model's centre crop (crop_pct {prep['crop_pct']}, over 1) pads "
                            "the resized picture with black, which the graph does not; export without "
                            "--embed-preprocessing (autotimm-predict pads it)")
        if prep["interpolation"] not in _MODES:
            raise UserError(f"--embed-preprocessing: {prep['interpolation']} resizing has no graph op that matches "
                            f"{prep['library']}'s; pass --interpolation bilinear or bicubic")
        self.model, self.layout, self.prep, self.task = model, layout, prep, spec.task
        self.size = tuple(prep["input_size"][1:])
        c = prep["input_size"][0]
        self.register_buffer("mean", torch.tensor(prep["mean"], dtype=torch.float32).reshape(1, c, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(prep["std"], dtype=torch.float32).reshape(1, c, 1, 1) * 255)
        pad = prep.get("pad_value") or [0] * c
        self.register_buffer("pad", torch.tensor(list(pad)[:c], dtype=torch.float32).reshape(1, c, 1, 1))
        out = list(model.output_names)
        self.output_names = tuple(out + ["mask"] if self.task == "semantic-segmentation" and "mask" not in out
                                  else out)
        self.spec, self.build_info = spec, dict(getattr(model, "build_info", {}))
        self.preprocessing = {**model.preprocessing, "embedded": {"layout": layout, "dtype": "uint8",
                                                                  "outputs": "answers in the picture's pixels"}}

    # --- the geometry, as integers of the input's shape -------------------------------------------
    def _resized(self, h, w):
        (sh, sw), mode = self.size, self.prep["resize"]
        if mode == "stretch":
            return sh, sw
        if mode == "letterbox":  # albumentations' LongestMaxSize: round(side * S / longest)
            m = torch.sym_max(h, w)
            return (2 * h * sh + m) // (2 * m), (2 * w * sh + m) // (2 * m)
        target = self.prep.get("resize_size")
        if target and len(target) == 2:
            return int(target[0]), int(target[1])
        short = int(target[0]) if target else int(sh / float(self.prep.get("crop_pct") or 1.0))
        s = torch.sym_min(h, w)  # torchvision's Resize(int): the shorter side to `short`, the longer truncated
        return (short * h) // s, (short * w) // s

    def _resize(self, x, size):
        mode = _MODES[self.prep["interpolation"]]
        if self.prep["library"] == "pil" and mode != "nearest":  # PIL's antialiasing, the same in every format
            return round_half_up(antialiased_resize(x, size, mode))
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        x = F.interpolate(x, size=size, mode=mode, **kwargs)
        return torch.round(x).clamp(0, 255)  # the 8-bit picture the reference library returns

    def preprocess(self, image: torch.Tensor):
        """(model input [1, C, H, W] float32, (top, left, resized h, resized w, picture h, picture w))."""
        x = image.permute(0, 3, 1, 2) if self.layout == "nhwc" else image
        x = x.to(torch.float32)
        h, w = x.shape[-2], x.shape[-1]
        rh, rw = self._resized(h, w)
        x = self._resize(x, (rh, rw))
        (sh, sw), mode = self.size, self.prep["resize"]
        if mode == "letterbox":  # PadIfNeeded, centred: the odd pixel after
            top, left = (sh - rh) // 2, (sw - rw) // 2
            x = F.pad(x - self.pad, (left, sw - rw - left, top, sh - rh - top)) + self.pad
        elif mode == "crop":
            centre = _half_even if self.prep["library"] == "pil" else (lambda d: d // 2)
            t, lf = centre(rh - sh), centre(rw - sw)
            x = x.narrow(2, t, sh).narrow(3, lf, sw)  # a static size: the exporters need no new symbol
            top, left = -t, -lf
        else:
            top, left = 0, 0
        return (x - self.mean) / self.std, (top, left, rh, rw, h, w)

    def forward(self, image: torch.Tensor):
        x, (top, left, rh, rw, h, w) = self.preprocess(image)
        outs = dict(zip(self.model.output_names, self.model(x)))
        if "boxes" in outs:  # input pixels -> the picture's, clipped
            b = outs["boxes"]
            sx, sy = rw / w, rh / h
            x1 = ((b[..., 0] - left) / sx).clamp(min=0).clamp(max=w)
            y1 = ((b[..., 1] - top) / sy).clamp(min=0).clamp(max=h)
            x2 = ((b[..., 2] - left) / sx).clamp(min=0).clamp(max=w)
            y2 = ((b[..., 3] - top) / sy).clamp(min=0).clamp(max=h)
            outs["boxes"] = torch.stack([x1, y1, x2, y2], dim=-1)
        if self.task == "semantic-segmentation":  # the class map over the picture
            logits, (sh, sw), mode = outs["logits"], self.size, self.prep["resize"]
            if mode == "letterbox":  # the picture's part of the input
                logits = logits.narrow(2, top, rh).narrow(3, left, rw)
            elif mode == "crop":  # the resized picture, the cropped-away border empty
                logits = F.pad(logits, (-left, rw - sw + left, -top, rh - sh + top))
            outs["mask"] = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).argmax(dim=1)
        return tuple(outs[n] for n in self.output_names)


def embed(model: nn.Module, layout: str = "nhwc") -> EmbeddedPreprocessing:
    return EmbeddedPreprocessing(model, layout).eval()
