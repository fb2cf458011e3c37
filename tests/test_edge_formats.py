"""Edge formats beyond the every-format matrix (tests/test_formats.py): ExecuTorch's planned batch
bound, ncnn's other tasks and fp16, LiteRT's resized batch and its separate converter, what each
converter cannot express, and broken files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions, get_format
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.targets import open_target, resolve

from tests.conftest import SMALL, call_cli, export_small, files_under, run_cli


def needs(fmt: str) -> None:
    reason = get_format(fmt).unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def edge_artifacts(tmp_path_factory):
    """`SMALL` in ExecuTorch and ncnn, each through its parity check (conftest's small_artifacts
    exports every format; this file reads only these two)."""
    formats = [f for f in ("executorch", "ncnn") if not get_format(f).unavailable_reason()]
    return export_small(formats, tmp_path_factory.mktemp("edge"))


@pytest.fixture(scope="module")
def pte(edge_artifacts):
    needs("executorch")
    return edge_artifacts["executorch"]


def test_executorch_records_the_batch_its_memory_is_planned_for(pte):
    m = load_manifest(pte)
    assert m.batch == {"dynamic": True, "min": 1, "max": 8, "opt": 1}
    assert m.export["backend"] == "XNNPACK" and m.export["executorch"]
    with open_target(resolve(str(pte)), "cpu", threads=1) as s:
        assert s.batch_range() == (1, 8)
        assert s.infer(s.random_arrays(8))["logits"].shape == (8, 6)
        with pytest.raises(UserError, match="batches up to 8"):
            s.infer(s.random_arrays(9))


def test_executorch_without_manifest_names_by_position(pte, tmp_path):
    bare = tmp_path / "bare.pte"
    bare.write_bytes(pte.read_bytes())
    with open_target(resolve(str(bare)), "cpu", threads=1) as s:
        assert [i.name for i in s.inputs] == ["input"] and s.output_names == ["output0"]
        assert s.batch_range() == (1, 8)
        out = s.infer({"input": np.zeros((2, 3, 64, 64), np.float32)})
    assert out["output0"].shape == (2, 6)


@pytest.mark.parametrize("fmt,suffix,bad", [
    ("executorch", ".pte", b"\x00" * 64),
    ("ncnn", ".ncnn.param", b"not ncnn\n"),
    ("litert", ".tflite", b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40),  # the identifier, nothing behind it
    ("coreml", ".mlpackage.zip", b"PK\x03\x04" + b"\x00" * 60),
])
def test_broken_edge_files_are_one_line(tmp_path, fmt, suffix, bad):
    pytest.importorskip(get_format(fmt).requires[-1])
    path = tmp_path / f"m{suffix}"
    path.write_bytes(bad)
    # LiteRT's and Core ML's runtimes load C code that prints while it imports: a fresh interpreter
    r = (run_cli if fmt in ("litert", "coreml") else call_cli)("autotimm_deploy.profiler.cli", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_ncnn_needs_its_bin(edge_artifacts, tmp_path):
    needs("ncnn")
    param = edge_artifacts["ncnn"]
    shutil.copy(param, tmp_path)  # without its .bin and its manifest
    with pytest.raises(UserError, match="needs its .bin"):
        resolve(str(tmp_path / param.name))


def test_ncnn_segmentation_fp16(tmp_path, monkeypatch):
    """(Into a folder relative to the user's: pnnx runs in a scratch folder of its own, and once
    failed to find the program written under the relative scratch path.)"""
    needs("ncnn")
    monkeypatch.chdir(tmp_path)
    spec = ModelSpec("resnet18", task="semantic-segmentation", num_classes=5, img_size=(64, 64))
    (r,) = export(spec, ["ncnn"], Path("rel"), ExportOptions(precision="fp16"))
    assert r.ok, r.parity and r.parity.failures
    assert r.artifact.resolve().parent == tmp_path / "rel"
    m = load_manifest(r.artifact)
    assert m.precision == "fp16" and m.export["weights"] == "fp16"
    assert set(m.files) == {r.artifact.name, r.artifact.name.replace(".param", ".bin")}
    assert r.parity.metrics["logits"]["pixel_agreement"] > 0.99
    # fp16 weights really are half of fp32's 4 bytes a parameter (BatchNorm folded into its convolution)
    from autotimm_deploy.exporter.models import build_model

    params = sum(p.numel() for p in build_model(spec).parameters())
    half = r.artifact.with_name(r.artifact.name.replace(".param", ".bin")).stat().st_size
    assert 0.45 < half / (4 * params) < 0.55


def test_ncnn_detection_raw_converts_and_postprocessing_is_refused(tmp_path, export_cli):
    needs("ncnn")
    p = export_cli("resnet18", "--task", "detection", "--format", "ncnn", "--img-size", "128", "-o", str(tmp_path))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "cannot export detection" in p.stderr and "--raw" in p.stderr
    assert files_under(tmp_path) == []
    spec = ModelSpec("resnet18", task="detection", head={"raw": True, "fpn_channels": 32}, img_size=(128, 128))
    (r,) = export(spec, ["ncnn"], tmp_path)
    assert r.ok, r.parity and r.parity.failures
    assert len(load_manifest(r.artifact).outputs) > 1


def test_ncnn_names_the_ops_it_lacks(tmp_path):
    """pnnx keeps ops it cannot convert under their PyTorch names; the export fails naming them
    (ncnn has no cumulative product)."""
    needs("ncnn")
    import torch
    from autotimm_deploy.exporter.models import from_module

    class CumProd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).sigmoid().cumprod(-1).mean((2, 3))

    model = from_module(CumProd(), "cumprod", 32)
    (r,) = export(model.spec, ["ncnn"], tmp_path, model=model)
    assert not r.ok and r.error.startswith("ncnn has no layer for") and "torch.cumprod" in r.error
    assert files_under(tmp_path) == []


def test_recipe_skips_what_a_format_cannot_express(tmp_path):
    needs("ncnn")
    from autotimm_deploy.recipes.schema import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(json.dumps({"recipe": 1, "name": "r", "models": ["resnet18"],
                                "tasks": ["classification", "detection"], "formats": ["ncnn"],
                                "precisions": ["fp32"], "img_size": 64}))
    jobs = load_recipe(path, tmp_path / "out").export_jobs()
    skipped = {j.task.task: j.skipped for j in jobs}
    assert skipped["classification"] is None and "--raw" in skipped["detection"]


def test_litert_fp16_resizes_its_batch(tmp_path, monkeypatch):
    """(Into a folder relative to the user's, as ncnn's above: the LiteRT converter runs in a
    subprocess in a scratch folder of its own.)"""
    needs("litert")
    monkeypatch.chdir(tmp_path)
    (r,) = export(SMALL, ["litert"], Path("rel"), ExportOptions(precision="fp16"))
    assert r.ok, (r.error, r.parity and r.parity.failures)
    assert r.artifact.resolve().parent == tmp_path / "rel"
    m = load_manifest(r.artifact)
    assert m.batch["dynamic"] is True and m.export["converter"].startswith("litert-torch")
    assert "fp16 weights" in m.export["scheme"] and r.parity.batches == [1, 4, 16]
    with open_target(resolve(str(r.artifact)), "cpu", threads=1) as s:
        assert s.infer(s.random_arrays(3))["logits"].shape == (3, 6)


def test_litert_graph_that_bakes_its_batch_in_is_not_called_dynamic(monkeypatch, tmp_path):
    """An interpreter that runs a resized batch but answers the converted batch's rows (a reshape
    baking the batch in: cspdarknet53's) does not resize: the export then fixes the batch."""
    pytest.importorskip("ai_edge_litert")
    from types import SimpleNamespace

    import ai_edge_litert.interpreter
    from autotimm_deploy.exporter.formats import litert

    class Interpreter:
        def __init__(self, model_path):
            pass

        def get_signature_runner(self):
            runner = lambda **feed: {"logits": np.zeros((1, 6), np.float32), "count": np.float32(0)}  # noqa: E731
            runner.get_input_details = lambda: {"input": {"dtype": np.float32}}
            return runner

    monkeypatch.setattr(ai_edge_litert.interpreter, "Interpreter", Interpreter)
    ctx = SimpleNamespace(spec=SimpleNamespace(in_chans=3, img_size=(8, 8)))
    assert litert._resizes(tmp_path / "m.tflite", 2, ctx) == "gave [1] rows for a batch of 2"
    assert litert._resizes(tmp_path / "m.tflite", 1, ctx) is None  # (a scalar output has no rows)


