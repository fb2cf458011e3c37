"""TensorRT engine (``.engine``) from our ONNX graph, built with Polygraphy's lazy loaders.

Two precision paths, picked from the installed TensorRT's major version:

- **weak typing** (TensorRT 10 and older): the fp32 ONNX, and builder flags (FP16, BF16, INT8 + FP16)
  let TensorRT choose each layer's precision; int8 is calibrated with Polygraphy's calibrator on
  ``--calib-data`` (entropy calibration, TensorRT's default).
- **strong typing** (TensorRT 11 removed the precision flags): the network is parsed strongly typed
  and the ONNX itself says the precision: fp16/bf16 compute with fp32 I/O
  (`autotimm_deploy.exporter.formats.onnx_reduced`), or the Q/DQ int8 graph (`autotimm_deploy.exporter.formats.onnx_int8`).

`plan_build` turns options into a plain `BuildPlan` and `loader_chain` turns a plan into the
Polygraphy loader graph; neither needs TensorRT or a GPU, so tests inspect both. Only calling the
chain builds. Everything the chain needs from ``tensorrt`` itself (workspace pool, DLA core,
hardware compatibility) is applied by `_ConfigTweaks` at build time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from autotimm_deploy.exporter.core.cli import float_in, int_in
from autotimm_deploy.exporter.core.environment import tensorrt_environment, version_tuple
from autotimm_deploy.exporter.core.errors import ExportFailed, UserError, first_line
from autotimm_deploy.exporter.core.files import sha256_file
from autotimm_deploy.exporter.formats.base import (
    BatchRange,
    ExportContext,
    Exported,
    ExportOptions,
    Format,
    cli_option,
    register_format,
)
from autotimm_deploy.exporter.formats.onnx import precision_proto
from autotimm_deploy.exporter.formats.onnx_graph import FP32_GRAPH, save_onnx
from autotimm_deploy.exporter.inputs.calibration import NEEDS_DATA
from autotimm_deploy.exporter.inputs.pictures import MIN_SIDE

STRONG_TYPING_FROM = 11  # first TensorRT major version without weak-typing precision flags
DEFAULT_MAX_BATCH = 32
HARDWARE_LEVELS = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
# the first TensorRT with each hardware-compatibility level (TensorRT's release notes)
HARDWARE_LEVEL_SINCE = {"ampere+": (8, 6), "same-cc": (10, 9)}


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise UserError(f"cannot read the TensorRT version {version!r}") from None


def typing_for(version: str) -> str:
    return "strong" if trt_major(version) >= STRONG_TYPING_FROM else "weak"


@dataclass
class TensorRTOptions:
    """What only a TensorRT build takes (``ExportOptions.format_options["trt"]``)."""

    # the optimization profile's MIN:OPT:MAX batch
    dynamic_batch: tuple[int, int, int] | None = cli_option(
        "--dynamic-batch", "the engine's optimization profile (default 1:BATCH:32, or the --static batch)",
        metavar="MIN:OPT:MAX", parse=lambda text: parse_dynamic_batch(text))
    workspace_gib: float | None = cli_option("--workspace", "builder workspace limit", metavar="GiB",
                                             type=float_in(0, 1024, low_open=True))
    opt_level: int | None = cli_option("--opt-level", "builder optimization level (TensorRT's default 3)",
                                       metavar="0-5", type=int)
    timing_cache: str | None = cli_option("--timing-cache", "tactic timing cache, read if present and updated",
                                          metavar="PATH")
    dla_core: int | None = cli_option("--dla-core", "Jetson: run on DLA core N, GPU fallback on", metavar="N",
                                      type=int_in(0, 15))
    version_compatible: bool = cli_option("--version-compatible", "engine runs on later TensorRT of the same major",
                                          default=False, action="store_true")
    hardware_compatibility: str | None = cli_option("--hardware-compatible", "ampere+ (any sm_80+ GPU) or same-cc",
                                                    metavar="LEVEL")
    # fp32 layers may use TF32 tensor cores (10-bit mantissa products, fp32 accumulation), as
    # trtexec and eager cuDNN convolutions do by default; False builds strict fp32
    tf32: bool = cli_option("--no-tf32", "strict fp32 layers (default: TF32 tensor cores, as trtexec and cuDNN; "
                            "gated at tf32 parity)", default=True, action="store_const", const=False)


def batch_profile(options: ExportOptions) -> tuple[int, int, int]:
    """(min, opt, max) batch of the engine's one optimization profile."""
    trt = options.of("trt")
    if trt.dynamic_batch is not None:
        lo, opt, hi = trt.dynamic_batch
    elif options.static:
        lo = opt = hi = options.batch_size
    else:
        lo, opt, hi = 1, options.batch_size, max(DEFAULT_MAX_BATCH, options.batch_size)
    if not 1 <= lo <= opt <= hi:
        raise UserError(f"--dynamic-batch needs 1 <= MIN <= OPT <= MAX, got {lo}:{opt}:{hi}")
    return lo, opt, hi


