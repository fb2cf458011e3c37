"""--dynamic-size: symbolic input height and width for ONNX, torch.export and TensorRT profiles,
parity at two sizes, the range in the manifest, and clear refusals where the model, task or format
fixes the size."""

import numpy as np
import pytest
import torch
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.formats.dims import parse_dynamic_size
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.pipeline import export, second_size
from autotimm_deploy.profiler.artifact import open_artifact

from tests.conftest import files_under

CLS = ModelSpec("resnet18", num_classes=10, img_size=(64, 64))
SEG = ModelSpec("resnet18", task="semantic-segmentation", num_classes=5, img_size=(64, 64),
                head={"head": "fcn", "argmax": True})


def test_classifier_onnx_and_pt2_at_any_size(tmp_path):
    results = export(CLS, ["onnx", "pt2"], tmp_path, ExportOptions(dynamic_size=(48, 128)))
    for r in results:
        assert r.ok, (r.format, r.error, r.parity and r.parity.failures)
        assert r.parity.sizes == [[64, 64], [96, 128]]  # the export size and a second, non-square one
        assert set(r.parity.per_batch) == {"1@64x64", "4@64x64", "1@96x128", "4@96x128"}
        m = load_manifest(r.artifact)
        assert m.inputs[0].shape == ["batch", 3, "height", "width"] and m.outputs[0].shape == ["batch", 10]
        assert m.size == {"dynamic": True, "min": [48, 48], "opt": [64, 64], "max": [128, 128]}
        assert m.export["options"]["dynamic_size"] == [48, 128]
    # torch.export proves its shape guards over the range: 32 px gives resnet18 1x1 final features
    (bad,) = export(CLS, ["pt2"], tmp_path / "narrow", ExportOptions(dynamic_size=(32, 128)))
    assert not bad.ok and "a larger MIN usually helps" in bad.error
    onnx = results[0].artifact
    with open_artifact(onnx, manifest=load_manifest(onnx)) as s:
        assert s.input_shapes(2) == {"input": (2, 3, 64, 64)}  # the profiler's default: the export size
        x = np.random.default_rng(0).standard_normal((2, 3, 120, 72), dtype=np.float32)  # never seen
        with torch.no_grad():
            ref = build_model(CLS)(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(s.infer({"input": x})["logits"], ref, rtol=1e-3, atol=1e-4)


def test_segmentation_outputs_follow_the_input_size(tmp_path):
    (r,) = export(SEG, ["onnx"], tmp_path, ExportOptions(dynamic_size=(0, 0)))  # auto range
    assert r.ok, (r.error, r.parity and r.parity.failures)
    m = load_manifest(r.artifact)
    assert m.size["min"] == [64, 64] and m.size["max"] == [128, 128]
    assert m.outputs[0].shape == ["batch", 5, "height", "width"]
    assert m.outputs[1].shape == ["batch", "height", "width"]
    assert r.parity.metrics["mask"]["agreement"] == 1.0


def test_second_size_rules():
    assert second_size((64, 64), 32, 128) == (32, 96)
    assert second_size((64, 64), 64, 128) == (96, 128)  # never square when the range allows
    assert second_size((224, 224), 64, 448) == (160, 256)
    assert second_size((64, 64), 64, 64) == (64, 64)  # nothing else in range
    assert second_size((96, 160), 96, 160) == (128, 96)


@pytest.mark.parametrize("spec,formats,rng,msg", [
    # a ViT whose position embedding fixes its size (test_vit itself is built with dynamic_img_size)
    (ModelSpec("vit_tiny_patch16_224", num_classes=4, img_size=(64, 64)), ["onnx"], (32, 128),
     "vit_tiny_patch16_224 cannot run at 32x32"),
    (ModelSpec("resnet18", task="detection", num_classes=3, img_size=(128, 128)), ["onnx"], (64, 256),
     "postprocessing is built for one input size (128x128)"),
    (CLS, ["onnx", "torchscript"], (32, 128), "format 'torchscript' fixes the input size"),
    (CLS, ["onnx"], (128, 256), "--dynamic-size 128:256 must contain the export size 64x64"),
], ids=["vit", "detection", "torchscript", "range"])
def test_refusals_write_nothing(tmp_path, spec, formats, rng, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        export(spec, formats, tmp_path / "o", ExportOptions(dynamic_size=rng))
    assert files_under(tmp_path / "o") == []


def test_cli_parsing(tmp_path, export_cli):
    assert parse_dynamic_size("auto") == (0, 0) and parse_dynamic_size("32:512") == (32, 512)
    for bad, msg in (("64", "MIN:MAX"), ("a:b", "MIN:MAX"), ("1:2:3", "MIN:MAX"), ("128:64", "MIN <= MAX")):
        with pytest.raises(UserError, match=msg):
            parse_dynamic_size(bad)
    r = export_cli("vit_tiny_patch16_224", "--img-size", "64", "--dynamic-size", "32:96", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "cannot run at" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_tensorrt_profiles_cover_the_range():
    from autotimm_deploy.exporter.formats.tensorrt import plan_build
    from autotimm_deploy.profiler.runtimes.onnxruntime import trt_profile_shapes

    plan = plan_build(ExportOptions(dynamic_size=(32, 128), batch_size=4), (3, 64, 64), "10.13.0")
    assert plan.profile == {"min": [1, 3, 32, 32], "opt": [4, 3, 64, 64], "max": [32, 3, 128, 128]}
    from autotimm_deploy.exporter.core.manifest import TensorSig

    shapes = trt_profile_shapes([TensorSig("input", "float32", ["batch", 3, "height", "width"])],
                                {"min": 1, "opt": 2, "max": 8},
                                size={"dynamic": True, "min": [32, 32], "opt": [64, 64], "max": [128, 128]})
    assert shapes == {"min": "input:1x3x32x32", "opt": "input:2x3x64x64", "max": "input:8x3x128x128"}


def test_stride_multiples_when_torch_export_proves_them(tmp_path):
    """test_resnet's pooled shortcuts only line up on multiples of 32: torch.export says so
    ("height = 32*_height"), the program is exported on those multiples, and the manifest says it."""
    from autotimm_deploy.exporter.formats.dims import size_multiple

    assert size_multiple(ValueError("Suggested fixes:\n  _height = Dim('_height', max=5)\n  height = 32*_height\n"
                                    "  width = 32*_width")) == 32
    assert size_multiple(ValueError("Constraints violated")) is None
    (r,) = export(ModelSpec("test_resnet", num_classes=4, img_size=(64, 64)), ["pt2"], tmp_path,
                  ExportOptions(dynamic_size=(64, 160)))
    assert r.ok, (r.error, r.parity and r.parity.failures)
    m = load_manifest(r.artifact)
    assert m.size["multiple_of"] == 32 and m.export["size_multiple"] == 32 and r.parity.sizes == [[64, 64], [96, 128]]