@pytest.mark.parametrize("model,int8_layers,gemms", [("test_resnet", 16, 0), ("test_vit", 26, 24)])
def test_ncnn_int8_calibrated_and_written_as_ncnn2int8_does(tmp_path, model, int8_layers, gemms):
    """ncnn int8: the table from our calibration pictures (KL per input blob, per-channel weight
    scales), the model in ncnn2int8's format (int8_scale_term on the quantized layers, int8 weights
    behind ncnn's int8 tag), run and parity-checked by ncnn. test_vit (6 blocks): its convolution and
    head by the table (8=2), its 24 Gemm layers (nn.Linear on tokens) as ncnn2int8 quantizes them
    (18=2, their inputs quantized by ncnn at run time; its attention is MatMul + Softmax, fp32), so
    its file is about a quarter of fp32's."""
    from collections import Counter

    from autotimm_deploy.exporter.formats.ncnn_int8 import DYNAMIC_LAYERS

    needs("ncnn")
    spec = ModelSpec(model, num_classes=6, img_size=(64, 64))
    options = ExportOptions(precision="int8", calib_data="sample-pictures", calib_samples=8)
    (r,) = export(spec, ["ncnn"], tmp_path, options)
    assert r.ok, (r.error, r.parity and r.parity.failures)
    assert r.parity.metrics["logits"]["cosine"] > 0.999
    m = load_manifest(r.artifact)
    lines = [ln.split() for ln in r.artifact.read_text().splitlines()[2:]]
    int8 = Counter(ln[0] for ln in lines
                   if ("18=2" in ln if ln[0] in DYNAMIC_LAYERS else "8=2" in ln or "8=1" in ln))
    assert m.precision == "int8" and m.export["int8_layers"] == int8_layers == sum(int8.values())
    assert m.export["int8_layer_types"] == dict(int8) and int8["Gemm"] == gemms
    assert (0x000D4B38).to_bytes(4, "little") in r.artifact.with_name(r.artifact.name[:-6] + ".bin").read_bytes()
    assert r.bytes < 0.4 * 4 * r.params  # int8 weights: about a quarter of fp32's bytes


