"""ExecuTorch program (``.pte``): ``torch.export`` -> ``to_edge_transform_and_lower`` with the
XNNPACK partitioner -> ``to_executorch``. What phones and embedded CPUs run through ExecuTorch's C++
runtime; the `executorch` runtime runs it here through ExecuTorch's own Python bindings.

- fp32: every op XNNPACK supports is delegated to it; the rest (our detection postprocessing's
  top-k and gathers) stays on ExecuTorch's portable kernels, so every task exports.
- int8: PT2E quantization with ExecuTorch's ``XNNPACKQuantizer`` (symmetric int8, per-channel
  weights), calibrated on our calibration pictures, then lowered the same way. In a transformer
  (the graph has a softmax, a layer norm or fused attention) the residual adds stay in float, as
  NNCF's transformer preset leaves them: the quantizer's int8 adds put the whole residual stream
  through 8 bits, and deit_tiny fell to cos 0.936 against eager (top-1 50 %); with the adds in
  float, 0.9994 (top-1 100 %), for a file 2 % larger.

ExecuTorch plans all memory ahead of time, so a dynamic batch needs an upper bound: ``BATCH_BOUND``
(or ``--batch-size`` when larger). XNNPACK may lower the bound it plans for (15 where 16 or more
was asked); the manifest records the bound the program really holds, read back from it.
"""

from __future__ import annotations

from autotimm_deploy.exporter.core.capture import captured_output
from autotimm_deploy.exporter.core.environment import package_versions
from autotimm_deploy.exporter.core.errors import ExportFailed, first_line
from autotimm_deploy.exporter.core.files import write_bytes
from autotimm_deploy.exporter.formats.edge_rewrite import edge_program
from autotimm_deploy.exporter.formats.file_checks import flatbuffer_check
from autotimm_deploy.exporter.formats.base import (
    BatchRange,
    ExportContext,
    Exported,
    Format,
    register_format,
    with_batch_fallback,
)
from autotimm_deploy.exporter.formats.torch_program import (
    fine_activation_scales,
    outside,
    planned_float,
    program_module,
    quantize_pt2e,
)

BATCH_BOUND = 8  # a dynamic batch's largest size: memory for it is planned (and allocated) up front


@register_format
class ExecuTorchFormat(Format):
    name = "executorch"
    suffix = ".pte"
    default_runtime = "executorch"
    check_file = staticmethod(flatbuffer_check("an ExecuTorch program (.pte)", (b"ET12",)))
    description = "ExecuTorch program (.pte) lowered to XNNPACK, for phones and embedded CPUs; fp32, int8"
    extra = "executorch"
    requires = ("executorch",)
    precisions = ("fp32", "int8")
    keeps_float = True  # int8 layers kept in float stay out of the XNNPACK quantizer (`int8_plan`)

    def export(self, ctx: ExportContext) -> Exported:
        from torch.export import Dim

        options = ctx.options
        info = {"backend": "XNNPACK", **package_versions(["executorch"])}
        path = ctx.path(self.suffix)

        def dynamic() -> BatchRange:
            dims = ({0: Dim("batch", min=1, max=max(BATCH_BOUND, options.batch_size))},)
            write_bytes(path, self._build(ctx, dims, info))
            problem = _runs_batches(path, ctx, (1, 2))
            if problem is not None:  # some delegated kernels cannot take a dynamic batch (int8 detection heads)
                raise ExportFailed(problem)
            return BatchRange.up_to(options.batch_size, planned_batch(path))

        batch, fallback = with_batch_fallback(ctx, dynamic, lambda: write_bytes(path, self._build(ctx, None, info)),
                                              "the program failed to run")
        return Exported([path], info, exporter="torch.export(strict=False)", batch=batch, fallback=fallback)

    @staticmethod
    def _build(ctx: ExportContext, dims, info: dict) -> bytes:
        import torch

        example = ctx.example_input()
        if dims is None:
            example = example[:ctx.options.batch_size]
        with captured_output():
            try:
                program = edge_program(program_module(ctx.model), example, dims)  # before quantizing, never after
                if ctx.options.precision == "int8":
                    quantized, info["quantization"] = _quantize(program.module(), example, dims, ctx)
                    with torch.no_grad():
                        program = torch.export.export(quantized, (example,), dynamic_shapes=dims, strict=False)
                return _lower(program)
            except ExportFailed:
                raise
            except Exception as e:  # noqa: BLE001 - torch.export, a lowering pass or serialisation failed
                raise ExportFailed(f"ExecuTorch export failed: {first_line(e)}") from e


def _lower(program) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def _quantize(graph, example, dims, ctx: ExportContext):
    """PT2E post-training quantization for XNNPACK of ``graph`` (an exported program's module),
    calibrated on ``ctx.calibration``."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    info = {"tool": "torchao pt2e + XNNPACKQuantizer", "scheme": "symmetric int8, per-channel weights",
            "calibration": ctx.calibration_info}
    quantizer = XNNPACKQuantizer().set_global(fine_activation_scales(get_symmetric_quantization_config(is_per_channel=True)))
    in_float = planned_float(graph, ctx.int8_plan, info)
    float_ops = residual_adds_of_transformers(graph)
    if float_ops:
        info["scheme"] += "; residual adds in float (a transformer)"
    if in_float or float_ops:
        in_modules = outside(in_float)
        quantizer.set_filter_function(lambda node: node.target not in float_ops and in_modules(node))
    return quantize_pt2e(graph, quantizer, ctx, dims), info


def residual_adds_of_transformers(graph) -> set:
    """The add ops the int8 quantizer must leave in float: every ``aten.add.Tensor`` where the graph
    is a transformer's (a softmax, layer norm or fused attention in it), else none."""
    import torch

    aten = torch.ops.aten
    marks = {aten.softmax.int, aten._softmax.default, aten.layer_norm.default, aten.scaled_dot_product_attention.default}
    return {aten.add.Tensor} if any(node.target in marks for node in graph.graph.nodes) else set()


def _runs_batches(path, ctx: ExportContext, batches) -> str | None:
    """None when the program runs at each of ``batches`` and answers every picture, else what failed."""
    import torch
    from executorch.runtime import Runtime

    with captured_output():
        try:
            method = Runtime.get().load_program(str(path)).load_method("forward")
            for b in batches:
                outputs = method.execute([torch.zeros(b, ctx.spec.in_chans, *ctx.spec.img_size)])
                rows = {o.shape[0] for o in outputs if isinstance(o, torch.Tensor) and o.dim()}
                if not rows <= {b}:
                    return f"gave {sorted(rows)} rows for a batch of {b}"
        except Exception as e:  # noqa: BLE001 - the runtime's own error, kept for the manifest
            return first_line(e, 200)
    return None


def planned_batch(path) -> int:
    """The largest batch the program's memory plan holds (its input's planned first dim)."""
    from executorch.runtime import Runtime

    with captured_output():
        method = Runtime.get().load_program(str(path)).load_method("forward")
    return int(method.metadata.input_tensor_meta(0).sizes()[0])
