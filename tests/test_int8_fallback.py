"""int8 that misses its parity gate is retried along a ladder (issue #31 point 3): the format's other
calibrators, then the first and last layers in float, then the family's sensitive layers; the
manifest records what was tried and what was kept in float."""

from __future__ import annotations

import json

import pytest
import torch
from autotimm_deploy.exporter import export, from_module
from autotimm_deploy.exporter.formats import ExportOptions, get_format
from autotimm_deploy.exporter.core.environment import int8_saturates
from autotimm_deploy.exporter.formats import int8_plan
from autotimm_deploy.exporter.formats.int8_plan import Int8Plan, float_plans, kept, narrow_plans, sensitive_layers

INT8 = ExportOptions(precision="int8", calib_data="sample-pictures", calib_samples=16)


class Outlier(torch.nn.Module):
    """A classifier whose head reads features beside one huge constant channel it ignores: per-tensor
    int8 of the head's input (step ~16) rounds the informative features to 0. With ``inside``, the
    outlier comes out of a convolution instead, whose output every form quantizes: nothing on the
    ladder can save it."""

    def __init__(self, inside: bool = False):
        super().__init__()
        self.inside = inside
        self.stem = torch.nn.Conv2d(3, 16, 3, stride=2)
        self.mix = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.head = torch.nn.Linear(16, 10)
        self.register_buffer("offset", torch.zeros(16))
        with torch.no_grad():
            (self.mix.bias if inside else self.offset)[0] = 2000.0
            self.head.weight[:, 0] = 0.0

    def forward(self, x):
        features = self.mix(self.stem(x).relu()).mean((2, 3))
        return self.head(features if self.inside else features + self.offset)


def _model(inside: bool = False):
    torch.manual_seed(0)
    return from_module(Outlier(inside), "outlier", 64)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_missing_its_gate_keeps_layers_in_float(tmp_path, fmt, monkeypatch):
    pytest.importorskip({"onnx": "onnxruntime", "openvino": "nncf"}[fmt])
    monkeypatch.setattr(int8_plan, "int8_saturates", lambda: False)  # the same ladder on every CPU
    model = _model()
    (r,) = export(model.spec, [fmt], tmp_path, INT8, model=model)
    assert r.ok, r.parity.failures
    record = r.info["int8_fallback"]
    steps = [t["step"] for t in record["tried"]]
    calibrators = get_format(fmt).int8_calibrators
    assert steps == ["plain", *(f"calibrator {c}" for c in calibrators[1:]), "2 layers in float (edges)"]
    assert all(t["verdict"] == "fail" for t in record["tried"][:-1]) and record["tried"][-1]["verdict"] == "pass"
    assert record["tried"][0]["cosine"] < 0.98 < record["tried"][-1]["cosine"]
    assert record["chosen"] == "2 layers in float (edges)" and "top1" in record["why"]
    assert "int8 kept with 2 layers in float (edges)" in r.fallback
    manifest = json.loads(r.manifest.read_text())
    kept_float = manifest["export"]["quantization"]["kept_float"]
    assert kept_float["modules"] == ["stem", "head"] and kept_float["nodes"] == 2
    assert manifest["export"]["int8_fallback"]["chosen"] == record["chosen"]
    assert [p.name for p in tmp_path.iterdir() if "int8-" in p.name] == []  # the retries' scratch is gone


def test_int8_nothing_on_the_ladder_helps(tmp_path, monkeypatch):
    """Every step fails: the plain artifact stays, failing, with every step in its record."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(int8_plan, "int8_saturates", lambda: False)
    model = _model(inside=True)
    (r,) = export(model.spec, ["onnx"], tmp_path, INT8, model=model)
    assert not r.ok and r.error is None
    record = r.info["int8_fallback"]
    # plain, each other calibrator, the edges in float (the module has no family layers)
    assert record["chosen"] is None and len(record["tried"]) == len(get_format("onnx").int8_calibrators) + 1
    assert "quantization" in r.info and "kept_float" not in r.info["quantization"]
    assert "int8 kept" not in (r.fallback or "")
    assert json.loads(r.manifest.read_text())["parity"]["verdict"] == "fail"


def _plain(tmp_path):
    model = _model()
    model.module.offset.zero_()  # no outlier: plain int8 holds, where the CPU's int8 kernels do not saturate
    (r,) = export(model.spec, ["onnx"], tmp_path, INT8, model=model)
    assert r.ok and "kept_float" not in r.info["quantization"]
    return r


@pytest.mark.skipif(int8_saturates(), reason="x86 without VNNI/AMX: ONNX Runtime's int8 kernels saturate here")
def test_no_retry_when_plain_int8_passes(tmp_path):
    pytest.importorskip("onnxruntime")
    r = _plain(tmp_path)
    assert "int8_fallback" not in r.info and r.info["quantization"]["weights"] == "int8 per-channel symmetric"


@pytest.mark.skipif(not int8_saturates(), reason="needs an x86 CPU without VNNI/AMX (ONNX Runtime's kernels saturate)")
def test_seven_bit_weights_hold_where_int8_saturates(tmp_path):
    """On such a CPU the plain graph's kernels saturate (cosine 0.985 on AMD Zen 3), and 7-bit weights pass."""
    pytest.importorskip("onnxruntime")
    r = _plain(tmp_path)
    record = r.info["int8_fallback"]
    assert [t["step"] for t in record["tried"]] == ["plain", "7-bit weights"] and record["chosen"] == "7-bit weights"
    assert "reduce_range" in r.info["quantization"]["weights"] and "7-bit weights" in r.fallback


