"""Reduced precision held against a real accuracy: a tiny timm model trained in seconds on
scikit-learn's digits (tests/labelled_data.py), exported at fp32 / fp16 / int8 (calibrated on training
images), and every artifact scored by ``--eval`` on the held-out digits as PNG files. Parity gates
compare against eager outputs; this compares what users care about, the accuracy."""

import pytest
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.pipeline import export
from labelled_data import digits_spec


@pytest.mark.parametrize("fmt,precision", [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
                                           ("openvino", "int8"), ("openvino", "bf16")])
def test_reduced_precision_keeps_digits_accuracy(tmp_path, digits, fmt, precision):
    pytest.importorskip("openvino") if fmt == "openvino" else None
    assert digits.accuracy > 0.9  # the model really learned the task
    opts = ExportOptions(precision=precision, calib_data=str(digits.calib) if precision == "int8" else None,
                         calib_samples=64, eval_data=str(digits.folder), max_drop=1.5)
    (r,) = export(digits_spec(digits), [fmt], tmp_path, opts)
    assert r.error is None, r.error
    acc = r.accuracy
    # eager scored by --eval from the PNG files equals the accuracy computed directly on the tensors
    assert acc.eager["top1"] == pytest.approx(100 * digits.accuracy, abs=1e-6)
    assert acc.data["samples"] == len(digits.labels) and acc.data["kind"] == "image-folder"
    print(f"digits top-1 {fmt} {precision}: {acc.artifact['top1']:.2f} (eager fp32 {acc.eager['top1']:.2f})")
    assert acc.passed and r.ok, (fmt, precision, acc)
    assert load_manifest(r.artifact).accuracy.to_dict() == acc.to_dict()  # and the manifest holds it
