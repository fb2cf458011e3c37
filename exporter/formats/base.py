"""What every format shares: the options an export takes, the context a format works in, what it
returns, the `Format` base class and the registry it is registered in by name."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from autotimm_deploy.exporter.core.errors import MissingExtra, UserError

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
    dynamic_size: tuple[int, int] | None = None  # (min, max) pixels of a symbolic height and width
    eval_data: str | None = None  # labelled data (--eval): the task metric for eager and every artifact
    eval_samples: int | None = None  # pictures of it to use (a seeded choice); None: all
    max_drop: float | None = None  # accuracy budget in metric points (--max-drop): the verdict, with --eval
    optimize_dynamo: bool = True  # onnxscript's optimizer; off for graphs it is slow on (unrolled NMS)
    # options of one format only, by format name: {"trt": TensorRTOptions(...)}; see `Format.Options`
    format_options: dict[str, Any] = field(default_factory=dict)

    def of(self, fmt: str) -> Any:
        """The options object of format ``fmt`` (its defaults where none was given)."""
        given = self.format_options.get(fmt)
        options_class = get_format(fmt).Options
        return given if given is not None else (options_class() if options_class else None)

    def record(self, fmt: str) -> dict[str, Any]:
        """What the manifest of a ``fmt`` artifact records: the common options and that format's own."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "format_options"}
        own = self.of(fmt)
        if own is not None:
            out[fmt] = dataclasses.asdict(own)
        return out


@dataclass
class Exported:
    """What a format wrote: ``files[0]`` is the artifact, the rest are companions (external data)."""

    files: list[Path]
    info: dict[str, Any] = field(default_factory=dict)  # goes into manifest["export"]
    gate: str | None = None  # the parity tolerance it is held to, when not its precision's (TF32 engines)
    reference: Any = None  # not saved: what `Format.diagnose` compares with (a reduced ONNX's fp32 graph)

    @property
    def artifact(self) -> Path:
        return self.files[0]


@dataclass
class AccuracyBudget:
    """What an accuracy-aware build (``--eval`` with ``--max-drop``) may ask: ``score(predict,
    batch_range)`` runs ``predict(batch) -> {output: array}`` over the labelled data and returns the
    primary metric in points (``indices``: only those pictures); the build holds
    ``eager - score <= max_drop``."""

    score: Any  # Callable[[Callable, tuple[int, int | None], list[int] | None], float | None]
    metric: str
    eager: float
    max_drop: float
    samples: int  # labelled pictures; score(..., indices) scores a subset of them
    pictures: Any = None  # np.ndarray [n, C, H, W]: a few of them, preprocessed (where layers are measured)

    def holds(self, value: float | None) -> bool:
        return value is not None and self.eager - value <= self.max_drop + 1e-9


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
    budget: AccuracyBudget | None = None  # int8 with --eval and --max-drop: keep layers in float until it holds

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
    default_precision: ClassVar[str] = "fp32"  # what the CLI exports it at when no precision is given
    Options: ClassVar[type | None] = None  # a dataclass of options only this format takes
    dynamic_size: ClassVar[bool] = False  # can keep height and width symbolic (--dynamic-size)

    # set for formats built on the GPU that will run them: why a visible CUDA GPU is needed
    needs_cuda: ClassVar[str | None] = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this format can run here, else why not (what to install, a missing GPU)."""
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        extra = str(MissingExtra(", ".join(missing), cls.extra or "dev")) if missing else None
        if cls.needs_cuda is None:
            return extra
        problems = [extra.rstrip(".")] if extra else []
        if not _cuda_available():
            problems.append(f"no CUDA GPU is visible ({cls.needs_cuda})")
        return "; ".join(problems) or None

    @staticmethod
    def check_options(options: ExportOptions) -> None:
        """Raise `UserError` for options this format cannot honour (before anything is built)."""

    @staticmethod
    def check_task(spec) -> str | None:
        """Why this format cannot express ``spec``'s task (its postprocessing's ops), or None."""
        return None

    def export(self, ctx: ExportContext) -> Exported:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def diagnose(ctx: ExportContext, exported: Exported, pictures, cosine_gate: float) -> dict | None:
        """For an artifact that failed its gate: where it departs from the reference, layer by layer
        (``first`` / ``worst`` tensors with their timm modules), or None where the format cannot say."""
        return None


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


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


def available_formats(precision: str = "fp32") -> list[str]:
    """The formats that can export here (their extras installed, their device present) at ``precision``."""
    return [n for n, cls in FORMATS.items() if precision in cls.precisions and cls.unavailable_reason() is None]


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
