"""Reduced precision held against a real accuracy: a tiny timm model trained in seconds on
scikit-learn's digits, saved as a checkpoint, exported at fp32 / fp16 / int8 (calibrated on training
images), and every artifact scored on the held-out digits. Parity gates compare against eager
outputs; this compares what users care about, the accuracy."""

import numpy as np
import pytest
import torch
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.runtimes import open_session

SIZE = 32


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(checkpoint path, calibration .npy, test images, test labels, eager accuracy)."""
    import timm
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.from_numpy(x.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0)
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # timm's default preprocessing
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x - mean) / std
    y = torch.from_numpy(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _epoch in range(6):
        for idx in train[torch.randperm(len(train), generator=torch.Generator().manual_seed(_epoch))].split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    d = tmp_path_factory.mktemp("digits")
    save_file(model.state_dict(), str(d / "digits.safetensors"))
    np.save(d / "calib.npy", x[train[:64]].numpy())
    return d / "digits.safetensors", d / "calib.npy", x[test].numpy(), y[test].numpy(), acc


def _accuracy(artifact, images, labels) -> float:
    with open_session(artifact, manifest=load_manifest(artifact)) as s:
        logits = np.concatenate([s.infer({"input": images[i:i + 64]})["logits"] for i in range(0, len(images), 64)])
    return float((logits.argmax(1) == labels).mean())


@pytest.mark.parametrize("fmt,precision", [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
                                           ("openvino", "int8"), ("openvino", "bf16")])
def test_reduced_precision_keeps_digits_accuracy(tmp_path, digits, fmt, precision):
    pytest.importorskip("openvino") if fmt == "openvino" else None
    ckpt, calib, images, labels, eager_acc = digits
    assert eager_acc > 0.9  # the model really learned the task
    spec = ModelSpec("test_resnet", num_classes=10, img_size=(SIZE, SIZE), weights="checkpoint", checkpoint=str(ckpt))
    opts = ExportOptions(precision=precision, calib_data=str(calib) if precision == "int8" else None, calib_samples=64)
    (r,) = export(spec, [fmt], tmp_path, opts)
    assert r.error is None, r.error
    acc = _accuracy(r.artifact, images, labels)
    print(f"digits accuracy {fmt} {precision}: {acc:.4f} (eager fp32 {eager_acc:.4f})")
    assert acc >= eager_acc - 0.015, (fmt, precision, acc, eager_acc)
