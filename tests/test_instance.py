"""Instance segmentation: detector + prototype masks, on a CNN and a ViT backbone, every format."""

import numpy as np
import pytest
import torch
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.models.instance import MASK_STRIDE, PROTOTYPES
from autotimm_deploy.exporter.parity import compare_detections, detection_failures
from autotimm_deploy.exporter.pipeline import export

HEAD = {"fpn_channels": 64, "max_detections": 15}
SPECS = {
    "test_resnet": ModelSpec("test_resnet", task="instance-segmentation", num_classes=5, img_size=(128, 128), head=HEAD),
    "test_vit": ModelSpec("test_vit", task="instance-segmentation", num_classes=5, img_size=(128, 128),
                          head={**HEAD, "depthwise": True}),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_instance_exports_with_mask_parity(name, tmp_path):
    results = export(SPECS[name], ["onnx", "torchscript", "pt2"], tmp_path)
    for r in results:
        assert r.ok, (r.format, r.error, r.parity and r.parity.failures)
        d = r.parity.metrics["detections"]
        assert d["ref_detections"] > 0 and d["match_rate"] == 1.0
        assert d["mask_iou"] > 0.999 and d["min_mask_iou"] > 0.99
        m = load_manifest(r.artifact)
        assert [o.name for o in m.outputs] == ["boxes", "scores", "labels", "num_detections", "masks"]
        assert m.outputs[4].shape == ["batch", 15, 128 // MASK_STRIDE, 128 // MASK_STRIDE]
    assert results[0].artifact.name == f"{name}-inst.onnx"


def test_masks_live_inside_their_boxes():
    model = build_model(SPECS["test_resnet"])
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 128, 128), dtype=np.float32))
    with torch.no_grad():
        boxes, scores, labels, count, masks = model(x)
    assert model.build_info["mask_prototypes"] == PROTOTYPES
    for b in range(2):
        n = int(count[b])
        assert 0 < n <= 15 and (masks[b, n:] == 0).all()  # padded detections have empty masks
        centres = (torch.arange(32) + 0.5) * MASK_STRIDE
        for i in range(n):
            x1, y1, x2, y2 = boxes[b, i].tolist()
            inside = ((centres[:, None] >= y1) & (centres[:, None] < y2)) & ((centres[None] >= x1) & (centres[None] < x2))
            assert (masks[b, i][~inside] == 0).all()
            assert ((masks[b, i][inside] >= 0) & (masks[b, i][inside] <= 1)).all()
        fg = masks[b, :n] > 0.5
        assert 0 < fg.sum() < (masks[b, :n] > 0).sum()  # masks are not simply their boxes


def test_mask_iou_metric_and_gate():
    ref = {"boxes": np.array([[[0, 0, 64, 64]]], np.float32), "scores": np.array([[0.9]]),
           "labels": np.array([[1]]), "num_detections": np.array([1]),
           "masks": np.zeros((1, 1, 16, 16), np.float32)}
    ref["masks"][0, 0, :8, :8] = 0.9
    out = {k: v.copy() for k, v in ref.items()}
    assert compare_detections(ref, out)["mask_iou"] == 1.0
    out["masks"][0, 0, :8, 4:8] = 0.1  # half the mask lost
    m = compare_detections(ref, out)
    assert m["mask_iou"] == pytest.approx(0.5)
    assert any("mask_iou" in f for f in detection_failures(m, "fp32"))


def test_instance_rejects_detection_only_options():
    with pytest.raises(UserError, match="raw"):
        build_model(SPECS["test_resnet"].replace(head={**HEAD, "raw": True}))
    with pytest.raises(UserError, match="divisible"):
        build_model(SPECS["test_resnet"].replace(img_size=(96, 96)))
