"""Format registry: one module per artifact kind, registered by name with `register_format`.

A format turns the built model (or the artifact of the format it ``derives_from``) into files in a
scratch folder; `exporter.api` verifies them and moves them into place. Adding a format is adding
one module here and importing it at the bottom of this file.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from exporter.errors import MissingExtra, UserError

FORMATS: dict[str, type["Format"]] = {}


@dataclass
class ExportOptions:
    opset: int = 18
    static: bool = False
    batch_size: int = 1  # the fixed batch when static; the batch examples are traced at otherwise
    simplify: bool = True
    precision: str = "fp32"
    calib_data: str | None = None  # folder of images or .npy, for int8
    calib_samples: int = 32
    calib_random: bool = False
    optimize_dynamo: bool = True  # onnxscript's optimizer; off for graphs it is slow on (unrolled NMS)
    # TensorRT engine build (format trt)
    dynamic_batch: tuple[int, int, int] | None = None  # optimization profile MIN:OPT:MAX batch
    workspace_gib: float | None = None
    opt_level: int | None = None  # builder optimization level 0-5
    timing_cache: str | None = None
    dla_core: int | None = None
    version_compatible: bool = False
    hardware_compatibility: str | None = None  # ampere+ | same-cc


@dataclass
class Exported:
    """What a format wrote: ``files[0]`` is the artifact, the rest are companions (external data)."""

    files: list[Path]
    info: dict[str, Any] = field(default_factory=dict)  # goes into manifest["export"]

    @property
    def artifact(self) -> Path:
        return self.files[0]


@dataclass
class ExportContext:
    model: Any  # torch.nn.Module
    spec: Any  # ModelSpec (resolved)
    options: ExportOptions
    workdir: Path
    stem: str
    done: dict[str, Exported] = field(default_factory=dict)  # artifacts already made this run
    calibration: Any = None  # np.ndarray [N,C,H,W] for int8, loaded once by the API
    calibration_info: dict[str, Any] | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # intermediates formats share (fp32 ONNX, ...)
    share_intermediates: bool = False

    @property
    def example_batch(self) -> int:
        # dynamic exports trace at batch 2 so no exporter can specialise the batch to 1
        return self.options.batch_size if self.options.static else max(2, self.options.batch_size)

    def example_input(self):
        import torch

        gen = torch.Generator().manual_seed(self.spec.seed)
        return torch.randn(self.example_batch, self.spec.in_chans, *self.spec.img_size, generator=gen)

    def path(self, suffix: str) -> Path:
        return self.workdir / f"{self.stem}{suffix}"


class Format:
    name: ClassVar[str]
    suffix: ClassVar[str]
    description: ClassVar[str] = ""
    derives_from: ClassVar[str | None] = None
    extra: ClassVar[str | None] = None  # the pip extra that provides `requires`
    requires: ClassVar[tuple[str, ...]] = ()  # importable module names it needs
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this format can run here, else why not (and what to install)."""
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing:
            return str(MissingExtra(", ".join(missing), cls.extra or "dev"))
        return None

    @staticmethod
    def check_options(options: ExportOptions) -> None:
        """Raise `UserError` for options this format cannot honour (before anything is built)."""

    def export(self, ctx: ExportContext) -> Exported:  # pragma: no cover - abstract
        raise NotImplementedError


def register_format(cls: type[Format]) -> type[Format]:
    FORMATS[cls.name] = cls
    return cls


def get_format(name: str) -> type[Format]:
    try:
        return FORMATS[name]
    except KeyError:
        close = difflib.get_close_matches(name, FORMATS, n=2)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown format {name!r}{hint} (available: {', '.join(FORMATS)})") from None


def export_order(names: list[str]) -> list[str]:
    """Formats in dependency order, each once, with the formats they derive from added first."""
    order: list[str] = []

    def visit(n: str) -> None:
        cls = get_format(n)
        if cls.derives_from:
            visit(cls.derives_from)
        if n not in order:
            order.append(n)

    for n in names:
        visit(n)
    return order


from exporter.formats import onnx, openvino, pt2, tensorrt, torchscript  # noqa: E402,F401  (register)
