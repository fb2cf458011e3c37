"""AutoTimm checkpoints (the [autotimm] extra): real checkpoints from Trainer.fit, rebuilt with
AutoTimm's own modules, exported with predict()'s postprocessing in the graph, and checked against
AutoTimm's eager predict()."""

import json

import pytest
import torch
from autotimm_deploy.exporter.core.errors import MissingExtra, UserError
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.models import build_model, spec_from_checkpoint
from autotimm_deploy.exporter.models.autotimm import build as autotimm_build
from autotimm_deploy.exporter.models.autotimm.wrappers import paste_masks
from autotimm_deploy.exporter.pipeline import export
from conftest import files_under

pytest.importorskip("autotimm", reason="the [autotimm] extra is not installed")

from autotimm_models import CLASSES, COMPILED, SIZE, YOLOX, make_checkpoints  # noqa: E402

# variant -> (task, our output names)
EXPECTED = {
    "classifier": ("classification", ("logits", "probs")),
    "multilabel": ("classification", ("logits", "probs")),
    "fcos": ("detection", ("boxes", "scores", "labels", "num_detections")),
    "yolox": ("detection", ("boxes", "scores", "labels", "num_detections")),
    "fcn": ("semantic-segmentation", ("logits", "mask", "feature_mask")),
    "deeplabv3plus": ("semantic-segmentation", ("logits", "mask", "feature_mask")),
    "instance": ("instance-segmentation", ("boxes", "scores", "labels", "num_detections", "masks")),
    "yolox_detector": ("detection", ("boxes", "scores", "labels", "num_detections")),
}
MODEL = {"yolox_detector": YOLOX}  # the others: the timm backbone test_resnet


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("autotimm"))


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_checkpoint_exports_with_predict_parity(variant, checkpoints, tmp_path):
    """Every variant to ONNX, TorchScript and torch.export; each artifact agrees with eager and with
    AutoTimm's own predict() on real pictures; the manifest says where the model came from."""
    task, outputs = EXPECTED[variant]
    model = MODEL.get(variant, "test_resnet")
    spec = spec_from_checkpoint(checkpoints[variant], img_size=(SIZE, SIZE))
    assert (spec.task, spec.model, spec.num_classes, spec.architecture) == (task, model, CLASSES, "autotimm")
    results = export(spec, ["onnx", "torchscript", "pt2"], tmp_path)
    for r in results:
        assert r.ok, (r.format, r.error, r.parity and r.parity.failures)
        ref = r.parity.reference
        assert ref["against"].startswith("AutoTimm ") and not ref["failures"]
        manifest = json.loads(r.manifest.read_text())
        assert tuple(manifest["task_outputs"]) == outputs
        at = manifest["model"]["autotimm"]
        assert at["version"].startswith("0.7.") and len(at["checkpoint_sha256"]) == 64
        assert at["compiled"] == (variant in COMPILED)
        hp = at["hyper_parameters"]
        assert hp.get("backbone", hp.get("model_name")) == model and "username" not in hp
        prep = manifest["preprocessing"]  # AutoTimm's own eval transform for the task (no DataModule saved)
        assert prep["source"].startswith("AutoTimm's ") and "AutoTimm's defaults" in prep["source"]
        assert prep["resize"] == {"classification": "crop", "detection": "letterbox"}.get(task, "stretch")
        assert prep["mean"] == [0.485, 0.456, 0.406] and prep["library"] == ("pil" if task == "classification" else "cv2")
        if task in ("detection", "instance-segmentation"):
            det = ref["metrics"]["detections"]
            assert det["ref_detections"] > 0 and det["match_rate"] == 1.0 and det["mean_iou"] > 0.9999
            assert det["label_agreement"] == 1.0
            if task == "instance-segmentation":
                assert det["mask_iou"] > 0.99
        e2e = manifest["parity"]["end_to_end"]  # raw non-square pictures through AutoTimm's eval transform
        if variant in E2E_ANSWER:
            assert e2e["verdict"] == "pass" and e2e["against"].startswith("AutoTimm's eval transform")
            assert [p["picture"] for p in e2e["pictures"]] == ["coffee", "rocket", "chelsea", "astronaut-crop"]
            assert all(E2E_ANSWER[variant](p) for p in e2e["pictures"]), (r.format, e2e["pictures"])


