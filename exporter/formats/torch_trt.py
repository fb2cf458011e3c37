"""Torch-TensorRT (``--format torch-trt``): the torch.export program compiled by Torch-TensorRT's
dynamo frontend (``torch_tensorrt.dynamo.compile``). Subgraphs TensorRT can run become TensorRT
engines inside the graph; the rest stays PyTorch (fallback), and the manifest lists those ops.
Saved as Torch-TensorRT documents for reloading: ``torch_tensorrt.save(..., output_format=
"exported_program")`` -> ``.trt.ep``, loaded with ``torch.export.load(p).module()`` after
``import torch_tensorrt``.

Precision follows the installed Torch-TensorRT's API: versions with ``enable_autocast`` (explicit
typing, the current default) get autocast to fp16/bf16, older ones ``enabled_precisions``. Like a
TensorRT engine it is built on the GPU that will run it. Written against the documented API; it has
not run on this project's machines (no GPU, no TensorRT): the tests cover everything up to the call.
"""

from __future__ import annotations

import inspect
from typing import Any

from autotimm_deploy.exporter.core.errors import ExportFailed, first_line
from autotimm_deploy.exporter.formats.file_checks import zip_check
from autotimm_deploy.exporter.formats.base import BatchRange, ExportContext, Exported, Format, register_format
from autotimm_deploy.exporter.formats.dims import export_dims, export_program
from autotimm_deploy.exporter.formats.tensorrt import batch_profile, profile_shapes
from autotimm_deploy.exporter.formats.torch_program import program_module

PARTITION_PREFIXES = {"_run_on_acc": "tensorrt", "_run_on_gpu": "pytorch"}  # Torch-TensorRT's partitioner


def input_ranges(options, shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """min / opt / max input shapes for ``torch_tensorrt.Input``: the same optimization profile a
    ``--format trt`` engine gets (batch 1:B:32, B:B:B with --static; height and width over --dynamic-size)."""
    profile = profile_shapes(batch_profile(options), shape, options.dynamic_size)
    return {f"{k}_shape": tuple(v) for k, v in profile.items()}


def compile_settings(precision: str, parameters: set[str], dtype_of) -> dict[str, Any]:
    """Keyword arguments for ``torch_tensorrt.dynamo.compile`` at ``precision``, for a version whose
    ``compile`` takes ``parameters``. ``dtype_of`` maps fp16/bf16 to torch dtypes."""
    settings: dict[str, Any] = {"min_block_size": 1}
    if precision == "fp32":
        if "use_explicit_typing" in parameters:
            settings["use_explicit_typing"] = True
        return settings
    if "enable_autocast" in parameters:  # explicit typing: the graph is autocast, sensitive ops kept in fp32
        settings.update(enable_autocast=True, use_explicit_typing=True)
        if "autocast_low_precision_type" in parameters:
            settings["autocast_low_precision_type"] = dtype_of(precision)
    else:  # weakly typed versions: TensorRT may pick the lower precision per layer
        settings["enabled_precisions"] = {dtype_of("fp32"), dtype_of(precision)}
        if "use_explicit_typing" in parameters:
            settings["use_explicit_typing"] = False
    return settings


def partitions(graph_module) -> dict[str, list[str]]:
    """{"tensorrt": [submodule names], "pytorch": [...], "fallback_ops": [op names run by PyTorch]}."""
    out: dict[str, list[str]] = {"tensorrt": [], "pytorch": [], "fallback_ops": []}
    ops = set()
    for name, child in graph_module.named_children():
        kind = next((k for p, k in PARTITION_PREFIXES.items() if name.startswith(p)), None)
        if kind is None:
            continue
        out[kind].append(name)
        if kind == "pytorch" and hasattr(child, "graph"):
            ops |= {str(getattr(n.target, "__name__", n.target)) for n in child.graph.nodes if n.op == "call_function"}
    out["fallback_ops"] = sorted(ops)
    return out


@register_format
class TorchTensorRTFormat(Format):
    name = "torch-trt"
    suffix = ".trt.ep"
    default_runtime = "torch-trt"
    check_file = staticmethod(zip_check("Torch-TensorRT program (.trt.ep)", "archive_format"))
    description = "Torch-TensorRT: the torch.export program with TensorRT engines inside, PyTorch fallback (NVIDIA GPU)"
    extra = "torch-trt"
    requires = ("torch_tensorrt",)
    precisions = ("fp32", "fp16", "bf16")
    dynamic_size = True
    needs_cuda = "Torch-TensorRT builds its engines on the GPU that will run them"

    def export(self, ctx: ExportContext) -> Exported:
        import copy

        import torch
        import torch_tensorrt

        spec = ctx.spec
        model = copy.deepcopy(program_module(ctx.model)).cuda().eval()
        example = ctx.example_input().cuda()
        ranges = input_ranges(ctx.options, (spec.in_chans, *spec.img_size))
        # the program's symbols carry the ranges Torch-TensorRT builds for: bounded like its Input
        max_batch = ranges["max_shape"][0]
        program, multiple = export_program(model, example, ctx.options, max_batch)
        trt_input = torch_tensorrt.Input(**ranges, dtype=torch.float32)
        parameters = set(inspect.signature(torch_tensorrt.dynamo.compile).parameters)
        settings = compile_settings(ctx.options.precision, parameters,
                                    lambda p: {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p])
        try:
            graph = torch_tensorrt.dynamo.compile(program, inputs=[trt_input], **settings)
        except Exception as e:  # noqa: BLE001 - converter or TensorRT build errors
            raise ExportFailed(f"Torch-TensorRT compile failed: {first_line(e)}") from e
        path = ctx.path(self.suffix)
        save_parameters = set(inspect.signature(torch_tensorrt.save).parameters)
        inputs_key = "arg_inputs" if "arg_inputs" in save_parameters else "inputs"
        # save re-exports the compiled module: with the same symbolic dims, else it would come out static
        if "dynamic_shapes" in save_parameters:
            save_inputs = {inputs_key: [example], "dynamic_shapes": export_dims(ctx.options, multiple, max_batch)}
        else:
            save_inputs = {inputs_key: [trt_input]}
        try:
            torch_tensorrt.save(graph, str(path), output_format="exported_program", **save_inputs)
        except Exception as e:  # noqa: BLE001
            raise ExportFailed(f"torch_tensorrt.save failed: {first_line(e)}") from e
        parts = partitions(graph)
        from autotimm_deploy.exporter.core.environment import gpu_environment, package_versions

        gpu = gpu_environment(torch.cuda.current_device())
        info = {
            "compiler": "torch_tensorrt.dynamo.compile",
            "versions": package_versions(("torch-tensorrt", "tensorrt")),
            "settings": {k: (sorted(map(str, v)) if isinstance(v, set) else str(v) if not isinstance(v, (bool, int))
                             else v) for k, v in settings.items()},
            "input_ranges": {k: list(v) for k, v in ranges.items()},
            "tensorrt_subgraphs": len(parts["tensorrt"]), "pytorch_subgraphs": len(parts["pytorch"]),
            "fallback_ops": parts["fallback_ops"],
            "gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"], "cuda": gpu["cuda"]},
        }
        batch = BatchRange.up_to(ranges["opt_shape"][0], ranges["max_shape"][0], ranges["min_shape"][0])
        # TensorRT uses TF32 for fp32 layers unless told not to (Torch-TensorRT's disable_tf32=False)
        return Exported([path], info, exporter="torch.export(strict=False)", batch=batch, size_multiple=multiple,
                        gate="tf32" if ctx.options.precision == "fp32" else None)
