"""OpenVINO (fp32 / bf16 / int8) and ONNX int8: export, reload, parity; the calibration loader."""

import numpy as np
import onnx
import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.inputs.calibration import load_calibration
from autotimm_deploy.exporter.inputs.preprocess import preprocess
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.artifact import open_artifact
from autotimm_deploy.profiler.targets import open_target, resolve

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")

SPEC = ModelSpec("test_resnet", num_classes=10, img_size=(64, 64))
PREP = {"input_size": [3, 64, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic", "crop_pct": 0.875}


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    """A few real pictures written as image files, as a user's calibration folder would hold."""
    import skimage.data
    from PIL import Image

    d = tmp_path_factory.mktemp("calib")
    (d / "sub").mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera"):
        Image.fromarray(getattr(skimage.data, name)()).save(d / f"{name}.png")
    Image.fromarray(skimage.data.cat()).save(d / "sub" / "cat.jpg")
    return d


@pytest.fixture(scope="module")
def openvino(tmp_path_factory):
    """`SPEC` exported to OpenVINO at fp32 and at bf16, each through its parity check (read-only)."""
    out = tmp_path_factory.mktemp("openvino")
    return {p: export(SPEC, ["openvino"], out / p, ExportOptions(precision=p))[0] for p in ("fp32", "bf16")}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_export_reload_parity(openvino, precision):
    r = openvino[precision]
    assert r.ok, r.parity and r.parity.failures
    m = load_manifest(r.artifact)
    assert m.format == "openvino" and m.precision == precision
    assert set(m.files) == {r.artifact.name, r.artifact.with_suffix(".bin").name}
    assert m.export["inference_precision"] == {"fp32": "f32", "bf16": "bf16"}[precision]
    metrics = r.parity.metrics["logits"]
    if precision == "fp32" or r.parity.computed_in == "fp32":
        assert metrics["max_rel"] < 1e-4
    else:  # bf16 really ran in bf16: measurably less exact than fp32, still inside the bf16 gate
        assert 1e-4 < metrics["max_rel"] < 6e-2
    # where this CPU has no bf16 support OpenVINO computes the bf16 IR in f32, and the export says so
    with open_artifact(r.artifact, manifest=load_manifest(r.artifact)) as s:
        computed = s.compute_precision()
    assert r.parity.computed_in == (None if computed == precision else computed)
    said = "openvino computed this bf16 artifact in fp32 on this CPU"
    if r.parity.computed_in:
        assert said in r.fallback and said in " ".join(m.parity.notes) and said in m.export["fallback"]
    else:
        assert said not in (r.fallback or "")


def test_openvino_reports_what_it_computes_in(monkeypatch, openvino):
    """OpenVINO's compiled model says its inference precision: a bf16 IR on a CPU without bf16 runs f32."""
    r = openvino["bf16"]
    with open_artifact(r.artifact, manifest=load_manifest(r.artifact)) as s:
        monkeypatch.setattr(s, "latency_compiled", lambda: type("C", (), {"get_property": lambda self, k: FakeType("f32")})())
        assert s.compute_precision() == "fp32"
        monkeypatch.setattr(s, "latency_compiled", lambda: type("C", (), {"get_property": lambda self, k: FakeType("bf16")})())
        assert s.compute_precision() == "bf16"
        monkeypatch.setattr(s, "latency_compiled", lambda: 1 / 0)  # an OpenVINO that cannot say: what was asked
        assert s.compute_precision() == "bf16"


class FakeType:
    def __init__(self, name):
        self.name = name

    def get_type_name(self):
        return self.name


def test_openvino_throughput_path_matches_latency_path(openvino):
    r = openvino["fp32"]
    with open_target(resolve(str(r.artifact)), "cpu", threads=2) as s:
        x = s.random_arrays(5)
        sliced = np.concatenate([s.infer({"input": x["input"][i:i + 1]})["logits"] for i in range(5)])
        batched = s.infer(x)["logits"]  # THROUGHPUT-compiled model, batch split across requests
    np.testing.assert_allclose(batched, sliced, rtol=1e-5, atol=1e-6)


def test_openvino_runs_each_batch_on_a_model_fixed_to_it(openvino):
    """As ``benchmark_app -shape`` does: a fixed shape spares the CPU plugin its shape inference on
    every call. The answers are those of the dynamic model."""
    r = openvino["fp32"]
    with open_artifact(r.artifact, manifest=load_manifest(r.artifact), batch_mode="latency") as s:
        x = s.random_arrays(3)
        assert [p.get_partial_shape().to_string() for p in s.model.inputs] == ["[?,3,64,64]"]
        fixed = s.infer(x)["logits"]
        assert [str(s.latency_compiled(b).inputs[0].get_partial_shape()) for b in (1, 3)] == ["[1,3,64,64]", "[3,3,64,64]"]
        request = s.compiled("LATENCY").create_infer_request()
        dynamic = request.infer([x["input"]])[request.model_outputs[0]]
    np.testing.assert_allclose(fixed, dynamic, rtol=1e-5, atol=1e-6)


def test_openvino_fixes_only_a_dynamic_batch(tmp_path):
    """A second input with a fixed first dim (not a batch) keeps it; a batch range opens at its least."""
    import openvino as ov

    x = ov.opset13.parameter(ov.PartialShape([ov.Dimension(2, 8), 3]), ov.Type.f32, name="x")
    scale = ov.opset13.parameter(ov.PartialShape([3]), ov.Type.f32, name="scale")
    ov.save_model(ov.Model([ov.opset13.multiply(x, scale)], [x, scale]), str(tmp_path / "two.xml"))
    with open_artifact(tmp_path / "two.xml", runtime="openvino", batch_mode="latency") as s:
        assert [str(p.get_partial_shape()) for p in s.latency_compiled().inputs] == ["[2,3]", "[3]"]
        out = s.run(s.prepare({"x": np.ones((2, 3), np.float32), "scale": np.arange(3, dtype=np.float32)}))
    np.testing.assert_array_equal(out[0], [[0, 1, 2], [0, 1, 2]])


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_with_calibration_images(tmp_path, calib_dir, fmt):
    opts = ExportOptions(precision="int8", calib_data=str(calib_dir), calib_samples=6)
    (r,) = export(SPEC, [fmt], tmp_path, opts)
    assert r.artifact.name.startswith("test_resnet-int8")
    assert r.ok, r.parity.failures
    m = load_manifest(r.artifact)
    q = m.export["quantization"]
    assert q["calibration"] == {"source": str(calib_dir), "samples": 6}
    assert r.parity.tolerance["max_rel"] == 0.15
    if fmt == "onnx":  # the default form: TensorRT's
        _is_int8_form(r.artifact, "s8s8", onnx.TensorProto.INT8, "QuantizeLinear")


@pytest.mark.parametrize("form,zero_point_type,op", [
    ("u8s8", onnx.TensorProto.UINT8, "QuantizeLinear"),  # what ONNX Runtime's CPU kernels take
    ("u8s8-qop", onnx.TensorProto.UINT8, "QLinearConv"),
])
def test_onnx_int8_forms(tmp_path, form, zero_point_type, op):
    from autotimm_deploy.exporter.formats.onnx import OnnxOptions

    opts = ExportOptions(precision="int8", calib_data="sample-pictures", format_options={"onnx": OnnxOptions(int8_form=form)})
    (r,) = export(SPEC, ["onnx"], tmp_path, opts)
    assert r.ok, r.parity.failures
    _is_int8_form(r.artifact, form, zero_point_type, op)


def _is_int8_form(artifact, form: str, zero_point_type: int, op: str) -> None:
    """The manifest says ``form``, the graph has ``op`` and its activations' zero points' type."""
    q = load_manifest(artifact).export["quantization"]
    assert q["form"] == form and q["activations"] == ("int8 symmetric" if form == "s8s8" else "uint8 asymmetric")
    graph = onnx.load(str(artifact)).graph
    ops = {n.op_type for n in graph.node}
    assert op in ops and (op != "QuantizeLinear" or "DequantizeLinear" in ops)
    inits = {t.name: t for t in graph.initializer}
    activation_zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and
                              len(n.input) > 2 and n.input[2] in inits]
    if op == "QuantizeLinear":  # activations' zero points: int8 zeros (symmetric) or uint8 (asymmetric)
        assert activation_zero_points and {z.data_type for z in activation_zero_points} == {zero_point_type}


def test_onnx_int8_form_refusals(tmp_path):
    from autotimm_deploy.exporter.formats.onnx import OnnxOptions

    from conftest import call_cli

    p = call_cli("autotimm_deploy.exporter.cli", "test_resnet", "-f", "onnx", "--onnx-int8", "u8s8", "-o",
                 str(tmp_path / "a"))
    assert p.returncode == 2 and "--onnx-int8 u8s8 sets the form of the int8 graph: add --int8" in p.stderr
    with pytest.raises(UserError, match="u8s8-qop cannot hold an accuracy budget"):
        export(SPEC, ["onnx"], tmp_path / "b", ExportOptions(precision="int8", calib_random=True, max_drop=1.0,
                                                               format_options={"onnx": OnnxOptions(int8_form="u8s8-qop")}))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_random_calibration_is_flagged(tmp_path):
    (r,) = export(ModelSpec("test_resnet", img_size=(64, 64)), ["onnx"], tmp_path,
                  ExportOptions(precision="int8", calib_random=True, calib_samples=4), verify=False)
    q = load_manifest(r.artifact).export["quantization"]["calibration"]
    assert q["source"] == "random" and "meaningless" in q["warning"]


def test_calibration_loader(tmp_path, calib_dir):
    data, info = load_calibration(str(calib_dir), 4, PREP)
    assert data.shape == (4, 3, 64, 64) and data.dtype == np.float32 and info["samples"] == 4
    data, _ = load_calibration(str(calib_dir), 100, PREP)
    assert len(data) == 6  # every image, subfolders included
    np.save(tmp_path / "pre.npy", data)
    again, _ = load_calibration(str(tmp_path / "pre.npy"), 3, PREP)
    np.testing.assert_array_equal(again, data[:3])
    raw = np.zeros((2, 80, 100, 3), dtype=np.uint8)
    np.save(tmp_path / "raw.npy", raw)
    assert load_calibration(str(tmp_path / "raw.npy"), 5, PREP)[0].shape == (2, 3, 64, 64)
    # preprocessing: a mid-grey image normalises to (0.5 - mean) / std everywhere
    grey = preprocess(np.full((50, 70, 3), 127.5 / 255, dtype=np.float32), PREP)
    np.testing.assert_allclose(grey[0], (0.5 - 0.485) / 0.229, atol=3e-2)


@pytest.mark.parametrize("case", ["empty", "unreadable", "npy shape", "missing", "none", "not npy", "text as npy"])
def test_calibration_errors(tmp_path, case):
    if case == "empty":
        (tmp_path / "empty").mkdir()
        src, msg = str(tmp_path / "empty"), "has no images"
    elif case == "unreadable":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "x.jpg").write_bytes(b"not a jpeg")
        src, msg = str(tmp_path / "bad"), "cannot read calibration image"
    elif case == "npy shape":
        np.save(tmp_path / "w.npy", np.zeros((2, 5), dtype=np.float32))
        src, msg = str(tmp_path / "w.npy"), r"has shape \[2, 5\]"
    elif case == "missing":
        src, msg = str(tmp_path / "nope"), "not found"
    elif case == "text as npy":  # numpy's own words were its allow_pickle advice
        (tmp_path / "fake.npy").write_text("a text file\n")
        src, msg = str(tmp_path / "fake.npy"), "fake.npy: not a NumPy array file; give a folder of pictures, or an .npy"
    elif case == "not npy":
        (tmp_path / "f.txt").write_text("x")
        src, msg = str(tmp_path / "f.txt"), "a folder of images or a .npy file"
    else:
        src, msg = None, "int8 needs calibration data"
    with pytest.raises(UserError, match=msg):
        load_calibration(src, 4, PREP)


def test_int8_bad_calibration_writes_nothing(tmp_path, export_cli):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    for args, msg in ((["--int8"], "int8 needs calibration data"),
                      (["--int8", "--calib-data", str(tmp_path / "empty")], "has no images"),
                      (["--calib-random"], "only apply to --int8")):
        p = export_cli("test_resnet", "--img-size", "64", "-f", "onnx", "-o", str(out), *args)
        assert p.returncode == 2 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not out.exists()