E, SEQ = 32, 7
# hand-made ncnn layers after an input in0 (their lines, in0's w, h, c, their arrays: (size, tagged)),
# and the bytes int8 saves
HAND_MADE = {
    # nn.MultiheadAttention as pnnx writes it: q/k/v weights per row, the output weight per tensor
    "MultiHeadAttention": ([f"MultiHeadAttention l 1 1 in0 out0 0={E} 1=4 2={E * E}"], (E, SEQ, 1),
                           [(E * E, 1), (E, 0)] * 4, 4 * 3 * E * E - 3 * E * 4 - 4),
    # a constant A stored transposed (transA=1): ncnn2int8 transposes it and scales it per row
    "Gemm": ([f"Gemm l 1 1 in0 out0 2=1 3=0 4=1 5=0 6=1 7=24 8=0 9={E} 10=1"], (SEQ, E, 1),
             [(24 * E, 1), (24, 1)], 3 * 24 * E - 24 * 4),
    # a constant B stored untransposed (transB=0): one scale for the tensor
    "Gemm B": ([f"Gemm l 1 1 in0 out0 2=0 3=0 4=0 5=1 6=1 7=0 8=24 9={E} 10=4"], (E, SEQ, 1),
               [(24 * E, 1), (24, 1)], 3 * 24 * E - 4),
    # no weights: q, k and v quantized by ncnn at run time
    "SDPA": (["Split sp 1 3 in0 a b c", "SDPA l 3 1 a b c out0 6=0.25"], (E, SEQ, 2), [], 0),
}


@pytest.mark.parametrize("layer", list(HAND_MADE))
def test_ncnn_int8_hand_made_layers_as_ncnn2int8_writes_them(tmp_path, layer):
    """ncnn layers pnnx writes for other models (MultiHeadAttention for nn.MultiheadAttention, SDPA for
    fused attention; timm's ViTs come as Gemm + MatMul) or in other layouts (Gemm's constant A stored
    transposed, an untransposed B), quantized the way ncnn2table + ncnn2int8 do: ncnn loads the
    result, int8 saves the bytes it should, and its int8 forward stays within cosine 0.999 of fp32."""
    needs("ncnn")
    import ncnn
    from autotimm_deploy.exporter.formats.ncnn_int8 import quantize

    lines, (w, h, c), arrays, saved = HAND_MADE[layer]
    rng = np.random.default_rng(0)
    param, binary = tmp_path / "m.param", tmp_path / "m.bin"
    blobs = len({b for ln in lines for b in ln.split()[4:] if "=" not in b} | {"in0"})
    head = f"Input in0 0 1 in0 0={w} 1={h}" + (f" 2={c}" if c > 1 else "")
    param.write_text("\n".join(["7767517", f"{len(lines) + 1} {blobs}", head, *lines]) + "\n")
    binary.write_bytes(b"".join(b"\0" * 4 * tagged + rng.normal(0, 0.1, n).astype(np.float32).tobytes()
                                for n, tagged in arrays))
    x = rng.normal(size=(c, h, w) if c > 1 else (h, w)).astype(np.float32)

    def run():
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        assert net.load_param(str(param)) == 0 and net.load_model(str(binary)) == 0
        ex = net.create_extractor()
        ex.input("in0", ncnn.Mat(x))
        return np.array(ex.extract("out0")[1]).ravel()

    fp32, size = run(), binary.stat().st_size
    info = quantize(param, binary, [], "in0")
    int8 = run()
    assert info["int8_layer_types"] == {layer.split()[0]: 1} and "18=2" in param.read_text().split()
    assert binary.stat().st_size == size - saved and "2=1" not in param.read_text().split()
    assert fp32.shape == int8.shape and np.dot(fp32, int8) / np.linalg.norm(fp32) / np.linalg.norm(int8) > 0.999