def parse_dynamic_batch(text: str) -> tuple[int, int, int]:
    parts = text.split(":")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise UserError(f"--dynamic-batch takes MIN:OPT:MAX like 1:8:32, got {text!r}")
    return values  # type: ignore[return-value]


@dataclass
class BuildPlan:
    """Everything about one engine build, as plain data (it goes into the manifest)."""

    tensorrt: str
    typing: str  # weak | strong
    precision: str
    network: str  # which ONNX is parsed: fp32 | fp16-compute | bf16-compute | int8-qdq
    builder_flags: list[str]  # weak typing only
    calibrator: bool  # weak-typing int8
    input_name: str
    profile: dict[str, list[int]]  # min / opt / max input shapes
    workspace_bytes: int | None = None
    opt_level: int | None = None
    timing_cache: str | None = None
    dla_core: int | None = None
    version_compatible: bool = False
    hardware_compatibility: str | None = None
    tf32: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


NETWORK = {"fp32": "fp32", "fp16": "fp16-compute", "bf16": "bf16-compute", "int8": "int8-qdq"}
WEAK_FLAGS = {"fp32": [], "fp16": ["fp16"], "bf16": ["bf16"], "int8": ["int8", "fp16"]}


def plan_build(options: ExportOptions, input_shape: tuple[int, ...], version: str,
               input_name: str = "input") -> BuildPlan:
    """The build for ``options`` on TensorRT ``version`` (``input_shape`` without the batch)."""
    typing = typing_for(version)
    precision = options.precision
    trt = options.of("trt")
    lo, opt, hi = batch_profile(options)
    plan = BuildPlan(
        tensorrt=version, typing=typing, precision=precision,
        network="fp32" if typing == "weak" else NETWORK[precision],
        builder_flags=list(WEAK_FLAGS[precision]) if typing == "weak" else [],
        calibrator=typing == "weak" and precision == "int8",
        input_name="image" if options.embed_preprocessing else input_name,
        profile=(picture_profile(options.embed_preprocessing) if options.embed_preprocessing
                 else profile_shapes((lo, opt, hi), input_shape, options.dynamic_size)),
        workspace_bytes=int(trt.workspace_gib * 2**30) if trt.workspace_gib else None,
        opt_level=trt.opt_level,
        timing_cache=str(Path(trt.timing_cache).resolve()) if trt.timing_cache else None,
        dla_core=trt.dla_core,
        version_compatible=trt.version_compatible,
        hardware_compatibility=trt.hardware_compatibility,
        tf32=trt.tf32,
    )
    level = trt.hardware_compatibility
    if level is not None and version_tuple(version)[:2] < HARDWARE_LEVEL_SINCE[level]:
        since = ".".join(map(str, HARDWARE_LEVEL_SINCE[level]))
        raise UserError(f"--hardware-compatible {level} needs TensorRT {since} or later; this machine has "
                        f"TensorRT {version} (upgrade TensorRT, or leave the option out)")
    if typing == "weak" and precision == "int8" and options.eval_data and options.max_drop is not None:
        # an accuracy budget: the accuracy-aware Q/DQ graph (layers kept in float by the budget), which a
        # weakly typed build runs as explicit quantization, instead of the implicit calibrator
        plan.network, plan.calibrator = NETWORK["int8"], False
        plan.notes.append("int8 from the accuracy-aware Q/DQ graph (--max-drop): explicit quantization, no calibrator")
    if plan.dla_core is not None:
        plan.notes.append("DLA with GPU fallback for layers DLA cannot run")
        if typing == "weak" and precision == "fp32":
            plan.notes.append("DLA runs fp16/int8 only: every layer falls back to the GPU at fp32")
    return plan