def test_seven_bit_weights_come_first_where_int8_saturates(tmp_path, monkeypatch):
    """On a CPU whose int8 kernels saturate, the ladder's first step quantizes the weights to 7 bits:
    the graph's int8 weights then lie in [-64, 64]."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    monkeypatch.setattr(int8_plan, "int8_saturates", lambda: True)
    model = _model()
    (r,) = export(model.spec, ["onnx"], tmp_path, INT8, model=model)
    tried = r.info["int8_fallback"]["tried"]
    assert tried[1]["step"] == "7-bit weights" and tried[1]["weight_bits"] == 7 and tried[0]["weight_bits"] == 8
    assert r.ok  # (the outlier is not saturation: the edges in float save it, as on any CPU)
    # what that step builds: onnxruntime's reduce_range, every int8 weight in [-64, 64]
    from autotimm_deploy.exporter.formats.onnx_int8 import _quantize_static, _Reader
    from autotimm_deploy.exporter.inputs.samples import sample_images

    (fp32,) = export(model.spec, ["onnx"], tmp_path / "fp32", model=model, verify=False)
    pictures = sample_images(8, json.loads(fp32.manifest.read_text())["preprocessing"])
    weights = {}
    for narrow in (False, True):
        dst = tmp_path / f"q-{narrow}.onnx"
        _quantize_static(fp32.artifact, dst, _Reader("input", pictures), [], narrow=narrow)
        weights[narrow] = [numpy_helper.to_array(i) for i in onnx.load(str(dst)).graph.initializer
                           if i.data_type == onnx.TensorProto.INT8 and i.dims]
    assert weights[True] and all(abs(w.astype(int)).max() <= 64 for w in weights[True])
    assert any(abs(w.astype(int)).max() > 64 for w in weights[False])  # (8-bit weights use the whole range)


@pytest.mark.parametrize("seven,adopted", [(89.5, True), (85.0, True), (70.0, False)])
def test_budget_scores_seven_bit_weights_first_where_int8_saturates(tmp_path, monkeypatch, seven, adopted):
    """--max-drop on a CPU whose ONNX Runtime int8 kernels saturate: 7-bit weights are scored before
    any layer is kept in float, and kept for the search when they score no worse than 8-bit ones
    (89.5: the budget holds with no layer in float; 85: the search goes on from them)."""
    from types import SimpleNamespace

    from autotimm_deploy.exporter.formats import onnx_int8
    from autotimm_deploy.exporter.formats.base import AccuracyBudget

    scores = {"int8-0-8.onnx": 80.0, "int8-0-7.onnx": seven, "int8-1-7.onnx": 89.5, "int8-1-8.onnx": 89.5}
    made = []

    def quantize(exclude, seven_bits=False):
        made.append((len(exclude), 7 if seven_bits else 8))
        return tmp_path / f"int8-{len(exclude)}-{7 if seven_bits else 8}.onnx"

    monkeypatch.setattr(onnx_int8, "_ort_predict", lambda path: path.name)
    monkeypatch.setattr(onnx_int8, "node_sensitivity", lambda *a: [("conv", "stem", 3.0)])
    budget = AccuracyBudget(score=lambda predict, batch: scores[predict], metric="top1", eager=90.0, max_drop=1.0,
                            samples=10)
    ctx = SimpleNamespace(budget=budget, options=ExportOptions())
    for may_narrow in (True, False):
        made.clear()
        path, control = onnx_int8._hold_budget(ctx, tmp_path / "f.onnx", quantize([]), quantize, may_narrow)
        bits = 7 if may_narrow and adopted else 8
        assert control["met"] and control.get("weight_bits", 8) == bits
        assert ((0, 7) in made) == may_narrow and control["steps"][1:2] == (
            [{"kept_float": 0, "weight_bits": 7, "top1": seven}] if may_narrow else [{"kept_float": 1, "top1": 89.5}])
        kept_float = 0 if may_narrow and seven == 89.5 else 1
        assert path.name == f"int8-{kept_float}-{bits}.onnx" and len(control["kept_float"]) == kept_float


def test_which_cpus_saturate_int8():
    assert int8_saturates({"avx2", "fma"}, "x86_64") and int8_saturates({"avx512f", "avx512bw"}, "x86_64")
    assert not int8_saturates({"avx2", "avx512_vnni"}, "x86_64") and not int8_saturates({"avx_vnni"}, "AMD64")
    assert not int8_saturates({"asimd"}, "aarch64") and not int8_saturates(set(), "x86_64")  # flags unread: unknown
    for fmt in ("onnx", "openvino", "aoti"):
        assert narrow_plans(get_format(fmt), saturates=True) == [Int8Plan(narrow_weights=True)]
        assert narrow_plans(get_format(fmt), saturates=False) == []
    assert narrow_plans(get_format("executorch"), saturates=True) == []  # (XNNPACK's quantizer has no 7-bit form)


def test_openvino_narrow_weights_fix_overflow_on_every_layer(tmp_path):
    """NNCF narrows the first layer's weights by default; the 7-bit step asks it for every layer."""
    pytest.importorskip("nncf")
    import nncf
    import onnx
    import openvino as ov
    from autotimm_deploy.exporter.formats.openvino import _planned
    from nncf.quantization.advanced_parameters import OverflowFix

    model = _model()
    (fp32,) = export(model.spec, ["onnx"], tmp_path, model=model, verify=False)
    proto, ir = onnx.load(str(fp32.artifact)), ov.convert_model(str(fp32.artifact))
    info: dict = {}
    out = _planned(nncf, ir, proto, Int8Plan(narrow_weights=True, calibrator="histogram"), info)
    assert out["advanced_parameters"].overflow_fix == OverflowFix.ENABLE
    default = nncf.AdvancedQuantizationParameters().activations_range_estimator_params
    assert out["advanced_parameters"].activations_range_estimator_params != default  # the calibrator kept too
    assert info["weights"].startswith("7-bit on every layer") and "no VNNI or AMX" in info["weights"]
    plain: dict = {}
    assert "advanced_parameters" not in _planned(nncf, ir, proto, Int8Plan(), plain) and "weights" not in plain


