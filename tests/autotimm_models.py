"""Real AutoTimm checkpoints for the tests: each task trained for a few optimizer steps with
Lightning's ``Trainer.fit`` on a tiny synthetic dataset (timm's ``test_resnet`` backbone, 64 px;
YOLOXDetector: its smallest variant, yolox-nano) and saved with ``trainer.save_checkpoint``, as an
AutoTimm user saves theirs."""

from __future__ import annotations

import warnings
from pathlib import Path

SIZE, CLASSES, BACKBONE, YOLOX = 64, 3, "test_resnet", "yolox-nano"
# name -> (AutoTimm class, constructor arguments beyond backbone/num_classes); detection scores are
# kept low-thresholded and few, so the sample pictures give several well-ranked detections quickly
DETECTION = {"fpn_channels": 64, "head_num_convs": 1, "score_thresh": 0.02, "max_detections_per_image": 8}
VARIANTS = {
    "classifier": ("ImageClassifier", {}),
    "multilabel": ("ImageClassifier", {"multi_label": True}),
    "fcos": ("ObjectDetector", {"detection_arch": "fcos", **DETECTION}),
    "yolox": ("ObjectDetector", {"detection_arch": "yolox", **DETECTION}),
    "fcn": ("SemanticSegmentor", {"head_type": "fcn"}),
    "deeplabv3plus": ("SemanticSegmentor", {"head_type": "deeplabv3plus"}),
    "instance": ("InstanceSegmentor", DETECTION),
    # its own network (no timm backbone): scores start at its 0.01 prior, distances at 0 (see START_DISTANCE)
    "yolox_detector": ("YOLOXDetector", {"model_name": YOLOX, "optimizer": "adamw", "score_thresh": 0.005,
                                          "max_detections_per_image": 8}),
}
# YOLOX's head (YOLOXDetector's, and ObjectDetector's with detection_arch="yolox") regresses raw
# distances from a zero start: 3 steps leave inverted points, not boxes, which match nothing by IoU
# and give NMS no overlaps to remove. Trained from distances of this many pixels (as from pretrained
# weights), its boxes overlap their neighbours'.
START_DISTANCE = 16.0
COMPILED = ("classifier", "fcos")  # saved with AutoTimm's default compile_model=True (keys with ._orig_mod)


def _data(name: str, multi_label: bool):
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, SIZE, SIZE, generator=g)
    if name in ("classifier", "multilabel"):
        y = (torch.rand(8, CLASSES, generator=g) > 0.5).float() if multi_label else torch.arange(8) % CLASSES
        return list(zip(images, y)), None
    items = []
    for i in range(8):
        xy = torch.rand(2, 2, generator=g) * SIZE / 2
        boxes = torch.cat([xy, (xy + torch.rand(2, 2, generator=g) * SIZE / 2 + 8).clamp(max=SIZE)], 1)
        masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
        for j, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[j, y1:y2, x1:x2] = 1
        items.append({"image": images[i], "boxes": boxes, "labels": torch.tensor([i % CLASSES, (i + 1) % CLASSES]),
                      "masks": masks, "mask": (torch.rand(SIZE, SIZE, generator=g) * CLASSES).long()})

    def collate(batch):
        out = {k: [b[k] for b in batch] for k in ("boxes", "labels", "masks")}
        out["image"] = torch.stack([b["image"] for b in batch])
        out["mask"] = torch.stack([b["mask"] for b in batch])
        return out

    return items, collate


def make_checkpoints(folder: Path, names=tuple(VARIANTS)) -> dict[str, Path]:
    """Train and save each variant in ``names``; returns name -> checkpoint path."""
    import autotimm
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    paths = {}
    disabled = torch._dynamo.config.disable
    torch._dynamo.config.disable = True  # compiled keys without minutes of compiling: the modules run eagerly
    try:
        for name in names:
            cls_name, extra = VARIANTS[name]
            cls = getattr(autotimm, cls_name)
            config = autotimm.BackboneConfig if cls_name == "ImageClassifier" else autotimm.FeatureBackboneConfig
            kwargs = dict(num_classes=CLASSES, lr=1e-2, scheduler=None, compile_model=name in COMPILED, seed=None,
                          deterministic=False, **extra)
            if "model_name" not in extra:
                kwargs["backbone"] = config(model_name=BACKBONE, pretrained=False)
            if cls_name in ("ObjectDetector", "InstanceSegmentor"):
                kwargs["metrics"] = []  # COCO mAP needs pycocotools: validation only, not trained here
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(0)
                model = cls(**kwargs)
                if cls_name == "YOLOXDetector" or extra.get("detection_arch") == "yolox":
                    torch.nn.init.constant_(model.head.reg_pred.bias, START_DISTANCE)
                data, collate = _data(name, extra.get("multi_label", False))
                trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                     enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
                                     limit_val_batches=0)
                trainer.fit(model, DataLoader(data, batch_size=4, collate_fn=collate))
                paths[name] = folder / f"{name}.ckpt"
                trainer.save_checkpoint(paths[name])
    finally:
        torch._dynamo.config.disable = disabled
    return paths
