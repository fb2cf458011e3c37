"""Core ML ML program (``.mlpackage``, shipped zipped as ``.mlpackage.zip``): the ``torch.export``
program (constants folded) converted by ``coremltools``, for Apple devices (CPU, GPU, Neural Engine).

- fp16 (what Apple devices run best, and what the Neural Engine needs) or fp32 compute precision;
  float outputs are declared float32 and integer ones int32 (Core ML has no int64), so an app reads
  the same dtypes at either precision.
- A ``.mlpackage`` is a folder; our artifacts are single files with a sha256 each in the manifest,
  installed by one rename. So the package is zipped (stored, not compressed): unzip it and drag the
  ``.mlpackage`` into Xcode, or load it with ``coremltools``.
- The image preprocessing (resize, crop, mean / std) and the task's outputs are written into the
  model's own metadata as well as into our manifest: the input is the preprocessed float tensor,
  as for every other format (Core ML's image input takes one scale for all channels, timm's
  per-channel std does not fit it).
- int8: weight-only compression of the fp16 model by ``coremltools.optimize.coreml`` (no calibration
  data; compute stays fp16), in the form ``--coreml-int8`` names: ``linear`` (default: int8 weights,
  symmetric per output channel, ``linear_quantize_weights``), ``palette8`` / ``palette4`` (weights as
  indices into a 256- / 16-entry k-means table per tensor, ``palettize_weights``). Weights under 2,048
  elements stay fp16 (coremltools' threshold). The package's size is in the manifest
  (``export.package_bytes`` and every file's bytes).
- Core ML predicts only on macOS. Here the saved package is read back and its interface (input
  name, shape and batch range; output names, order and dtypes) checked against the model; the
  numeric parity check runs where the `coreml` runtime can (macOS), and is reported as not run
  elsewhere.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from autotimm_deploy.exporter.core.capture import captured_output, quiet_import
from autotimm_deploy.exporter.core.environment import package_versions
from autotimm_deploy.exporter.core.errors import ExportFailed, first_line
from autotimm_deploy.exporter.formats import coreml_ops
from autotimm_deploy.exporter.formats.edge_rewrite import COREML_REWRITES, edge_program
from autotimm_deploy.exporter.formats.file_checks import zip_check
from autotimm_deploy.exporter.formats.base import (
    BatchRange,
    ExportContext,
    Exported,
    Format,
    cli_option,
    register_format,
    with_batch_fallback,
)
from autotimm_deploy.exporter.formats.torch_program import program_module

DEPLOYMENT_TARGET = "iOS16"  # ML programs with fp16 and float32 I/O, RangeDim; iOS 16 / macOS 13 and later
BATCH_BOUND = 64  # a dynamic batch's largest size (Core ML plans buffers for a bounded range)
METADATA_PREFIX = "autotimm_deploy."
# --int8's weight-only forms: what the manifest says each stores
INT8_FORMS = {"linear": "int8 weights, symmetric per output channel (linear_quantize_weights)",
              "palette8": "8-bit palettised weights: a 256-entry k-means table per tensor (palettize_weights)",
              "palette4": "4-bit palettised weights: a 16-entry k-means table per tensor (palettize_weights)"}


@dataclass
class CoreMLOptions:
    """What only a Core ML export takes (``ExportOptions.format_options["coreml"]``)."""

    int8_form: str = cli_option(
        "--coreml-int8", "the --int8 package's weight-only form (compute stays fp16, no calibration data): linear "
        "(default: int8 weights per output channel), palette8 / palette4 (8- / 4-bit k-means palettised weights)",
        default="linear", choices=tuple(INT8_FORMS))


@register_format
class CoreMLFormat(Format):
    name = "coreml"
    suffix = ".mlpackage.zip"
    default_runtime = "coreml"
    check_file = staticmethod(zip_check("zipped Core ML package (.mlpackage.zip)", ".mlpackage/Manifest.json"))
    description = ("Core ML ML program (.mlpackage, zipped) for Apple CPUs, GPUs and the Neural Engine; fp16, fp32, "
                   "int8 weights (--coreml-int8 linear | palette8 | palette4)")
    extra = "coreml"
    requires = ("coremltools",)
    precisions = ("fp16", "fp32", "int8")
    default_precision = "fp16"
    Options = CoreMLOptions
    cli_title = "Core ML"

    @staticmethod
    def calibrates(options) -> bool:
        return False  # int8 is weight-only

    def export(self, ctx: ExportContext) -> Exported:
        options = ctx.options
        bound = max(BATCH_BOUND, options.batch_size)
        info = {"converter": "coremltools", **package_versions(["coremltools"]), "deployment_target": DEPLOYMENT_TARGET,
                "compute_precision": "fp16" if options.precision == "int8" else options.precision,
                "package": f"{ctx.stem}.mlpackage (zipped)"}
        if options.precision == "int8":
            info["weights"] = INT8_FORMS[options.of("coreml").int8_form]
        path = ctx.path(self.suffix)

        def dynamic() -> BatchRange:
            info.update(_build(ctx, bound, path))
            return BatchRange.up_to(options.batch_size, bound)

        def fixed() -> None:  # some translations cannot take a symbolic batch (a GroupNorm's reshape)
            info.update(_build(ctx, None, path))

        batch, fallback = with_batch_fallback(ctx, dynamic, fixed, "the conversion failed")
        return Exported([path], info, exporter="torch.export(strict=False)", batch=batch, fallback=fallback)


def _build(ctx: ExportContext, bound: int | None, path: Path) -> dict:
    """Convert, save and read back the package (its interface checked), zipped at ``path``; what the
    manifest records of it: the interface it declares, its size in bytes and (int8) how many weights
    it holds compressed."""
    ct = quiet_import("coremltools")
    names = list(ctx.model.output_names)
    work = ctx.workdir / f".{ctx.stem}.coreml"
    shutil.rmtree(work, ignore_errors=True)  # ours: left by a dynamic-batch attempt that failed
    work.mkdir()
    try:
        package = work / f"{ctx.stem}.mlpackage"
        with captured_output():
            try:
                mlmodel = _compress(_convert(ctx, bound, names), ctx.options)
                _describe(mlmodel, ctx)
                mlmodel.save(str(package))
            except Exception as e:  # noqa: BLE001 - torch.export or a conversion pass failed
                raise ExportFailed(f"Core ML conversion failed: {first_line(e)}") from e
            saved = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
        interface = package_interface(saved)
        problems = interface_problems(interface, names, ctx.spec, ctx.options.batch_size, bound)
        if problems:
            raise ExportFailed(f"the saved Core ML package does not match the model: {'; '.join(problems)}")
        facts = {"interface": interface,
                 "package_bytes": sum(p.stat().st_size for p in package.rglob("*") if p.is_file())}
        if ctx.options.precision == "int8":
            facts["compressed_weights"] = compressed_weights(saved)
        zip_package(package, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return facts


def compressed_weights(model_spec) -> int:
    """How many weights an ML program keeps compressed (its ``constexpr_*`` decompression ops)."""
    blocks = [b for f in model_spec.mlProgram.functions.values() for b in f.block_specializations.values()]
    return sum(op.type.startswith("constexpr_") for b in blocks for op in b.operations)


def _compress(mlmodel, options):
    """The fp16 model with its weights compressed in the --int8 form asked for (others unchanged)."""
    if options.precision != "int8":
        return mlmodel
    import coremltools.optimize.coreml as cto

    form = options.of("coreml").int8_form
    if form == "linear":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
        return cto.linear_quantize_weights(mlmodel, config)
    nbits = int(form.removeprefix("palette"))
    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=nbits))
    return cto.palettize_weights(mlmodel, config)


def _convert(ctx: ExportContext, bound: int | None, names: list[str]):
    import numpy as np
    from torch.export import Dim

    ct = quiet_import("coremltools")
    coreml_ops.register()
    options, spec = ctx.options, ctx.spec
    example = ctx.example_input()
    dims = None
    if bound is None:
        example = example[:options.batch_size]
        batch = options.batch_size
    else:
        dims = ({0: Dim("batch", min=1, max=bound)},)
        batch = ct.RangeDim(lower_bound=1, upper_bound=bound, default=options.batch_size)
    program = edge_program(program_module(ctx.model), example, dims, also=COREML_REWRITES).run_decompositions({})
    # float outputs float32 at either precision; integer ones int32 (Core ML has no int64, and a count
    # summed over a mask would otherwise come out float)
    dtypes = [np.float32 if d.is_floating_point else np.int32 for d in _output_dtypes(ctx.model, example)]
    return ct.convert(
        program,
        inputs=[ct.TensorType(name="input", shape=ct.Shape((batch, spec.in_chans, *spec.img_size)),
                              dtype=np.float32)],
        outputs=[ct.TensorType(name=n, dtype=d) for n, d in zip(names, dtypes)],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32 if options.precision == "fp32" else ct.precision.FLOAT16,
        minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
        skip_model_load=True,  # loading compiles the model, which only macOS can
    )


def _output_dtypes(model, example) -> list:
    import torch

    with torch.no_grad():
        return [t.dtype for t in model(example[:1])]


def _describe(mlmodel, ctx: ExportContext) -> None:
    """What an app developer sees in Xcode, and what the package itself records of its preprocessing."""
    spec, model = ctx.spec, ctx.model
    pre = model.preprocessing
    mlmodel.short_description = f"{spec.model} {spec.task} ({spec.num_classes} classes), exported by autotimm-deploy"
    mlmodel.input_description["input"] = (
        f"float32 NCHW {spec.in_chans}x{spec.img_size[0]}x{spec.img_size[1]}, preprocessed: "
        f"{json.dumps(pre, default=str)}")
    for name in model.output_names:
        mlmodel.output_description[name] = f"{spec.task} output {name!r}"
    for key, value in ctx.metadata().items():
        mlmodel.user_defined_metadata[METADATA_PREFIX + key] = json.dumps(value, default=str)


def package_interface(model_spec) -> dict:
    """The inputs and outputs a Core ML spec declares: name, dtype, shape and its ranges."""

    from coremltools.proto.FeatureTypes_pb2 import ArrayFeatureType

    def one(feature) -> dict:
        array = feature.type.multiArrayType
        dtype = ArrayFeatureType.ArrayDataType.Name(array.dataType).lower().replace("double", "float64")
        shape = list(array.shape)
        ranges = [[int(r.lowerBound), int(r.upperBound)] for r in array.shapeRange.sizeRanges]
        return {"name": feature.name, "dtype": dtype,
                "shape": [int(d) for d in shape], "ranges": ranges}

    desc = model_spec.description
    return {"kind": model_spec.WhichOneof("Type"), "inputs": [one(f) for f in desc.input],
            "outputs": [one(f) for f in desc.output]}


def interface_problems(interface: dict, names: list[str], spec, batch_size: int, bound: int | None) -> list[str]:
    """What in a saved package's interface departs from the model's (empty when it matches)."""
    problems = []
    if interface["kind"] != "mlProgram":
        problems.append(f"it is a {interface['kind']}, not an ML program")
    inputs = interface["inputs"]
    if [i["name"] for i in inputs] != ["input"]:
        problems.append(f"inputs are {[i['name'] for i in inputs]}, not ['input']")
    else:
        want_dims = [spec.in_chans, *spec.img_size]
        got = inputs[0]
        if got["dtype"] != "float32":
            problems.append(f"the input is {got['dtype']}, not float32")
        if got["shape"][1:] != want_dims:
            problems.append(f"the input is {got['shape']}, not [batch, {', '.join(map(str, want_dims))}]")
        want_batch = [1, bound] if bound is not None else [batch_size, batch_size]
        batch = got["ranges"][0] if got["ranges"] else [got["shape"][0]] * 2
        if batch != want_batch:
            problems.append(f"the input batch range is {batch}, not {want_batch}")
    got_names = [o["name"] for o in interface["outputs"]]
    if got_names != names:
        problems.append(f"outputs are {got_names}, not {names}")
    return problems


def zip_package(package: Path, path: Path) -> None:
    """``package`` (a folder) as one zip archive whose single top-level entry is that folder."""
    files = sorted(p for p in package.rglob("*") if p.is_file())
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for f in files:
            z.write(f, f.relative_to(package.parent).as_posix())
