"""Do ONNX Runtime's and OpenVINO's int8 kernels saturate on this CPU? Run by hand:

    .venv/bin/python benchmarks/int8_saturation.py [--models resnet18,mobilenetv3_small_100] [--img-size 128]

Each model (random weights) is exported to fp32 ONNX, quantized by ``quantize_static`` (min/max on
scikit-image's pictures, per-channel symmetric weights) in the s8s8 and u8s8 forms with 8-bit and 7-bit
(``reduce_range``) weights, and run on the same pictures twice: with graph optimizations off, so each
Q/DQ pair runs in float (what the quantization means), and with ONNX Runtime's default, its int8
kernels. Where the kernels add pairs of u8 x s8 products in 16 bits (x86 without VNNI or AMX), the
8-bit rows depart from their unfused selves and the 7-bit rows do not. Prints a markdown table:
cosine and max_rel of the logits against the fp32 graph.

Then OpenVINO (with ``--openvino``): NNCF min/max on the same pictures with its ``overflow_fix`` off,
on the first layer (its default) and on every layer (7-bit weights everywhere), against OpenVINO fp32.

Then ExecuTorch (with ``--executorch``): PT2E int8 with XNNPACKQuantizer (the exporter's quantizer
config, calibrated on the same pictures, batch fixed; for CNNs: a transformer's residual adds, which
the exporter keeps in float, are quantized here), run as the quantized PyTorch module (each Q/DQ pair
in float) and as the lowered XNNPACK program, both against eager fp32.

Then AOTInductor (with ``--aoti``): PT2E int8 with X86InductorQuantizer (the exporter's config: uint8
activations, per-channel int8 weights, scales below 2**-12 allowed), as is, with 7-bit activations
(torchao's ``reduce_range``, "for CPUs without VNNI") and with 7-bit weights, each run as the
quantized PyTorch module and as the frozen package Inductor compiles to oneDNN's int8 kernels, both
against eager fp32.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from autotimm_deploy.exporter.core.environment import cpu_model, int8_saturates
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats.onnx_int8 import _quantize_static, _Reader
from autotimm_deploy.exporter.inputs.samples import sample_images
from autotimm_deploy.exporter.pipeline import export


def _metrics(y: np.ndarray, ref: np.ndarray) -> str:
    a, b = y.ravel().astype(np.float64), ref.ravel().astype(np.float64)
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return f"{cosine:.5f}, {np.abs(a - b).max() / np.abs(b).max():.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18,mobilenetv3_small_100")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--pictures", type=int, default=16)
    ap.add_argument("--openvino", action="store_true", help="also OpenVINO int8 with NNCF's overflow_fix settings")
    ap.add_argument("--executorch", action="store_true", help="also ExecuTorch int8: Q/DQ in PyTorch against XNNPACK")
    ap.add_argument("--aoti", action="store_true", help="also AOTInductor int8: Q/DQ in PyTorch against oneDNN")
    a = ap.parse_args()
    import onnxruntime as ort

    def run(path: Path, optimized: bool, x: np.ndarray) -> np.ndarray:
        so = ort.SessionOptions()
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                       else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]

    print(f"CPU: {cpu_model()}; int8 kernels saturate here (x86 without VNNI/AMX): {int8_saturates()}\n")
    print("| model | form | weights | unfused cosine, max_rel | fused cosine, max_rel |\n|---|---|---|---|---|")
    openvino_rows: list[str] = []
    executorch_rows: list[str] = []
    aoti_rows: list[str] = []
    for name in a.models.split(","):
        with tempfile.TemporaryDirectory() as d:
            (r,) = export(ModelSpec(name, img_size=(a.img_size, a.img_size)), ["onnx"], d, verify=False)
            x = sample_images(a.pictures, json.loads(r.manifest.read_text())["preprocessing"])
            ref = run(r.artifact, False, x)
            for form in ("s8s8", "u8s8"):
                for narrow in (False, True):
                    dst = Path(d, f"{form}-{narrow}.onnx")
                    _quantize_static(r.artifact, dst, _Reader("input", x), [], form, narrow=narrow)
                    cells = " | ".join(_metrics(run(dst, opt, x), ref) for opt in (False, True))
                    print(f"| {name} | {form} | {'7-bit' if narrow else '8-bit'} | {cells} |", flush=True)
            if a.openvino:
                openvino_rows.append(_openvino_row(name, r.artifact, x))
            if a.executorch:
                executorch_rows.append(_executorch_row(name, a.img_size, x))
            if a.aoti:
                aoti_rows += [_aoti_row(name, a.img_size, x, bits) for bits in AOTI_BITS]
    if openvino_rows:
        print("\n| model | overflow_fix off | first layer (NNCF's default) | every layer (7-bit weights) |\n|---|---|---|---|")
        print("\n".join(openvino_rows))
    if executorch_rows:
        print("\n| model | Q/DQ in PyTorch cosine, max_rel | XNNPACK cosine, max_rel |\n|---|---|---|")
        print("\n".join(executorch_rows))
    if aoti_rows:
        print("\n| model | int8 | Q/DQ in PyTorch cosine, max_rel | oneDNN (AOTInductor) cosine, max_rel |"
              "\n|---|---|---|---|")
        print("\n".join(aoti_rows))


def _openvino_row(name: str, onnx_path: Path, x: np.ndarray) -> str:
    import logging

    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    nncf.set_log_level(logging.ERROR)
    core, model = ov.Core(), ov.convert_model(str(onnx_path))
    ref = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    data = nncf.Dataset([x[i:i + 1] for i in range(len(x))])
    cells = []
    for fix in (OverflowFix.DISABLE, OverflowFix.FIRST_LAYER, OverflowFix.ENABLE):
        q = nncf.quantize(model, data, subset_size=len(x),
                          advanced_parameters=AdvancedQuantizationParameters(overflow_fix=fix))
        cells.append(_metrics(core.compile_model(q, "CPU")(x)[0], ref))
    return f"| {name} | {' | '.join(cells)} |"


def _pt2e(name: str, size: int, x: np.ndarray, quantizer, trace):
    """``name`` (random weights) on ``x``: eager's logits, the PT2E-quantized module's (each Q/DQ pair
    in float) and that module's program, traced by ``trace(module, example)``."""
    import torch
    from autotimm_deploy.exporter.formats.torch_program import program_module
    from autotimm_deploy.exporter.models import build_model
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = torch.from_numpy(x)
    module = program_module(build_model(ModelSpec(name, img_size=(size, size))))
    with torch.no_grad():
        prepared = prepare_pt2e(trace(module, example).module(), quantizer)
        prepared(example)
        quantized = convert_pt2e(prepared)
        return module(example).numpy(), quantized(example).numpy(), torch.export.export(quantized, (example,),
                                                                                       strict=False)


