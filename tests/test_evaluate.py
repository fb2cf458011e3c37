"""``--eval``: labelled data in each layout, each task's metric on exact ground truth (ground truth as
predictions scores 100; known perturbations give known lower scores), the budget verdict, and eager
vs artifact end to end for detection and segmentation."""

import json

import numpy as np
import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.results import Verdict
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.evaluate import budget_report, evaluate
from autotimm_deploy.exporter.evaluate.classification import average_precision
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.inputs.labelled import Labelled, load_labelled
from autotimm_deploy.exporter.pipeline import export
from labelled_data import rectangles, write_coco, write_mask_folder

PREP = {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 1.0}


def _feed(outputs: dict, n: int):
    """A predict() that returns precomputed outputs for pictures [start, start + len(x)) in order."""
    pos = [0]

    def predict(x):
        out = {k: v[pos[0]:pos[0] + len(x)] for k, v in outputs.items()}
        pos[0] += len(x)
        return out

    return predict


# --- classification --------------------------------------------------------------------------

def test_topk_and_fixed_batch_padding():
    labels = np.array([0, 1, 2, 3, 4, 5, 6])
    scores = np.zeros((7, 8), dtype=np.float32)
    for i, y in enumerate(labels):
        scores[i, y] = 1.0 if i < 4 else 0.1  # the last three rank their label 2nd..
        if i >= 4:
            scores[i, 7] = 0.5
    data = Labelled("label-csv", np.zeros((7, 3, 8, 8), np.float32), [(8, 8)] * 7, labels=labels)
    calls = []

    def predict(x):
        calls.append(len(x))
        return {"logits": np.concatenate([scores, np.zeros((10, 8), np.float32)])[sum(calls) - len(x):sum(calls)]}

    out = evaluate(predict, data, "classification", ["logits"], batch_range=(4, 4))
    assert calls == [4, 4]  # a fixed-batch artifact gets padded batches
    assert out["metrics"] == {"top1": pytest.approx(400 / 7), "top5": 100.0} and out["primary"] == "top1"


def test_average_precision_matches_scikit_learn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 50)
        s = rng.integers(0, 10, 50) / 10  # with ties
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    assert average_precision(np.zeros(5), np.ones(5)) is None


