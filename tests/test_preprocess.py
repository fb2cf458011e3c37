"""The one preprocessing path against the transforms the models were evaluated with: AutoTimm's own
eval transforms (albumentations / torchvision, called from the installed AutoTimm) and timm's, on
real non-square pictures, within one 8-bit level; and the geometry that maps answers back."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from autotimm_deploy.exporter.inputs.preprocess import describe, geometry, prepare

pytest.importorskip("albumentations")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
LEVEL = 1 / 255 / min(STD) + 1e-5  # one 8-bit level, normalised


@functools.lru_cache(maxsize=None)
def pictures() -> dict[str, np.ndarray]:
    import skimage.data

    return {"coffee": skimage.data.coffee(), "rocket": skimage.data.rocket(), "chelsea": skimage.data.chelsea(),
            "astronaut-crop": np.ascontiguousarray(skimage.data.astronaut()[:, 100:380])}  # 512 x 280, portrait


def record(size: int, **fields) -> dict:
    return {"input_size": [3, size, size], "mean": MEAN, "std": STD, **fields}


def agree(ours: np.ndarray, reference) -> float:
    reference = np.asarray(reference, dtype=np.float32)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.abs(ours - reference).max())


@pytest.mark.parametrize("size", [64, 96])
def test_autotimm_transforms_pixel_for_pixel(size):
    from autotimm.data import albu_default_eval_transforms, default_eval_transforms, detection_eval_transforms
    from autotimm.data.segmentation_transforms import instance_segmentation_transforms, segmentation_eval_transforms
    from autotimm_deploy.exporter.models.autotimm.preprocessing import eval_transform
    from PIL import Image

    timm_cfg = {"mean": MEAN, "std": STD, "interpolation": "bicubic", "crop_pct": 0.95}

    def ours(task, img, datamodule=None):
        fields = eval_transform(task, size, datamodule, None, timm_cfg)
        fields.pop("source")
        return prepare(img, record(size, **fields))[0]

    det, seg = detection_eval_transforms(size), segmentation_eval_transforms(size)
    inst = instance_segmentation_transforms(size, train=False)
    albu, tv = albu_default_eval_transforms(size), default_eval_transforms(size)
    for name, img in pictures().items():
        assert agree(ours("detection", img), det(image=img, bboxes=[], labels=[])["image"]) <= LEVEL, name
        assert agree(ours("semantic-segmentation", img), seg(image=img)["image"]) <= LEVEL, name
        assert agree(ours("instance-segmentation", img), inst(image=img, bboxes=[], labels=[])["image"]) <= LEVEL, name
        assert agree(ours("classification", img, {"transform_backend": "albumentations"}), albu(image=img)["image"]) \
            <= LEVEL, name
        assert agree(ours("classification", img), tv(Image.fromarray(img))) <= LEVEL, name


def test_transform_config_pixel_for_pixel():
    """A DataModule given a TransformConfig: AutoTimm's get_transforms_from_backbone, both backends."""
    import timm
    from autotimm import TransformConfig, get_transforms_from_backbone
    from autotimm_deploy.exporter.models.autotimm.preprocessing import eval_transform
    from PIL import Image

    cfg = timm.get_pretrained_cfg("resnet18").to_dict()
    timm_cfg = {k: cfg[k] for k in ("mean", "std", "interpolation", "crop_pct")}
    img = pictures()["rocket"]
    for backend, task in (("torchvision", "classification"), ("albumentations", "detection"),
                          ("albumentations", "segmentation")):
        config = TransformConfig(backend=backend, image_size=80)
        reference = get_transforms_from_backbone("resnet18", config, is_train=False, task=task)
        ours_task = {"segmentation": "semantic-segmentation"}.get(task, task)
        fields = eval_transform(ours_task, 64, {}, {"backend": backend, "image_size": 80}, timm_cfg)
        fields.pop("source")
        x, _ = prepare(img, {"input_size": [3, 80, 80], **fields})
        want = reference(Image.fromarray(img)) if backend == "torchvision" else \
            reference(image=img, bboxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64))["image"]
        assert agree(x, want) <= 1 / 255 / min(timm_cfg["std"]) + 1e-5, (backend, task)


def test_timm_eval_transform_pixel_for_pixel():
    """A plain timm classifier: timm's own eval transform from its data config."""
    import timm
    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.exporter.models import build_model
    from PIL import Image

    for name in ("resnet18", "test_vit"):
        model = build_model(ModelSpec(name, img_size=(64, 64)))
        prep = model.preprocessing
        reference = timm.data.create_transform(input_size=tuple(prep["input_size"]), interpolation=prep["interpolation"],
                                               mean=prep["mean"], std=prep["std"], crop_pct=prep["crop_pct"])
        for img in pictures().values():
            level = 1 / 255 / min(prep["std"]) + 1e-5
            assert agree(prepare(img, prep)[0], reference(Image.fromarray(img))) <= level, name


