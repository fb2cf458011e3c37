"""What every format shares: the options an export takes, the context a format works in, what it
returns, the `Format` base class and the registry it is registered in by name."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from autotimm_deploy.exporter.core.errors import ExportFailed, MissingExtra, UserError, first_line

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
    # calib_samples was asked for (--calib-samples N): fewer pictures in calib_data is an error naming
    # both numbers; with the default, what exists is used and the manifest and table say so
    calib_samples_given: bool = False
    dynamic_size: tuple[int, int] | None = None  # (min, max) pixels of a symbolic height and width
    eval_data: str | None = None  # labelled data (--eval): the task metric for eager and every artifact
    eval_samples: int | None = None  # pictures of it to use (a seeded choice); None: all
    max_drop: float | None = None  # accuracy budget in metric points (--max-drop): the verdict, with --eval
    optimize_dynamo: bool = True  # onnxscript's optimizer; off for graphs it is slow on (unrolled NMS)
    # preprocessing inside the graph (--embed-preprocessing): the layout of the 8-bit picture it takes
    # ("nhwc" or "nchw"); None: the graph takes the preprocessed float32 batch
    embed_preprocessing: str | None = None
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


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes an artifact runs: ``min`` to ``max`` (None: unbounded), tuned for ``opt``."""

    dynamic: bool
    min: int
    max: int | None
    opt: int | None = None

    @classmethod
    def fixed(cls, batch: int) -> "BatchRange":
        return cls(False, batch, batch)

    @classmethod
    def up_to(cls, opt: int, largest: int | None = None, smallest: int = 1) -> "BatchRange":
        """A batch from ``smallest`` to ``largest`` (None: unbounded), ``opt`` clamped into it."""
        if largest is not None:
            opt = min(opt, largest)
        return cls(largest is None or largest > smallest, smallest, largest, opt)

    @classmethod
    def of_options(cls, options: "ExportOptions") -> "BatchRange":
        """What the export options ask for: ``--static`` fixes ``--batch-size``, else any batch."""
        return cls.fixed(options.batch_size) if options.static else cls.up_to(options.batch_size)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``batch`` record."""
        out: dict[str, Any] = {"dynamic": self.dynamic, "min": self.min, "max": self.max}
        if self.opt is not None:
            out["opt"] = self.opt
        return out


@dataclass
class Exported:
    """What a format wrote: ``files[0]`` is the artifact, the rest are companions (external data).

    The typed fields are what the pipeline acts on; ``info`` holds the descriptive facts that go into
    ``manifest["export"]`` beside them."""

    files: list[Path]
    info: dict[str, Any] = field(default_factory=dict)
    exporter: str | None = None  # what made the graph (a derived format: its source's, e.g. "onnx (torch.onnx.dynamo)")
    batch: BatchRange | None = None  # None: what the options asked for (`BatchRange.of_options`)
    size_multiple: int | None = None  # a stride the input height and width must be multiples of
    fallback: str | None = None  # why the artifact is not what was asked for (a fixed batch), said to the user
    gate: str | None = None  # the parity tolerance it is held to, when not its precision's (TF32 engines)
    reference: Any = None  # not saved: what `Format.diagnose` compares with (a reduced ONNX's fp32 graph)

    @property
    def artifact(self) -> Path:
        return self.files[0]

    def record(self) -> dict[str, Any]:
        """``manifest["export"]``: the descriptive facts and the typed ones."""
        typed = {"exporter": self.exporter, "size_multiple": self.size_multiple, "fallback": self.fallback}
        return {**self.info, **{k: v for k, v in typed.items() if v is not None}}


def with_batch_fallback(ctx: "ExportContext", dynamic: Callable[[], BatchRange], fixed: Callable[[], None],
                        failure: str) -> tuple[BatchRange, str | None]:
    """Build with a dynamic batch (``dynamic()`` builds, checks and returns its range, raising
    `ExportFailed` where the format cannot keep the batch dynamic), else with the batch fixed to
    ``--batch-size`` (``fixed()``). Returns the range and, after a fallback, why (``failure``: what
    failed with a dynamic batch, e.g. "the conversion failed")."""
    batch = ctx.options.batch_size
    if ctx.options.static:
        fixed()
        return BatchRange.fixed(batch), None
    try:
        return dynamic(), None
    except ExportFailed as e:
        fixed()
        return BatchRange.fixed(batch), f"fixed batch {batch}: with a dynamic batch {failure} ({first_line(e, 200)})"


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
    # intermediates the formats of one export share (the fp32 ONNX graph), keyed by what shapes them
    cache: dict[Any, Any] = field(default_factory=dict)
    share_intermediates: bool = False  # the caller's cache (--target): kept past this export call
    budget: AccuracyBudget | None = None  # int8 with --eval and --max-drop: keep layers in float until it holds
    int8_plan: Any = None  # `int8_plan.Int8Plan`: a retry's calibrator and layers kept in float (None: plain)

    @property
    def example_batch(self) -> int:
        # dynamic exports trace at batch 2 so no exporter can specialise the batch to 1
        return self.options.batch_size if self.options.static else max(2, self.options.batch_size)

    def example_input(self):
        import torch

        if self.options.embed_preprocessing:  # one 8-bit picture, not square (neither side specialised)
            from autotimm_deploy.exporter.inputs.pictures import example_picture

            return example_picture(self.model.preprocessing, self.options.embed_preprocessing)
        gen = torch.Generator().manual_seed(self.spec.seed)
        return torch.randn(self.example_batch, self.spec.in_chans, *self.spec.img_size, generator=gen)

    def path(self, suffix: str) -> Path:
        return self.workdir / f"{self.stem}{suffix}"

    def metadata(self) -> dict[str, Any]:
        """What an artifact carries about itself in its format's own metadata (ONNX ``metadata_props``,
        OpenVINO ``rt_info``, Core ML's user metadata), beside the manifest: enough for a program that
        has only the file to feed it and name its answers."""
        spec = self.spec
        return {"model": spec.model, "task": spec.task, "num_classes": spec.num_classes,
                "class_names": list(spec.class_names) if spec.class_names else None,
                "outputs": list(self.model.output_names), "preprocessing": self.model.preprocessing}


def cli_option(flag: str, help: str, default: Any = None, parse: Callable[[Any], Any] | None = None,
               **argparse_kwargs: Any) -> Any:
    """A field of a format's `Format.Options` that the command line sets: ``flag`` with its ``help``,
    shown in the format's own ``--help`` group; ``argparse_kwargs`` as ``add_argument`` takes them
    (``type``, ``metavar``, ``action``); ``parse`` turns the given text into the field's value after
    parsing (its `UserError` is then one line)."""
    cli = {"flag": flag, "help": help, "parse": parse, **argparse_kwargs}
    return field(default=default, metadata={"cli": cli})


class Format:
    """One artifact kind, declared in one module: everything the exporter, the CLI, the profiler's
    artifact detection and the docs need to know about it is a class attribute or hook here."""

    name: ClassVar[str]
    suffix: ClassVar[str]  # the artifact's file name ending, e.g. ".onnx", ".aoti.pt2"
    aliases: ClassVar[tuple[str, ...]] = ()  # other endings a file of this format is recognised by (".plan")
    # companions that must lie beside the artifact: its ``suffix`` replaced by each (".bin" beside ".xml")
    companions: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    derives_from: ClassVar[str | None] = None
    default_runtime: ClassVar[str]  # the runtime (`autotimm_deploy.profiler.runtimes`) that runs it by default
    extra: ClassVar[str | None] = None  # the pip extra that provides `requires`
    requires: ClassVar[tuple[str, ...]] = ()  # importable module names it needs
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    default_precision: ClassVar[str] = "fp32"  # what the CLI exports it at when no precision is given
    Options: ClassVar[type | None] = None  # a dataclass of options only this format takes (`cli_option` fields)
    cli_title: ClassVar[str | None] = None  # the title of its options' --help group (default: its name)
    dynamic_size: ClassVar[bool] = False  # can keep height and width symbolic (--dynamic-size)
    # can take 8-bit pictures of any size with the preprocessing in the graph (--embed-preprocessing)
    embeds_preprocessing: ClassVar[bool] = False
    # intermediates of `ExportContext.cache` it reads (e.g. the fp32 ONNX graph): kept while a later
    # format of the same export still needs them, then freed
    intermediates: ClassVar[tuple[str, ...]] = ()
    # int8 that misses its parity gate is retried (`int8_plan`): the calibrators it fits activation
    # ranges with, its default first, and whether it can keep named layers in float
    int8_calibrators: ClassVar[tuple[str, ...]] = ()
    keeps_float: ClassVar[bool] = False
    int8_narrow_weights: ClassVar[bool] = False  # can quantize weights to 7 bits where int8 kernels saturate

    # set for formats built on the GPU that will run them: why a visible CUDA GPU is needed
    needs_cuda: ClassVar[str | None] = None

    # --- files ---------------------------------------------------------------------------------
    @classmethod
    def endings(cls) -> tuple[str, ...]:
        return (cls.suffix, *cls.aliases)

    @classmethod
    def companion_paths(cls, artifact: Path) -> list[Path]:
        """The files that must lie beside ``artifact``."""
        end = next((e for e in cls.endings() if artifact.name.lower().endswith(e)), artifact.suffix)
        base = artifact.name[:len(artifact.name) - len(end)]
        return [artifact.with_name(base + c) for c in cls.companions]

    @staticmethod
    def check_file(path: Path) -> None:
        """Raise `UserError` in one line when ``path`` is not a readable artifact of this format
        (its magic, its container); cheap: run before any runtime opens it."""

    # a format whose files may also carry another's ending (an AOTInductor package named .pt2): that
    # format's name; a file with that ending and no manifest is ours when `recognizes` says so
    refines: ClassVar[str | None] = None

    @staticmethod
    def recognizes(path: Path) -> bool:
        """Whether ``path``, found without a manifest under the ending of `refines`, is one of ours."""
        return False

    # --- command line --------------------------------------------------------------------------
    @classmethod
    def cli_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls.Options) if "cli" in f.metadata] if cls.Options else []

    @classmethod
    def _dest(cls, f: dataclasses.Field) -> str:
        return f"format_{cls.name.replace('-', '_')}_{f.name}"

    @classmethod
    def add_arguments(cls, parser) -> None:
        """Its own options, under its own --help group."""
        fields = cls.cli_fields()
        if not fields:
            return
        group = parser.add_argument_group(f"{cls.cli_title or cls.name} (--format {cls.name})")
        for f in fields:
            kwargs = {k: v for k, v in f.metadata["cli"].items() if k not in ("flag", "parse")}
            group.add_argument(f.metadata["cli"]["flag"], dest=cls._dest(f), default=None, **kwargs)

    @classmethod
    def options_from_args(cls, args) -> tuple[Any, list[str]]:
        """(its `Options` from parsed command-line ``args`` or None, the flags of its that were given)."""
        if cls.Options is None:
            return None, []
        values, given = {}, []
        for f in cls.cli_fields():
            value = getattr(args, cls._dest(f), None)
            if value is None:
                continue
            cli = f.metadata["cli"]
            given.append(cli["flag"])
            values[f.name] = cli["parse"](value) if cli.get("parse") else value
        return cls.Options(**values), given

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this format can run here, else why not (what to install, a missing GPU)."""
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        extra = str(MissingExtra(", ".join(missing), cls.extra)) if missing else None
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
    def calibrates(options: ExportOptions) -> bool:
        """Whether an export at ``options`` reads calibration pictures (static int8 does; a weight-only
        or dynamic-range int8 form does not, and is exported without --calib-data)."""
        return options.precision == "int8"

    @staticmethod
    def check_task(spec) -> str | None:
        """Why this format cannot express ``spec``'s task (its postprocessing's ops), or None."""
        return None

    @staticmethod
    def check_precision(spec, precision: str) -> str | None:
        """Why this format cannot export ``spec`` at ``precision`` (it has the precision, not for this task), or None."""
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
