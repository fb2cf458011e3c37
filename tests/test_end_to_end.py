"""End-to-end parity for AutoTimm checkpoints (raw non-square pictures through AutoTimm's own eval
transform, predict() and geometry against our preprocessing, the artifact and our answers; its
passing answers are checked in tests/test_autotimm.py): the check catches a pipeline that drifts
from AutoTimm's (the stretch we used to apply to detectors)."""

from __future__ import annotations

import numpy as np
import pytest
from autotimm_deploy.exporter.inputs.answers import Answer
from autotimm_deploy.exporter.models.autotimm import spec_from_checkpoint
from autotimm_deploy.exporter.pipeline import export

pytest.importorskip("autotimm")
from autotimm_models import SIZE, make_checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("e2e"), names=("fcos", "fcn"))


def test_a_drifting_pipeline_fails_end_to_end(checkpoints, tmp_path, monkeypatch):
    """Our side stretched with PIL (what we did before AutoTimm's letterbox): tensor parity still
    passes, the answers on real pictures do not, and the fp32 artifact fails."""
    from autotimm_deploy.exporter import end_to_end
    from autotimm_deploy.exporter.inputs.preprocess import prepare

    def stretched(img, prep):
        return prepare(img, {**prep, "resize": "stretch", "library": "pil"})

    monkeypatch.setattr(end_to_end, "prepare", stretched)
    spec = spec_from_checkpoint(checkpoints["fcos"], img_size=(SIZE, SIZE))
    (r,) = export(spec, ["onnx"], tmp_path)
    e2e = r.parity.end_to_end
    assert e2e["verdict"] == "fail" and not r.ok
    assert all(f.startswith("end to end") for f in r.parity.failures)  # the tensors themselves agreed
    assert any(f.startswith("end to end: coffee") for f in r.parity.failures)
    assert sum(p["matched"] for p in e2e["pictures"]) < sum(p["reference"] for p in e2e["pictures"])


def test_overridden_preprocessing_is_not_compared(checkpoints, tmp_path):
    spec = spec_from_checkpoint(checkpoints["fcn"], img_size=(SIZE, SIZE), preprocess={"resize": "letterbox"})
    (r,) = export(spec, ["onnx"], tmp_path)
    assert r.ok and r.parity.end_to_end["verdict"] == "not run" and "overridden" in r.parity.end_to_end["reason"]


def test_a_non_square_artifact_is_not_held_to_square_references(checkpoints, tmp_path):
    """AutoTimm's eval transforms take one image_size (square pictures): a 64x96 artifact passes its
    tensor parity against predict() and says why the end-to-end check did not run, not a failure."""
    spec = spec_from_checkpoint(checkpoints["fcn"], img_size=(SIZE, SIZE + 32))
    (r,) = export(spec, ["onnx"], tmp_path)
    assert r.ok, r.parity.failures
    assert r.parity.end_to_end["verdict"] == "not run" and "64x96" in r.parity.end_to_end["reason"]


def test_only_near_ties_at_the_edge_may_go_unmatched():
    """A detection may be missing on one side only where a near tie decides what makes the cut
    (within 0.02 of the lowest score kept); a missing confident one is a real difference."""
    from pathlib import Path

    from autotimm_deploy.exporter.end_to_end import _passed, compare

    def answer(*dets):
        a = Answer(Path("p.jpg"), 100, 100, "detection")
        a.detections = [{"box": box, "score": score, "label": 0} for box, score in dets]
        return a

    ref = answer(([0, 0, 10, 10], 0.9), ([20, 20, 30, 30], 0.3), ([50, 50, 60, 60], 0.101))
    edge = compare(ref, answer(([0, 0, 10, 10], 0.9), ([20, 20, 30, 30], 0.3), ([70, 70, 80, 80], 0.1)))
    assert (edge["matched"], edge["displaced"]) == (2, 2) and _passed(edge)
    real = compare(ref, answer(([0, 0, 10, 10], 0.9), ([70, 70, 80, 80], 0.3), ([50, 50, 60, 60], 0.101)))
    assert (real["matched"], real["displaced"]) == (2, 0) and not _passed(real)
    # with the model's cut known: near its threshold, or the last of a full list, only
    ours = answer(([0, 0, 10, 10], 0.9), ([20, 20, 30, 30], 0.3), ([70, 70, 80, 80], 0.1))
    assert _passed(compare(ref, ours, (0.09, 100))) and _passed(compare(ref, ours, (0.0, 3)))
    assert not _passed(compare(ref, ours, (0.05, 100)))  # 0.1 is not near a 0.05 threshold


def test_no_detection_anywhere_is_not_a_pass():
    """Nothing detected on any picture, on either side: the check compared nothing and says so,
    rather than passing; a detection on one side alone still fails."""
    from pathlib import Path

    from autotimm_deploy.exporter.end_to_end import _report, _row

    def rows(*counts):
        out = []
        for k, n in enumerate(counts):
            ref = Answer(Path(f"p{k}.jpg"), 100, 100, "detection")
            ours = Answer(Path(f"p{k}.jpg"), 100, 100, "detection")
            ours.detections = [{"box": [0, 0, 10, 10], "score": 0.9, "label": 0}] * n
            out.append(_row(f"p{k}", np.zeros((100, 100, 3), np.uint8), ref, ours, (0.05, 100)))
        return _report(out, "AutoTimm", "AutoTimm's")

    empty = rows(0, 0)
    assert empty["verdict"] == "not run" and "nothing to compare" in empty["reason"]
    assert rows(0, 1)["verdict"] == "fail"  # 0.9 is far above the 0.05 threshold: not a near tie
