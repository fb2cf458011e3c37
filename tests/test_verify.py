"""Parity metrics on synthetic tensors with known answers, and a broken artifact caught end to end."""

import numpy as np
import pytest
import torch
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.parity import TOLERANCES, compare, failures, verify
from autotimm_deploy.profiler.runtimes.base import Session

FP32 = TOLERANCES["fp32"]


def test_exact_match():
    ref = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -4.0]], dtype=np.float32)
    m = compare(ref, ref.copy(), FP32)
    assert m["max_abs"] == 0 and m["max_rel"] == 0
    assert m["cosine"] == pytest.approx(1.0)
    assert m["top1_agreement"] == 1.0 and m["top1_rows"] == 2
    assert failures(m, "fp32") == []


def test_known_error_values():
    ref = np.array([[1.0, -2.0, 4.0], [0.5, 0.0, -4.0]])
    out = ref.copy()
    out[0, 2] += 0.01
    m = compare(ref, out, FP32)
    assert m["max_abs"] == pytest.approx(0.01)
    assert m["max_rel"] == pytest.approx(0.01 / 4.0)
    assert failures(m, "fp32") == [f"max_rel {0.0025:.3g} > 0.001"]


def test_zero_reference_guards_relative_metrics():
    ref = np.zeros((2, 4))
    m = compare(ref, ref.copy(), FP32)
    assert m["max_rel"] is None and m["cosine"] is None
    assert failures(m, "fp32") == []
    m = compare(ref, ref + 1e-3, FP32)
    assert failures(m, "fp32") == ["max_abs 0.001 > 0.0001 (zero reference)"]


def test_constant_reference_is_flagged_and_bias_cannot_hide_errors():
    bias = np.array([10.0, -3.0, 7.0])
    ref = np.stack([bias, bias, bias])
    assert compare(ref, ref.copy(), FP32)["spread"] == 0.0
    # a large bias with a small input-dependent part: the artifact gets the part wrong (sign flipped)
    rng = np.random.default_rng(0)
    part = rng.standard_normal((4, 3)) * 1e-2
    ref = bias + part
    out = bias - part
    m = compare(ref, out, FP32)
    assert m["cosine"] > 0.9999  # cosine alone would pass
    assert m["delta_cosine"] == pytest.approx(-1.0)
    assert any(f.startswith("delta_cosine") for f in failures(m, "fp32"))


def test_near_ties_are_excluded_from_top1():
    ref = np.array([[1.0, 1.0 + 1e-7, 0.0], [5.0, 0.0, 0.0]])
    out = np.array([[1.0 + 1e-7, 1.0, 0.0], [5.0, 0.0, 0.0]])
    m = compare(ref, out, FP32)
    assert m["top1_rows"] == 1 and m["top1_agreement"] == 1.0
    flipped = np.array([[1.0, 1.0, 0.0], [0.0, 5.0, 0.0]])
    m = compare(ref, flipped, FP32)
    assert m["top1_agreement"] == 0.0


def test_shape_and_nan_are_errors():
    assert "error" in compare(np.zeros((2, 3)), np.zeros((2, 4)), FP32)
    assert compare(np.ones((2, 3)), np.full((2, 3), np.nan), FP32)["error"].startswith("artifact produced NaN")


class _Scaled(Session):
    """A fake runtime that runs the eager model and scales its output: a subtly broken artifact."""

    name = "fake"

    def __init__(self, model, factor):
        from autotimm_deploy.exporter.core.manifest import TensorSig

        super().__init__(None)
        self.model, self.factor = model, factor
        self.inputs = [TensorSig("input", "float32", ["batch", 3, *model.spec.img_size])]
        self.outputs = [TensorSig("logits", "float32", ["batch", 10])]

    def prepare(self, arrays):
        return torch.from_numpy(arrays["input"])

    def run(self, x):
        with torch.no_grad():
            return self.model(x)[0] * self.factor

    def fetch(self, out):
        return {"logits": out.numpy()}


def test_verify_catches_a_broken_artifact_and_passes_a_good_one():
    model = build_model(ModelSpec("test_resnet", num_classes=10, img_size=(64, 64)))
    good = verify(model, _Scaled(model, 1.0))
    assert good.verdict == "pass" and good.batches == [1, 4]
    assert set(good.per_batch) == {"1", "4"}
    bad = verify(model, _Scaled(model, 1.01))
    assert bad.verdict == "fail"
    assert bad.failures[0].startswith("logits: max_rel")


def test_eager_reference_runs_once_per_model_state_and_input():
    """Formats of one export share the eager outputs (and the signature forward seeds them); a model
    changed in place is run again, never compared against its old outputs."""
    import copy

    from autotimm_deploy.exporter.parity import keep_reference, parity_pictures

    model = build_model(ModelSpec("test_resnet", num_classes=10, img_size=(64, 64)))
    session = _Scaled(copy.deepcopy(model), 1.0)  # the artifact: the model as it was
    seen = []
    model.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    x = parity_pictures(model.preprocessing, 4)
    with torch.no_grad():
        keep_reference(model, x, model(torch.from_numpy(x)))
    assert seen == [4]
    assert verify(model, session).verdict == "pass" and seen == [4, 1]  # batch 4 kept, batch 1 run
    assert verify(model, session).verdict == "pass" and seen == [4, 1]  # a second format: nothing run
    with torch.no_grad():
        list(model.parameters())[-1].add_(1.0)  # changed in place: outputs differ from the artifact's
    report = verify(model, session)
    # run again; failed, once more at batch 1 (is eager reproducible?), then in float64 on a copy, hooks
    # and all (parity_exact), which eager fp32 matches: the gate against eager decides
    assert report.verdict == "fail" and report.exact is None and seen == [4, 1, 1, 4, 1, 1, 4]