def gate_precision(plan: BuildPlan) -> str:
    """The parity gate an engine is held to: TF32 products carry fp16's 10-bit mantissa."""
    return "tf32" if plan.precision == "fp32" and plan.tf32 else plan.precision


def profile_shapes(batch: tuple[int, int, int], input_shape: tuple[int, ...],
                   size: tuple[int, int] | None = None) -> dict[str, list[int]]:
    """min / opt / max input shapes: the batch range, and with ``--dynamic-size`` the height and
    width range around the export size (OPT)."""
    c, h, w = input_shape
    lo_hw, hi_hw = ((size[0], size[0]), (size[1], size[1])) if size else ((h, w), (h, w))
    return {"min": [batch[0], c, *lo_hw], "opt": [batch[1], c, h, w], "max": [batch[2], c, *hi_hw]}


# An --embed-preprocessing engine's one profile: pictures from MIN_SIDE to this many pixels a side.
# TensorRT sizes its activation memory for the profile's MAX shape, and the graph's float copies of
# an 8192 px picture alone are gigabytes, so the engine stops at 16 MP photos (4096 x 4096) and OPT
# is a 4:3 VGA-sized one; a larger picture is refused by the runtime at the profile's bound.
PICTURE_MAX_SIDE = 4096
PICTURE_OPT = (480, 640)


def picture_profile(layout: str) -> dict[str, list[int]]:
    """min / opt / max shapes of the 8-bit picture input (batch 1, NHWC or NCHW)."""
    def shape(h: int, w: int) -> list[int]:
        return [1, h, w, 3] if layout == "nhwc" else [1, 3, h, w]

    return {"min": shape(MIN_SIDE, MIN_SIDE), "opt": shape(*PICTURE_OPT),
            "max": shape(PICTURE_MAX_SIDE, PICTURE_MAX_SIDE)}


def check_plan_options(options: ExportOptions) -> None:
    trt = options.of("trt")
    if options.static and trt.dynamic_batch is not None:
        raise UserError("--static fixes the batch to --batch-size; it cannot be combined with --dynamic-batch")
    batch_profile(options)
    if trt.workspace_gib is not None and trt.workspace_gib <= 0:
        raise UserError(f"--workspace takes a positive size in GiB, got {trt.workspace_gib}")
    if trt.opt_level is not None and not 0 <= trt.opt_level <= 5:
        raise UserError(f"--opt-level takes 0 to 5, got {trt.opt_level}")
    if trt.dla_core is not None and trt.dla_core < 0:
        raise UserError(f"--dla-core takes a core index (0 or 1 on Jetson), got {trt.dla_core}")
    if trt.hardware_compatibility is not None and trt.hardware_compatibility not in HARDWARE_LEVELS:
        raise UserError(f"--hardware-compatible takes {' or '.join(HARDWARE_LEVELS)}, "
                        f"got {trt.hardware_compatibility!r}")
    if trt.timing_cache is not None:
        parent = Path(trt.timing_cache).resolve().parent
        if not parent.is_dir():
            raise UserError(f"--timing-cache {trt.timing_cache}: folder {parent} does not exist")
        if Path(trt.timing_cache).is_dir():
            raise UserError(f"--timing-cache {trt.timing_cache} is a folder; give a file path")


