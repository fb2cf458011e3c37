"""autotimm-predict: picture files in, answers out in each picture's own pixels, through the
manifest's preprocessing and the artifact's own runtime; annotated copies; one-line errors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.inputs.preprocess import prepare
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.predict import predict, read_picture
from autotimm_deploy.exporter.inputs.answers import decode_mask
from conftest import call_cli, files_under, run_cli

NAMES = ("cat", "coffee", "rocket")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Real non-square pictures as files (JPEG and PNG) in a folder."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("pictures")
    Image.fromarray(skimage.data.chelsea()).save(folder / "chelsea.jpg", quality=95)
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.png")
    (folder / "sub").mkdir()
    Image.fromarray(np.ascontiguousarray(skimage.data.astronaut()[:, 100:380])).save(folder / "sub" / "astronaut.png")
    return folder


def _export(tmp_path, spec: ModelSpec):
    (r,) = export(spec, ["onnx"], tmp_path)
    assert r.ok, r.error or r.parity.failures
    return r.artifact


def _eager(spec: ModelSpec, picture: np.ndarray, prep: dict):
    import torch

    model = build_model(spec)
    x, geometry = prepare(picture, prep)
    with torch.no_grad():
        outs = model(torch.from_numpy(x[None]))
    return dict(zip(model.output_names, (t.numpy() for t in outs))), geometry


def test_classification_top_k_with_names(tmp_path, pictures):
    spec = ModelSpec("test_resnet", num_classes=3, img_size=(64, 64), class_names=NAMES)
    artifact = _export(tmp_path, spec)
    answers = predict(artifact, [pictures], top_k=3)
    assert [a.file.name for a in answers] == ["chelsea.jpg", "coffee.png", "astronaut.png"]
    a = answers[0]
    assert (a.width, a.height) == (451, 300) and [t["name"] for t in a.top] != [] and len(a.top) == 3
    assert {t["name"] for t in a.top} == set(NAMES) and abs(sum(t["prob"] for t in a.top) - 1) < 1e-4
    outs, _ = _eager(spec, read_picture(a.file, {}), build_model(spec).preprocessing)
    assert a.top[0]["label"] == int(outs["logits"][0].argmax())


def test_own_module_answers_only_from_outputs_its_task_reads(tmp_path, pictures):
    """from_module without a task takes any outputs; predict then says how to export it again instead
    of calling its manifest edited. Named so, the same module answers."""
    import torch
    from autotimm_deploy.exporter import from_module

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    for names, out in ((("scores",), "odd"), (("logits",), "named")):
        model = from_module(net, "net", 32, output_names=names)
        (r,) = export(model.spec, ["onnx"], tmp_path / out, model=model)
        assert r.ok, r.parity.failures
        if out == "odd":
            with pytest.raises(UserError, match=r"is your own module's \(from_module\), with outputs scores; a "
                                                 r"classification answer reads logits or probs: .* naming its outputs so"):
                predict(r.artifact, [pictures])
    assert len(predict(r.artifact, [pictures])[0].top) == 3


def test_letterboxed_detections_in_picture_pixels(tmp_path, pictures):
    """Boxes leave in the picture's pixels: the letterbox's scale and padding removed, clipped."""
    spec = ModelSpec("test_resnet", task="detection", num_classes=3, img_size=(128, 128),
                     head={"fpn_channels": 16, "max_detections": 10}, preprocess={"resize": "letterbox"})
    artifact = _export(tmp_path, spec)
    (a,) = predict(artifact, [pictures / "coffee.png"])
    assert a.task == "detection" and (a.width, a.height) == (600, 400) and a.detections
    prep = build_model(spec).preprocessing
    assert prep["resize"] == "letterbox" and prep["pad_value"] == [114.0] * 3
    outs, geometry = _eager(spec, read_picture(a.file, prep), prep)
    assert geometry.offset == (21, 0) and geometry.resized == (85, 128)  # 600x400 -> 128x85, padded 21 above
    n = int(outs["num_detections"][0])
    want = geometry.boxes_to_picture(outs["boxes"][0][:n])
    got = np.array([d["box"] for d in a.detections])
    assert np.allclose(got, want, atol=0.05)
    assert (got[:, [0, 2]] <= 600).all() and (got[:, [1, 3]] <= 400).all() and (got >= 0).all()
    assert {d["name"] for d in a.detections} <= {"0", "1", "2"}  # no names given: the label


def test_segmentation_and_instance_answers_at_picture_size(tmp_path, pictures):
    seg = _export(tmp_path / "seg", ModelSpec("test_resnet", task="semantic-segmentation", num_classes=4,
                                              img_size=(64, 64)))
    (a,) = predict(seg, [pictures / "chelsea.jpg"])
    assert a.mask.shape == (300, 451) and a.mask.max() < 4 and abs(sum(c["share"] for c in a.class_shares()) - 1) < 1e-3
    inst = _export(tmp_path / "inst", ModelSpec("test_resnet", task="instance-segmentation", num_classes=2,
                                                img_size=(128, 128), head={"fpn_channels": 16, "max_detections": 5}))
    (b,) = predict(inst, [pictures / "sub"])
    assert b.masks is not None and len(b.masks) == len(b.detections)
    for d in b.detections:
        m = decode_mask(d["mask"])
        assert m.shape == (512, 280)
        x1, y1, x2, y2 = d["box"]
        ys, xs = np.nonzero(m)
        slack = 4 * 512 / 128 * 1.5  # the masks come at stride 4 of the input, 4 picture pixels per input pixel
        if len(ys):  # the mask lies in its box, within the resize's blur
            assert xs.min() >= x1 - slack and xs.max() <= x2 + slack and ys.min() >= y1 - slack and ys.max() <= y2 + slack


def test_cli_json_and_annotated_pictures(tmp_path, pictures):
    artifact = _export(tmp_path / "a", ModelSpec("test_resnet", task="semantic-segmentation", num_classes=3,
                                                 img_size=(64, 64)))
    out = tmp_path / "seen"
    r = run_cli("autotimm_deploy.profiler.predict_cli", str(artifact), str(pictures), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert [x["file"].split("/")[-1] for x in results] == ["chelsea.jpg", "coffee.png", "astronaut.png"]
    assert results[1]["width"] == 600 and results[1]["height"] == 400 and results[1]["mask"].endswith("coffee.mask.png")
    assert files_under(out) == sorted(f"{n}.{k}.png" for n in ("astronaut", "chelsea", "coffee") for k in ("mask", "pred"))
    from PIL import Image

    with Image.open(out / "coffee.mask.png") as m, Image.open(out / "coffee.pred.png") as p:
        assert m.size == (600, 400) and p.size == (600, 400)
        assert np.asarray(m).max() < 3
    # again, with a broken picture after them: it stops; the answers already there stay as they were (it
    # had replaced chelsea's with its own and left it so), its new ones are not left
    before = {f: (out / f).read_bytes() for f in files_under(out)}
    more = tmp_path / "more"
    shutil.copytree(pictures, more)
    (more / "chelsea.jpg").write_bytes((more / "coffee.png").read_bytes())  # another answer for chelsea
    (more / "extra.jpg").write_bytes((more / "chelsea.jpg").read_bytes())
    (more / "zz.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    r = call_cli("autotimm_deploy.profiler.predict_cli", str(artifact), str(more), "-o", str(out))
    assert r.returncode == 2 and "cannot read picture" in r.stderr
    assert {f: (out / f).read_bytes() for f in files_under(out)} == before
    # one writer at a time: another run into the same -o is refused, and cannot take the first one's answers
    from autotimm_deploy.exporter.core.files import folder_lock

    with folder_lock(out):
        r = call_cli("autotimm_deploy.profiler.predict_cli", str(artifact), str(pictures), "-o", str(out))
    assert r.returncode == 2 and "another autotimm command is writing into" in r.stderr
    # -o inside the pictures' folder: a second run does not answer the first one's answers
    inside = more / "seen"
    for _ in range(2):
        (more / "zz.jpg").unlink(missing_ok=True)
        r = call_cli("autotimm_deploy.profiler.predict_cli", str(artifact), str(more), "-o", str(inside), "--json")
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)["results"]) == 4


def test_cli_errors_are_one_line_and_leave_nothing(tmp_path, pictures):
    artifact = _export(tmp_path / "a", ModelSpec("test_resnet", num_classes=3, img_size=(64, 64)))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(artifact.read_bytes())
    edited = tmp_path / "edited" / artifact.name  # its own manifest, edited to a size the graph does not take
    edited.parent.mkdir()
    edited.write_bytes(artifact.read_bytes())
    j = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    j["inputs"][0]["shape"][2:] = j["preprocessing"]["input_size"][1:] = [32, 32]
    edited.with_name(edited.name + ".json").write_text(json.dumps(j))
    retold = {}  # its manifest edited to another model's: two classes, named; a segmenter
    for key, change in (("names", {"num_classes": 2, "class_names": ["a", "b"]}), ("task", {"task": "semantic-segmentation"}),
                        ("det", {"task": "detection"})):
        retold[key] = tmp_path / key / artifact.name
        retold[key].parent.mkdir()
        retold[key].write_bytes(artifact.read_bytes())
        m = json.loads(artifact.with_name(artifact.name + ".json").read_text())
        m["spec"].update(change)
        retold[key].with_name(artifact.name + ".json").write_text(json.dumps(m))
    retold["nan"] = tmp_path / "nan" / artifact.name  # a mean that overflows float32: NaN scores, exit 0, before
    retold["nan"].parent.mkdir()
    retold["nan"].write_bytes(artifact.read_bytes())
    m = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    m["preprocessing"]["mean"] = [1e38] * 3
    retold["nan"].with_name(artifact.name + ".json").write_text(json.dumps(m))
    retold["fmt"] = tmp_path / "fmt" / artifact.name  # an unknown format: was "no runtime for format; pass --runtime"
    retold["fmt"].parent.mkdir()
    retold["fmt"].write_bytes(artifact.read_bytes())
    m = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    retold["fmt"].with_name(artifact.name + ".json").write_text(json.dumps({**m, "format": "banana"}))
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    mixed = tmp_path / "mixed"  # a good picture, then a broken one: the first answer is not left behind
    mixed.mkdir()
    (mixed / "a.jpg").write_bytes(next(pictures.glob("*.jpg")).read_bytes())
    (mixed / "b.jpg").write_bytes(bad.read_bytes())
    cases = [([str(edited), str(pictures)], "the onnxruntime runtime failed on input [1, 3, 32, 32] float32, the "
                                           "input its manifest describes: "),
             ([str(artifact), str(fifo)], "is neither a picture file nor a folder"),
             ([str(artifact), str(tmp_path / "missing.jpg")], "no such picture"),
             ([str(artifact), str(bad)], "cannot read picture"),
             ([str(artifact), str(empty)], "empty.jpg: the file is empty"),
             ([str(artifact), str(mixed)], "cannot read picture"),
             ([str(lonely), str(pictures)], "no manifest"),
             ([str(retold["names"]), str(pictures)], "the model scores 3 classes but 2 class names were given"),
             ([str(retold["task"]), str(pictures)], "are not a semantic-segmentation model's, as its manifest says"),
             ([str(retold["det"]), str(pictures)], "are not a detection model's, as its manifest says"),  # was "--raw"
             ([str(retold["fmt"]), str(pictures)], "names an unknown format 'banana' (known: "),
             ([str(retold["nan"]), str(pictures)], "the onnxruntime runtime answered NaN in logits on input [1, 3, 64"),
             ([str(artifact), str(pictures), "--class-names", str(names)], "2 class names for a model with 3 classes"),
             ([str(artifact), str(pictures), "-o", str(bad)], "not a folder"),
             ([str(tmp_path / "nothing.onnx"), str(pictures)], "no such file")]
    for i, (args, message) in enumerate(cases):  # the first in a fresh interpreter, as a user runs it
        cli = call_cli if i else run_cli
        r = cli("autotimm_deploy.profiler.predict_cli", *args, *([] if "-o" in args else ["-o", str(tmp_path / "out")]))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], (args, r.stderr)
    assert not (tmp_path / "out").exists()  # not even the folder
    with pytest.raises(UserError, match="holds no pictures"):
        predict(artifact, [tmp_path / "a"])


def test_a_companion_file_names_its_artifact(tmp_path):
    """An OpenVINO (or ncnn) weights file given instead of the artifact: the file to give instead."""
    from autotimm_deploy.profiler.artifact import detect

    (tmp_path / "m.xml").write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"w")
    with pytest.raises(UserError, match=r"m.bin is part of the artifact m.xml: give .*m.xml instead"):
        detect(tmp_path / "m.bin")
    (tmp_path / "other.bin").write_bytes(b"w")
    with pytest.raises(UserError, match="cannot tell what other.bin is: .*give a file autotimm-export wrote"):
        detect(tmp_path / "other.bin")


def test_class_names_travel_in_the_formats_own_metadata(tmp_path):
    """A program holding only the file can still name the answers and preprocess for it."""
    import onnx
    from autotimm_deploy.exporter.formats import get_format

    spec = ModelSpec("test_resnet", num_classes=3, img_size=(64, 64), class_names=NAMES)
    formats = ["onnx"] + ([] if get_format("openvino").unavailable_reason() else ["openvino"])
    results = export(spec, formats, tmp_path, verify=False)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(results[0].artifact)).metadata_props}
    assert props["autotimm_deploy.class_names"] == list(NAMES) and props["autotimm_deploy.task"] == "classification"
    assert props["autotimm_deploy.preprocessing"]["resize"] == "crop"
    if len(results) > 1:
        import openvino as ov

        model = ov.Core().read_model(str(results[1].artifact))
        assert json.loads(model.get_rt_info(["autotimm_deploy", "class_names"]).astype(str)) == list(NAMES)
    with pytest.raises(UserError, match="2 class names for a model with 3 classes"):
        ModelSpec("test_resnet", num_classes=3, class_names=("a", "b"))
    for bad in ("b\nc", "\u202ex", "x\x1b[2J"):  # a row split, reversed text, a terminal escape
        with pytest.raises(UserError, match="no control characters"):
            ModelSpec("test_resnet", num_classes=3, class_names=("a", bad, "c"))
    assert ModelSpec("test_resnet", num_classes=3, class_names=("chat", "café", "猫")).class_names[2] == "猫"


def test_pictures_of_every_kind_are_read_as_rgb(tmp_path):
    """Grey, palette, RGBA, CMYK and 16-bit files become 8-bit RGB of the picture's size; EXIF
    orientation turns the picture upright for OpenCV-read models (AutoTimm's dense tasks), as cv2.imread does."""
    import cv2
    import skimage.data
    from PIL import Image

    rgb = skimage.data.chelsea()
    cases = {"grey.png": Image.fromarray(rgb).convert("L"), "palette.png": Image.fromarray(rgb).convert("P"),
             "rgba.png": Image.fromarray(rgb).convert("RGBA"), "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
             "deep.png": Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))}
    for name, img in cases.items():
        img.save(tmp_path / name)
        out = read_picture(tmp_path / name, {})
        assert out.shape == (300, 451, 3) and out.dtype == np.uint8, name
    assert np.array_equal(read_picture(tmp_path / "deep.png", {})[..., 0], rgb[..., 0])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(rgb).save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=95)
    upright = read_picture(tmp_path / "turned.jpg", {"library": "cv2"})
    reference = cv2.cvtColor(cv2.imread(str(tmp_path / "turned.jpg")), cv2.COLOR_BGR2RGB)
    assert upright.shape == reference.shape == (451, 300, 3)
    assert np.abs(upright.astype(int) - reference.astype(int)).max() <= 2  # (two JPEG decoders)
    assert read_picture(tmp_path / "turned.jpg", {"library": "pil"}).shape == (300, 451, 3)  # PIL's own loader


def test_answer_names_differ_beyond_case_and_scratch_is_no_picture(tmp_path):
    """Cat.jpg and cat.png would write one file on macOS and Windows; a scratch folder a killed run left
    inside -o (inside the pictures' folder) holds no pictures to answer."""
    from autotimm_deploy.profiler.predict_cli import _not_answers, _outputs

    files = [tmp_path / "Cat.jpg", tmp_path / "cat.png"]
    assert list(_outputs(tmp_path / "out", files).values()) == ["Cat", "cat-2"]
    left = tmp_path / "out" / ".autotimm-99999-predict-x" / "dog.pred.png"
    kept = _not_answers([*files, left, tmp_path / "out" / "dog.pred.png"], [str(tmp_path)], tmp_path / "out")
    assert kept == files
