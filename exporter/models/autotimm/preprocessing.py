"""AutoTimm's own eval transform for a task, as the manifest's ``preprocessing`` record
(`autotimm_deploy.exporter.inputs.preprocess` applies it): what AutoTimm's DataModule of that task
did to a validation picture, read from the checkpoint's DataModule settings where Lightning saved
them (``transform_backend``, ``image_size``, a ``TransformConfig``'s fields), AutoTimm's defaults
where it did not. AutoTimm 0.7 (``autotimm/data``):

- ``ImageDataModule`` (classification), torchvision backend (default): ``Resize(int(S * 256 / 224))``
  on PIL pictures (bilinear, antialiased), ``CenterCrop(S)``; albumentations backend:
  ``A.Resize(r, r)`` with the same ``r`` (OpenCV, bilinear), ``A.CenterCrop(S, S)``.
- ``DetectionDataModule`` (FCOS and YOLOX heads, ``YOLOXDetector``): ``A.LongestMaxSize(S)`` +
  ``A.PadIfNeeded(S, S, border_mode=0, fill=(114, 114, 114))``, centred (OpenCV, bilinear).
- ``SegmentationDataModule`` and ``InstanceSegmentationDataModule``: ``A.Resize(S, S)`` (OpenCV).
- All normalise with ImageNet's mean and std.
- A ``TransformConfig`` replaces these (``get_transforms_from_backbone``): torchvision
  ``Resize(int(S / crop_pct), interpolation)`` + ``CenterCrop(S)``, or albumentations ``A.Resize(r, r)``
  + ``A.CenterCrop(S, S)`` for every task, with timm's mean, std, interpolation and crop of the backbone
  unless the config overrides them (``use_timm_config``)."""

from __future__ import annotations

from typing import Any

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DATAMODULES = {"classification": "ImageDataModule", "detection": "DetectionDataModule",
               "semantic-segmentation": "SegmentationDataModule",
               "instance-segmentation": "InstanceSegmentationDataModule"}


def _imagenet_ratio(size: int) -> int:
    return int(size * 256 / 224)


def eval_transform(task: str, size: int, datamodule: dict[str, Any] | None, config: dict[str, Any] | None,
                   timm_cfg: dict[str, Any]) -> dict[str, Any]:
    """The record fields (``resize``, ``library``, ``interpolation``, ``resize_size``, ``crop_pct``,
    ``mean``, ``std``, ``pad_value``, ``source``) of AutoTimm's eval transform for ``task`` at input
    size ``size``. ``datamodule``: the checkpoint's DataModule settings (None: none were saved);
    ``config``: its TransformConfig's fields; ``timm_cfg``: the backbone's timm data config (mean,
    std, interpolation, crop_pct)."""
    name = DATAMODULES[task]
    if config is not None:
        return _from_config(task, size, config, timm_cfg, name)
    settings = "its settings read from the checkpoint" if datamodule else \
        "AutoTimm's defaults: the checkpoint recorded no DataModule"
    common = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear", "crop_pct": 1.0}
    if task == "classification":
        if (datamodule or {}).get("transform_backend") == "albumentations":
            r = _imagenet_ratio(size)
            return {**common, "resize": "crop", "library": "cv2", "resize_size": [r, r], "crop_pct": size / r,
                    "source": f"AutoTimm's {name} eval transform, albumentations backend: A.Resize({r}, {r}) + "
                              f"A.CenterCrop({size}) ({settings})"}
        r = _imagenet_ratio(size)
        return {**common, "resize": "crop", "library": "pil", "resize_size": [r], "crop_pct": size / r,
                "source": f"AutoTimm's {name} eval transform, torchvision backend: Resize({r}) + CenterCrop({size}) "
                          f"({settings})"}
    if task == "detection":
        return {**common, "resize": "letterbox", "library": "cv2", "pad_value": [114, 114, 114],
                "pad_position": "center",
                "source": f"AutoTimm's {name} eval transform: A.LongestMaxSize({size}) + A.PadIfNeeded(fill 114, "
                          f"centred) ({settings})"}
    return {**common, "resize": "stretch", "library": "cv2",
            "source": f"AutoTimm's {name} eval transform: A.Resize({size}, {size}) ({settings})"}


def _from_config(task: str, size: int, config: dict[str, Any], timm_cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The eval transform a DataModule built from its TransformConfig (`get_transforms_from_backbone`)."""
    size = config.get("image_size") if isinstance(config.get("image_size"), int) else size
    if config.get("use_timm_config", True):
        defaults = timm_cfg
    else:
        defaults = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bicubic", "crop_pct": 0.875}
    mean = list(config.get("mean") or defaults["mean"])
    std = list(config.get("std") or defaults["std"])
    crop_pct = float(config.get("crop_pct") or defaults["crop_pct"])
    interpolation = config.get("interpolation") or defaults["interpolation"]
    backend = config.get("backend") or "torchvision"
    # (a DataModule applies its TransformConfig when it was also given the backbone, which Lightning does
    # not save: AutoTimm's documented use passes both)
    where = f"AutoTimm's {name} eval transform from the checkpoint's TransformConfig ({backend} backend"
    if backend == "torchvision":
        r = int(size / crop_pct)
        return {"mean": mean, "std": std, "resize": "crop", "library": "pil", "interpolation": interpolation,
                "resize_size": [r], "crop_pct": crop_pct,
                "source": f"{where}): Resize({r}, {interpolation}) + CenterCrop({size})"}
    r = _imagenet_ratio(size)
    return {"mean": mean, "std": std, "resize": "crop", "library": "cv2", "interpolation": "bilinear",
            "resize_size": [r, r], "crop_pct": size / r,
            "source": f"{where}): A.Resize({r}, {r}) + A.CenterCrop({size})"}