# the answer on each picture, against AutoTimm's: (tests/test_end_to_end.py: where the pipelines drift)
E2E_ANSWER = {"fcos": lambda p: p["reference"] > 0 and p["matched"] == p["reference"] == p["ours"] and p["min_iou"] >= 0.95,
              "fcn": lambda p: p["mask_iou"] >= 0.99, "classifier": lambda p: p["top1_same"]}


def test_thresholds_follow_the_checkpoint_and_can_change(checkpoints):
    spec = spec_from_checkpoint(checkpoints["fcos"])
    assert spec.head == {"arch": "fcos", "fpn_channels": 64, "head_convs": 1, "strides": [8, 16, 32, 64, 128],
                         "score_threshold": 0.02, "iou_threshold": 0.5, "max_detections": 8}
    spec = spec_from_checkpoint(checkpoints["fcos"], img_size=(SIZE, SIZE), head={"score_threshold": 0.3,
                                                                                   "max_detections": 3})
    model = build_model(spec)
    assert (model.task.score_thresh, model.task.max_detections_per_image) == (0.3, 3)  # predict() uses them too
    assert model(torch.zeros(2, 3, SIZE, SIZE))[0].shape == (2, 3, 4)
    with pytest.raises(UserError, match="trained with --fpn-channels 64, not 128"):
        spec_from_checkpoint(checkpoints["fcos"], head={"fpn_channels": 128})
    with pytest.raises(UserError, match="--depthwise does not apply"):
        spec_from_checkpoint(checkpoints["fcos"], head={"depthwise": True})


def test_checkpoint_contradictions_are_one_line(checkpoints):
    with pytest.raises(UserError, match="its backbone is test_resnet, not resnet50"):
        spec_from_checkpoint(checkpoints["fcn"], model="resnet50")
    with pytest.raises(UserError, match="a semantic-segmentation model, not detection"):
        spec_from_checkpoint(checkpoints["fcn"], task="detection")
    with pytest.raises(UserError, match="with 3 classes, not 5"):
        spec_from_checkpoint(checkpoints["fcn"], num_classes=5)


def test_not_autotimm_checkpoints(tmp_path):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.ones(2)}, "hyper_parameters": {"hidden": 3}}, plain)
    with pytest.raises(UserError, match="not of an AutoTimm task"):
        spec_from_checkpoint(plain)
    weights = tmp_path / "weights.pth"
    torch.save({"layer.weight": torch.ones(2)}, weights)
    with pytest.raises(UserError, match="not an AutoTimm"):
        spec_from_checkpoint(weights)
    yolox = tmp_path / "yolox.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": {
        "model_name": "yolox-q", "num_classes": 80, "total_epochs": 300, "warmup_epochs": 5, "no_aug_epochs": 15}},
        yolox)
    with pytest.raises(UserError, match="'yolox-q' is none of AutoTimm's YOLOXDetector models"):
        spec_from_checkpoint(yolox)


def test_datamodule_objects_are_not_loaded(checkpoints, tmp_path):
    """Lightning saves the DataModule's hyper-parameters too (paths, AutoTimm's TransformConfig), which
    weights_only refuses: they are read as inert stand-ins, never imported or called; the training
    image size becomes the default input size."""
    import autotimm
    from autotimm_deploy.exporter.models.autotimm.checkpoint import read_lightning_checkpoint

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    ck = torch.load(checkpoints["fcn"], weights_only=True)
    ck["datamodule_hyper_parameters"] = {"data_dir": tmp_path / "data", "image_size": 96, "payload": Payload(),
                                         "transform_config": autotimm.TransformConfig(image_size=80, backend="albumentations",
                                                                                      mean=(0.5, 0.5, 0.5))}
    ck["hyper_parameters"]["extra"] = Payload()
    path = tmp_path / "with-datamodule.ckpt"
    torch.save(ck, path)
    read = read_lightning_checkpoint(path)
    assert read.datamodule == {"image_size": 96} and "extra" not in read.hparams
    assert read.transform_config["backend"] == "albumentations" and read.transform_config["mean"] == (0.5, 0.5, 0.5)
    assert spec_from_checkpoint(path).img_size == (80, 80)  # the TransformConfig's size wins, as in AutoTimm
    prep = build_model(spec_from_checkpoint(path)).preprocessing
    assert prep["resize"] == "crop" and prep["resize_size"] == [91, 91] and prep["mean"] == [0.5, 0.5, 0.5]
    assert "TransformConfig (albumentations backend)" in prep["source"]
    assert not (tmp_path / "pwned").exists()


