"""``--eval`` on an AutoTimm detector scores what AutoTimm's own validation scores (issue #29).

A tiny COCO folder in COCO's own layout (``annotations/instances_{train,val}2017.json``,
``train2017/``, ``val2017/``: AutoTimm's default) of non-square pictures (80x120 and 140x90) with
coloured rectangles of three categories numbered 3, 7, 11; an ``autotimm.ObjectDetector`` trained on
it by AutoTimm's own ``DetectionDataModule`` and ``AutoTrainer.fit``; AutoTimm's ``trainer.validate``
gives its mAP (torchmetrics' ``MeanAveragePrecision`` on pycocotools, in the 64x64 letterboxed
input); our pipeline (``spec_from_checkpoint`` -> ``prepare_evaluation``) scores the eager model on
the same JSON with pycocotools, in each picture's own pixels.

The two differ in one respect that shows: AutoTimm clips a box to its letterboxed input, so a box reaching
into the grey padding keeps that part and loses IoU against ground truth that lies inside the
picture; our boxes are mapped back to the picture and clipped to it (as ``autotimm-predict`` and every
deployment gives them). AutoTimm's own validation with its boxes clipped to the picture's part of the
input (the region AutoTimm's own eval transform gives the whole picture) agrees with ours within 0.1
mAP point; the unclipped number is reported beside it. An ``autotimm.InstanceSegmentor`` (the
detector's weights, its mask head trained by AutoTimm) agrees on box mAP as logged, and on mask mAP
once AutoTimm's masks are scored in the pictures' pixels rather than its 64x64 input.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from labelled_data import rectangles

SIZE, CATEGORIES, STEPS, INSTANCE_STEPS = 64, (3, 7, 11), 40, 20
SHAPES = ((80, 120), (140, 90))  # (height, width): landscape and portrait, both letterboxed
TOLERANCE = 0.1  # mAP points (0-100)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    """COCO's layout; train2017 is val2017 (the detector is scored on what it was trained on: only
    the agreement matters, and a detector that finds its pictures scores well above zero)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("coco_autotimm")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    images, anns = [], []
    for k, shape in enumerate(SHAPES):
        pics, boxes, _ = rectangles(10, size=shape, seed=k + 1)
        for pic, bs in zip(pics, boxes):
            i = len(images)
            Image.fromarray(pic).save(root / "val2017" / f"{i:03d}.png")
            images.append({"id": 100 + i, "file_name": f"{i:03d}.png", "height": shape[0], "width": shape[1]})
            for x1, y1, x2, y2, c in bs:
                anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": CATEGORIES[c],
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                             "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
    doc = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORIES]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    os.symlink("instances_val2017.json", root / "annotations" / "instances_train2017.json")
    os.symlink("val2017", root / "train2017")
    return root


def _trainer(root: Path, **kw):
    import autotimm

    return autotimm.AutoTrainer(accelerator="cpu", logger=False, tuner_config=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root), **kw)


def _fit(root: Path, model, datamodule, name: str, steps: int) -> Path:
    """``model`` trained by AutoTimm's own trainer on ``datamodule``, saved as an AutoTimm user saves it."""
    trainer = _trainer(root, max_epochs=-1, max_steps=steps, num_sanity_val_steps=0, limit_val_batches=0, seed=0)
    trainer.fit(model, datamodule=datamodule)
    path = root / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return path


def _validate(root: Path, model, datamodule) -> dict[str, float]:
    """AutoTimm's own validation loop and metric: what it logs, in points."""
    (logged,) = _trainer(root).validate(model, datamodule=datamodule, verbose=False)
    return {k: 100.0 * float(v) for k, v in logged.items()}


def _picture_regions(datamodule) -> dict[tuple[int, int], tuple[float, float, float, float]]:
    """(h, w) -> where a picture of that size lies in the letterboxed input, x1, y1, x2, y2, as AutoTimm's
    own eval transform places a box around the whole picture."""
    transform = datamodule.val_dataset.transform
    out = {}
    for h, w in SHAPES:
        (x, y, bw, bh), = transform(image=np.zeros((h, w, 3), np.uint8), bboxes=[[0, 0, w, h]], labels=[0])["bboxes"]
        out[(h, w)] = (float(x), float(y), float(x + bw), float(y + bh))
    return out