class _ConfigTweaks:
    """Applies the settings that need ``tensorrt`` objects to the builder config at build time
    (Polygraphy's `PostprocessConfig` callback). Plain data until called."""

    def __init__(self, plan: BuildPlan):
        self.workspace_bytes = plan.workspace_bytes
        self.dla_core = plan.dla_core
        self.hardware_compatibility = plan.hardware_compatibility

    def __call__(self, builder, network, config) -> None:
        import tensorrt as trt

        if self.workspace_bytes:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if self.dla_core is not None:
            if builder.num_DLA_cores <= self.dla_core:
                raise UserError(f"--dla-core {self.dla_core}: this device has {builder.num_DLA_cores} DLA cores")
            config.DLA_core = self.dla_core
        if self.hardware_compatibility:
            config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel,
                                                          HARDWARE_LEVELS[self.hardware_compatibility])


class _Config:
    """Polygraphy's `CreateConfig` with the given keyword arguments, made at build time, because its
    int8 calibrator subclasses a ``tensorrt`` class. `create` makes it without a calibrator, which
    needs no TensorRT (tests inspect it)."""

    def __init__(self, kwargs: dict[str, Any], calibration_batches: list | None = None,
                 calibration_cache: str | None = None):
        self.kwargs = kwargs
        self.calibration_batches = calibration_batches
        self.calibration_cache = calibration_cache

    def create(self, calibrator=None):
        from polygraphy.backend.trt import CreateConfig

        return CreateConfig(**self.kwargs, calibrator=calibrator)

    def device_batches(self, device: str = "cuda") -> list[dict[str, Any]]:
        """The calibration batches as torch tensors on ``device``: Polygraphy reads a CUDA tensor's
        pointer directly, where numpy arrays would make it load ``libcudart`` through ctypes search
        paths that pip-only installs (CUDA from wheels) do not have."""
        import torch

        return [{k: torch.from_numpy(v).to(device) for k, v in b.items()} for b in self.calibration_batches or []]

    def __call__(self, builder, network):
        calibrator = None
        if self.calibration_batches is not None:
            from polygraphy.backend.trt import Calibrator

            self._device_batches = self.device_batches()  # kept alive while TensorRT reads them
            calibrator = Calibrator(self._device_batches, cache=self.calibration_cache)
        return self.create(calibrator)(builder, network)


def loader_chain(plan: BuildPlan, onnx_path: Path, engine_path: Path, calibration=None,
                 calibration_cache: Path | None = None):
    """Polygraphy's lazy loader graph for ``plan``: nothing runs until it is called."""
    from polygraphy.backend.common import SaveBytes
    from polygraphy.backend.trt import EngineBytesFromNetwork, NetworkFromOnnxPath, PostprocessConfig, Profile

    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=plan.typing == "strong")
    profile = Profile().add(plan.input_name, min=tuple(plan.profile["min"]), opt=tuple(plan.profile["opt"]),
                            max=tuple(plan.profile["max"]))
    batches = None
    if plan.calibrator:
        if calibration is None:
            raise UserError(NEEDS_DATA)
        batches = _calibration_batches(calibration, plan)
    flags = set(plan.builder_flags)
    config = _Config({
        "fp16": "fp16" in flags, "bf16": "bf16" in flags, "int8": "int8" in flags, "tf32": plan.tf32,
        "profiles": [profile],
        "builder_optimization_level": plan.opt_level,
        "load_timing_cache": plan.timing_cache if plan.timing_cache and Path(plan.timing_cache).exists() else None,
        "use_dla": plan.dla_core is not None, "allow_gpu_fallback": plan.dla_core is not None,
        "version_compatible": plan.version_compatible or None,
        "exclude_lean_runtime": False if plan.version_compatible else None,
    }, batches, str(calibration_cache) if calibration_cache else None)
    tweaks = _ConfigTweaks(plan)
    engine = EngineBytesFromNetwork(network, config=PostprocessConfig(config, tweaks),
                                    save_timing_cache=plan.timing_cache)
    return BuildChain(network, config, tweaks, engine, SaveBytes(engine, str(engine_path)))


@dataclass
class BuildChain:
    """The loaders, kept by name so they can be inspected; calling the chain builds and saves."""

    network: Any  # NetworkFromOnnxPath
    config: _Config
    tweaks: _ConfigTweaks
    engine: Any  # EngineBytesFromNetwork
    save: Any  # SaveBytes

    def __call__(self):
        return self.save()


