"""Reliability and security: nothing outside the output folder is touched, no silent wrong result,
exit codes that keep their promise. One test (or table row) per fault found by a hostile user; each
failed on the code before the fix."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import autotimm_deploy.exporter.core.files as files_mod
import pytest
import torch
from autotimm_deploy.exporter.cli import entry as export_entry
from autotimm_deploy.exporter.core.errors import Fault, UserError, first_line
from autotimm_deploy.exporter.core.files import folder_lock
from autotimm_deploy.exporter.core.manifest import load_manifest, manifest_path
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.cli import entry as profile_entry
from autotimm_deploy.recipes.schema import load_recipe

from tests.conftest import call_cli, files_under

SPEC = ModelSpec("test_resnet", num_classes=4, img_size=(64, 64))


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("art")
    (r,) = export(SPEC, ["onnx"], out, verify=False)
    return r.artifact


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# 1 -----------------------------------------------------------------------------------------------
def test_a_manifest_cannot_make_export_delete_outside_the_folder(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.write_text("keep me")
    (r,) = export(SPEC, ["torchscript"], out, verify=False)
    m = json.loads(r.manifest.read_text())
    m["files"]["../victim"] = {"sha256": "0" * 64, "bytes": 7}
    r.manifest.write_text(json.dumps(m))
    (r,) = export(SPEC, ["torchscript"], out, verify=False, force=True)
    assert r.ok and victim.read_text() == "keep me"
    assert "../victim" not in load_manifest(r.artifact).files


# 3 -----------------------------------------------------------------------------------------------
def test_name_is_honoured_and_must_be_a_plain_stem(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["test_resnet", "--img-size", "64", "-f", "torchscript", "--no-verify", "-o", str(out)]
    assert export_entry([*args, "--name", "mine"]) == 0
    assert (out / "mine.pt").exists() and (out / "mine.pt.json").exists() and not (out / "test_resnet.pt").exists()
    capsys.readouterr()
    for bad in ("../escape", "sub/x", ".hidden"):
        assert export_entry([*args, "--name", bad]) == 2
        assert "--name" in _one_line(capsys)
    assert not (tmp_path / "escape.pt").exists()


# 4 and 11 ----------------------------------------------------------------------------------------
def test_report_paths_never_replace_what_they_should_not(onnx_artifact, tmp_path, capsys):
    art = onnx_artifact
    before = art.read_bytes()
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "elsewhere.csv")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [
        (["--csv", str(art)], "is an exported artifact"),
        (["--json", str(manifest_path(art))], "manifest"),
        (["--markdown", str(link)], "symbolic link"),
        (["--plot", str(fifo)], "FIFO"),
        (["--json", "/dev/null"], "character device"),
        (["--csv", str(tmp_path / "r.csv"), "--markdown", str(tmp_path / "r.csv")], "both write"),
        (["--csv", str(tmp_path / "missing" / "r.csv")], "does not exist"),
    ]
    for extra, message in cases:
        assert profile_entry([str(art), "--iterations", "2", *extra]) == 2, extra
        assert message in _one_line(capsys), extra
    assert art.read_bytes() == before and not (tmp_path / "elsewhere.csv").exists()


def test_recipe_out_is_checked_before_the_search(tmp_path, capsys):
    t0 = time.monotonic()
    code = export_entry(["test_resnet", "--img-size", "64", "--target", "cpu", "-o", str(tmp_path / "out"),
                         "--recipe-out", str(tmp_path / "missing" / "x.yaml")])
    assert code == 2 and "does not exist" in _one_line(capsys)
    assert time.monotonic() - t0 < 5 and not (tmp_path / "out").exists()


# 5 -----------------------------------------------------------------------------------------------
def test_a_second_export_into_a_busy_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):
        code = export_entry(["test_resnet", "--img-size", "64", "-f", "torchscript", "-o", str(out)])
    assert code == 2 and "another autotimm command is writing" in _one_line(capsys)
    assert files_under(out) == []


# 6 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stop", [KeyboardInterrupt, ValueError])
def test_folders_an_export_made_go_when_it_stops_with_them_empty(tmp_path, stop):
    """Ctrl-C (or a signal) before anything was written left the new -o folder behind, empty."""
    (tmp_path / "kept").mkdir()
    with pytest.raises(stop), files_mod.out_dir_for(tmp_path / "kept" / "new" / "deeper"):
        assert (tmp_path / "kept" / "new" / "deeper").is_dir()
        raise stop
    assert files_under(tmp_path) == ["kept"]  # made before: kept


def test_scratch_left_by_a_killed_export_is_removed(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".autotimm-{dead.pid}-abc"
    legacy = out / ".autotimm-k3j2h1ab"  # an older version's scratch, without a pid
    live = out / f".autotimm-{os.getppid()}-live"  # a running process's: left alone
    for d in (stale, legacy, live):
        d.mkdir(parents=True)
        (d / "big.onnx").write_bytes(b"x" * 1000)
    (r,) = export(SPEC, ["torchscript"], out, verify=False)
    assert r.ok and not stale.exists() and not legacy.exists() and live.exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_mod, "open", full, raising=False)
    out = tmp_path / "out"
    with pytest.raises(Fault, match="no space left"):
        export(SPEC, ["torchscript"], out, verify=False)
    assert files_under(out) == []
    assert export_entry(["test_resnet", "--img-size", "64", "-f", "pt2", "-o", str(out)]) == 1
    assert "no space left" in _one_line(capsys) and files_under(out) == []


def test_a_library_failing_on_a_full_disk_in_its_own_words_is_said_to_be_the_disk(tmp_path, monkeypatch):
    """OpenVINO's save_model on a full disk says "basic_ios::clear: iostream error"."""
    from autotimm_deploy.exporter.formats.torchscript import TorchScriptFormat

    out = tmp_path / "out"
    usage = namedtuple("U", "total used free")

    def save(*args, **kwargs):  # the disk fills while the format writes (the check before found room)
        monkeypatch.setattr(files_mod.shutil, "disk_usage", lambda p: usage(2**30, 2**30, 4096))
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(TorchScriptFormat, "export", save)
    with pytest.raises(Fault, match="no space left on the device writing torchscript into"):
        export(SPEC, ["torchscript"], out, verify=False)
    assert files_under(out) == []


