"""Runs in the LiteRT converter's own venv (`litert_env`), as a script: it imports nothing of
autotimm_deploy. Converts a saved ``torch.export`` program to a ``.tflite`` file.

    python litert_convert.py PROGRAM.pt2 OUT.tflite PRECISION [CALIBRATION.npy]

PRECISION is fp32, fp16, int8 (static, calibrated) or int8-dynamic.

- fp32: ``litert_torch.convert`` of the program's module at its example batch.
- fp16: the fp32 flatbuffer with its weights cast to fp16 by ai-edge-quantizer (FLOAT_CASTING);
  the runtime computes in fp32 on CPUs.
- int8: PT2E quantization calibrated on the pictures in CALIBRATION.npy, converted to a full-integer
  graph, int8 inputs and outputs included. (ai-edge-quantizer's static recipe on the fp32 flatbuffer,
  which can keep float inputs, was measured less exact: cosine 0.9987 vs 0.9996 on resnet18.)
- int8-dynamic: dynamic-range int8, no calibration: the fp32 flatbuffer with per-channel int8 weights
  (ai-edge-quantizer's dynamic_wi8_afp32); the interpreter quantizes activations on the fly where a
  kernel has an int8 path (fully connected, convolution) and keeps float inputs, outputs and the rest.
Prints one JSON line of facts for the manifest; any failure is one line on stderr and exit 1.
"""

import json
import sys
import time


def main(program_path: str, out: str, precision: str, calibration: str | None = None) -> dict:
    import torch

    program = torch.export.load(program_path)
    example = tuple(program.example_inputs[0])
    if precision == "int8":
        return int8(program.module(), example, out, calibration)
    if precision == "fp32":
        return fp32(program.module(), example, out)
    if precision == "fp16":
        return fp16(program.module(), example, out)
    if precision == "int8-dynamic":
        return dynamic_int8(program.module(), example, out)
    raise ValueError(f"unknown precision {precision!r}")


def fp32(module, example, out: str) -> dict:
    import litert_torch

    t0 = time.perf_counter()
    litert_torch.convert(module, example).export(out)
    return {"converter": f"litert-torch {_version('litert-torch')}", "convert_s": round(time.perf_counter() - t0, 2)}


def fp16(module, example, out: str) -> dict:
    """The fp32 flatbuffer with its weights cast to fp16 by ai-edge-quantizer (FLOAT_CASTING)."""
    from ai_edge_quantizer import qtyping, quantizer

    facts = fp32(module, example, out + ".fp32.tflite")
    q = quantizer.Quantizer(out + ".fp32.tflite")
    q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                             algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING)
    q.quantize().export_model(out, overwrite=True)
    return {**facts, "quantizer": f"ai-edge-quantizer {_version('ai-edge-quantizer')}",
            "scheme": "fp16 weights (FLOAT_CASTING), fp32 compute"}


def dynamic_int8(module, example, out: str) -> dict:
    """The fp32 flatbuffer with per-channel int8 weights, activations quantized at run time
    (ai-edge-quantizer's dynamic_wi8_afp32 recipe)."""
    from ai_edge_quantizer import quantizer, recipe

    facts = fp32(module, example, out + ".fp32.tflite")
    q = quantizer.Quantizer(out + ".fp32.tflite", recipe.dynamic_wi8_afp32())
    q.quantize().export_model(out, overwrite=True)
    return {**facts, "quantizer": f"ai-edge-quantizer {_version('ai-edge-quantizer')}",
            "scheme": "dynamic-range int8: per-channel int8 weights, activations quantized at run time; float I/O"}


def _fine_activation_scales(config):
    """The config with its observers' scale floor (2**-12) at float32's epsilon, as
    ``torch_program.fine_activation_scales`` (this script imports nothing of the package): a tensor
    spanning under 0.03 rounded to a few int8 steps; efficientnet_b0 with random weights gave a
    constant 0 output."""
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


def int8(module, example, out: str, calibration: str) -> dict:
    """PT2E with litert-torch's quantizer (symmetric int8, per-channel weights), calibrated in PyTorch,
    then converted: int8 weights, activations and graph inputs / outputs (their scale and zero point
    are in the tensors' quantization parameters)."""
    import litert_torch
    import numpy as np
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    quantizer = PT2EQuantizer().set_global(_fine_activation_scales(config))
    prepared = prepare_pt2e(module, quantizer)
    data = torch.from_numpy(np.load(calibration).astype(np.float32))
    batch = example[0].shape[0]
    steps = range(0, len(data) - batch + 1, batch)
    if not steps:
        raise ValueError(f"int8 calibration needs at least {batch} pictures (the conversion batch)")
    with torch.no_grad():
        for i in steps:
            prepared(data[i:i + batch])
    quantized = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    quantized.training = False
    t0 = time.perf_counter()
    litert_torch.convert(quantized, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(out)
    return {"converter": f"litert-torch {_version('litert-torch')}", "convert_s": round(time.perf_counter() - t0, 2),
            "quantizer": "torchao pt2e + litert-torch PT2EQuantizer",
            "scheme": "symmetric int8, per-channel weights; int8 graph inputs and outputs",
            "calibration_batches": len(steps)}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    try:
        print(json.dumps(main(*sys.argv[1:])))
    except Exception as e:  # noqa: BLE001 - the caller reports this line
        message = " ".join(str(e).split())[:400] or type(e).__name__
        print(f"{type(e).__name__}: {message}", file=sys.stderr)
        sys.exit(1)
