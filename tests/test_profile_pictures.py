"""autotimm-profile --pictures: end-to-end timing from picture file to answer, split into decode,
preprocess, compute, answers, by the one harness; the timed pipeline is the one autotimm-predict runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.artifact import detect, open_artifact
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.picture_timing import STEPS, Folder, Steps, _load, profile_pictures
from autotimm_deploy.profiler.predict import picture_files, picture_pipeline, predict
from conftest import call_cli, run_cli

FAST = HarnessConfig(max_time=0.5, warmup_time=0.0, iterations=3)
DET = ModelSpec("test_resnet", task="detection", num_classes=3, img_size=(128, 128),
                head={"fpn_channels": 16, "max_detections": 10}, preprocess={"resize": "letterbox"})


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("pictures")
    Image.fromarray(skimage.data.chelsea()).save(folder / "chelsea.jpg", quality=95)
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.png")
    Image.fromarray(np.ascontiguousarray(skimage.data.astronaut()[:, 100:380])).save(folder / "astronaut.png")
    return folder


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    (r,) = export(DET, ["onnx"], tmp_path_factory.mktemp("det"))
    assert r.ok, r.error
    return r.artifact


def _same(a, b) -> None:
    assert (a.file, a.width, a.height) == (b.file, b.width, b.height)
    assert len(a.detections) == len(b.detections)
    for x, y in zip(a.detections, b.detections):
        assert x["label"] == y["label"] and np.allclose(x["box"], y["box"], atol=1e-3)


def test_timed_steps_are_predicts_pipeline(detector, pictures):
    """What 'end to end' times gives autotimm-predict's answers, in turn over the folder, batch 2."""
    files = picture_files([pictures])
    _, manifest = detect(detector)
    pipe = picture_pipeline(detector, manifest)
    want = predict(detector, [pictures])
    with open_artifact(detector, manifest=manifest) as session:
        steps = Steps(session, pipe, _load(files, pipe), batch=2)
        assert steps.groups == [[0, 1], [2, 0]]  # the last call filled from the start
        fns = steps.functions()
        got = fns["end to end"]() + fns["end to end"]()
        for a, b in zip(got, [*want, want[0]]):
            _same(a, b)
        decoded = fns["decode"]()
        assert [d.shape for d in decoded] == [steps.folder.pictures[i].shape for i in (0, 1)]
        assert fns["preprocess"]().shape == (2, 3, 128, 128)
        assert set(fns["compute only"]()) >= {"boxes", "scores", "labels"}
        assert len(fns["answers"]()) == 2


def test_report_per_batch_with_eager(detector, pictures):
    settings = Settings(batch_sizes=[1, 2], harness=FAST)
    report = profile_pictures([detector], [pictures], settings, compare_eager=True)
    (run,) = report["end_to_end"]
    assert run["runtime"] == "onnxruntime" and run["task"] == "detection" and run["embedded"] is None
    assert [p["batch"] for p in run["points"]] == [1, 2] and report["pictures"]["found"] == 3
    for p in run["points"]:
        assert set(p["steps_ms"]) == {*STEPS, "end to end (eager)", "compute only (eager)"}
        # three samples hold no 95 % interval of the median (profiler/measure/stats.py): none is made up
        assert all(s["n"] == 3 and s["ci_low"] is s["ci_high"] is None for s in p["steps_ms"].values())
        assert p["speedup_vs_eager"]["ratio"] > 0
        assert p["images_per_s"] == pytest.approx(p["batch"] / p["steps_ms"]["end to end"]["p50"] * 1e3)


def test_embedded_graph_one_picture_per_call(tmp_path, pictures):
    spec = ModelSpec("test_resnet", num_classes=3, img_size=(64, 64))
    (r,) = export(spec, ["onnx"], tmp_path, ExportOptions(embed_preprocessing="nhwc"))
    assert r.ok, r.error
    report = profile_pictures([r.artifact], [pictures / "coffee.png"], Settings(batch_sizes=[1, 4], harness=FAST))
    (run,) = report["end_to_end"]
    assert run["embedded"] == "nhwc" and [p["batch"] for p in run["points"]] == [1]
    assert run["batches_skipped"] == {"batches": [4], "why": "an --embed-preprocessing graph takes one picture per call"}


def test_cli_table_json_markdown(detector, pictures, tmp_path):
    out = tmp_path / "r.json"
    p = run_cli("autotimm_deploy.profiler.cli", str(detector), "--pictures", str(pictures / "coffee.png"),
                "--pictures", str(pictures / "chelsea.jpg"), "--iterations", "3", "--warmup-time", "0",
                "--json", str(out), "--markdown", str(tmp_path / "r.md"))
    assert p.returncode == 0, p.stderr
    assert "end to end ms" in p.stdout and "2 picture(s) used of 2 found" in p.stdout
    report = json.loads(out.read_text())
    assert report["runs"] == [] and report["end_to_end"][0]["points"][0]["batch"] == 1
    assert (tmp_path / "r.md").read_text().startswith("| target | batch | end to end ms |")


@pytest.mark.parametrize("args, says", [
    (["--csv", "x.csv"], "--csv does not apply with --pictures"),
    (["--interleave"], "--interleave does not apply with --pictures"),
    (["--json", "{picture}"], "which this command reads"),  # a report over a picture it reads: refused, not written
    (["--markdown", "{picture}"], "which this command reads"),
])
def test_cli_refuses_what_it_cannot_honour(detector, pictures, tmp_path, args, says):
    picture = picture_files([pictures])[0]
    before = picture.read_bytes()
    args = [a.format(picture=picture) for a in args]
    p = call_cli("autotimm_deploy.profiler.cli", str(detector), "--pictures", str(pictures), *args, cwd=tmp_path)
    assert p.returncode != 0 and says in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "x.csv").exists() and picture.read_bytes() == before


def test_errors_one_line(tmp_path, pictures, detector):
    with pytest.raises(UserError, match="is a model name: --pictures times artifacts"):
        profile_pictures(["resnet18"], [pictures], Settings(harness=FAST))
    with pytest.raises(UserError, match="holds no pictures"):
        profile_pictures([detector], [tmp_path], Settings(harness=FAST))
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(detector.read_bytes())
    with pytest.raises(UserError, match="has no manifest beside it: autotimm-profile --pictures needs"):
        profile_pictures([bare], [pictures], Settings(harness=FAST))


def test_folder_is_decoded_once(detector, pictures):
    files = picture_files([pictures])
    pipe = picture_pipeline(detector, detect(detector)[1])
    folder = _load(files, pipe)
    assert isinstance(folder, Folder) and len(folder.prepared) == 3
    assert folder.prepared[0][0].shape == (3, 128, 128) and folder.prepared[0][1].picture == (512, 280)  # astronaut.png first, in name order