def test_too_little_free_space_is_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.setattr(files_mod.shutil, "disk_usage", lambda p: namedtuple("U", "total used free")(1, 1, 1024))
    with pytest.raises(UserError, match="MB free"):
        export(SPEC, ["onnx", "torchscript"], tmp_path / "out")
    assert files_under(tmp_path / "out") == []


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_profiling_worker_never_outlives_the_profiler(sig):
    proc = subprocess.Popen([sys.executable, "-m", "autotimm_deploy.profiler.cli", "test_resnet", "test_vit",
                             "--img-size", "64", "--max-time", "60", "--warmup-time", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.monotonic() + 120, []
    while not workers and time.monotonic() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        time.sleep(0.1)
    assert workers, "no worker started"
    time.sleep(1.0)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert all(_gone(w, 10) for w in workers)


# 7 -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_busy_machine_is_reported_not_hidden(tmp_path):
    burn = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        p = call_cli("autotimm_deploy.profiler.cli", "test_resnet", "--img-size", "64", "--max-time", "2",
                     "--warmup-time", "0.2", "--json")
    finally:
        burn.kill()
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    machine = report["runs"][0]["machine"]
    assert machine["other_busy_cores"] >= 0.25 and machine["cores"] >= 1
    assert any("other processes kept" in w for w in report["warnings"])
    assert "warning: other processes kept" in p.stderr


def test_load_arithmetic():
    from autotimm_deploy.profiler.measure.load import CpuSnapshot, assess, other_busy_cores

    a, b = CpuSnapshot(0, busy_ticks=100, total_ticks=1000, own_ticks=50), CpuSnapshot(1, 700, 2000, 250)
    assert other_busy_cores(a, b, ncpu=2) == pytest.approx((600 - 200) / 1000 * 2)
    m = assess(64, 0.1, a, b, unsettled=["x [eager]"])
    assert any("oversubscribed" in w for w in m.warnings) and any("warm-up never settled" in w for w in m.warnings)


# 8 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage,message", [
    (lambda sd: sd["net.bn1.running_var"].fill_(float("inf")), "NaN/Inf"),
    (lambda sd: sd.__setitem__("net.conv1.0.weight", sd["net.conv1.0.weight"].to(torch.int32)), "stored as int32"),
])
def test_broken_weights_are_refused(tmp_path, damage, message):
    sd = {f"net.{k}": v.clone() for k, v in build_model(SPEC).net.state_dict().items()}
    damage(sd)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(UserError, match=message):
        build_model(SPEC.replace(weights="checkpoint", checkpoint=str(path)))


