"""Calibration data for int8: a folder of images, a ``.npy`` file, or scikit-image's sample pictures,
each preprocessed exactly as the manifest's preprocessing says (`preprocess`). Random data only
when asked for explicitly (and flagged)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from autotimm_deploy.exporter.core.environment import available_memory
from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.limits import MAX_CALIBRATION_SAMPLES
from autotimm_deploy.exporter.inputs.preprocess import preprocess
from autotimm_deploy.exporter.inputs.samples import sample_images

SAMPLE_PICTURES = "sample-pictures"  # --calib-data keyword: the pictures scikit-image ships
NEEDS_DATA = ("int8 needs calibration data: pass --calib-data DIR|FILE.npy|sample-pictures "
              "(or --calib-random for a smoke test whose accuracy means nothing)")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def _from_folder(folder: Path, n: int, prep: dict) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"calibration folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for p in files[:n]:
        try:
            with Image.open(p) as im:
                img = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise UserError(f"cannot read calibration image {p}: {first_line(e, 150)}") from None
        out.append(preprocess(img, prep))
    return np.stack(out)


def _from_npy(path: Path, n: int, prep: dict) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy's own words, e.g. a pickle's "allow_pickle" advice, are no fix
        why = "not a NumPy array file" if "pickle" in str(e) else first_line(e, 150)
        raise UserError(f"cannot read calibration file {path}: {why}; give a folder of pictures, or an .npy "
                        "written by numpy.save (float32 [N,C,H,W] preprocessed, or uint8 [N,H,W,3] images)") from None
    c, h, w = prep["input_size"]
    if arr.ndim == 4 and tuple(arr.shape[1:]) == (c, h, w) and np.issubdtype(arr.dtype, np.floating):
        return np.ascontiguousarray(arr[:n], dtype=np.float32)  # already preprocessed NCHW
    if arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.dtype == np.uint8:
        return np.stack([preprocess(a if a.shape[-1] == 3 else a[..., 0], prep) for a in arr[:n]])
    raise UserError(
        f"calibration file {path} has shape {list(arr.shape)} {arr.dtype}; expected float32 [N,{c},{h},{w}] "
        "(preprocessed) or uint8 [N,H,W,3] images"
    )


def check_fits(n: int, prep: dict, what: str, fix: str) -> None:
    """``n`` preprocessed pictures must fit in half the memory free here; else one line naming ``fix``."""
    need = n * int(np.prod(prep["input_size"])) * 4
    available = available_memory()
    if available is not None and need > available // 2:
        raise UserError(f"{n} {what} at {'x'.join(map(str, prep['input_size']))} need {need / 2**30:.1f} GiB, more "
                        f"than half the memory free here ({available / 2**30:.1f} GiB); {fix}")


def load_calibration(source: str | None, samples: int, prep: dict, allow_random: bool = False,
                     seed: int = 0, exact: bool = False) -> tuple[np.ndarray, dict]:
    """(data [N,C,H,W] float32, description for the manifest). A folder or ``.npy`` holding fewer
    than ``samples``: with ``exact`` (the user asked for that many) a `UserError` naming both numbers;
    else (the default number) what it holds is used, and the description's ``note`` says so."""
    if not 1 <= samples <= MAX_CALIBRATION_SAMPLES:
        raise UserError(f"--calib-samples takes 1 to {MAX_CALIBRATION_SAMPLES}, got {samples}")
    check_fits(samples, prep, "calibration samples", "pass fewer --calib-samples")
    if source is None:
        if not allow_random:
            raise UserError(NEEDS_DATA)
        rng = np.random.default_rng(seed)
        data = rng.standard_normal((samples, *prep["input_size"]), dtype=np.float32)
        return data, {"source": "random", "samples": samples, "warning": "random calibration: accuracy is meaningless"}
    if source == SAMPLE_PICTURES:
        data = sample_images(samples, prep)
        return data, {"source": SAMPLE_PICTURES, "samples": samples,
                      "note": "scikit-image's sample pictures: real images, but not your data"}
    path = Path(source)
    if path.is_dir():
        data = _from_folder(path, samples, prep)
    elif path.is_file() and path.suffix == ".npy":
        data = _from_npy(path, samples, prep)
    elif path.exists():
        raise UserError(f"--calib-data takes a folder of images or a .npy file, got {path}")
    else:
        raise UserError(f"calibration data not found: {path}")
    if len(data) == 0:
        raise UserError(f"calibration data {path} holds no samples")
    if not np.isfinite(data).all():
        raise UserError(f"calibration data {path} holds NaN or Inf values; give real preprocessed images")
    info = {"source": str(path), "samples": int(len(data))}
    if len(data) < samples:
        if exact:
            raise UserError(f"calibration data {path} holds {len(data)} samples, fewer than the {samples} asked for "
                            f"(--calib-samples {samples}): give more, or pass --calib-samples {len(data)}")
        info["note"] = (f"calibrated on {len(data)} sample{'s' * (len(data) > 1)}, all that {path.name} holds "
                        f"(fewer than the default --calib-samples {samples})")
    return data, info
