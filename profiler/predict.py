"""`predict()`: the Python API behind ``autotimm-predict``. Picture files in, answers out in each
picture's own pixels: the manifest's preprocessing (`autotimm_deploy.exporter.inputs.preprocess`),
the artifact run by the runtime the profiler would use, and its outputs turned into answers:
top-k classes, detections (boxes with the letterbox or stretch undone, clipped to the picture),
instance masks pasted at the picture's resolution, a class mask the size of the picture."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from autotimm_deploy.exporter.core.errors import Fault, UserError, first_line
from autotimm_deploy.exporter.core.limits import MAX_IMG_SIDE
from autotimm_deploy.exporter.core.manifest import Manifest, artifact_given
from autotimm_deploy.exporter.core.spec import TASK_OUTPUTS
from autotimm_deploy.exporter.inputs.answers import Answer, answer, class_names, picture_geometry, picture_outputs
from autotimm_deploy.exporter.inputs.pictures import picture_input
from autotimm_deploy.exporter.inputs.preprocess import describe, prepare
from autotimm_deploy.profiler.artifact import detect, open_artifact

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
MAX_PICTURE_PIXELS = MAX_IMG_SIDE * MAX_IMG_SIDE  # a decompression bomb is refused, not decoded


def picture_files(paths: Iterable[str | Path]) -> list[Path]:
    """The picture files named, folders searched (recursively, in name order); a named file that
    is not there is an error, a folder with no pictures too."""
    out: list[Path] = []
    for given in paths:
        p = Path(given)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in PICTURE_SUFFIXES)
            if not found:
                raise UserError(f"{p} holds no pictures ({', '.join(PICTURE_SUFFIXES)})")
            out += found
        elif p.is_file():
            out.append(p)
        elif p.exists():
            raise UserError(f"{p} is neither a picture file nor a folder (a pipe, a device or a socket); give a file")
        else:
            raise UserError(f"no such picture or folder: {p}")
    if not out:
        raise UserError("give at least one picture file or folder")
    first: dict[Path, Path] = {}  # a file named twice is read once
    for f in out:
        first.setdefault(f.resolve(), f)
    return list(first.values())


def read_picture(path: Path, prep: dict[str, Any]) -> np.ndarray:
    """A picture file -> HWC uint8 RGB, decoded as the reference transform's loader does: OpenCV's
    (``library`` cv2) turns the picture upright by its EXIF orientation, PIL's does not; grey,
    palette, CMYK and transparent pictures become RGB (alpha dropped), 16-bit ones 8-bit (>> 8)."""
    import warnings

    from PIL import Image, ImageOps

    setattr(Image, "MAX_IMAGE_PIXELS", MAX_PICTURE_PIXELS)  # PIL refuses far larger pictures (a decompression bomb)
    try:
        with warnings.catch_warnings():  # PIL warns from half its limit: such a picture is refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if img.width * img.height > MAX_PICTURE_PIXELS:
                raise UserError(f"{path} is {img.width}x{img.height}, more than {MAX_PICTURE_PIXELS:,} pixels: refused; "
                                "scale it down first")
            if prep.get("library") == "cv2":
                img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: its top 8 bits, as OpenCV reads it
                grey = (np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
            return np.asarray(img.convert("RGB"))
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(f"{path} is larger than {MAX_PICTURE_PIXELS:,} pixels: refused; scale it down first") from None
    except Exception as e:  # noqa: BLE001 - not a picture, truncated, ...
        why = "the file is empty" if path.is_file() and path.stat().st_size == 0 else first_line(e, 150)
        raise UserError(f"cannot read picture {path}: {why}; give a whole picture file (PNG, JPEG, "
                        "...), or leave this one out") from None


def run_picture(session, picture: np.ndarray, prep: dict[str, Any], embedded: str | None, task: str):
    """One picture through the artifact: (its outputs, batch of one, and the geometry they are in).
    A graph with the preprocessing inside takes the picture as it is and answers in its pixels."""
    name = session.inputs[0].name
    if embedded:
        result = _infer(session, {name: picture_input(picture, embedded)})
        return picture_outputs({k: np.asarray(v) for k, v in result.items()}, task), picture_geometry(picture)
    x, geometry = prepare(picture, prep)
    batch = session.batch_range()[0]
    feed = np.repeat(x[None], batch, axis=0) if batch > 1 else x[None]  # a fixed batch: the picture, repeated
    result = _infer(session, {name: np.ascontiguousarray(feed)})
    return {k: np.asarray(v)[:1] for k, v in result.items()}, geometry


_ANSWERED = {name for groups in TASK_OUTPUTS.values() for group in groups for name in group}  # what answers read


def _infer(session, feed: dict[str, np.ndarray]) -> dict:
    """``session.infer``; a runtime that refuses the input its manifest describes (a manifest edited,
    or not the artifact's own) is a `UserError` with the runtime's whole message on one line."""
    shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in feed.items())
    try:
        result = session.infer(feed)
    except (UserError, Fault, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - each runtime raises its own kinds
        raise UserError(f"the {session.name} runtime failed on {shapes}, the input its manifest describes: "
                        f"{' '.join(str(e).split())[:400] or type(e).__name__}; if the manifest was edited, "
                        "re-export the artifact") from None
    nan = [k for k, v in result.items() if k in _ANSWERED and np.issubdtype(np.asarray(v).dtype, np.floating)
           and np.isnan(v).any()]
    if nan:  # never an answer: a broken artifact or an edited manifest (its parity check would have failed)
        raise UserError(f"the {session.name} runtime answered NaN in {', '.join(nan)} on {shapes}: the artifact or "
                        "its manifest is broken; re-export the artifact")
    return result


@dataclass
class PicturePipeline:
    """What turns a picture file into an artifact's answer: its task, the manifest's preprocessing,
    the embedded picture layout (None: Python preprocessing) and the class names."""

    task: str
    prep: dict[str, Any]
    embedded: str | None
    names: list[str] | None


def picture_pipeline(path: Path, manifest: Manifest | None, names: list[str] | None = None,
                     tool: str = "autotimm-predict") -> PicturePipeline:
    """The pipeline the manifest beside ``path`` describes; one line when there is none to follow."""
    if manifest is None:
        raise UserError(f"{path} has no manifest beside it: {tool} needs its preprocessing and task "
                        f"(export it with autotimm-export, which writes {path.name}.json)")
    if not manifest.preprocessing:
        raise UserError(f"{path}'s manifest records no preprocessing: {tool} cannot turn pictures into its input")
    task = manifest.spec.get("task", "classification")
    _check_own_module(path, manifest, task, tool)
    prep = describe(manifest.preprocessing, task)
    embedded = (prep.get("embedded") or {}).get("layout")
    if manifest.size.get("dynamic") and not embedded:
        raise UserError(f"{path} takes inputs of any size (--dynamic-size): {tool} feeds the export size "
                        "the manifest's preprocessing describes; export it at a fixed size to use it on pictures")
    return PicturePipeline(task, prep, embedded, class_names(manifest, names))


def _check_own_module(path: Path, manifest: Manifest, task: str, tool: str) -> None:
    """An artifact of a user's own module (``from_module``, which holds outputs to a task only when
    given one) has the outputs its task's answers read, else one line saying how to export it again."""
    if manifest.spec.get("weights") != "module" or task not in TASK_OUTPUTS:
        return
    have = {o.name for o in manifest.outputs}
    missing = [" or ".join(group) for group in TASK_OUTPUTS[task] if not have & set(group)]
    if missing:
        raise UserError(f"{path} is your own module's (from_module), with outputs {', '.join(sorted(have))}; a "
                        f"{task} answer reads {', '.join(missing)}: {tool} cannot answer from it. Export it again "
                        f"with from_module(..., task={task!r}, output_names=...) naming its outputs so")