def test_missing_or_unsupported_autotimm(monkeypatch, checkpoints):
    spec = spec_from_checkpoint(checkpoints["classifier"], img_size=(SIZE, SIZE))
    monkeypatch.setattr(autotimm_build, "autotimm_version", lambda: None)
    with pytest.raises(MissingExtra, match=r"autotimm-deploy\[autotimm\]"):
        build_model(spec)
    monkeypatch.setattr(autotimm_build, "autotimm_version", lambda: "0.9.1")
    with pytest.raises(UserError, match="autotimm 0.9.1 is installed; .* pip install 'autotimm>=0.7,<0.8'"):
        build_model(spec)


def test_edited_checkpoint_names_the_mismatch(checkpoints, tmp_path):
    ck = torch.load(checkpoints["classifier"], weights_only=True)
    ck["state_dict"].pop(next(k for k in ck["state_dict"] if k.startswith("head.")))
    edited = tmp_path / "edited.ckpt"
    torch.save(ck, edited)
    with pytest.raises(UserError, match="1 missing .*another AutoTimm version, or edited"):
        build_model(spec_from_checkpoint(edited, img_size=(SIZE, SIZE)))


@pytest.mark.parametrize("edit,says", [
    (lambda ck: ck["hyper_parameters"].update(score_thresh=2.0),
     "whose hyper-parameters are refused (--score-threshold must be between 0 and 1, got 2.0; a value read from the "
     "checkpoint, not a flag): a damaged or edited checkpoint"),
    (lambda ck: ck["hyper_parameters"].update(fpn_channels="64"), "--fpn-channels takes an integer from 1 to 4096, got '64'"),
    (lambda ck: ck.update(datamodule_hyper_parameters={"image_size": "64"}),
     "whose training image_size is '64', not a size in pixels: give --img-size"),
])
def test_a_checkpoints_own_bad_values_are_said_to_be_its(checkpoints, tmp_path, edit, says):
    """A value the spec refuses that came from the checkpoint, not from a flag the user typed."""
    ck = torch.load(checkpoints["fcos"], weights_only=True)
    edit(ck)
    edited = tmp_path / "edited.ckpt"
    torch.save(ck, edited)
    with pytest.raises(UserError) as e:
        spec_from_checkpoint(edited)
    assert says in str(e.value) and str(e.value).startswith(f"{edited} holds an AutoTimm ObjectDetector")


def test_a_flag_replaces_a_bad_threshold_and_a_pair_is_a_size(checkpoints, tmp_path):
    """A threshold flag mends the checkpoint's bad value (thresholds may change after training); a
    DataModule of one's own that saved (h, w) gives that size."""
    ck = torch.load(checkpoints["fcos"], weights_only=True)
    ck["hyper_parameters"].update(score_thresh=2.0)
    ck["datamodule_hyper_parameters"] = {"image_size": (64, 96)}
    edited = tmp_path / "edited.ckpt"
    torch.save(ck, edited)
    spec = spec_from_checkpoint(edited, head={"score_threshold": 0.3})
    assert spec.head["score_threshold"] == 0.3 and spec.img_size == (64, 96)