def _validate_clipped(root: Path, model, datamodule) -> dict[str, float]:
    """AutoTimm's own validation with one change: each picture's boxes clipped to the picture's part
    of the input, not the whole (padded) input."""
    import torch

    regions = _picture_regions(datamodule)
    step, predict = model.validation_step, model.predict

    def validation_step(batch, batch_idx):
        boxes_in = [regions[tuple(s)] for s in batch["orig_sizes"].tolist()]

        def clipped(images):
            dets = predict(images)
            for d, (x1, y1, x2, y2) in zip(dets, boxes_in):
                b = d["boxes"]
                lo, hi = b.new_tensor([x1, y1, x1, y1]), b.new_tensor([x2, y2, x2, y2])
                d["boxes"] = torch.minimum(torch.maximum(b, lo), hi)
            return dets

        model.predict = clipped
        try:
            return step(batch, batch_idx)
        finally:
            del model.predict

    model.validation_step = validation_step
    try:
        return _validate(root, model, datamodule)
    finally:
        del model.validation_step


def _ours(checkpoint: Path, annotations: Path) -> dict[str, float]:
    """Our pipeline's eager score on the same folder, as ``autotimm-export --checkpoint ... --eval`` runs it."""
    from autotimm_deploy.exporter.formats.base import ExportOptions
    from autotimm_deploy.exporter.models import build_model
    from autotimm_deploy.exporter.models.autotimm.build import spec_from_checkpoint
    from autotimm_deploy.exporter.pipeline import prepare_evaluation

    model = build_model(spec_from_checkpoint(checkpoint))
    evaluation = prepare_evaluation(ExportOptions(eval_data=str(annotations)), model)
    assert evaluation.data.info["samples"] == 20 and evaluation.data.category_ids == list(CATEGORIES)
    return evaluation.eager["metrics"]


def _masks_in_pictures(model, datamodule, annotations: Path) -> dict[str, float]:
    """AutoTimm's own ``predict()`` on its own validation inputs, each mask seen at its picture's
    resolution (resized bilinear, > 0.5) and scored by torchmetrics' ``MeanAveragePrecision`` (on
    COCO's thresholds) against the picture's own ground-truth masks (pycocotools' rasterised polygons):
    AutoTimm's mask mAP in the pictures' pixels, in points."""
    import torch
    import torch.nn.functional as F
    from pycocotools.coco import COCO
    from torchmetrics.detection import MeanAveragePrecision

    coco = COCO(str(annotations))
    label = {c: i for i, c in enumerate(sorted(coco.getCatIds()))}
    dataset = datamodule.val_dataset
    # COCO's own thresholds (pycocotools' float64 ones): torchmetrics' default makes them in float32, where
    # 0.6 is 0.6000000238 and a mask IoU of exactly 3/5 (pixel masks have such) would not match at 0.6
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="segm",
                                  iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
                                  rec_thresholds=np.linspace(0.0, 1.0, 101).tolist())
    for i in range(len(dataset)):
        item = dataset[i]
        (det,) = model.predict(item["image"][None])
        size = tuple(int(v) for v in item["orig_size"])
        up = F.interpolate(det["masks"][None].float(), size=size, mode="bilinear", align_corners=False)[0]
        masks = up > 0.5 + 1e-5  # a pixel exactly halfway is out (> 0.5 exactly; float32 rounding would decide it)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=item["image_id"]))
        truth = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])).bool()
        metric.update([{"masks": masks, "scores": det["scores"], "labels": det["labels"]}],
                      [{"masks": truth, "labels": torch.tensor([label[a["category_id"]] for a in anns])}])
    result = metric.compute()
    return {"map": 100.0 * float(result["map"]), "map_50": 100.0 * float(result["map_50"])}


@contextmanager
def _quiet_eager():
    """AutoTimm's modules run eagerly (no minutes of torch.compile), its warnings hushed."""
    import torch

    disabled = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch._dynamo.config.disable = disabled


def _box_metric(name: str, iou_type: str):
    import autotimm

    return autotimm.MetricConfig(name=name, backend="torchmetrics", metric_class="MeanAveragePrecision",
                                 params={"box_format": "xyxy", "iou_type": iou_type}, stages=["val"])


@pytest.fixture(scope="module")
def detector(coco_root):
    """An FCOS ObjectDetector trained by AutoTimm on the folder: (model, its DataModule, checkpoint)."""
    import autotimm

    with _quiet_eager():
        datamodule = autotimm.DetectionDataModule(data_dir=coco_root, image_size=SIZE, batch_size=4, num_workers=0,
                                                  pin_memory=False)
        datamodule.train_transforms.set_random_seed(0)  # albumentations' own random state: the same run each time
        model = autotimm.ObjectDetector(
            backbone=autotimm.FeatureBackboneConfig(model_name="test_resnet", pretrained=False),
            num_classes=len(CATEGORIES), fpn_channels=64, head_num_convs=1, lr=3e-3, scheduler=None,
            compile_model=False, seed=0, deterministic=False)  # its default metric: COCO box mAP
        checkpoint = _fit(coco_root, model, datamodule, "detector", STEPS)
    return model, datamodule, checkpoint