def _executorch_row(name: str, size: int, x: np.ndarray) -> str:
    import torch
    from autotimm_deploy.exporter.formats.edge_rewrite import edge_program
    from autotimm_deploy.exporter.formats.executorch import _lower
    from autotimm_deploy.exporter.formats.torch_program import fine_activation_scales
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.runtime import Runtime

    quantizer = XNNPACKQuantizer().set_global(fine_activation_scales(get_symmetric_quantization_config(is_per_channel=True)))
    ref, simulated, program = _pt2e(name, size, x, quantizer, edge_program)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "m.pte")
        path.write_bytes(_lower(program))
        lowered = Runtime.get().load_program(str(path)).load_method("forward").execute([torch.from_numpy(x)])[0]
    return f"| {name} | {_metrics(simulated, ref)} | {_metrics(lowered.numpy(), ref)} |"


AOTI_BITS = ("8-bit", "7-bit activations (reduce_range)", "7-bit weights")


def _aoti_row(name: str, size: int, x: np.ndarray, bits: str) -> str:
    import torch
    from autotimm_deploy.exporter.formats.aoti import x86_int8_config
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    config = x86_int8_config(narrow_weights="weights" in bits, reduce_range="activations" in bits)
    ref, simulated, program = _pt2e(name, size, x, X86InductorQuantizer().set_global(config),
                                    lambda m, e: torch.export.export(m, (e,), strict=False))
    with torch.no_grad(), tempfile.TemporaryDirectory() as d:
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(Path(d, "m.pt2")),
                                                        inductor_configs={"freezing": True})
        compiled = torch._inductor.aoti_load_package(path)(torch.from_numpy(x))
    compiled = (compiled[0] if isinstance(compiled, (list, tuple)) else compiled).numpy()
    return f"| {name} | {bits} | {_metrics(simulated, ref)} | {_metrics(compiled, ref)} |"


if __name__ == "__main__":
    main()
