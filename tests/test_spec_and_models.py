import json

import pytest
import torch
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.spec import ModelSpec, parse_img_size
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.models.weights import load_checkpoint, seed_zero_head


def test_parse_img_size():
    assert parse_img_size("224") == (224, 224)
    assert parse_img_size("96,128") == (96, 128)
    assert parse_img_size("96x128") == (96, 128)
    for bad in ("0", "a", "1,2,3", "-5", ""):
        with pytest.raises(UserError):
            parse_img_size(bad)


def test_spec_roundtrip_and_validation():
    s = ModelSpec("resnet18", num_classes=10, img_size=(64, 96))
    assert ModelSpec.from_dict(s.to_dict()) == s
    with pytest.raises(UserError):
        ModelSpec("resnet18", task="pose")
    with pytest.raises(UserError):
        ModelSpec("resnet18", num_classes=0)
    with pytest.raises(UserError):
        ModelSpec.from_dict({"model": "resnet18", "bogus": 1})


def test_build_fills_defaults_from_timm():
    m = build_model(ModelSpec("test_resnet"))
    assert m.spec.img_size == (160, 160) and m.spec.num_classes == 1000
    assert m.preprocessing["mean"] == [0.5, 0.5, 0.5]
    assert m.build_info["params"] > 0


@pytest.mark.parametrize("name,size", [("test_vit", (64, 96)), ("resnet18", (72, 40)), ("mobilenetv3_small_100", (64, 64))])
def test_build_non_default_size_and_channels(name, size):
    m = build_model(ModelSpec(name, num_classes=7, img_size=size, in_chans=1))
    (logits,) = m(torch.zeros(2, 1, *size))
    assert logits.shape == (2, 7)
    assert m.output_names == ("logits",)
    assert len(m.preprocessing["mean"]) == 1


def test_unknown_model_suggests_names():
    with pytest.raises(UserError, match="did you mean.*resnet50"):
        build_model(ModelSpec("resnet5"))


def test_impossible_size_is_one_line():
    with pytest.raises(UserError, match="cannot run at 50x50.*divisible.*built for 160x160: try --img-size 160,160"):
        build_model(ModelSpec("test_vit", img_size=(50, 50)))


def _net():
    import timm

    return timm.create_model("resnet18", num_classes=5, pretrained=False).eval()


@pytest.mark.parametrize("suffix,wrap", [(".pth", "module."), (".pt", "model."), (".bin", ""), (".safetensors", "")])
def test_checkpoint_loading_with_prefixes(tmp_path, suffix, wrap):
    torch.manual_seed(123)
    src = _net()
    sd = {wrap + k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd, "epoch": 3} if wrap == "model." else sd, str(path))
    m = build_model(ModelSpec("resnet18", num_classes=5, img_size=(64, 64), weights="checkpoint", checkpoint=str(path)))
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(m(x)[0], src(x))


