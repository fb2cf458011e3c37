"""Labelled test data with exact ground truth, written in the layouts `--eval` reads: the digits
(a real accuracy: a tiny timm model trained in seconds on scikit-learn's digits), a COCO file of
drawn rectangles, and a folder of pictures with their class masks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGITS_SIZE = 32
# what the digits model is trained with and what its manifest must then say (--mean/--std/--crop-pct)
DIGITS_PREP = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 1.0,
               "interpolation": "bilinear"}


@dataclass
class Trained:
    """A test_resnet trained in seconds on real pictures, and its held-out pictures as ``--eval`` reads them."""

    checkpoint: Path
    calib: Path  # preprocessed training pictures, .npy
    folder: Path  # held-out pictures as DATA/<class>/<i>.png
    images: np.ndarray  # the held-out pictures, preprocessed
    labels: np.ndarray
    accuracy: float  # eager top-1 on them, computed directly
    classes: int


def train_classifier(root: Path, pictures: np.ndarray, labels: np.ndarray, class_names: list[str],
                     epochs: int = 6, train_share: float = 0.78) -> Trained:
    """Train test_resnet on ``pictures`` (uint8 [N, S, S, 3], S = DIGITS_SIZE) with the preprocessing
    ``DIGITS_PREP``; hold out the rest and write it as an image folder named by ``class_names``."""
    import timm
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    u8 = torch.from_numpy(pictures).permute(0, 3, 1, 2).contiguous()
    mean = torch.tensor(DIGITS_PREP["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(DIGITS_PREP["std"]).view(1, 3, 1, 1)
    xn = (u8.float() / 255 - mean) / std
    y = torch.from_numpy(np.asarray(labels)).long()
    perm = torch.randperm(len(xn), generator=torch.Generator().manual_seed(0))
    cut = int(len(xn) * train_share)
    train, test = perm[:cut], perm[cut:]
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(class_names))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(epochs):
        for idx in train[torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))].split(64):
            loss = torch.nn.functional.cross_entropy(model(xn[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xn[test]).argmax(1) == y[test]).float().mean().item()
    root.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(root / "model.safetensors"))
    np.save(root / "calib.npy", xn[train[:64]].numpy())
    folder = root / "heldout"
    for i in test.tolist():
        (folder / class_names[int(y[i])]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pictures[i]).save(folder / class_names[int(y[i])] / f"{i}.png")
    return Trained(root / "model.safetensors", root / "calib.npy", folder, xn[test].numpy(), y[test].numpy(), acc,
                   len(class_names))


def train_digits(root: Path) -> Trained:
    """scikit-learn's 1797 digits, 8x8 upsampled to 32x32; class folders named 0..9 (class indices)."""
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.from_numpy(x.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0)
    x = torch.nn.functional.interpolate(x, size=(DIGITS_SIZE,) * 2, mode="bilinear", align_corners=False)
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    return train_classifier(root, np.ascontiguousarray(u8), y, [str(i) for i in range(10)])


def train_lfw(root: Path) -> Trained:
    """scikit-image's ``lfw_subset()``: 100 faces then 100 non-faces (25x25 grey), resized to 32x32;
    class folders face/ and other/ (sorted names: face is class 0)."""
    import skimage.data
    from PIL import Image

    grey = (skimage.data.lfw_subset() * 255).round().astype(np.uint8)
    pics = np.stack([np.asarray(Image.fromarray(g).resize((DIGITS_SIZE,) * 2, 2).convert("RGB")) for g in grey])
    labels = np.r_[np.zeros(100, np.int64), np.ones(100, np.int64)]
    return train_classifier(root, pics, labels, ["face", "other"], epochs=30, train_share=0.7)


def digits_spec(d: Trained, **kw):
    from autotimm_deploy.exporter.core.spec import ModelSpec

    return ModelSpec("test_resnet", num_classes=d.classes, img_size=(DIGITS_SIZE,) * 2, weights="checkpoint",
                     checkpoint=str(d.checkpoint), preprocess=dict(DIGITS_PREP), **kw)


def rectangles(n: int, size: tuple[int, int] = (96, 128), classes: int = 3, seed: int = 0):
    """``n`` pictures (H, W) = ``size`` of one to three filled rectangles each, colour = class:
    (pictures uint8 [n, H, W, 3], boxes per picture [[x1, y1, x2, y2, class], ...], class masks [n, H, W])."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 230], [200, 200, 40]])[:classes]
    pics = np.full((n, *size, 3), 127, dtype=np.uint8)
    masks = np.zeros((n, *size), dtype=np.uint8)
    boxes = []
    h, w = size
    for i in range(n):
        mine = []
        for _ in range(rng.integers(1, 4)):
            bw, bh = rng.integers(w // 6, w // 2), rng.integers(h // 6, h // 2)
            x1, y1 = rng.integers(0, w - bw), rng.integers(0, h - bh)
            c = int(rng.integers(0, classes))
            pics[i, y1:y1 + bh, x1:x1 + bw] = colours[c]
            masks[i, y1:y1 + bh, x1:x1 + bw] = c + 1  # 0 is the background class
            mine.append([int(x1), int(y1), int(x1 + bw), int(y1 + bh), c])
        boxes.append(mine)
    return pics, boxes, masks


def write_coco(root: Path, pics, boxes, category_ids=(3, 7, 11), with_masks: bool = False) -> Path:
    """COCO JSON + pictures under ``root/images``; category ids deliberately not 0..K-1. Masks as
    polygons of the rectangles (later rectangles drawn over earlier ones are not subtracted: the
    ground truth is the rectangle)."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (pic, bs) in enumerate(zip(pics, boxes)):
        Image.fromarray(pic).save(root / "images" / f"{i}.png")
        images.append({"id": i + 10, "file_name": f"{i}.png", "height": pic.shape[0], "width": pic.shape[1]})
        for x1, y1, x2, y2, c in bs:
            a = {"id": len(anns) + 1, "image_id": i + 10, "category_id": category_ids[c],
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if with_masks:
                a["segmentation"] = [[x1, y1, x2, y1, x2, y2, x1, y2]]
            anns.append(a)
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": c, "name": f"c{c}"} for c in category_ids]}))
    return path


def write_mask_folder(root: Path, pics, masks) -> Path:
    from PIL import Image

    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, (pic, m) in enumerate(zip(pics, masks)):
        Image.fromarray(pic).save(root / "images" / f"{i:03d}.jpg", quality=95)
        Image.fromarray(m).save(root / "masks" / f"{i:03d}.png")
    return root