@pytest.mark.parametrize("size", [64, 63])
def test_a_crop_over_one_pads_as_timm_does(size):
    """timm's crop_pct over 1 (volo_d5_448: 1.15) resizes the picture smaller than the input, and
    torchvision's CenterCrop pads it with black: the input came out 4 rows high before; now it is
    timm's transform pixel for pixel, and --embed-preprocessing refuses it in one line."""
    import timm
    from autotimm_deploy.exporter.core.errors import UserError
    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.exporter.models import build_model
    from autotimm_deploy.exporter.models.embedded import EmbeddedPreprocessing
    from PIL import Image

    for crop_pct in (1.15, 1.3):
        prep = record(size, crop_pct=crop_pct, interpolation="bicubic")
        reference = timm.data.create_transform(input_size=(3, size, size), interpolation="bicubic", mean=MEAN, std=STD,
                                               crop_pct=crop_pct)
        for img in pictures().values():
            assert agree(prepare(img, prep)[0], reference(Image.fromarray(img))) <= LEVEL, crop_pct
    model = build_model(ModelSpec("test_resnet", img_size=(64, 64)))
    model.preprocessing = {**model.preprocessing, "crop_pct": 1.15}
    with pytest.raises(UserError, match=r"crop_pct 1.15, over 1\) pads the resized picture"):
        EmbeddedPreprocessing(model)


@pytest.mark.parametrize("mode", ["letterbox", "stretch", "crop"])
def test_geometry_maps_answers_back_to_the_picture(mode):
    prep = describe(record(64, resize=mode, library="cv2", interpolation="bilinear"))
    for img in pictures().values():
        h0, w0 = img.shape[:2]
        x, g = prepare(img, prep)
        assert g == geometry((h0, w0), prep) and x.shape == (3, 64, 64)
        box = np.array([0.3 * w0, 0.25 * h0, 0.6 * w0, 0.7 * h0])  # in picture pixels
        (sy, sx), (top, left) = g.scale, g.offset
        inside = np.array([box[0] * sx + left, box[1] * sy + top, box[2] * sx + left, box[3] * sy + top])
        assert np.allclose(g.boxes_to_picture(inside), box, atol=1e-3)
        assert (g.boxes_to_picture(np.array([-50.0, -50, 500, 500])) == [0, 0, w0, h0]).all()  # clipped
        mask = np.zeros((64, 64), np.float32)
        ys, xs = np.round(inside[[1, 3]]).astype(int), np.round(inside[[0, 2]]).astype(int)
        mask[max(ys[0], 0):ys[1], max(xs[0], 0):xs[1]] = 1
        back = g.dense_to_picture(mask, "nearest")
        assert back.shape == (h0, w0)
        truth = np.zeros((h0, w0), bool)
        truth[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = True
        assert (back.astype(bool) & truth).sum() / (back.astype(bool) | truth).sum() > 0.85, mode


def test_letterbox_pads_centred_with_the_pad_value():
    img = pictures()["coffee"]  # 400 x 600: landscape, padded above and below
    x, g = prepare(img, record(64, resize="letterbox", library="cv2", interpolation="bilinear", pad_value=[10, 20, 30]))
    assert g.resized == (43, 64) and g.offset == (10, 0)
    pad = (np.array([10, 20, 30]) / 255 - MEAN) / STD
    assert np.allclose(x[:, 0, 0], pad, atol=1e-5) and np.allclose(x[:, -1, -1], pad, atol=1e-5)
    assert not np.allclose(x[:, 32, 32], pad, atol=1e-2)


def test_old_records_read_as_before():
    """A manifest written before `resize` existed: timm's centre crop, dense tasks stretched, PIL."""
    assert describe({"interpolation": "bicubic"})["resize"] == "crop"
    assert describe({}, "detection") == {"resize": "stretch", "library": "pil", "interpolation": "bicubic"}


def test_a_crop_one_pixel_larger_than_the_input():
    """Resized to 33 for a 32 input: the centre crop starts at row 0 (round half to even), not a pad."""
    img = pictures()["chelsea"][:300, :300]
    x, g = prepare(img, record(32, resize="crop", library="pil", interpolation="bilinear", resize_size=[33]))
    assert x.shape == (3, 32, 32) and g.resized == (33, 33) and g.offset == (0, 0)


def test_sample_pictures_read_as_skimage_reads_them():
    """The parity pictures are read with PIL from skimage's folder: the same pixels as skimage.data."""
    import skimage.data
    from autotimm_deploy.exporter.inputs.samples import FILES, PICTURES, read_picture

    assert set(PICTURES) == set(FILES)
    for name in PICTURES:
        ours, theirs = read_picture(name), np.asarray(getattr(skimage.data, name)())
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), name
