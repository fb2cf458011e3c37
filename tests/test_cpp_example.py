"""The AOTInductor C++ example (docs/examples/aoti/predict.cpp): built against the torch wheel, it runs
an --embed-preprocessing package on a picture file with no preprocessing of its own. Its own file,
so the test workers can run it beside the rest (two AOTInductor compiles and a C++ build)."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions, get_format
from autotimm_deploy.exporter.pipeline import export

from tests.conftest import ROOT

if get_format("aoti").unavailable_reason():
    pytest.skip(get_format("aoti").unavailable_reason(), allow_module_level=True)


@pytest.mark.slow
def test_cpp_example_answers_from_a_picture_file(tmp_path):
    """docs/examples/aoti/predict.cpp, built against the torch wheel, reads a picture file and runs an
    --embed-preprocessing package with no preprocessing of its own: its top-5 is autotimm-predict's,
    and a detector's boxes (in the picture's pixels) are autotimm-predict's."""
    from autotimm_deploy.profiler.predict import predict
    from PIL import Image
    from skimage import data

    exe = subprocess.run(["bash", str(ROOT / "docs/examples/aoti/build.sh"), str(tmp_path / "predict")],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": str(Path(
                             __import__("sys").executable))}, timeout=600)
    assert exe.returncode == 0, exe.stderr[-2000:]
    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.ppm")  # 451 x 300
    embed = ExportOptions(embed_preprocessing="nhwc")
    # stretched: PIL's antialiased resize to a fixed size (a centre crop's resize to a size written in the
    # picture's, ten minutes of Inductor's compile, is left to tests/test_embedded.py's other formats)
    (cls,) = export(ModelSpec("test_resnet", num_classes=7, img_size=(64, 64), preprocess={"resize": "stretch"}),
                    ["aoti"], tmp_path / "cls", embed)
    (det,) = export(ModelSpec("test_resnet", task="detection", num_classes=3, img_size=(128, 128),
                              head={"fpn_channels": 16, "max_detections": 5}, preprocess={"resize": "letterbox"}),
                    ["aoti"], tmp_path / "det", embed)
    assert cls.ok and det.ok, (cls.parity and cls.parity.failures, det.parity and det.parity.failures)
    for artifact in (cls.artifact, det.artifact):
        run = subprocess.run([str(tmp_path / "predict"), str(artifact), str(tmp_path / "chelsea.ppm")],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        got = [line.split() for line in run.stdout.strip().splitlines()]
        (want,) = predict(artifact, [tmp_path / "chelsea.ppm"])
        if want.top:
            assert [int(g[0]) for g in got] == [t["label"] for t in want.top]
            np.testing.assert_allclose([float(g[1]) for g in got], [t["prob"] for t in want.top], atol=2e-6)
        else:
            assert len(got) == len(want.detections) > 0
            for g, d in zip(got, want.detections):
                assert int(g[0]) == d["label"] and abs(float(g[1]) - d["score"]) < 1e-5
                np.testing.assert_allclose([float(v) for v in g[2:]], d["box"], atol=0.02)
    # a bad picture: one line on stderr, exit 1
    (tmp_path / "bad.ppm").write_bytes(b"P3\n1 1\n255\n0 0 0\n")
    bad = subprocess.run([str(tmp_path / "predict"), str(cls.artifact), str(tmp_path / "bad.ppm")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip() == f"predict: {tmp_path / 'bad.ppm'} is not a binary PPM (P6) picture"
