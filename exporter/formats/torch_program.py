"""What the PyTorch formats (TorchScript, torch.export) compile: the task model, except that a model
with one output returns that tensor rather than a one-element tuple, so ``torch.jit.load(p)(x)``
gives the logits a user expects; multi-output tasks keep their tuple of named outputs."""

from __future__ import annotations


def program_module(model):
    import torch

    class SingleOutput(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.model = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)[0]

    return SingleOutput(model).eval() if len(model.output_names) == 1 else model


def folded_program(module, example, dims=None):
    """``torch.export`` of ``module`` with what depends on weights alone computed once and stored as
    constants (torch.fx's ``const_fold``), then exported again. A ViT's position-embedding resampling
    (a bicubic op outside Core ATen, which ExecuTorch and LiteRT cannot lower) becomes a constant.
    Every constant is stored contiguous: HaloAttn's folded ``width_rel.T`` kept its transposed strides,
    and LiteRT's converter read it wrongly in about half its runs (cos 0.9989, issue #32). In-place ops
    are made functional first: SwinV2's ``ReLU(inplace=True)`` after a folded linear became a parameter
    mutation, which Core ML refused and ExecuTorch returned as its first output."""
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # const_fold's get_attr notices
        program = torch.export.export(module, (example,), dynamic_shapes=dims, strict=False)
        folded = _folded(program.module())
        if _writes_a_constant(folded.graph):  # an in-place op on what folded: fold the functional graph
            folded = _folded(program.run_decompositions({}).module())
        for constant in folded.parameters():  # a folded transpose keeps its strides: stored contiguous
            constant.data = constant.data.contiguous()
        return torch.export.export(folded, (example,), dynamic_shapes=dims, strict=False)


def _folded(graph_module):
    from torch.fx.experimental import const_fold

    folded = const_fold.split_const_subgraphs(graph_module)
    folded.run_folding()
    return folded


def _writes_a_constant(graph) -> bool:
    """Whether an in-place op in ``graph`` (``relu_``, ``add_``, ...) writes to a stored tensor."""
    import operator

    import torch

    def stored(value) -> bool:  # a get_attr, or an item of one (const_fold's list of folded tensors)
        while getattr(value, "target", None) is operator.getitem:
            value = value.args[0]
        return getattr(value, "op", None) == "get_attr"

    calls = [n for n in graph.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)]
    return any(arg.alias_info is not None and arg.alias_info.is_write and stored(value)
               for node in calls for arg, value in zip(node.target._schema.arguments, node.args))


CALIB_BATCH = 8  # pictures per calibration forward when the batch is dynamic


def fine_activation_scales(config):
    """A PT2E ``QuantizationConfig`` whose activation and weight scales may go below its observers'
    floor of 2**-12 (ExecuTorch's and litert-torch's symmetric configs): a tensor (or a weight
    channel) spanning under 0.03 otherwise rounds to a few int8 steps. A model with random weights and BatchNorm's default statistics
    shrinks its activations about 3.5x a stage: efficientnet_b0's logits (spread 1e-5) rounded to 0,
    cosine 0.105 in ExecuTorch; with the floor at float32's epsilon, 0.9975 (issue #31)."""
    import dataclasses

    import torch

    def finer(spec):
        p = getattr(getattr(spec, "observer_or_fake_quant_ctr", None), "p", None)  # Observer.with_args(...)
        if p is None or "eps" not in p.keywords:
            return spec
        ctr = p.func.with_args(*p.args, **{**p.keywords, "eps": torch.finfo(torch.float32).eps})  # the class's own
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=ctr)

    return dataclasses.replace(config, input_activation=finer(config.input_activation),
                               output_activation=finer(config.output_activation), weight=finer(config.weight))


def seven_bit_weights(config):
    """A PT2E ``QuantizationConfig`` whose int8 weights stay in [-64, 63]: where x86 int8 kernels add
    pairs of u8 x s8 products in 16 bits (no VNNI or AMX: oneDNN's, behind Inductor), 8-bit weights
    can saturate them (mobilenetv3_small_100 at 128 px on a Zen 3: cosine 0.9989 as quantized,
    0.9690 through oneDNN; 7-bit weights 0.9982 and 0.9982: benchmarks/int8_saturation.py --aoti)."""
    import dataclasses

    return dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-64, quant_max=63))


def quantize_pt2e(graph, quantizer, ctx, dims) -> "object":
    """PT2E post-training quantization of ``graph`` (an exported program's module) with
    ``quantizer``, calibrated on ``ctx.calibration``: the observed, then converted module."""
    import torch
    from autotimm_deploy.exporter.core.errors import ExportFailed
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad():
        prepared = prepare_pt2e(graph, quantizer)
        data = torch.from_numpy(ctx.calibration).float()
        if dims is None:  # a fixed batch: calibrate in batches of exactly that size
            step = ctx.options.batch_size
            data = data[: len(data) // step * step] if len(data) >= step else data[:0]
            if not len(data):
                raise ExportFailed(f"int8 calibration needs at least --batch-size ({step}) pictures")
        else:
            step = CALIB_BATCH
        for i in range(0, len(data), step):
            prepared(data[i:i + step])
        return convert_pt2e(prepared)


def module_stack(node) -> list[str]:
    """The module paths a traced node runs inside, outermost first (as PT2E's module-name filters
    read them: without a strict trace's ``L['self'].``)."""
    return [fqn.removeprefix("L['self'].") for fqn, _ in (node.meta.get("nn_module_stack") or {}).values()]


def planned_float(graph, plan, info: dict) -> set[str]:
    """The module paths of ``graph`` (an exported program's module) that ``plan`` keeps in float,
    recorded in ``info``; PT2E quantizers skip the nodes inside them (`outside`)."""
    from autotimm_deploy.exporter.formats.int8_plan import kept

    names = sorted({fqn for node in graph.graph.nodes for fqn in module_stack(node)})
    in_float = set(kept(plan, names))
    if in_float:
        info["kept_float"] = {**plan.record()["kept_float"], "graph_modules": len(in_float)}
    return in_float


def outside(in_float: set[str]):
    """A PT2E node filter: True (quantize) for nodes in none of the ``in_float`` modules."""
    return lambda node: not in_float.intersection(module_stack(node))
