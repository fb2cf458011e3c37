"""Bounds on every number a user gives: past them the work is unbounded (time, memory) or meaningless.
The CLIs check them at parse time, the Python API and the recipe schema where the values arrive; a
bound checked in more than one of those places has one function that all of them call."""

import argparse

from autotimm_deploy.exporter.core.errors import UserError

MAX_CLASSES = 100_000
MAX_IMG_SIDE = 8192  # pixels per side
MAX_IN_CHANS = 64
MAX_BATCH = 4096
MAX_SECONDS = 3600.0  # sampling, warm-up, --target timing
MAX_ITERATIONS = 1_000_000
MAX_CALIBRATION_SAMPLES = 10_000  # calibration saturates long before; beyond it is only memory and time
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML
MAX_EVAL_SAMPLES = 1_000_000  # --eval-samples; memory is checked separately, against what is free
MAX_DROP_POINTS = 100.0  # --max-drop: metric points (top-1 %, AP x 100, mIoU %)
# A checkpoint's zip entries: torch.save stores them uncompressed and floats hardly compress, so an
# entry (past a megabyte) or a whole file that inflates more than this is not weights but a zip bomb.
MAX_INFLATION = 100
# Dims a manifest may declare: a graph input is [batch <= MAX_BATCH, channels <= MAX_IN_CHANS, sides
# <= MAX_IMG_SIDE]; an output dim past MAX_OUTPUT_DIM (the pixels of the largest picture: flattened
# anchors, a flattened mask) or one picture's outputs past MAX_OUTPUT_VALUES (logits for MAX_CLASSES
# at the largest size) no model within the bounds above produces.
MAX_RANK = 8
MAX_OUTPUT_DIM = MAX_IMG_SIDE**2
MAX_OUTPUT_VALUES = MAX_CLASSES * MAX_IMG_SIDE**2


def check_max_drop(value: object, what: str = "--max-drop") -> float:
    """The accuracy budget as a float: a number from 0 to `MAX_DROP_POINTS` (not NaN, not a bool),
    else a `UserError` that names it as ``what`` (the recipe's ``max_drop``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_DROP_POINTS:
        raise UserError(f"{what} takes 0 to {MAX_DROP_POINTS:g} metric points, got {value!r}")
    return float(value)


def max_drop_arg(text: str) -> float:
    """``--max-drop``'s argparse type: `check_max_drop` at parse time (a bad value is a usage error)."""
    try:
        return check_max_drop(float(text))
    except (ValueError, UserError):
        raise argparse.ArgumentTypeError(f"takes a number from 0 to {MAX_DROP_POINTS:g}, got {text!r}") from None