def test_detection_map_matches_autotimm_validation(coco_root, detector):
    model, datamodule, checkpoint = detector
    with _quiet_eager():
        theirs = _validate(coco_root, model, datamodule)
        clipped = _validate_clipped(coco_root, model, datamodule)
        ours = _ours(checkpoint, coco_root / "annotations" / "instances_val2017.json")
    said = (f"ours mAP {ours['mAP']:.3f} / mAP50 {ours['mAP50']:.3f}; AutoTimm's, boxes clipped to the picture "
            f"{clipped['val/map']:.3f} / {clipped['val/map_50']:.3f}; AutoTimm's as it logs it "
            f"{theirs['val/map']:.3f} / {theirs['val/map_50']:.3f}")
    print(said)
    assert clipped["val/map"] > 5.0, f"the detector should find something to score: {said}"
    assert abs(ours["mAP"] - clipped["val/map"]) <= TOLERANCE, said
    assert abs(ours["mAP50"] - clipped["val/map_50"]) <= TOLERANCE, said


def test_instance_map_matches_autotimm_validation(coco_root, detector):
    """An InstanceSegmentor with the trained detector's backbone, FPN and FCOS head (the same modules),
    frozen, and its mask head trained by AutoTimm on the same folder. AutoTimm's instance eval
    transform stretches (no padding: its boxes need no clipping), so box mAP agrees as closely as the
    detector's. Mask mAP is not: AutoTimm scores masks in its 64x64 input against ground truth resized
    there (nearest), we in each picture's pixels against its own polygons, as COCO does; AutoTimm's
    own masks scored in the pictures' pixels (`_masks_in_pictures`) agree with ours, its logged number
    is reported beside them."""
    import autotimm
    from autotimm.data.segmentation_transforms import instance_segmentation_transforms

    with _quiet_eager():
        datamodule = autotimm.InstanceSegmentationDataModule(
            data_dir=coco_root, image_size=SIZE, batch_size=4, num_workers=0,
            custom_train_transforms=instance_segmentation_transforms(SIZE, train=False))  # stretched, as validated
        model = autotimm.InstanceSegmentor(
            backbone=autotimm.FeatureBackboneConfig(model_name="test_resnet", pretrained=False),
            num_classes=len(CATEGORIES), fpn_channels=64, head_num_convs=1, lr=1e-2, scheduler=None,
            max_detections_per_image=20, compile_model=False, seed=0, deterministic=False,
            metrics=[_box_metric("box", "bbox"), _box_metric("mask", "segm")])
        trained = {("detection_head." + k[5:] if k.startswith("head.") else k): v
                   for k, v in detector[0].state_dict().items()}
        missing = model.load_state_dict(trained, strict=False).missing_keys
        assert missing and all(k.startswith("mask_head.") for k in missing)
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("mask_head.")  # AutoTimm optimises what requires a gradient
        checkpoint = _fit(coco_root, model, datamodule, "instance", INSTANCE_STEPS)
        theirs = _validate(coco_root, model, datamodule)
        annotations = coco_root / "annotations" / "instances_val2017.json"
        in_pictures = _masks_in_pictures(model, datamodule, annotations)
        ours = _ours(checkpoint, annotations)
    said = (f"ours mask mAP {ours['mAP']:.3f} / mAP50 {ours['mAP50']:.3f}, box {ours['box_mAP']:.3f} / "
            f"{ours['box_mAP50']:.3f}; AutoTimm's masks in the pictures' pixels {in_pictures['map']:.3f} / "
            f"{in_pictures['map_50']:.3f}; AutoTimm's as it logs it (in its 64x64 input): mask "
            f"{theirs['val/mask_map']:.3f} / {theirs['val/mask_map_50']:.3f}, box {theirs['val/box_map']:.3f} / "
            f"{theirs['val/box_map_50']:.3f}")
    print(said)
    assert theirs["val/mask_map"] > 5.0, f"the segmentor should find something to score: {said}"
    assert abs(ours["box_mAP"] - theirs["val/box_map"]) <= TOLERANCE, said
    assert abs(ours["box_mAP50"] - theirs["val/box_map_50"]) <= TOLERANCE, said
    assert abs(ours["mAP"] - in_pictures["map"]) <= TOLERANCE, said
    assert abs(ours["mAP50"] - in_pictures["map_50"]) <= TOLERANCE, said