def test_preprocessing_overrides_are_recorded(checkpoints, tmp_path):
    spec = spec_from_checkpoint(checkpoints["classifier"], img_size=(SIZE, SIZE),
                                preprocess={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop_pct": 1.0})
    [r] = export(spec, ["onnx"], tmp_path, verify=False)  # the record, not parity (checked above)
    prep = json.loads(r.manifest.read_text())["preprocessing"]
    assert (prep["mean"], prep["std"], prep["crop_pct"]) == ([0.5] * 3, [0.25] * 3, 1.0)
    assert prep["source"].endswith("set by the user: crop_pct, mean, std")
    with pytest.raises(UserError, match="--std values must be at least 0.001"):
        ModelSpec("resnet18", preprocess={"std": [0.2, 0.0, 0.2]})


def test_random_autotimm_architecture_exports(tmp_path):
    """No checkpoint: AutoTimm's own YOLOX-head detector with random weights (what the speed tables of
    AutoTimm's architectures measure), spread so that it detects something."""
    spec = ModelSpec("test_resnet", task="detection", architecture="autotimm", img_size=(SIZE, SIZE), num_classes=4,
                     head={"arch": "yolox", "fpn_channels": 64, "max_detections": 5})
    [r] = export(spec, ["onnx"], tmp_path, ExportOptions())
    assert r.ok and r.artifact.name == "test_resnet-yolox.onnx"
    assert r.parity.metrics["detections"]["ref_detections"] > 0 and not r.parity.reference["failures"]
    assert json.loads(r.manifest.read_text())["model"]["architecture"] == "autotimm ObjectDetector"


def _same_detections(model, x: torch.Tensor) -> list[int]:
    """The wrapper's detections are AutoTimm's predict()'s, as sets (predict() lists them class by
    class, the wrapper by score): the same boxes and labels bit for bit, scores to a float's rounding
    (a vectorised sigmoid); returns how many each picture has."""
    with torch.no_grad():
        ours, ref = dict(zip(model.output_names, model(x))), model.reference(x)
    counts = []
    for b in range(len(x)):
        n = int(ref["num_detections"][b])
        assert int(ours["num_detections"][b]) == n
        rows = [sorted(zip(map(tuple, d["boxes"][b, :n].tolist()), d["labels"][b, :n].tolist(),
                           d["scores"][b, :n].tolist())) for d in (ours, ref)]
        assert [r[:2] for r in rows[0]] == [r[:2] for r in rows[1]]
        assert max(abs(p[2] - q[2]) for p, q in zip(*rows)) < 1e-6
        counts.append(n)
    return counts


def test_yolox_detector_checkpoint(checkpoints):
    """YOLOXDetector: the model is AutoTimm's variant name; its own size when the checkpoint records
    none; only thresholds change; the graph's score-ordered NMS keeps exactly predict()'s per-class
    ops.nms detections, with every location in NMS (84 at 64 px, 3549 at 416 px: the one-pick-per-round path)."""
    ck = checkpoints["yolox_detector"]
    spec = spec_from_checkpoint(ck)
    assert (spec.model, spec.img_size, spec.stem(), spec.task_label()) == (
        YOLOX, (416, 416), "yolox-nano-yolox", "detection (autotimm yolox)")
    assert spec.head == {"arch": "yolox", "score_threshold": 0.005, "iou_threshold": 0.65, "max_detections": 8}
    gen = torch.Generator().manual_seed(0)
    for size in (SIZE, 416):
        model = build_model(spec_from_checkpoint(ck, img_size=(size, size), head={"max_detections": 100}))
        assert model.build_info["architecture"] == "autotimm YOLOXDetector" and model.preprocessing["resize"] == "letterbox"
        counts = _same_detections(model, torch.randn(2, 3, size, size, generator=gen))
        assert min(counts) > 8 and (size == SIZE or max(counts) == 100)  # predict()'s cut to 100 (topk) and not
    with pytest.raises(UserError, match="--fpn-channels does not apply to AutoTimm's YOLOXDetector"):
        spec_from_checkpoint(ck, head={"fpn_channels": 64})
    with pytest.raises(UserError, match="trained with --arch yolox, not fcos"):
        spec_from_checkpoint(ck, head={"arch": "fcos"})
    with pytest.raises(UserError, match="its model is yolox-nano, not yolox-s"):
        spec_from_checkpoint(ck, model="yolox-s")
    with pytest.raises(UserError, match="input sides must be multiples of 32, not 96x100"):
        build_model(spec_from_checkpoint(ck, img_size=(96, 100)))


def test_random_yolox_detector():
    """No checkpoint: a YOLOX variant's name with --architecture autotimm --arch yolox builds AutoTimm's
    YOLOXDetector with random weights (spread so that it detects, with no tied classes)."""
    spec = ModelSpec(YOLOX, task="detection", architecture="autotimm", img_size=(SIZE, SIZE), head={"arch": "yolox"})
    model = build_model(spec)
    assert model.spec.num_classes == 80 and type(model.task).__name__ == "YOLOXDetector"
    assert min(_same_detections(model, torch.randn(2, 3, SIZE, SIZE))) > 0
    with pytest.raises(UserError, match="whose --arch is yolox: give --arch yolox$"):
        build_model(spec.replace(head={}))
    with pytest.raises(UserError, match="no pretrained weights"):
        build_model(spec.replace(weights="pretrained"))
    with pytest.raises(UserError, match="did you mean .*yolox-s"):
        build_model(spec.replace(model="yolox-q"))


def test_paste_masks_matches_interpolate():
    """The in-graph paste equals predict()'s loop: box rounded out, bilinear resize, threshold."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(1, 5, 28, 28, generator=gen)
    boxes = torch.tensor([[[3.2, 4.7, 40.1, 30.0], [0.0, 0.0, 64.0, 64.0], [10.5, 10.5, 11.0, 11.2],
                           [50.0, 2.0, 63.9, 60.0], [-3.0, 5.0, 20.0, 70.0]]])
    got = paste_masks(probs, boxes.clamp(0, 64), (64, 64), 0.5)
    for j, (x1, y1, x2, y2) in enumerate(boxes.clamp(0, 64)[0].tolist()):
        want = torch.zeros(64, 64, dtype=torch.bool)
        x1, y1 = int(min(max(int(x1), 0), 63)), int(min(max(int(y1), 0), 63))
        x2 = int(min(max(torch.tensor(x2).ceil().item(), x1 + 1), 64))
        y2 = int(min(max(torch.tensor(y2).ceil().item(), y1 + 1), 64))
        want[y1:y2, x1:x2] = F.interpolate(probs[0, j][None, None], size=(y2 - y1, x2 - x1), mode="bilinear",
                                           align_corners=False)[0, 0] > 0.5
        assert (got[0, j] == want).float().mean() > 0.999


@pytest.mark.slow
def test_cli_exports_an_autotimm_checkpoint(export_cli, checkpoints, tmp_path):
    out = tmp_path / "out"
    r = export_cli(str(checkpoints["deeplabv3plus"]), "--img-size", str(SIZE), "-o", str(out),  # as --checkpoint
                   "--format", "onnx")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "vs AutoTimm SemanticSegmentor.predict(): pass" in r.stdout
    assert "AutoTimm checkpoints do not record their transforms" in r.stdout
    assert files_under(out) == ["test_resnet-deeplabv3plus.onnx", "test_resnet-deeplabv3plus.onnx.json"]
    bad = export_cli("resnet50", "--checkpoint", str(checkpoints["deeplabv3plus"]), "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "its backbone is test_resnet, not resnet50" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(1)}, plain)
    r = export_cli("--checkpoint", str(plain), "--architecture", "builtin", "-o", str(tmp_path / "bad"))
    assert r.returncode == 2 and "give a timm model name" in r.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("locations", [300, 2600])  # the suppression-matrix path and the one-pick-per-round path
def test_detect_equals_torchvision_batched_nms(locations):
    """The in-graph NMS against torchvision's batched_nms on what predict() would hand it: every
    passing location, heavy overlap, fewer than 1000 passing boxes (its coordinate trick) with exact
    score ties, and more (its per-class loop, whose final sort leaves tie order undefined: no ties)."""
    from autotimm_deploy.exporter.models.autotimm.decode import detect
    from torchvision.ops import batched_nms

    gen = torch.Generator().manual_seed(locations)
    for thresh, ties in ((0.05, False), (0.7, True)):
        xy = torch.rand(1, locations, 2, generator=gen) * 200
        boxes = torch.cat([xy, xy + torch.rand(1, locations, 2, generator=gen) * 60 + 1], -1)
        scores = torch.rand(1, locations, generator=gen)
        scores = (scores * 20).round() / 20 if ties else scores
        labels = torch.randint(0, 3, (1, locations), generator=gen)
        got_boxes, got_scores, got_labels, count = detect(boxes, scores, labels, thresh, 0.5, 50)
        keep = scores[0] > thresh
        order = batched_nms(boxes[0][keep], scores[0][keep], labels[0][keep], 0.5)[:50]
        n = int(count[0])
        assert n == len(order)
        assert torch.equal(got_boxes[0, :n], boxes[0][keep][order])
        assert torch.equal(got_labels[0, :n], labels[0][keep][order])
        assert torch.equal(got_scores[0, :n], scores[0][keep][order]) and bool((got_labels[0, n:] == -1).all())
