"""Runtimes on a tiny exported model, the profiler API and CLI, its renderers and bad inputs."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.formats import get_format
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.pipeline import profile
from autotimm_deploy.profiler.artifact import open_artifact
from autotimm_deploy.profiler.runtimes import RUNTIMES, available_runtimes, runtime_class
from autotimm_deploy.profiler.targets import open_target, resolve
from autotimm_deploy.profiler.report.table import skipped_text

from tests.conftest import SMALL, call_cli, files_under, run_cli

FAST = HarnessConfig(max_time=0.3, warmup_time=0.1, min_samples=3)


# every runtime of an artifact file (a served model, the triton runtime, is measured in tests/test_triton.py)
@pytest.mark.parametrize("runtime", [r for r in available_runtimes("cpu") if r not in ("eager", "aoti", "triton")])
def test_each_runtime_matches_eager(small_artifacts, runtime):
    model = build_model(SMALL)
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))[0].numpy()
    fmt = runtime_class(runtime).formats[0]
    if fmt not in small_artifacts:  # the runtime is installed, its exporter not (LiteRT's converter venv)
        pytest.skip(f"{fmt} does not export here: {get_format(fmt).unavailable_reason()}")
    target = resolve(str(small_artifacts[fmt]), runtime)
    with open_target(target, "cpu", threads=1) as s:
        lo, hi = s.batch_range()  # unbounded, or an ExecuTorch program's planned bound
        assert lo == 1 and (hi is None or hi >= 3)
        out = s.infer({"input": x})
    np.testing.assert_allclose(out["logits"], ref, rtol=1e-4, atol=1e-5)


def test_eager_runtime_options():
    target = resolve("test_resnet", img_size=(64, 64))
    for opts in ({}, {"channels_last": True}, {"bf16": True}):
        with open_target(target, "cpu", threads=1, options=opts) as s:
            out = s.infer(s.random_arrays(2))
        assert out["logits"].shape == (2, 1000) and out["logits"].dtype == np.float32


def test_profile_report_schema_and_compare_eager(small_artifacts):
    report = profile([str(small_artifacts["onnx"])], Settings(batch_sizes=[1, 2], harness=FAST), compare_eager=True)
    assert report["schema_version"] == 1 and report["settings"]["copies_timed"] is True
    assert report["settings"]["isolate"] is False  # one group: measured in this process
    eager, onnx_run = report["runs"]
    assert eager["runtime"] == "eager" and eager["baseline"] is None
    assert onnx_run["runtime"] == "onnxruntime" and onnx_run["baseline"] == "test_resnet [eager]"
    for run in report["runs"]:
        assert [p["batch"] for p in run["points"]] == [1, 2]
        for p in run["points"]:
            st = p["stats_ms"]
            assert st["n"] >= 3 and st["min"] <= st["p50"] <= st["p90"] <= st["p95"] <= st["p99"] <= st["max"]
            assert st["ci_low"] <= st["p50"] <= st["ci_high"]
            assert p["images_per_s"] == pytest.approx(p["batch"] / (st["p50"] / 1e3))
        assert run["points"][0]["speedup_vs_batch1"] == 1.0
        assert run["memory"]["peak_rss_mb"] > 0
    vs = onnx_run["points"][0]["vs_baseline"]
    assert vs["rounds"] >= 1 and (vs["ci_low"] is None) == (vs["rounds"] < 6)  # no 95 % CI under 6
    assert vs["ci_low"] is None or vs["ci_low"] <= vs["ratio"] <= vs["ci_high"]
    assert report["environment"]["cpu"] and report["environment"]["packages"]["onnxruntime"]


def test_static_artifact_profiles_only_its_batch(tmp_path):
    from autotimm_deploy.exporter.formats import ExportOptions

    (r,) = export(SMALL, ["onnx"], tmp_path, ExportOptions(static=True, batch_size=2), verify=False)
    report = profile([str(r.artifact)], Settings(batch_sizes=[1, 2, 4], harness=FAST))
    (run,) = report["runs"]
    assert [p["batch"] for p in run["points"]] == [2] and run["batches_skipped"] == [1, 4]
    assert skipped_text(run, [1, 2, 4]).endswith("batch sizes 1, 4 skipped (outside its batch range)")
    # batch 2 not asked (--batch-sizes 1,4): the table says it was measured instead
    assert skipped_text(run, [1, 4]).endswith("skipped (outside its batch range); measured at its fixed batch 2 instead")


def test_cli_isolated_with_every_renderer(small_artifacts, tmp_path):
    paths = {k: tmp_path / f"r.{k}" for k in ("json", "csv", "md", "png")}
    onnx, ts = small_artifacts["onnx"], small_artifacts["torchscript"]
    p = run_cli("autotimm_deploy.profiler.cli", str(onnx), str(ts), "--batch-sizes", "1,2",
                "--max-time", "0.3", "--warmup-time", "0.1", "--threads", "1",
                "--json", str(paths["json"]), "--csv", str(paths["csv"]), "--markdown", str(paths["md"]),
                "--plot", str(paths["png"]))
    assert p.returncode == 0, p.stderr
    report = json.loads(paths["json"].read_text())
    assert report["settings"]["isolate"] is True and report["environment"]["threads"] == 1
    assert [r["runtime"] for r in report["runs"]] == ["onnxruntime", "torchscript"]
    # each group ran in its own process: the memory each reports holds only its own session
    assert [r["memory"]["process_holds"] for r in report["runs"]] == [["test_resnet.onnx [onnxruntime]"],
                                                                       ["test_resnet.pt [torchscript]"]]
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("target,runtime,device,batch,median_ms") and len(csv_lines) == 5
    medians = [r["points"][0]["stats_ms"]["p50"] for r in report["runs"]]
    md = paths["md"].read_text()
    assert md.count("| test_resnet.") == 4 and f"{medians[0]:.3f}" in md and f"{medians[1]:.3f}" in md
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(paths["png"])).shape[0] > 100
    assert "median ms" in p.stdout  # the rich table


def test_few_iterations_say_there_is_no_interval(small_artifacts, tmp_path):
    """--iterations 2: two samples hold no 95 % interval of the median. Every renderer says so
    (JSON null, an empty CSV cell, "no CI" in the table and Markdown) and the plot draws no whisker;
    none of them prints an interval of [x, x]."""
    paths = {k: tmp_path / f"r.{k}" for k in ("json", "csv", "md", "png")}
    p = call_cli("autotimm_deploy.profiler.cli", str(small_artifacts["onnx"]), "--compare-eager", "--no-isolate",
                 "--iterations", "2", "--warmup-time", "0", "--json", str(paths["json"]), "--csv", str(paths["csv"]),
                 "--markdown", str(paths["md"]), "--plot", str(paths["png"]))
    assert p.returncode == 0, p.stderr
    runs = json.loads(paths["json"].read_text())["runs"]
    onnx_point = next(r for r in runs if r["runtime"] == "onnxruntime")["points"][0]
    assert onnx_point["stats_ms"]["n"] == 2 and onnx_point["stats_ms"]["ci_low"] is None
    assert onnx_point["vs_baseline"]["rounds"] == 2 and onnx_point["vs_baseline"]["ci_high"] is None
    row = next(r for r in csv.DictReader(paths["csv"].open()) if r["runtime"] == "onnxruntime")
    assert row["ci_low_ms"] == row["speedup_ci_high"] == "" and float(row["median_ms"]) > 0
    assert "(no CI: <6 rounds)" in paths["md"].read_text() and "(no CI:" in p.stdout  # (the table wraps its cells)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_json_to_stdout_and_eager_by_name():
    p = call_cli("autotimm_deploy.profiler.cli", "test_resnet", "--img-size", "64", "--iterations", "3", "--warmup-time", "0",
                 "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    (run,) = report["runs"]
    assert run["runtime"] == "eager" and run["points"][0]["stats_ms"]["n"] == 3
    assert run["target"]["img_size"] == [64, 64]
    assert "median ms" in p.stderr and "test_resnet [eager]" in p.stderr  # labels are not eaten as markup


def _corrupt_files(tmp, small_artifacts):
    trunc = tmp / "trunc.onnx"
    trunc.write_bytes(small_artifacts["onnx"].read_bytes()[:5000])
    rnd = tmp / "random.onnx"
    rnd.write_bytes(os.urandom(4096))
    rndpt = tmp / "random.pt"
    rndpt.write_bytes(os.urandom(4096))
    weird = tmp / "model.bin"
    weird.write_bytes(b"1234")
    empty = tmp / "empty.pt2"
    empty.write_bytes(b"")
    return {"folder": tmp, "onnx": small_artifacts["onnx"], "trunc": trunc, "random": rnd, "randompt": rndpt,
            "weird": weird, "empty": empty}


BAD = {
    "missing file": (["nope/model.onnx"], "no such file"),
    "truncated onnx": (["{trunc}"], "not a valid ONNX file"),
    "random bytes onnx": (["{random}"], "not a valid ONNX file"),
    "random bytes torchscript": (["{randompt}"], "not a valid TorchScript file"),
    "unknown extension": (["{weird}"], "unknown extension .bin and no manifest"),
    "empty file": (["{empty}"], "is empty"),
    "not a file nor a model": (["resnet5000"], "unknown timm model"),
    "cuda without gpu": (["test_resnet", "--device", "cuda"], "no CUDA GPU"),
    "bad batch sizes": (["test_resnet", "--batch-sizes", "0,x"], "--batch-sizes"),
    "no target": ([], "at least one"),
    "directory target": (["{folder}"], "is not a file"),
    "report into missing folder": (["test_resnet", "--json", "no/such/dir/r.json"], "does not exist"),
    "unknown runtime": (["{onnx}", "--runtime", "tflite"], "unknown runtime"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2(case, small_artifacts, tmp_path):
    if case == "cuda without gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    files = _corrupt_files(tmp_path, small_artifacts)
    args, message = BAD[case]
    args = [a.format(**files) for a in args]
    p = call_cli("autotimm_deploy.profiler.cli", *args, "--iterations", "2", "--csv", str(tmp_path / "out.csv"))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "out.csv").exists()


def test_missing_runtime_names_the_extra(monkeypatch, small_artifacts):
    monkeypatch.setattr(RUNTIMES["onnxruntime"], "extra", "gpu")
    monkeypatch.setattr(RUNTIMES["onnxruntime"], "requires", ("surely_not_installed_mod",))
    with pytest.raises(UserError, match=r"install the \[gpu\] extra"):
        open_artifact(small_artifacts["onnx"], manifest=load_manifest(small_artifacts["onnx"]))


def test_a_missing_or_broken_runtime_is_one_line(monkeypatch, small_artifacts, tmp_path):
    """onnxruntime is one of our own dependencies (it was "install the [dev] extra"); an installed runtime
    whose import fails was an internal ImportError; an export checked by a missing runtime went ahead and
    kept every artifact as failed."""
    monkeypatch.setattr(RUNTIMES["onnxruntime"], "requires", ("surely_not_installed_mod",))
    with pytest.raises(UserError, match=r"surely_not_installed_mod\) is not installed, though autotimm-deploy "
                                        r"depends on it: install it again \(pip install --force-reinstall"):
        open_artifact(small_artifacts["onnx"], manifest=load_manifest(small_artifacts["onnx"]))
    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.exporter.pipeline import export

    with pytest.raises(UserError, match="is not installed, though autotimm-deploy depends on it"):
        export(ModelSpec("test_resnet", img_size=(64, 64)), ["onnx"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()

    def broken(self, *args, **kwargs):
        raise ImportError("libonnxruntime.so: cannot open shared object file")

    monkeypatch.setattr(RUNTIMES["onnxruntime"], "__init__", broken)
    with pytest.raises(UserError, match=r"the onnxruntime runtime is installed but cannot be imported "
                                        r"\(libonnxruntime.so: cannot open shared object file\): install it again"):
        open_artifact(small_artifacts["onnx"], manifest=load_manifest(small_artifacts["onnx"]))


@pytest.mark.parametrize("fmt", ["litert", "executorch"])
def test_edge_runtimes_print_nothing_of_their_own(fmt, small_artifacts, tmp_path):
    """LiteRT printed "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on every run, ExecuTorch
    its C++ resize messages before a one-line error."""
    from PIL import Image
    from skimage import data

    if fmt not in small_artifacts:
        pytest.skip(f"{fmt} is not exported here")
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.jpg")
    # fresh interpreters: what C++ writes to the process's stderr (call_cli holds C's stderr elsewhere)
    r = run_cli("autotimm_deploy.profiler.predict_cli", str(small_artifacts[fmt]), str(tmp_path / "cat.jpg"), "--json")
    assert r.returncode == 0 and r.stderr.lstrip().startswith("autotimm-predict"), r.stderr
    if fmt != "executorch":
        return
    edited = tmp_path / "edited" / small_artifacts[fmt].name  # its manifest edited to a size it holds no memory for
    edited.parent.mkdir()
    edited.write_bytes(small_artifacts[fmt].read_bytes())
    m = json.loads(small_artifacts[fmt].with_name(small_artifacts[fmt].name + ".json").read_text())
    m["inputs"][0]["shape"][2:] = m["preprocessing"]["input_size"][1:] = [256, 256]
    edited.with_name(edited.name + ".json").write_text(json.dumps(m))
    r = run_cli("autotimm_deploy.profiler.predict_cli", str(edited), str(tmp_path / "cat.jpg"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_artifact_without_manifest(small_artifacts, tmp_path):
    import shutil

    bare = tmp_path / "bare.pt"
    shutil.copy(small_artifacts["torchscript"], bare)
    p = call_cli("autotimm_deploy.profiler.cli", str(bare), "--iterations", "2", "--warmup-time", "0")
    assert p.returncode == 2 and "pass --img-size" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = call_cli("autotimm_deploy.profiler.cli", str(bare), "--img-size", "64", "--iterations", "2", "--warmup-time", "0", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["runs"][0]["runtime"] == "torchscript"
    onnx_bare = tmp_path / "bare.onnx"  # ONNX knows its own input shape
    shutil.copy(small_artifacts["onnx"], onnx_bare)
    p = call_cli("autotimm_deploy.profiler.cli", str(onnx_bare), "--iterations", "2", "--warmup-time", "0", "--json")
    assert p.returncode == 0, p.stderr


def test_manifest_size_mismatch_is_refused(small_artifacts, tmp_path):
    import shutil

    for f in (small_artifacts["torchscript"], small_artifacts["torchscript"].with_name("test_resnet.pt.json")):
        shutil.copy(f, tmp_path / f.name)
    art = tmp_path / "test_resnet.pt"
    with open(art, "ab") as f:
        f.write(b"extra")
    with pytest.raises(UserError, match="its manifest says"):
        resolve(str(art))
    assert files_under(tmp_path) == ["test_resnet.pt", "test_resnet.pt.json"]