def test_litert_dynamic_range_int8_needs_no_calibration_data(tmp_path):
    """--litert-int8 dynamic: int8 weights, activations quantized at run time, float I/O; no
    --calib-data, parity-checked by the interpreter like the other LiteRT modes."""
    from autotimm_deploy.exporter.formats.litert import LiteRTOptions

    needs("litert")
    options = ExportOptions(precision="int8", format_options={"litert": LiteRTOptions(int8_form="dynamic")})
    (r,) = export(SMALL, ["litert"], tmp_path, options)
    assert r.ok, (r.error, r.parity and r.parity.failures)
    m = load_manifest(r.artifact)
    assert "dynamic-range" in m.export["scheme"] and m.export["options"]["litert"]["int8_form"] == "dynamic"
    assert r.parity.metrics["logits"]["cosine"] > 0.999 and "calibration" not in m.export
    with open_target(resolve(str(r.artifact)), "cpu", threads=1) as s:
        assert [i.dtype for i in s.inputs] == ["float32"]
    assert r.bytes < 0.4 * 4 * r.params  # int8 weights: about a quarter of fp32's bytes


def test_litert_without_its_converter_is_one_line(tmp_path, export_cli, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    monkeypatch.setenv("AUTOTIMM_LITERT_ENV", str(tmp_path / "nowhere"))
    p = export_cli("test_resnet", "--format", "litert", "-o", str(tmp_path / "out"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--setup-litert" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "out").exists()


def test_executorch_int8_keeps_a_transformers_residual_adds_in_float(tmp_path):
    """XNNPACK's int8 adds put a transformer's whole residual stream through 8 bits (deit_tiny: cos
    0.936 against eager); they stay in float where the graph has attention, and a CNN's are quantized."""
    needs("executorch")
    import torch
    from autotimm_deploy.exporter.formats.executorch import residual_adds_of_transformers
    from autotimm_deploy.exporter.formats.torch_program import folded_program
    from autotimm_deploy.exporter.models import build_model

    x = torch.randn(1, 3, 64, 64)
    for name, expected in (("test_vit", {torch.ops.aten.add.Tensor}), ("test_resnet", set())):
        graph = folded_program(build_model(ModelSpec(name, num_classes=4, img_size=(64, 64))), x).module()
        assert residual_adds_of_transformers(graph) == expected, name
    # two of test_vit's six blocks (ExecuTorch's lowering takes time by the graph's size), built as the
    # exporter builds timm models (exportable: explicit softmax attention), through the own-module door
    from autotimm_deploy.exporter.models.custom import from_module
    from autotimm_deploy.exporter.models.timm_backbone import create_timm_model

    vit = from_module(create_timm_model(ModelSpec("test_vit", num_classes=10, img_size=(64, 64)), depth=2,
                                        num_classes=10).eval(), "vit_2", 64)
    (r,) = export(vit.spec, ["executorch"], tmp_path, ExportOptions(precision="int8", calib_data="sample-pictures",
                                                                     calib_samples=16), model=vit)
    assert r.ok, (r.error, r.parity and r.parity.failures)
    assert "residual adds in float" in load_manifest(r.artifact).export["quantization"]["scheme"]


def test_int8_scales_follow_tensors_smaller_than_the_quantizers_floor():
    """ExecuTorch's (and litert-torch's) symmetric config floors activation scales at 2**-12: a tensor
    spanning 1e-4 (a random-weights model's late stages), or a weight channel under 0.03, rounds to a
    few steps or zero. With the floor lowered the
    quantized module still answers (efficientnet_b0 at 128 px: cosine 0.105 -> 0.9975 in ExecuTorch,
    a constant 0 -> 0.9984 in LiteRT)."""
    needs("executorch")
    import torch
    from autotimm_deploy.exporter.formats.torch_program import fine_activation_scales
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[0].weight.mul_(1e-3), model[0].bias.mul_(1e-7), model[2].bias.zero_()  # weights spanning ~3e-4
    data = torch.randn(32, 16) * 1e-2  # activations spanning ~1e-5

    def cosine(config) -> float:
        graph = torch.export.export(model, (data,)).module()
        prepared = prepare_pt2e(graph, XNNPACKQuantizer().set_global(config))
        with torch.no_grad():
            prepared(data)
            got, want = convert_pt2e(prepared)(data), model(data)
        return float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0))

    floor = get_symmetric_quantization_config(is_per_channel=True)
    assert cosine(floor) < 0.9 and cosine(fine_activation_scales(floor)) > 0.99
