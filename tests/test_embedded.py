"""--embed-preprocessing: the graph takes one 8-bit picture of any size and does the manifest's
preprocessing itself, answers in the picture's pixels; parity against eager on raw pictures and
against the Python pipeline; autotimm-predict runs it; what cannot embed is refused up front."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.inputs.preprocess import prepare
from autotimm_deploy.exporter.inputs.samples import non_square_pictures
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.models.embedded import embed
from autotimm_deploy.exporter.pipeline import export

EMBED = ExportOptions(embed_preprocessing="nhwc")
DETECTOR = ModelSpec("test_resnet", task="detection", num_classes=3, img_size=(128, 128),
                     head={"fpn_channels": 16, "max_detections": 5}, preprocess={"resize": "letterbox"})


@pytest.mark.parametrize("library,resize,interpolation", [
    ("pil", "crop", "bilinear"), ("pil", "crop", "bicubic"), ("cv2", "crop", "bilinear"), ("cv2", "letterbox", "bilinear"),
    ("pil", "stretch", "bilinear"), ("pil", "stretch", "bicubic")])
def test_graph_preprocessing_matches_python_within_one_level(library, resize, interpolation):
    model = build_model(ModelSpec("test_resnet", num_classes=3, img_size=(64, 64)))
    model.preprocessing = {**model.preprocessing, "library": library, "resize": resize,
                           "interpolation": interpolation, "pad_value": [114] * 3}
    wrapped = embed(model)
    std = np.asarray(model.preprocessing["std"]).reshape(3, 1, 1)
    for name, img in non_square_pictures().items():
        x, _ = prepare(img, model.preprocessing)
        with torch.no_grad():
            ours, _ = wrapped.preprocess(torch.from_numpy(img)[None])
        levels = np.abs(ours[0].numpy() - x) * std * 255
        if interpolation == "bilinear":
            assert levels.max() <= 1.0 + 1e-3, (name, levels.max())
        else:  # Pillow >= 13 runs the vertical pass first on some sizes (exporter/models/resample.py)
            assert (levels <= 1.0 + 1e-3).mean() >= 0.99 and levels.max() <= 8.0 + 1e-3, (name, levels.max())


@pytest.mark.parametrize("spec,formats", [
    (ModelSpec("test_resnet", num_classes=5, img_size=(64, 64), class_names=("a", "b", "c", "d", "e")), ["onnx", "pt2", "openvino"]),
    (DETECTOR, ["onnx", "openvino"]),
    (ModelSpec("test_resnet", task="semantic-segmentation", num_classes=4, img_size=(64, 64)), ["onnx"]),
])
def test_exports_take_pictures_and_answer_in_their_pixels(spec, formats, tmp_path):
    from autotimm_deploy.exporter.core.manifest import load_manifest
    from autotimm_deploy.profiler.predict import predict
    from PIL import Image

    results = export(spec, formats, tmp_path, EMBED)
    for r in results:
        assert r.ok, (r.format, r.error, r.parity and r.parity.failures)
        assert r.parity.inputs.startswith("four raw non-square") and r.parity.end_to_end["verdict"] == "pass"
        m = load_manifest(r.artifact)
        assert m.inputs[0].name == "image" and m.inputs[0].dtype == "uint8"
        assert m.inputs[0].shape == [1, "height", "width", 3] and m.preprocessing["embedded"]["layout"] == "nhwc"
        assert "--embed-preprocessing nhwc" in m.export["command"]
    img = non_square_pictures()["coffee"]
    Image.fromarray(img).save(tmp_path / "coffee.png")
    (a,) = predict(results[0].artifact, [tmp_path / "coffee.png"])
    assert (a.width, a.height) == (600, 400)
    if spec.task == "detection":
        boxes = np.array([d["box"] for d in a.detections])
        assert len(boxes) and (boxes[:, [0, 2]] <= 600).all() and (boxes[:, [1, 3]] <= 400).all()
        m = load_manifest(results[0].artifact)
        assert [s.shape for s in m.outputs][0] == [1, 5, 4]
        for r in results:  # the graph's boxes are the Python pipeline's, picture by picture
            rows = r.parity.end_to_end["pictures"]
            assert r.parity.end_to_end["against"].startswith("the Python pipeline"), r.format
            assert all(p["matched"] == p["reference"] > 0 for p in rows) and min(p["min_iou"] for p in rows) > 0.99
    elif spec.task == "semantic-segmentation":
        assert a.mask.shape == (400, 600)
        assert load_manifest(results[0].artifact).outputs[-1].shape == [1, "height", "width"]
    else:
        assert a.top[0]["name"] in "abcde"


def test_what_cannot_embed_is_refused_before_any_work(tmp_path):
    spec = ModelSpec("test_resnet", num_classes=3, img_size=(64, 64))
    for formats, options, message in [
        (["torchscript"], EMBED, "format 'torchscript' cannot take pictures of any size"),
        (["onnx"], ExportOptions(embed_preprocessing="nhwc", precision="int8", calib_random=True), "--int8"),
        (["onnx"], ExportOptions(embed_preprocessing="nhwc", dynamic_size=(64, 128)), "--dynamic-size"),
    ]:
        with pytest.raises(UserError, match=message):
            export(spec, formats, tmp_path / "never", options)
    assert not (tmp_path / "never").exists()
    with pytest.raises(UserError, match="--raw"):
        export(ModelSpec("test_resnet", task="detection", num_classes=3, img_size=(128, 128), head={"raw": True}),
               ["onnx"], tmp_path / "never", EMBED)


def test_cli_flag(tmp_path):
    from conftest import call_cli

    r = call_cli("autotimm_deploy.exporter.cli", "test_resnet", "--num-classes", "3", "--img-size", "64", "-f", "onnx",
                 "--embed-preprocessing", "nchw", "-o", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["results"][0]
    assert out["ok"] and "--embed-preprocessing nchw" in out["command"]
