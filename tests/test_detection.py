"""Detection: FPN + FCOS head with decode and NMS in the graph, on a CNN and a ViT backbone."""

import numpy as np
import pytest
import torch
import torchvision
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.models.detection import batched_greedy_nms
from autotimm_deploy.exporter.parity import compare_detections
from autotimm_deploy.exporter.pipeline import export

HEAD = {"fpn_channels": 64, "max_detections": 25}
SPECS = {
    "test_resnet": ModelSpec("test_resnet", task="detection", num_classes=5, img_size=(128, 128), head=HEAD),
    "test_vit": ModelSpec("test_vit", task="detection", num_classes=5, img_size=(128, 128),
                          head={**HEAD, "depthwise": True}),  # stride-16 features: FPN resamples P3/P5
}


@pytest.mark.parametrize("name", list(SPECS))
def test_detection_exports_with_task_parity(name, tmp_path):
    spec = SPECS[name]
    results = export(spec, ["onnx", "torchscript", "pt2"], tmp_path)
    for r in results:
        assert r.ok, (r.format, r.error, r.parity and r.parity.failures)
        d = r.parity.metrics["detections"]
        assert d["match_rate"] == 1.0 and d["mean_iou"] > 0.999 and d["label_agreement"] == 1.0
        assert d["ref_detections"] > 0  # the seeded head really detects something
        m = load_manifest(r.artifact)
        assert [o.name for o in m.outputs] == ["boxes", "scores", "labels", "num_detections"]
        assert m.outputs[0].shape == ["batch", 25, 4] and m.outputs[2].dtype == "int64"
    assert results[0].artifact.name == f"{name}-det.onnx"
    import torch  # multi-output tasks keep their tuple in TorchScript

    outs = torch.jit.load(str(results[1].artifact))(torch.zeros(1, 3, *spec.img_size))
    assert isinstance(outs, tuple) and len(outs) == 4


def test_nms_in_graph_equals_torchvision_batched_nms():
    model = build_model(SPECS["test_resnet"])
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 3, 128, 128), dtype=np.float32))
    with torch.no_grad():
        boxes, scores, labels, _ = model.candidates(model.head_outputs(x))
        out_boxes, out_scores, out_labels, count = model(x)
    for b in range(3):
        keep = torchvision.ops.batched_nms(boxes[b], scores[b], labels[b], 0.6)
        keep = keep[scores[b][keep] >= 0.05][:25]
        n = len(keep)
        assert count[b].item() == n > 0
        torch.testing.assert_close(out_boxes[b, :n], boxes[b][keep], rtol=0, atol=0)
        torch.testing.assert_close(out_scores[b, :n], scores[b][keep], rtol=0, atol=0)
        assert torch.equal(out_labels[b, :n], labels[b][keep])
        assert (out_labels[b, n:] == -1).all() and (out_scores[b, n:] == 0).all()


def test_nms_thresholds_and_padding_on_known_boxes():
    boxes = torch.tensor([[[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]]], dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.01]])
    labels = torch.tensor([[0, 0, 0, 1]])
    b, s, l, n = batched_greedy_nms(boxes, scores, labels, iou_threshold=0.5, score_threshold=0.05, rounds=4)
    assert n.tolist() == [2]  # box 1 suppressed by box 0 (IoU 0.81); box 3 under the score threshold
    assert s[0].tolist() == pytest.approx([0.9, 0.7, 0, 0]) and l[0].tolist() == [0, 0, -1, -1]
    assert b[0, 1].tolist() == [20, 20, 30, 30] and b[0, 2:].abs().sum() == 0


def test_raw_outputs():
    spec = SPECS["test_resnet"].replace(head={**HEAD, "raw": True})
    m = build_model(spec)
    outs = m(torch.zeros(1, 3, 128, 128))
    assert m.output_names[:3] == ("cls_p3", "reg_p3", "ctr_p3") and len(outs) == 15
    assert outs[0].shape == (1, 5, 16, 16) and outs[-1].shape == (1, 1, 1, 1)


def test_detection_metrics():
    ref = {"boxes": np.array([[[0, 0, 10, 10], [20, 20, 40, 40]]], dtype=np.float32),
           "scores": np.array([[0.9, 0.5]]), "labels": np.array([[1, 2]]), "num_detections": np.array([2])}
    assert compare_detections(ref, ref)["match_rate"] == 1.0
    out = {k: v.copy() for k, v in ref.items()}
    out["boxes"][0, 1] = [21, 20, 40, 40]  # IoU 0.95
    out["labels"][0, 0] = 3
    out["num_detections"] = np.array([1])  # and the artifact lost the second detection's count
    m = compare_detections(ref, out)
    assert m["match_rate"] == 0.5 and m["label_agreement"] == 0.0 and m["count_agreement"] == 0.0


def test_bad_detection_sizes():
    with pytest.raises(UserError, match="must be divisible by 128"):
        build_model(ModelSpec("resnet18", task="detection", img_size=(100, 128)))


def test_summary_lines_for_every_task():
    from autotimm_deploy.exporter.core.results import ParityReport, Verdict
    from autotimm_deploy.exporter.parity import summary

    det = ParityReport(Verdict.PASS, "fp32", {"detections": {"kind": "detections", "match_rate": 1.0,
                                                             "mean_iou": 0.9999, "max_score_diff": 1e-6}})
    assert summary(det) == "pass matched=100.0% iou=0.9999 dscore=1.0e-06"
    mask = ParityReport(Verdict.FAIL, "fp32", {"mask": {"kind": "exact", "agreement": 0.5}})
    assert summary(mask) == "fail agreement=50.00%"
    assert summary(None) == "skipped"