# 9 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry,args", [
    (profile_entry, ["x.onnx", "--max-time", "inf"]),
    (profile_entry, ["x.onnx", "--target-ci", "0"]),
    (profile_entry, ["x.onnx", "--threads", "1000"]),
    (profile_entry, ["x.onnx", "--max-batch", "100000"]),
    (profile_entry, ["x.onnx", "--iterations", "-3"]),
    (export_entry, ["resnet18", "--calib-samples", "1000000"]),
    (export_entry, ["resnet18", "--max-time", "nan"]),
    (export_entry, ["resnet18", "--batch-size", "0"]),
    (export_entry, ["resnet18", "--score-threshold", "nan"]),
])
def test_unbounded_numbers_are_refused_at_parse_time(entry, args, capsys):
    with pytest.raises(SystemExit) as e:
        entry(args)
    assert e.value.code == 2 and "(see --help)" in _one_line(capsys)


def test_batch_sizes_are_bounded_and_failed_points_fail_the_run(onnx_artifact, monkeypatch, capsys):
    assert profile_entry([str(onnx_artifact), "--batch-sizes", "1,100000"]) == 2
    assert "--batch-sizes takes integers from 1 to 4096" in _one_line(capsys)
    import autotimm_deploy.profiler.pipeline as pipeline

    def with_an_error(targets, settings, **kw):
        return {"schema_version": 1, "environment": {"cpu": "x", "threads": 1, "cores": 1, "packages": {}},
                "settings": {"copies_timed": True, "clock": "perf_counter_ns"}, "warnings": [],
                "runs": [{"target": {"label": "t"}, "runtime": "onnxruntime", "device": "cpu", "baseline": None,
                          "memory": {}, "points": [{"batch": 64, "error": "RuntimeError: out of memory"}]}]}

    monkeypatch.setattr(pipeline, "profile", with_an_error)
    assert profile_entry([str(onnx_artifact)]) == 1
    assert "1 measurement(s) failed" in capsys.readouterr().err


@pytest.mark.parametrize("edit,message", [
    ("name: bomb\na: &a [x, x]\nb: &b [*a, *a]\n", "aliases"),
    ("profile: {iterations: -5}\n", "iterations must be a positive integer"),
    ("profile: {threads: 1000}\n", "threads takes at most"),
    ("profile: {max_time: .inf}\n", "max_time must be seconds"),
    ("batch_sizes: [1, 100000]\n", "up to 4096"),
])
def test_recipe_numbers_and_aliases_are_refused(tmp_path, edit, message):
    path = tmp_path / "r.yaml"
    base = "recipe: 1\nmodels: [test_resnet]\nformats: [onnx]\n"
    path.write_text(base + edit)
    with pytest.raises(UserError, match=message):
        load_recipe(path)


def test_a_huge_recipe_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("recipe: 1\n" + "#" * (2 << 20))
    with pytest.raises(UserError, match="at most"):
        load_recipe(path)