def _calibration_batches(data, plan: BuildPlan):
    """Calibration feeds at the profile's OPT batch: TensorRT calibrates at the calibration profile's
    OPT shape and refuses batches of any other shape."""
    b = plan.profile["opt"][0]
    if len(data) < b:
        raise UserError(f"int8 calibration at batch {b} (the profile's OPT batch) needs at least {b} samples, "
                        f"got {len(data)}; pass --calib-samples {b} or more, or a smaller --batch-size")
    n = (len(data) // b) * b
    return [{plan.input_name: np.ascontiguousarray(data[i:i + b])} for i in range(0, n, b)]


@register_format
class TensorRTFormat(Format):
    name = "trt"
    suffix = ".engine"
    aliases = (".plan",)
    default_runtime = "tensorrt"
    intermediates = (FP32_GRAPH,)
    cli_title = "TensorRT"
    description = "TensorRT engine for NVIDIA GPUs (built on the GPU it runs on); fp32, fp16, bf16, int8"
    # built from an ONNX graph of its own precision (see the module docstring), not from the onnx
    # artifact, so `--format trt --bf16` needs no bf16 .onnx artifact beside the engine
    extra = "trt"
    requires = ("tensorrt", "polygraphy")
    precisions = ("fp32", "fp16", "bf16", "int8")
    dynamic_size = True
    # a uint8 picture profile (picture_profile) and PIL's resize as plain ops (TensorRT's resize has no
    # antialiasing); written to the documented API, not run here (no GPU)
    embeds_preprocessing = True
    Options = TensorRTOptions
    needs_cuda = "TensorRT builds an engine on the GPU that will run it"

    @staticmethod
    def check_options(options) -> None:
        check_plan_options(options)

    def export(self, ctx: ExportContext) -> Exported:
        import torch

        env = tensorrt_environment(torch.cuda.current_device())
        spec = ctx.spec
        plan = plan_build(ctx.options, (spec.in_chans, *spec.img_size), env["version"])
        proto, graph = precision_proto(ctx, "fp32" if plan.network == "fp32" else plan.precision)
        src = ctx.workdir / f".{ctx.stem}.trt-src.onnx"
        save_onnx(proto, src)
        del proto
        engine = ctx.path(self.suffix)
        chain = loader_chain(plan, src, engine, ctx.calibration, ctx.workdir / f".{ctx.stem}.calib.cache")
        _quiet_polygraphy()
        try:
            chain()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - parser or builder errors
            raise ExportFailed(f"TensorRT build failed: {first_line(e)}") from e
        if not engine.exists() or engine.stat().st_size == 0:
            raise ExportFailed("TensorRT build produced no engine (see TensorRT's log above)")
        lo, opt, hi = (plan.profile[k][0] for k in ("min", "opt", "max"))
        info = {
            **graph.info,
            "tensorrt": {**env, "typing": plan.typing, "version_compatible": plan.version_compatible,
                         "hardware_compatibility": plan.hardware_compatibility, "tf32": plan.tf32},
            "build": plan.to_dict(),
            "timing_cache_sha256": sha256_file(plan.timing_cache) if plan.timing_cache else None,
        }
        if plan.calibrator:
            info["calibration"] = ctx.calibration_info
        # kept for `diagnose` (the network and config rebuilt with every tensor marked); the source ONNX
        # stays in the work folder until the export ends
        return Exported([engine], info, exporter=f"onnx ({graph.exporter})", batch=BatchRange.up_to(opt, hi, lo),
                        fallback=graph.fallback, gate=gate_precision(plan), reference=(chain, plan))

    @staticmethod
    def diagnose(ctx: ExportContext, exported: Exported, pictures, cosine_gate: float) -> dict | None:
        if exported.reference is None or "torch.onnx.dynamo" not in (exported.exporter or ""):
            return None  # no PyTorch names to match without the dynamo exporter
        from autotimm_deploy.exporter.formats.tensorrt_layers import layer_divergence

        chain, plan = exported.reference
        return layer_divergence(ctx, chain, plan.input_name, plan.profile["max"][0], pictures, cosine_gate)


def _quiet_polygraphy() -> None:
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING
