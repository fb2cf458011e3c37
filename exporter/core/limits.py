"""Bounds on every number a user gives: past them the work is unbounded (time, memory) or meaningless.
The CLIs check them at parse time, the Python API and the recipe schema where the values arrive."""

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