# 10 ----------------------------------------------------------------------------------------------
def test_a_changed_artifact_of_the_same_size_is_caught(onnx_artifact, tmp_path, capsys):
    import shutil

    copy = tmp_path / onnx_artifact.name
    shutil.copy(onnx_artifact, copy)
    shutil.copy(manifest_path(onnx_artifact), manifest_path(copy))
    data = bytearray(copy.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    copy.write_bytes(bytes(data))
    assert profile_entry([str(copy), "--iterations", "2"]) == 2
    assert "sha256" in _one_line(capsys)


# 12 ----------------------------------------------------------------------------------------------
def test_error_lines_are_short_and_without_colour_codes():
    noisy = "\x1b[31mRuntimeError\x1b[0m: " + "graph(%x : Float(*, 3)) " * 500 + "\n" + "more IR\n" * 1000
    line = first_line(RuntimeError(noisy), 200)
    assert "\x1b" not in line and len(line) <= 200 and "\n" not in line
    # OpenVINO says where first and what last: a truncated .bin read "Exception from src/inference/src/cpp/core.cpp:84:"
    openvino = ("Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'is_valid_weights_range(m_weights_provider->"
                "size(), offset, size)' failed at src/core/xml_util/src/xml_deserialize_util.cpp:900:\n"
                "Incorrect weights in bin file!\n\n")
    assert first_line(RuntimeError(openvino)) == "Incorrect weights in bin file!"


def test_a_model_that_fixes_its_batch_is_exported_with_a_static_batch(tmp_path, monkeypatch):
    """CondConv-style graphs defeat both ONNX exporters with a dynamic batch: the graph is exported
    again at a fixed batch, and the manifest says so (a real one: efficientnet_cc_b0_4e)."""
    import autotimm_deploy.exporter.formats.onnx_graph as og

    real = dict(og.EXPORTERS)

    def only_static(name):
        def export_fn(ctx, names):
            if not ctx.options.static:
                raise RuntimeError("Unsupported: ONNX export of convolution for kernel of unknown shape")
            return real[name](ctx, names)
        return export_fn

    for name in real:
        monkeypatch.setitem(og.EXPORTERS, name, only_static(name))
    (r,) = export(SPEC, ["onnx"], tmp_path, ExportOptions(batch_size=2))
    assert r.ok, r.error or r.parity.failures
    m = load_manifest(r.artifact)
    assert m.batch == {"dynamic": False, "min": 2, "max": 2} and m.inputs[0].shape == [2, 3, 64, 64]
    assert "fixed to batch 2" in m.export["fallback"] and r.parity.batches == [2]


# found by a second hostile pass ------------------------------------------------------------------
def test_recipe_num_classes_are_honoured(tmp_path):
    path = tmp_path / "nc.yaml"
    path.write_text("recipe: 1\nmodels: [{model: test_resnet, num_classes: 5}, test_vit]\nformats: [onnx]\n"
                    "num_classes: 7\n")
    jobs = load_recipe(path).export_jobs()
    assert [j.spec.num_classes for j in jobs] == [5, 7]


def test_force_removes_only_the_artifacts_own_stale_companions(tmp_path):
    out = tmp_path / "out"
    export(SPEC, ["onnx", "torchscript"], out, verify=False)
    (out / "notes.txt").write_text("mine")
    pt_manifest = out / "test_resnet.pt.json"
    m = json.loads(pt_manifest.read_text())
    for name in ("test_resnet.onnx", "test_resnet.onnx.json", "notes.txt"):
        m["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    pt_manifest.write_text(json.dumps(m))
    (r,) = export(SPEC, ["torchscript"], out, verify=False, force=True)
    assert r.ok and (out / "notes.txt").exists() and (out / "test_resnet.onnx").exists()
    assert load_manifest(out / "test_resnet.onnx").format == "onnx"


@pytest.mark.parametrize("field,value", [("format", ["onnx"]), ("spec", {"model": "x", "img_size": "64"}),
                                         ("files", {"test_resnet.onnx": {"bytes": "12"}}), ("schema_version", True)])
def test_hand_edited_manifests_are_one_line(onnx_artifact, tmp_path, field, value):
    import shutil

    copy = tmp_path / onnx_artifact.name
    shutil.copy(onnx_artifact, copy)
    data = json.loads(manifest_path(onnx_artifact).read_text())
    data[field] = value
    manifest_path(copy).write_text(json.dumps(data))
    with pytest.raises(UserError):
        load_manifest(copy)


def test_more_user_input_that_used_to_be_an_internal_error(tmp_path, capsys):
    import numpy as np

    out = tmp_path / "out"
    base = ["test_resnet", "--img-size", "64", "-f", "torchscript", "--no-verify", "-o", str(out)]
    with pytest.raises(SystemExit):
        export_entry([*base, "--seed", "9" * 30])
    assert "--seed" in _one_line(capsys)
    assert export_entry([*base, "--name", "x" * 250]) == 2 and "--name" in _one_line(capsys)
    (out / "test_resnet.pt").mkdir(parents=True)
    assert export_entry([*base, "--force"]) == 2 and "is a folder" in _one_line(capsys)
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((4, 3, 64, 64), np.nan, np.float32))
    assert export_entry(["test_resnet", "--img-size", "64", "-f", "onnx", "--int8", "--calib-data", str(nan),
                         "-o", str(tmp_path / "o2")]) == 2
    assert "NaN" in _one_line(capsys)


def test_a_recipe_never_writes_through_a_linked_folder(tmp_path):
    from autotimm_deploy.recipes.runner import run_exports

    path = tmp_path / "r.yaml"
    path.write_text("recipe: 1\nname: lk\nmodels: [test_resnet]\nformats: [torchscript]\nimg_size: 64\n")
    (tmp_path / "out" / "lk").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "lk" / "results").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="symbolic link"):
        run_exports(load_recipe(path, tmp_path / "out"))
    assert list((tmp_path / "elsewhere").iterdir()) == []
