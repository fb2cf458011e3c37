"""fp32 parity where eager fp32 itself is off: judged against float64 (exporter/parity_exact.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from autotimm_deploy.exporter.core.results import Verdict
from autotimm_deploy.exporter.models import from_module
from autotimm_deploy.exporter.parity import verify


class Cancelling(torch.nn.Module):
    """Features shifted by 1e5 and back: fp32 keeps about 1/128 of a unit there, float64 all of it,
    so eager fp32 is visibly off the exact answer (an ill-conditioned model, like fbnetv3_d's)."""

    def __init__(self, shift: float = 1e5):
        super().__init__()
        self.shift = shift
        self.proj = torch.nn.Linear(3, 6)

    def forward(self, x):
        f = x.mean((2, 3)) * 0.01
        return self.proj((f + self.shift) - self.shift) * 100


class Session:
    """A stand-in runtime session whose answers come from ``answer(x)``."""

    name, device = "fake", "cpu"
    inputs = [SimpleNamespace(name="input")]

    def __init__(self, answer):
        self.answer = answer

    def batch_range(self):
        return 1, None

    def infer(self, feed):
        return {"logits": self.answer(feed["input"]).astype(np.float32)}


def _model(shift: float):
    torch.manual_seed(0)
    return from_module(Cancelling(shift), "cancelling", 32)


def _run(model, dtype):
    inner = model.module.eval()
    exact = Cancelling(inner.shift).to(dtype)
    exact.load_state_dict(inner.state_dict())
    return lambda x: exact(torch.from_numpy(x).to(dtype)).detach().double().numpy()


def test_an_artifact_nearer_the_exact_answer_than_eager_passes():
    model = _model(1e5)
    report = verify(model, Session(_run(model, torch.float64)))
    assert report.verdict == Verdict.PASS, report.failures
    exact = report.exact
    assert exact["verdict"] == "pass" and exact["eager_vs_float64"]["logits"]["max_rel"] > 1e-3
    assert exact["artifact_vs_float64"]["logits"]["max_rel"] < 1e-6
    assert any("judged against float64" in n for n in report.notes)


def test_a_wrong_artifact_still_fails_against_float64():
    model = _model(1e5)
    exact = _run(model, torch.float64)
    report = verify(model, Session(lambda x: exact(x)[:, ::-1].copy()))  # classes reversed
    assert report.verdict == Verdict.FAIL and report.exact["verdict"] == "fail"
    assert any(f.startswith("logits vs float64") for f in report.exact["failures"])


def test_a_well_conditioned_model_keeps_the_plain_tolerance():
    model = _model(0.0)  # no cancellation: eager fp32 is within ~1e-7 of float64
    exact = _run(model, torch.float64)
    report = verify(model, Session(lambda x: exact(x) * 1.01))  # 1 % off
    assert report.verdict == Verdict.FAIL and report.exact is None  # eager holds the gate against float64
    assert verify(model, Session(_run(model, torch.float32))).exact is None  # it passed: nothing to judge


class Noisy(Cancelling):
    """Cancelling's logits plus noise: eager differs from itself, so from float64 as much as any artifact."""

    def forward(self, x):
        y = super().forward(x)
        return y + torch.randn_like(y)


class Doubling(torch.nn.Module):
    """Writes its input in place before using it."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 6)

    def forward(self, x):
        x.mul_(2)
        return self.proj(x.mean((2, 3)))


def test_a_model_that_is_not_reproducible_fails_and_says_why():
    """The float64 judgement would pass random outputs (eager's own error is as large as any): a model
    whose two eager runs on the same pictures differ fails, naming that."""
    torch.manual_seed(0)
    model = from_module(Noisy(1e5), "noisy", 32)
    report = verify(model, Session(lambda x: np.zeros((x.shape[0], 6))))
    assert report.verdict == Verdict.FAIL and report.exact is None
    assert any("eager itself is not reproducible" in f for f in report.failures)


def test_a_model_that_writes_its_input_is_compared_on_the_same_pictures():
    """Eager runs on a copy of the pictures: the artifact gets them as they were, not doubled."""
    torch.manual_seed(0)
    model = from_module(Doubling(), "doubling", 32)
    inner = Doubling()
    inner.load_state_dict(model.module.state_dict())
    report = verify(model, Session(lambda x: inner(torch.from_numpy(x.copy())).detach().numpy()))
    assert report.verdict == Verdict.PASS, report.failures