def test_checkpoint_mismatch_names_keys_and_hints(tmp_path):
    sd = _net().state_dict()
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with pytest.raises(UserError, match=r"fc.weight \(5, 512\) vs model \(1000, 512\).*--num-classes 5"):
        build_model(ModelSpec("resnet18", img_size=(64, 64), weights="checkpoint", checkpoint=str(path)))
    sd.pop("fc.bias")
    sd["extra.thing"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(UserError, match=r"1 missing \(e.g. fc.bias\); 1 unexpected \(e.g. extra.thing\)"):
        load_checkpoint(_net(), path)


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(_net(), path)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(_net(), tmp_path / "missing.safetensors")
    torch.save({"a": 1}, path)
    with pytest.raises(UserError, match="state dict of tensors"):
        load_checkpoint(_net(), path)


def test_zero_head_is_reseeded_only_when_zero():
    net = _net()
    assert seed_zero_head(net, 0) is False
    torch.nn.init.zeros_(net.fc.weight)
    assert seed_zero_head(net, 0) is True
    assert net.fc.weight.abs().max() > 0
    before = net.fc.weight.clone()
    assert seed_zero_head(net, 0) is False
    torch.testing.assert_close(net.fc.weight, before)


def test_bring_your_own_module_with_its_postprocessing(tmp_path):
    """A user's nn.Module (no timm, its own postprocessing, dict outputs) through export(model=...)."""
    import torch
    from autotimm_deploy.exporter import export, from_module

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x):
            logits = self.fc(self.conv(x).relu().mean((2, 3)))
            return {"logits": logits, "top": logits.argmax(1), "probs": logits.softmax(1)}

    torch.manual_seed(0)
    model = from_module(Net(), "my-net", 64, output_names=("logits", "probs", "top"),
                        preprocessing={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    results = export(model.spec, ["onnx", "torchscript"], tmp_path, model=model)
    assert [r.artifact.name for r in results] == ["my-net.onnx", "my-net.pt"]
    assert all(r.ok for r in results), [r.parity.failures for r in results]
    manifest = json.loads(results[0].manifest.read_text())
    assert manifest["task_outputs"] == ["logits", "probs", "top"] and manifest["spec"]["weights"] == "module"
    assert manifest["preprocessing"]["mean"] == [0.5] * 3 and manifest["model"]["architecture"] == "custom nn.Module"
    with pytest.raises(UserError, match="returns 1 output"):
        from_module(torch.nn.Conv2d(3, 4, 3), "conv", 64, output_names=("a", "b"))
    with pytest.raises(UserError, match="cannot run on a"):
        from_module(Net(), "my-net", 64, in_chans=1)


@pytest.mark.parametrize("kwargs,says", [
    ({"task": "detection"}, "as a detection model needs an output boxes [batch, N, 4] (what its answers read), got "
                            "logits [2, 5]"),
    ({"task": "semantic-segmentation"}, "needs an output logits [batch, C, H, W] or mask [batch, H, W]"),
    ({"num_classes": 7}, "scores 5 classes, not num_classes=7"),
    ({"output_names": ("input",)}, "a graph's input has that name"),
    ({"img_size": 64.5}, "--img-size takes two integer sides (height, width), got 64.5"),
    ({"output_names": ("out",), "task": "classification"}, "needs an output logits [batch, C] or probs [batch, C]"),
])
def test_from_module_holds_outputs_to_the_task_given(kwargs, says):
    """What the answers read, by name and rank; the classes counted agree; names and sizes that are no such."""
    import torch
    from autotimm_deploy.exporter import from_module

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(UserError) as e:
        from_module(net, "net", **{"img_size": 32, **kwargs})
    assert says in str(e.value)


def test_from_module_reads_classes_and_leaves_a_module_without_a_task_unchecked():
    import torch
    from autotimm_deploy.exporter import from_module

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    assert from_module(net, "net", 32, output_names="logits").spec.num_classes == 5  # a plain string is one name
    feature_map = torch.nn.Conv2d(3, 4, 1)  # no task given: any outputs pass (a feature extractor)
    assert from_module(feature_map, "features", 32).spec.num_classes is None


def test_numpy_numbers_become_plain_in_the_spec():
    """numpy's integers and whole floats are taken as the numbers they are, and kept as Python's (the
    manifest is JSON); a float side with a fraction is not a size."""
    import numpy as np

    spec = ModelSpec("test_resnet", task="detection", num_classes=np.int64(3), img_size=np.array([64, 96]),
                     head={"fpn_channels": np.int64(16)})
    assert json.loads(json.dumps(spec.to_dict()))["head"] == {"fpn_channels": 16}
    assert spec.img_size == (64, 96) and type(spec.num_classes) is int
    assert ModelSpec("test_resnet", img_size=(64.0, 64.0)).img_size == (64, 64)
    with pytest.raises(UserError, match="takes two integer sides"):
        ModelSpec("test_resnet", img_size=(64.5, 64))
    with pytest.raises(UserError, match="--in-chans takes an integer, got None"):
        ModelSpec("test_resnet", in_chans=None)


def test_export_without_formats_is_refused(tmp_path):
    from autotimm_deploy.exporter import export

    with pytest.raises(UserError, match="no formats to export"):
        export(ModelSpec("test_resnet", img_size=(32, 32)), [], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_from_module_dtypes_and_errors_past_the_zero_batch(tmp_path):
    """bfloat16 and complex outputs are refused up front; a forward that fails only on real pictures
    (from_module ran zeros) is one line from export, with nothing written."""
    import torch
    from autotimm_deploy.exporter import export, from_module

    class Cast(torch.nn.Module):
        def __init__(self, dtype):
            super().__init__()
            self.dtype = dtype

        def forward(self, x):
            return x.mean((2, 3)).to(self.dtype)

    for dtype, fix in ((torch.bfloat16, "as float32"), (torch.complex64, "real and imaginary parts")):
        with pytest.raises(UserError, match=f"output logits is {str(dtype)[6:]}.*{fix}"):
            from_module(Cast(dtype), "cast", 32)

    class PicksyAboutPictures(torch.nn.Module):
        def forward(self, x):
            if x.abs().sum() > 0:
                raise ValueError("no pictures, please")
            return x.mean((2, 3))

    model = from_module(PicksyAboutPictures(), "picky", 32)
    with pytest.raises(UserError, match=r"picky failed on a batch of the parity pictures \[4, 3, 32, 32\]: ValueError: no pictures, please"):
        export(model.spec, ["onnx"], tmp_path / "out", model=model)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_relative_checkpoint_path_is_kept_absolute(tmp_path, monkeypatch):
    """The manifest names the checkpoint wherever it is read from, not relative to where export ran."""
    monkeypatch.chdir(tmp_path)
    spec = ModelSpec("resnet18", weights="checkpoint", checkpoint="runs/best.ckpt")
    assert spec.checkpoint == str(tmp_path / "runs" / "best.ckpt")