def test_sensitive_layers_by_family():
    import timm

    cnn = sensitive_layers(timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=10))
    assert cnn["edges"] == ["conv_stem", "classifier"]
    assert "blocks.0.0.conv_dw" in cnn["depthwise"] and "blocks.0.0.se.conv_reduce" in cnn["squeeze-excite"]
    assert cnn["attention-out"] == [] and cnn["mlp-out"] == []
    vit = sensitive_layers(timm.create_model("test_vit", pretrained=False, num_classes=10))
    assert vit["edges"] == ["patch_embed.proj", "head"]
    assert "blocks.0.attn.proj" in vit["attention-out"] and "blocks.0.mlp.fc2" in vit["mlp-out"]
    assert vit["depthwise"] == [] and vit["squeeze-excite"] == []


def test_float_plans_grow_and_paths_match_through_wrappers():
    import timm

    net = timm.create_model("test_vit", pretrained=False, num_classes=10)
    plans = float_plans(get_format("onnx"), net, Int8Plan(calibrator="entropy"))
    assert [p.groups for p in plans] == [("edges",), ("edges", "attention-out", "mlp-out")]
    assert all(p.calibrator == "entropy" for p in plans) and set(plans[0].modules) < set(plans[1].modules)
    assert float_plans(get_format("torchscript"), net) == []  # a format that cannot keep layers in float
    plan = Int8Plan(groups=("edges",), modules=("head",))
    assert kept(plan, ["model.net.head", "L.head", "net.head.fc", "head"]) == ["model.net.head", "head"]
    assert kept(None, ["head"]) == []


def test_pt2e_keeps_planned_modules_out_of_the_quantizer():
    """ExecuTorch's and AOTInductor's quantizers skip the nodes inside the plan's modules."""
    pytest.importorskip("torchao")
    from autotimm_deploy.exporter.formats.torch_program import module_stack, outside, planned_float

    graph = torch.export.export(Outlier().eval(), (torch.randn(1, 3, 32, 32),)).module()
    info: dict = {}
    in_float = planned_float(graph, Int8Plan(groups=("edges",), modules=("stem", "head")), info)
    assert in_float == {"stem", "head"} and info["kept_float"]["graph_modules"] == 2
    quantize = outside(in_float)
    verdicts = {module_stack(n)[-1]: quantize(n) for n in graph.graph.nodes if n.op == "call_function"
                and n.target.__name__ in ("conv2d.default", "linear.default")}
    assert verdicts == {"stem": False, "mix": True, "head": False}
    assert planned_float(graph, None, {}) == set()
