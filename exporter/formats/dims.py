"""Which input dimensions an export keeps symbolic: the batch (unless ``--static``) and, with
``--dynamic-size MIN:MAX``, height and width. One place for torch.export's ``dynamic_shapes``
(pt2, aoti, the dynamo ONNX exporter) and the TorchScript ONNX exporter's ``dynamic_axes``."""

from __future__ import annotations

import re

from autotimm_deploy.exporter.core.errors import ExportFailed, UserError, first_line

BATCH, HEIGHT, WIDTH = "batch", "height", "width"


def export_dims(options, multiple: int | None = None, max_batch: int | None = None):
    """torch.export ``dynamic_shapes`` for the one image input, or None when every dim is fixed.
    ``multiple``: height and width are ``multiple * k`` (derived dims), for models whose shape math
    only holds on multiples of their stride. ``max_batch`` bounds the batch (Torch-TensorRT)."""
    from torch.export import Dim

    if getattr(options, "embed_preprocessing", None):  # one picture, its height and width symbolic
        from autotimm_deploy.exporter.inputs.pictures import picture_dims

        return picture_dims(options.embed_preprocessing)
    dims = {}
    if not options.static:
        dims[0] = Dim(BATCH, min=1, max=max_batch) if max_batch else Dim(BATCH, min=1)
    if options.dynamic_size:
        lo, hi = options.dynamic_size
        if multiple:
            k_lo, k_hi = -(-lo // multiple), hi // multiple
            dims[2] = multiple * Dim(f"_{HEIGHT}", min=k_lo, max=k_hi)
            dims[3] = multiple * Dim(f"_{WIDTH}", min=k_lo, max=k_hi)
        else:
            dims[2], dims[3] = Dim(HEIGHT, min=lo, max=hi), Dim(WIDTH, min=lo, max=hi)
    return (dims,) if dims else None


_MULTIPLE = re.compile(r"\b(?:height|width) = (\d+)\*_(?:height|width)")


def size_multiple(error: Exception) -> int | None:
    """The stride torch.export suggests for height and width (``height = 32*_height``), or None."""
    found = [int(m) for m in _MULTIPLE.findall(str(error))]
    return max(found) if found else None


def with_dynamic_dims(options, call, max_batch: int | None = None):
    """``call(dynamic_shapes)`` with our symbolic dims; when torch.export proves the model's shape
    math holds only on multiples of a stride and says so, once more on those multiples.
    Returns (result, multiple or None)."""
    try:
        return call(export_dims(options, max_batch=max_batch)), None
    except Exception as e:  # noqa: BLE001 - torch.export's constraint violation, or anything else
        multiple = size_multiple(e) if options.dynamic_size else None
        if multiple is None:
            raise
    return call(export_dims(options, multiple, max_batch)), multiple


def onnx_axes(options, inputs: list[str], outputs: list[str]) -> dict | None:
    """The TorchScript ONNX exporter's ``dynamic_axes``: symbolic batch everywhere, symbolic height
    and width on the input (output spatial sizes follow from the graph)."""
    if getattr(options, "embed_preprocessing", None):
        hw = {1: HEIGHT, 2: WIDTH} if options.embed_preprocessing == "nhwc" else {2: HEIGHT, 3: WIDTH}
        return {inputs[0]: hw}
    axes = {n: {} for n in inputs + outputs}
    if not options.static:
        for n in axes:
            axes[n][0] = BATCH
    if options.dynamic_size:
        for n in inputs:
            axes[n].update({2: HEIGHT, 3: WIDTH})
    return {n: a for n, a in axes.items() if a} or None


def hint(options) -> str:
    """What to try when torch.export refuses the symbolic dims."""
    if options.dynamic_size:
        lo, hi = options.dynamic_size
        return (f" (the model's shape math does not hold over the whole --dynamic-size {lo}:{hi}; a larger MIN "
                "usually helps, as CNNs need final feature maps of 2 x 2 or more (MIN > 32 at stride 32); or "
                "export without --dynamic-size)")
    return "" if options.static else " (try --static: the model may fix its batch size)"


# --dynamic-size without a range: 64 px (a stride-32 CNN's 2x2 final features: torch.export refuses a
# range that reaches 1x1, where broadcasting would change meaning) to twice the export size
AUTO_MIN_SIZE = 64


def parse_dynamic_size(text: str) -> tuple[int, int]:
    """``--dynamic-size MIN:MAX`` in pixels; ``auto`` -> (0, 0), resolved against the model's size."""
    if text == "auto":
        return 0, 0
    parts = text.split(":")
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--dynamic-size takes MIN:MAX in pixels like 128:512 (or nothing), got {text!r}") from None
    if not 1 <= lo <= hi <= 8192:
        raise UserError(f"--dynamic-size needs 1 <= MIN <= MAX <= 8192, got {lo}:{hi}")
    return lo, hi


def export_program(module, example, options, max_batch: int | None = None):
    """``torch.export.export(module, (example,))`` with our symbolic dims (see `with_dynamic_dims`);
    (program, multiple or None). A failure is an `ExportFailed` with what to try."""
    import torch

    def call(dims):
        with torch.no_grad():
            return torch.export.export(module, (example,), dynamic_shapes=dims, strict=False)

    try:
        return with_dynamic_dims(options, call, max_batch)
    except Exception as e:  # noqa: BLE001
        raise ExportFailed(f"torch.export failed: {first_line(e)}{hint(options)}") from e