def test_classification_layouts(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pics = rng.integers(0, 255, (6, 40, 50, 3), dtype=np.uint8)
    for i, p in enumerate(pics):
        (tmp_path / "folder" / ["cat", "dog"][i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(tmp_path / "folder" / ["cat", "dog"][i % 2] / f"{i}.png")
        Image.fromarray(p).save(tmp_path / f"{i}.png")
    d = load_labelled(tmp_path / "folder", "classification", PREP, 2)
    assert d.kind == "image-folder" and d.images.shape == (6, 3, 64, 64) and d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.info["class_names"] == ["cat", "dog"] and d.sizes == [(40, 50)] * 6
    with pytest.raises(UserError, match="2 class folders but the model predicts 5"):
        load_labelled(tmp_path / "folder", "classification", PREP, 5)
    (tmp_path / "labels.csv").write_text("image,label\n" + "".join(f"{i}.png,{i % 3}\n" for i in range(6)))
    d = load_labelled(tmp_path / "labels.csv", "classification", PREP, 3, samples=4)
    assert d.kind == "label-csv" and len(d) == 4
    (tmp_path / "multi.csv").write_text("image,a,b,c\n" + "".join(f"{i}.png,{i % 2},1,0\n" for i in range(6)))
    d = load_labelled(tmp_path / "multi.csv", "classification", PREP, 3, multi_label=True)
    assert d.kind == "multilabel-csv" and d.labels.shape == (6, 3)
    out = evaluate(_feed({"logits": d.labels * 2 - 1}, 6), d, "classification", ["logits"])
    assert out["metrics"]["mAP"] == 100.0 and out["metrics"]["exact_match"] == 100.0
    (tmp_path / "bad.csv").write_text("image,label\n0.png,x\n")
    with pytest.raises(UserError, match="line 2: 'x' is not a class index"):
        load_labelled(tmp_path / "bad.csv", "classification", PREP, 3)
    (tmp_path / "gone.csv").write_text("image,label\nmissing.png,0\n")
    with pytest.raises(UserError, match="evaluation picture not found"):
        load_labelled(tmp_path / "gone.csv", "classification", PREP, 3)
    (tmp_path / "folder" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read evaluation picture"):
        load_labelled(tmp_path / "folder", "classification", PREP, 2)


# --- detection and instance segmentation ------------------------------------------------------

@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    pics, boxes, _ = rectangles(12, size=(96, 128))
    root = tmp_path_factory.mktemp("coco")
    return write_coco(root, pics, boxes, with_masks=True), boxes


def _detections(data: Labelled, boxes, keep=lambda i, j: True, shift=0.0, n: int = 8, masks=None):
    """Outputs in the input's pixels (the data's pictures are stretched to 64x64) from ground truth."""
    b = len(boxes)
    out = {"boxes": np.zeros((b, n, 4), np.float32), "scores": np.zeros((b, n), np.float32),
           "labels": np.full((b, n), -1, np.int64), "num_detections": np.zeros(b, np.int64)}
    if masks is not None:
        out["masks"] = np.zeros((b, n, *data.sizes[0]), np.float32)
    _, h_in, w_in = PREP["input_size"]
    for i, bs in enumerate(boxes):
        h0, w0 = data.sizes[i]
        k = 0
        for j, (x1, y1, x2, y2, c) in enumerate(bs):
            if not keep(i, j):
                continue
            dx = (x2 - x1) * shift
            if x2 + dx > w0:  # shifted towards the inside: answers are clipped to the picture
                dx = -dx
            out["boxes"][i, k] = [(x1 + dx) * w_in / w0, y1 * h_in / h0, (x2 + dx) * w_in / w0, y2 * h_in / h0]
            out["scores"][i, k], out["labels"][i, k] = 0.9 - 0.01 * j, c
            if masks is not None:
                out["masks"][i, k] = masks[i][j]
            k += 1
        out["num_detections"][i] = k
    return out


def test_coco_box_ap_exact(coco):
    path, boxes = coco
    data = load_labelled(path, "detection", PREP, 3)
    assert data.category_ids == [3, 7, 11] and data.sizes[0] == (96, 128)
    names = ["boxes", "scores", "labels", "num_detections"]
    score = lambda out: evaluate(_feed(out, len(boxes)), data, "detection", names)["metrics"]  # noqa: E731
    assert score(_detections(data, boxes)) == {"mAP": 100.0, "mAP50": 100.0}
    # every box shifted to IoU (1 - s) / (1 + s) = 0.62: matched at IoU .50, .55, .60 of the ten thresholds
    s = (1 - 0.62) / 1.62
    assert score(_detections(data, boxes, shift=s)) == {"mAP": pytest.approx(30.0), "mAP50": 100.0}
    # half the objects missed: each category's AP is the share of the 101 recall points its recall reaches
    keep = lambda i, j: (i + j) % 2 == 0  # noqa: E731
    expected = []
    for c in range(3):
        mine = [(i, j) for i, bs in enumerate(boxes) for j, b in enumerate(bs) if b[4] == c]
        recall = sum(keep(i, j) for i, j in mine) / len(mine)
        expected.append(100 * np.searchsorted(np.linspace(0, 1, 101), recall, side="right") / 101)
    assert score(_detections(data, boxes, keep=keep))["mAP50"] == pytest.approx(np.mean(expected))
    # labels past the file's categories (or the padding) are not detections; nothing detected scores 0
    assert score(_detections(data, boxes, keep=lambda i, j: False)) == {"mAP": 0.0, "mAP50": 0.0}


def test_coco_mask_ap_exact(coco):
    from pycocotools.coco import COCO

    path, boxes = coco
    prep = {**PREP, "input_size": [3, 96, 128]}  # masks at the pictures' own size: exact
    data = load_labelled(path, "instance-segmentation", prep, 3)
    gt = COCO(str(path))
    masks = [[gt.annToMask(a) for a in gt.loadAnns(gt.getAnnIds(imgIds=[i]))] for i in data.image_ids]
    PREP_SAVED = PREP["input_size"]
    PREP["input_size"] = prep["input_size"]
    try:
        out = _detections(data, boxes, masks=masks)
    finally:
        PREP["input_size"] = PREP_SAVED
    names = ["boxes", "scores", "labels", "num_detections", "masks"]
    m = evaluate(_feed(out, len(boxes)), data, "instance-segmentation", names)["metrics"]
    assert m == {"mAP": 100.0, "mAP50": 100.0, "box_mAP": 100.0, "box_mAP50": 100.0}
    out["masks"][:] = 0  # boxes right, masks empty: box AP stays, mask AP goes
    m = evaluate(_feed(out, len(boxes)), data, "instance-segmentation", names)["metrics"]
    assert m["box_mAP"] == 100.0 and m["mAP"] == 0.0


def test_coco_errors(tmp_path, coco):
    path, _ = coco
    with pytest.raises(UserError, match="defines 3 categories but the model predicts 2 classes"):
        load_labelled(path, "detection", PREP, 2)
    bad = json.loads(path.read_text())
    bad["annotations"][0]["category_id"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"category ids \[99\] missing"):
        load_labelled(tmp_path / "bad.json", "detection", PREP, 3)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserError, match="cannot read COCO file"):
        load_labelled(tmp_path / "broken.json", "detection", PREP, 3)
    (tmp_path / "nolist.json").write_text('{"images": []}')
    with pytest.raises(UserError, match="not a COCO detection file"):
        load_labelled(tmp_path / "nolist.json", "detection", PREP, 3)
    nomask = json.loads(path.read_text())
    for a in nomask["annotations"]:
        a.pop("segmentation")
    (path.parent / "nomask.json").write_text(json.dumps(nomask))
    data = load_labelled(path.parent / "nomask.json", "instance-segmentation", PREP, 3)
    with pytest.raises(UserError, match="needs a segmentation"):
        evaluate(lambda x: {}, data, "instance-segmentation", ["boxes", "scores", "labels", "num_detections", "masks"])
    with pytest.raises(UserError, match="--raw heads cannot be scored"):
        evaluate(lambda x: {}, data, "detection", ["cls_p3", "reg_p3"])


# --- semantic segmentation --------------------------------------------------------------------

def test_mean_iou_exact(tmp_path):
    pics, _, masks = rectangles(5, size=(48, 80), classes=3)
    masks[0, :2] = 255  # ignored pixels
    root = write_mask_folder(tmp_path / "seg", pics, masks)
    data = load_labelled(root, "semantic-segmentation", PREP, 4)
    assert data.kind == "mask-folder" and data.sizes[0] == (48, 80)
    # ground truth at the input's 64x64 as the model would give it (nearest), back at 48x80: exact where
    # the rectangles' edges land on whole input pixels; predict it at the original size instead
    full = {"mask": np.stack([np.where(m == 255, 0, m) for m in masks]).astype(np.int64)}
    assert evaluate(_feed(full, 5), data, "semantic-segmentation", ["mask"])["metrics"] == {
        "mIoU": 100.0, "pixel_accuracy": 100.0}
    background = {"logits": np.zeros((5, 4, 64, 64), np.float32)}  # argmax: class 0 everywhere
    valid = masks != 255
    share = float((masks[valid] == 0).mean())
    m = evaluate(_feed(background, 5), data, "semantic-segmentation", ["logits"])["metrics"]
    present = len(set(np.unique(masks[valid]).tolist()))
    assert m["pixel_accuracy"] == pytest.approx(100 * share) and m["mIoU"] == pytest.approx(100 * share / present)


def test_mask_folder_errors(tmp_path):
    pics, _, masks = rectangles(2, size=(32, 32))
    root = write_mask_folder(tmp_path / "seg", pics, masks)
    with pytest.raises(UserError, match="holds class 3, past the model's 2 classes"):
        load_labelled(root, "semantic-segmentation", PREP, 2)
    (root / "masks" / "001.png").unlink()
    with pytest.raises(UserError, match="no mask for 001.jpg"):
        load_labelled(root, "semantic-segmentation", PREP, 4)
    with pytest.raises(UserError, match="takes a folder with images/ and masks/"):
        load_labelled(root / "images", "semantic-segmentation", PREP, 4)


def test_budget_overrides_only_a_reduced_precision_tolerance_failure():
    from autotimm_deploy.exporter.core.results import AccuracyReport, ParityReport
    from autotimm_deploy.exporter.core.results import accepted

    within = AccuracyReport({}, "top1", {"top1": 90.0}, {"top1": 89.5}, 0.5, 1.0, Verdict.PASS)
    past = AccuracyReport({}, "top1", {"top1": 90.0}, {"top1": 85.0}, 5.0, 1.0, Verdict.FAIL)
    tolerance = lambda p: ParityReport(Verdict.FAIL, p, {"logits": {"kind": "tensor", "max_rel": 0.3}},  # noqa: E731
                                       failures=["logits: max_rel"])
    crashed = ParityReport(Verdict.FAIL, "int8", {"logits": {"kind": "tensor"}, "runtime": {"kind": "error"}},
                           failures=["runtime failed at batch 16"])
    assert accepted(tolerance("int8"), within) and not accepted(tolerance("int8"), past)
    assert not accepted(tolerance("fp32"), within)  # fp32 off eager is a bug
    assert not accepted(crashed, within)  # an error the one-size evaluation never saw
    assert not accepted(ParityReport(Verdict.PASS, "int8", {}), past) and not accepted(tolerance("int8"), None)
    assert not accepted(None, AccuracyReport({}, "top1", {"top1": 90.0}, {}, None, None, None, error="crashed"))


def test_budget_verdict():
    data = Labelled("label-csv", np.zeros((1, 3, 8, 8), np.float32), [(8, 8)], info={"source": "x"})
    eager = {"metrics": {"top1": 80.0}, "primary": "top1", "seconds": 0}
    r = budget_report(data, eager, {"metrics": {"top1": 79.0}, "seconds": 1}, 1.0)
    assert r.drop == 1.0 and r.verdict == Verdict.PASS
    assert budget_report(data, eager, {"metrics": {"top1": 78.9}, "seconds": 1}, 1.0).verdict == Verdict.FAIL
    assert budget_report(data, eager, {"metrics": {"top1": 78.9}, "seconds": 1}, None).verdict is None
    assert budget_report(data, eager, {"metrics": {}, "seconds": 1}, 5.0).verdict == Verdict.FAIL


# --- end to end -------------------------------------------------------------------------------

def test_detection_and_segmentation_end_to_end(tmp_path, coco):
    """Eager and the ONNX artifact scored on the same files: the same numbers (fp32)."""
    pics, _, masks = rectangles(4, size=(48, 80), classes=3)
    seg = write_mask_folder(tmp_path / "seg", pics, masks)
    cases = [(ModelSpec("test_resnet", task="detection", num_classes=3, img_size=(128, 128),
                        head={"fpn_channels": 32, "max_detections": 10, "score_threshold": 0.0}), coco[0], "mAP"),
             (ModelSpec("test_resnet", task="semantic-segmentation", num_classes=4, img_size=(64, 64)), seg, "mIoU")]
    for spec, data, primary in cases:
        shown = []
        (r,) = export(spec, ["onnx"], tmp_path / spec.task, ExportOptions(eval_data=str(data), max_drop=0.5),
                      progress=lambda text, advance=True: shown.append((text, advance)))
        assert r.ok, (r.error, r.parity.failures if r.parity else None)
        acc = r.accuracy
        assert acc.primary == primary and acc.eager[primary] is not None
        assert acc.artifact[primary] == pytest.approx(acc.eager[primary], abs=0.5)
        n = acc.data["samples"]
        # the bar's steps, and how far each evaluation is, picture by picture, without advancing a step
        assert [t for t, advance in shown if advance] == ["build " + spec.model, "load the evaluation data",
                                                          "export onnx", "verify onnx"]
        for who in ("eager PyTorch", "onnx"):
            assert (f"evaluate {who}: {n}/{n} pictures", False) in shown, shown


@pytest.mark.slow
def test_cli_eval_budget_and_bad_input(tmp_path, digits, export_cli):
    from labelled_data import DIGITS_PREP

    prep = ["--mean", ",".join(map(str, DIGITS_PREP["mean"])), "--std", ",".join(map(str, DIGITS_PREP["std"])),
            "--crop-pct", "1", "--interpolation", "bilinear"]
    base = ["test_resnet", "--checkpoint", str(digits.checkpoint), "--num-classes", "10", "--img-size", "32", *prep]
    p = export_cli(*base, "--int8", "--calib-data", str(digits.calib), "--eval", str(digits.folder),
                   "--eval-samples", "200", "--max-drop", "2", "-o", str(tmp_path / "out"), "--json")
    assert p.returncode == 0, p.stderr
    (r,) = json.loads(p.stdout)["results"]
    acc = r["accuracy"]
    assert acc["data"]["samples"] == 200 and acc["verdict"] == "pass" and acc["max_drop"] == 2
    assert "top1 (eager" in p.stderr and "budget: at most 2 points below" in p.stderr
    for args, message in [(["--max-drop", "1"], "--max-drop is an accuracy budget on labelled data"),
                          (["--eval", str(tmp_path / "nowhere")], "evaluation data not found"),
                          (["--eval", str(digits.calib)], "takes an image folder")]:
        out = tmp_path / "bad"
        p = export_cli(*base, *args, "-o", str(out))
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert not out.exists()
