"""Semantic segmentation (FCN, DeepLabV3+) on a CNN and a transformer backbone, every CPU format."""

import numpy as np
import pytest
import torch
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.parity import TOLERANCES, compare
from autotimm_deploy.exporter.pipeline import export

CASES = {
    "resnet-fcn": ModelSpec("test_resnet", task="semantic-segmentation", num_classes=5, img_size=(64, 96),
                              head={"head": "fcn", "argmax": True}),
    "swin-deeplabv3plus": ModelSpec("swin_tiny_patch4_window7_224", task="semantic-segmentation", num_classes=4,
                                    img_size=(64, 64), head={"head": "deeplabv3plus"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_segmentation_exports_with_task_parity(case, tmp_path):
    spec = CASES[case]
    # swin (28 M parameters) through ONNX only: the PyTorch formats of a dense head are the resnet case's
    results = export(spec, ["onnx"] if case.startswith("swin") else ["onnx", "torchscript", "pt2"], tmp_path)
    for r in results:
        assert r.ok, (r.format, r.error, r.parity and r.parity.failures)
        logits = r.parity.metrics["logits"]
        assert logits["pixel_agreement"] == 1.0 and logits["max_rel"] < 1e-4
        m = load_manifest(r.artifact)
        h, w = spec.img_size
        assert m.outputs[0].shape == ["batch", spec.num_classes, h, w]
        if spec.head.get("argmax"):
            assert m.outputs[1].name == "mask" and m.outputs[1].shape == ["batch", h, w]
            assert m.outputs[1].dtype == "int64" and r.parity.metrics["mask"]["agreement"] == 1.0
    assert results[0].artifact.name == f"{spec.model}-{spec.head['head']}.onnx"


def test_swin_nhwc_features_are_normalised():
    m = build_model(CASES["swin-deeplabv3plus"])
    assert m.backbone.nhwc is True
    feats = m.backbone(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == m.backbone.channels == [96, 192, 384, 768]


def test_resnet50_heads_near_the_seed_param_counts():
    counts = {h: build_model(ModelSpec("resnet50", task="semantic-segmentation", img_size=(64, 64),
                                       head={"head": h})).build_info["params"] / 1e6 for h in ("fcn", "deeplabv3plus")}
    assert counts["fcn"] == pytest.approx(26, abs=0.5)  # seed VOC table: 26 M
    assert counts["deeplabv3plus"] == pytest.approx(28, abs=1.5)  # seed VOC table: 28 M


def test_dense_metrics():
    tol = TOLERANCES["fp32"]
    ref = np.zeros((1, 3, 2, 2))
    ref[0, 0] = 5.0  # class 0 wins everywhere by a clear margin
    out = ref.copy()
    assert compare(ref, out, tol)["pixel_agreement"] == 1.0
    out[0, 2, 0, 0] = 9.0  # one pixel flips to class 2
    assert compare(ref, out, tol)["pixel_agreement"] == 0.75
    mask = np.array([[1, 2], [3, 4]])
    assert compare(mask, mask.copy(), tol) == {"kind": "exact", "agreement": 1.0}
    assert compare(mask, np.array([[1, 2], [3, 0]]), tol) == {"kind": "exact", "agreement": 0.75}


def test_backbone_levels_are_normalised(monkeypatch):
    m = build_model(ModelSpec("levit_128s", task="semantic-segmentation", img_size=(64, 64), num_classes=3))
    assert len(m.backbone.channels) == 3  # levit has three levels; the head takes what there is
    assert m(torch.zeros(1, 3, 64, 64))[0].shape == (1, 3, 64, 64)

    import autotimm_deploy.exporter.models.features as features

    def no_features(spec, **kw):
        raise UserError(f"could not build {spec.model}: features_only not implemented for this model")

    monkeypatch.setattr(features, "create_timm_model", no_features)
    with pytest.raises(UserError, match="resnet18 cannot serve as a semantic-segmentation backbone: it gives no"):
        build_model(ModelSpec("resnet18", task="semantic-segmentation"))