def predict(artifact: str | Path, pictures: Iterable[str | Path], runtime: str | None = None,
            device: str | None = None, names: list[str] | None = None, top_k: int = 5, min_score: float = 0.0,
            on_answer: Callable[[Answer], None] | None = None) -> list[Answer]:
    """Run ``artifact`` on each picture file (folders searched) and return the answers, in order:
    ``top_k`` classes, detections scoring ``min_score`` or more (0: every one the model returns).
    ``on_answer(a)`` sees each as it comes (progress, writing annotated copies)."""
    if str(artifact).startswith(("triton://", "http://", "https://", "grpc://")):
        raise UserError(f"{artifact} is a served model: autotimm-predict runs an artifact file (Triton answers "
                        "pictures through the client.py its model repository holds)")
    files = picture_files(pictures)
    path = artifact_given(artifact)
    _, manifest = detect(path)
    pipe = picture_pipeline(path, manifest, names)
    out: list[Answer] = []
    with open_artifact(path, manifest=manifest, runtime=runtime, device=device) as session:
        for f in files:
            picture = read_picture(f, pipe.prep)
            outputs, geometry = run_picture(session, picture, pipe.prep, pipe.embedded, pipe.task)
            a = answer(outputs, geometry, pipe.task, pipe.names, f, top_k, min_score=min_score)
            if on_answer:
                a.picture = picture
                on_answer(a)
                a.picture = None
            out.append(a)
    return out
