"""Reduced precision held against a real accuracy: a tiny timm model trained in seconds on
scikit-learn's digits (tests/labelled_data.py), exported at fp32 / fp16 / int8 (calibrated on training
images), and every artifact scored by ``--eval`` on the held-out digits as PNG files. Parity gates
compare against eager outputs; this compares what users care about, the accuracy."""

import pytest
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.formats import ExportOptions, get_format
from autotimm_deploy.exporter.pipeline import export
from labelled_data import digits_spec


@pytest.mark.parametrize("fmt,precision", [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
                                           ("openvino", "int8"), ("openvino", "bf16"), ("executorch", "int8"),
                                           ("ncnn", "fp16"), ("ncnn", "int8"), ("litert", "int8")])
def test_reduced_precision_keeps_digits_accuracy(tmp_path, digits, fmt, precision):
    _holds(tmp_path, digits, fmt, precision)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_keeps_face_accuracy_on_lfw(tmp_path, lfw, fmt):
    """scikit-image's 200 real face / non-face pictures: class folders by name (face, other)."""
    _holds(tmp_path, lfw, fmt, "int8")


def _holds(tmp_path, digits, fmt, precision):
    reason = get_format(fmt).unavailable_reason()
    if reason:
        pytest.skip(reason)
    assert digits.accuracy > 0.85  # the model really learned the task
    opts = ExportOptions(precision=precision, calib_data=str(digits.calib) if precision == "int8" else None,
                         calib_samples=64, eval_data=str(digits.folder), max_drop=1.5)
    (r,) = export(digits_spec(digits), [fmt], tmp_path, opts)
    assert r.error is None, r.error
    acc = r.accuracy
    # eager scored by --eval from the PNG files equals the accuracy computed directly on the tensors
    assert acc.eager["top1"] == pytest.approx(100 * digits.accuracy, abs=1e-4)
    assert acc.data["samples"] == len(digits.labels) and acc.data["kind"] == "image-folder"
    print(f"{digits.folder.parent.name} top-1 {fmt} {precision}: {acc.artifact['top1']:.2f} (eager fp32 {acc.eager['top1']:.2f})")
    assert acc.passed and r.ok, (fmt, precision, acc)
    assert r.diagnosis is None  # only a failed artifact is diagnosed
    if fmt == "litert":  # its int8 graph takes int8: the batch check fed float and fell back to batch 1
        assert r.fallback is None and load_manifest(r.artifact).batch["dynamic"], r.fallback
    assert load_manifest(r.artifact).accuracy.to_dict() == acc.to_dict()  # and the manifest holds it


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_outside_the_budget_is_repaired_by_keeping_layers_in_float(tmp_path, digits, fmt):
    """Calibration ranges fitted to pictures at a tenth of their contrast clip real ones: plain int8
    loses most of the digits. With --max-drop the build keeps the layers that cost the most in float
    (ONNX: by measured sensitivity; OpenVINO: NNCF's accuracy control) until the budget holds, and
    says which layers."""
    import numpy as np

    reason = get_format(fmt).unavailable_reason()
    if reason:
        pytest.skip(reason)
    bad = tmp_path / "calib-low-contrast.npy"
    np.save(bad, np.load(digits.calib) * 0.1)
    opts = ExportOptions(precision="int8", calib_data=str(bad), calib_samples=64, eval_data=str(digits.folder),
                         max_drop=1.0)
    (r,) = export(digits_spec(digits), [fmt], tmp_path / "out", opts)
    assert r.error is None, r.error
    control = load_manifest(r.artifact).export["quantization"]["accuracy_control"]
    first_int8 = control["steps"][1 if fmt == "openvino" else 0]["top1"]  # openvino's first step: its fp32 IR
    assert first_int8 < 50, control["steps"]  # plain int8 really was broken
    assert control["met"] and r.accuracy.passed and r.accuracy.drop <= 1.0
    assert r.ok  # whatever the parity proxy says (it often still fails): the budget on labelled data decides
    kept = [k["module"] for k in control["kept_float"]]
    assert kept and "conv1.0" in kept, kept  # the stem conv, fed the clipped picture, is back in float


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_failed_int8_names_the_layers_where_it_departs(tmp_path, digits, fmt):
    """The same broken calibration without a budget: the artifact fails, and the layer comparison
    against its fp32 graph (ONNX) or fp32 IR (OpenVINO) points at the stem conv that sees the clipped
    picture first."""
    import numpy as np
    from autotimm_deploy.exporter.cli import diagnosis_line

    reason = get_format(fmt).unavailable_reason()
    if reason:
        pytest.skip(reason)
    bad = tmp_path / "calib-low-contrast.npy"
    np.save(bad, np.load(digits.calib) * 0.1)
    (r,) = export(digits_spec(digits), [fmt], tmp_path / "out",
                  ExportOptions(precision="int8", calib_data=str(bad), calib_samples=64))
    assert r.error is None and not r.ok
    d = load_manifest(r.artifact).diagnosis
    assert d == r.diagnosis and d["compared"] > 10 and d["pictures"] == 4, d
    assert d["first"][0]["module"] == "conv1.0" and d["first"][0]["op"] in ("Conv", "Convolution"), d["first"]
    assert all(row["cosine"] < d["cosine_gate"] for row in d["first"])
    assert "first departs at conv1.0 (Conv" in diagnosis_line(d)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_failed_fp32_is_compared_with_eager_layer_by_layer(tmp_path, monkeypatch, fmt):
    """An fp32 graph that departs from PyTorch (here: one conv's weights negated in the ONNX graph, as a
    wrong translation would) is compared with eager PyTorch tensor by tensor, through the names the
    dynamo exporter gives every tensor, and the first departure is the block that conv belongs to."""
    import importlib

    import onnx.numpy_helper as nh
    from autotimm_deploy.exporter.cli import diagnosis_line
    from autotimm_deploy.exporter.core.spec import ModelSpec

    reason = get_format(fmt).unavailable_reason()
    if reason:
        pytest.skip(reason)
    module = importlib.import_module(f"autotimm_deploy.exporter.formats.{fmt}")
    real = module.fp32_proto

    def mistranslated(ctx):
        proto, info = real(ctx)
        (w,) = [t for t in proto.graph.initializer if t.name.endswith("layer2.0.downsample.1.weight")]
        w.CopyFrom(nh.from_array(-nh.to_array(w), w.name))
        return proto, info

    monkeypatch.setattr(module, "fp32_proto", mistranslated)
    (r,) = export(ModelSpec("test_resnet", img_size=(64, 64), num_classes=10), [fmt], tmp_path, ExportOptions())
    assert r.error is None and not r.ok
    d = load_manifest(r.artifact).diagnosis
    assert d["against"].startswith("eager PyTorch") and d["compared"] > 20, d
    assert d["first"][0]["module"].startswith("layer2.0.downsample"), d["first"]
    assert d["first"][0]["cosine"] < -0.99  # negated
    assert "first departs at layer2.0.downsample" in diagnosis_line(d)
