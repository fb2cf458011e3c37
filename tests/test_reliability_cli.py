"""Issue #30, what earlier rounds left open: report paths, empty list items, flags outside their mode,
short calibration data, recipe references, artifacts --force cannot replace, empty output folders,
PNG modes, the Triton launcher's leftovers and ports, the LiteRT converter beside the venv and the
Core ML unzip. Each test failed on the code before its fix."""

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import autotimm_deploy.exporter.pipeline as pipeline_mod
import autotimm_deploy.exporter.select as select_mod
import numpy as np
import pytest
from autotimm_deploy.exporter.cli import entry as export_entry
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.files import install_artifact
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec, parse_img_size
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.inputs.calibration import load_calibration
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.cli import entry as profile_entry
from autotimm_deploy.recipes.schema import load_recipe

from tests.conftest import files_under

SPEC = ModelSpec("test_resnet", num_classes=4, img_size=(64, 64))
MODEL = ["test_resnet", "--img-size", "64", "--num-classes", "4"]
PREP = {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear", "crop_pct": 1.0}


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    (r,) = export(SPEC, ["onnx"], tmp_path_factory.mktemp("art"), verify=False)
    return r.artifact


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _refused(entry, args, capsys, *words) -> None:
    """``args`` exit 2 with one line on stderr holding every word."""
    assert entry(args) == 2, args
    line = _one_line(capsys)
    assert all(w in line for w in words), line


# a. report paths, -o, list items ---------------------------------------------------------------------
def test_csv_and_markdown_dash_are_stdout_and_write_no_file(onnx_artifact, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fast = [str(onnx_artifact), "--iterations", "2", "--warmup-time", "0", "--no-isolate"]
    assert profile_entry([*fast, "--csv", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("target,runtime,device,batch,") and "test_resnet" in out
    assert profile_entry([*fast, "--markdown", "-"]) == 0
    assert capsys.readouterr().out.startswith("# autotimm-profile report")
    assert files_under(tmp_path) == []  # no file named "-"
    _refused(profile_entry, [*fast, "--csv", "-", "--json", "-"], capsys, "both write to standard output")
    _refused(profile_entry, [*fast, "--plot", "-"], capsys, "--plot writes a PNG file")
    assert files_under(tmp_path) == []


def test_an_empty_out_folder_is_refused(onnx_artifact, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _refused(export_entry, [*MODEL, "-f", "torchscript", "-o", ""], capsys, "-o takes a folder", "-o .")
    _refused(export_entry, ["--recipe", "edge", "-o", " "], capsys, "-o takes a folder")
    _refused(profile_entry, ["--recipe", "edge", "-o", ""], capsys, "-o takes a folder")
    _refused(profile_entry, [str(onnx_artifact), "-o", ""], capsys, "-o takes a folder")
    assert files_under(tmp_path) == []


def test_empty_list_items_are_refused(onnx_artifact, tmp_path, capsys):
    for bad in (",64", "64,", "64,,64", "x64"):
        with pytest.raises(UserError, match="--img-size takes H or H,W"):
            parse_img_size(bad)
    assert parse_img_size(" 64 , 48 ") == (64, 48)
    out = tmp_path / "out"
    _refused(export_entry, ["test_resnet", "--img-size", ",64", "-f", "torchscript", "-o", str(out)], capsys,
             "--img-size", "',64'")
    _refused(export_entry, [*MODEL, "--mean", "0.5,,0.5", "-f", "torchscript", "-o", str(out)], capsys, "--mean")
    assert not out.exists()
    for bad in ("1,,2", ",1", "2,"):
        _refused(profile_entry, [str(onnx_artifact), "--batch-sizes", bad], capsys, "--batch-sizes", repr(bad))
    _refused(profile_entry, ["triton://127.0.0.1:1/m", "--concurrency", "1,,4"], capsys, "--concurrency")


# b. flags outside their mode --------------------------------------------------------------------------
def test_flags_outside_their_mode_are_refused(onnx_artifact, tmp_path, capsys):
    art = str(onnx_artifact)
    _refused(profile_entry, [art, "--force"], capsys, "--force", "--recipe")
    _refused(profile_entry, [art, "--device-io", "--device", "cpu"], capsys, "--device-io applies on CUDA only")
    _refused(profile_entry, [art, "--device-io"], capsys, "--device-io applies on CUDA only", "run on the CPU")
    _refused(profile_entry, [art, "--cuda-graph"], capsys, "--cuda-graph")
    out = tmp_path / "out"
    _refused(export_entry, [*MODEL, "-f", "torchscript", "-o", str(out), "--max-time", "5"], capsys,
             "--max-time", "--target")
    _refused(export_entry, [*MODEL, "-f", "onnx", "-o", str(out), "--calib-samples", "4"], capsys,
             "--calib-samples", "--int8")
    assert not out.exists()


# c. fewer calibration samples than asked -------------------------------------------------------------
def test_calibration_on_fewer_samples_than_asked_is_an_error_naming_both(tmp_path, capsys):
    one = tmp_path / "one.npy"
    np.save(one, np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32))
    with pytest.raises(UserError, match=r"holds 1 samples, fewer than the 4 asked for \(--calib-samples 4\)"):
        load_calibration(str(one), 4, PREP, exact=True)
    data, info = load_calibration(str(one), 32, PREP)  # the default: what there is, said
    assert len(data) == 1 and info["samples"] == 1 and "fewer than the default --calib-samples 32" in info["note"]
    out = tmp_path / "out"
    _refused(export_entry, [*MODEL, "-f", "onnx", "-o", str(out), "--int8", "--calib-data", str(one),
                            "--calib-samples", "4"], capsys, "holds 1 samples", "the 4 asked for")
    assert not out.exists()


def test_calibration_on_fewer_than_the_default_is_said(tmp_path):
    one = tmp_path / "one.npy"
    np.save(one, np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32))
    (r,) = export(SPEC, ["onnx"], tmp_path / "out", ExportOptions(precision="int8", calib_data=str(one)), verify=False)
    assert r.error is None and "calibrated on 1 sample, all that one.npy holds" in r.fallback
    assert "fewer than the default" in load_manifest(r.artifact).export["quantization"]["calibration"]["note"]


# d. recipe references ---------------------------------------------------------------------------------
@pytest.mark.parametrize("reference, line, words", [
    ("{v100_ms: abc}", 3, ("reference v100_ms must be a number", "'abc'")),
    ("{params_m: -1}", 3, ("reference params_m must be a number",)),
    ("{top1: .nan}", 3, ("reference top1",)),
    ("{v100: 1.2}", 3, ("unknown key 'v100' in reference", "did you mean 'v100_ms'")),
])
def test_recipe_reference_values_are_checked_at_load(tmp_path, reference, line, words):
    path = tmp_path / "r.yaml"
    path.write_text(f"recipe: 1\nmodels:\n  - {{model: test_resnet, reference: {reference}}}\nformats: [onnx]\n")
    with pytest.raises(UserError) as e:
        load_recipe(path, tmp_path / "out")
    assert str(e.value).startswith(f"{path}:{line}: ") and all(w in str(e.value) for w in words), str(e.value)
    path.write_text("recipe: 1\nmodels:\n  - {model: test_resnet, reference: {v100_ms: 1.5, top1: 70}}\n"
                    "formats: [onnx]\n")
    assert load_recipe(path, tmp_path / "out").models[0].reference == {"v100_ms": 1.5, "top1": 70}


# e. what --force cannot replace -------------------------------------------------------------------------
def _chattr(flag: str, path: Path) -> bool:
    chattr = shutil.which("chattr")
    return bool(chattr) and subprocess.run([chattr, flag, str(path)], capture_output=True).returncode == 0


def test_an_immutable_artifact_under_force_is_one_line_naming_it(tmp_path, capsys):
    out = tmp_path / "out"
    args = [*MODEL, "-f", "torchscript", "-o", str(out), "--no-verify"]
    assert export_entry(args) == 0
    artifact = out / "test_resnet.pt"
    capsys.readouterr()
    if not _chattr("+i", artifact):
        pytest.skip("chattr +i is not permitted here")
    try:
        _refused(export_entry, [*args, "--force"], capsys, str(artifact), "immutable")
    finally:
        _chattr("-i", artifact)
    assert sorted(files_under(out)) == ["test_resnet.pt", "test_resnet.pt.json"]  # no scratch left


def test_a_permission_error_while_installing_names_the_file(tmp_path, monkeypatch):
    import autotimm_deploy.exporter.core.files as files_mod

    scratch, folder = tmp_path / "scratch", tmp_path / "out"
    scratch.mkdir()
    folder.mkdir()
    (scratch / "a.onnx").write_bytes(b"new")

    def refuse(src, dst):
        raise PermissionError(1, "Operation not permitted", str(src), None, str(dst))

    monkeypatch.setattr(files_mod.os, "replace", refuse)
    with pytest.raises(UserError, match=r"cannot replace .*a\.onnx: Operation not permitted"):
        install_artifact(folder, "a.onnx", {"a.onnx": scratch / "a.onnx"}, b"{}")
    assert files_under(folder) == []


# f. no empty output folder after a refusal ------------------------------------------------------------------
def _full_disk(*_args, **_kw):
    raise UserError("no room (a refusal after the output folder was made)")


def test_a_refused_export_leaves_no_empty_out_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_mod, "check_free_space", _full_disk)
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(UserError, match="no room"):
        export(SPEC, ["torchscript"], out, verify=False)
    assert not (tmp_path / "a").exists()  # every folder it made, none that was there
    out.mkdir(parents=True)
    with pytest.raises(UserError, match="no room"):
        export(SPEC, ["torchscript"], out, verify=False)
    assert out.is_dir()


def test_a_refused_target_search_leaves_no_empty_out_folder(tmp_path, monkeypatch):
    def refuse(*_args, **_kw):
        raise UserError("no candidate could run (a refusal inside the search)")

    monkeypatch.setattr(select_mod, "_search", refuse)
    out = tmp_path / "new" / "out"
    with pytest.raises(UserError, match="no candidate"):
        select_mod.target_cpu(SPEC, out)
    assert not (tmp_path / "new").exists()


# g. PNG modes --------------------------------------------------------------------------------------------
def test_png_reports_respect_the_umask(tmp_path):
    from autotimm_deploy.profiler.report.plot import pyplot, save_png

    old = os.umask(0o022)
    try:
        plt = pyplot()
        save_png(plt.figure(), tmp_path / "chart.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "chart.png").stat().st_mode) == 0o644


# h. the Triton launcher -----------------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_shared_memory_regions_of_ours_are_removed(tmp_path):
    from autotimm_deploy.exporter.triton.server import SHM_PREFIX, remove_stale_regions

    dead, alive = f"{SHM_PREFIX}{_dead_pid()}-ab12-region", f"{SHM_PREFIX}{os.getpid()}-cd34-region"
    foreign = "triton_python_backend_shm_region_1"
    for name in (dead, alive, foreign):
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_regions(tmp_path) == [dead]
    assert remove_stale_regions(tmp_path, prefix=f"{SHM_PREFIX}{os.getpid()}-cd34-") == [alive]  # a stopped serving's
    assert files_under(tmp_path) == [foreign]  # never another program's


def _python_repo(root: Path, with_model: bool = True) -> Path:
    """A repository with one Python-backend model that echoes its input."""
    model = root / "repo" / "echo"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "echo"\nbackend: "python"\nmax_batch_size: 8\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
        'instance_group [ { kind: KIND_CPU, count: 1 } ]\n')
    if with_model:
        (model / "1" / "model.py").write_text(
            "import triton_python_backend_utils as pb\n\n\nclass TritonPythonModel:\n"
            "    def execute(self, requests):\n"
            "        return [pb.InferenceResponse([pb.Tensor('y', pb.get_input_tensor_by_name(r, 'x').as_numpy())])\n"
            "                for r in requests]\n")
    return root / "repo"


def test_a_python_model_without_model_py_fails_at_once(tmp_path):
    from autotimm_deploy.exporter.triton.server import check_model_files

    repo = _python_repo(tmp_path, with_model=False)
    with pytest.raises(UserError, match=r"echo/1/model\.py is missing"):
        check_model_files(repo, ["echo"])
    (repo / "echo" / "1").rmdir()
    with pytest.raises(UserError, match=r"echo/1/model\.py is missing"):
        check_model_files(repo, ["echo"])


def test_picked_ports_are_distinct_and_avoid_the_given_ones():
    from autotimm_deploy.exporter.triton.server import pick_ports

    for _ in range(20):
        ports = pick_ports(None, None)
        assert len(set(ports)) == 3
    assert pick_ports(8000, None)[0] == 8000 and 8000 not in pick_ports(8000, None)[1:]


def _server_missing() -> str | None:
    try:
        from autotimm_deploy.exporter.triton.server import bundled_server

        bundled_server()
    except (ImportError, UserError) as e:
        return str(e)
    return None


needs_server = pytest.mark.skipif(_server_missing() is not None, reason=_server_missing() or "")


@needs_server
def test_serving_fails_fast_without_model_py_and_retries_a_taken_port(tmp_path, monkeypatch):
    import autotimm_deploy.exporter.triton.server as server_mod

    start = time.monotonic()
    with pytest.raises(UserError, match=r"model\.py is missing"):
        with server_mod.serving(_python_repo(tmp_path / "bare", with_model=False)):
            pass
    assert time.monotonic() - start < 10
    real, calls = server_mod.pick_ports, []
    with socket.socket() as taken:  # another program takes the port we picked before the server binds it
        taken.bind(("127.0.0.1", 0))
        taken.listen()

        def pick(http_port, grpc_port):
            calls.append(1)
            ports = real(http_port, grpc_port)
            return (taken.getsockname()[1], *ports[1:]) if len(calls) == 1 else ports

        monkeypatch.setattr(server_mod, "pick_ports", pick)
        with server_mod.serving(_python_repo(tmp_path)) as server:
            assert server.http_port != taken.getsockname()[1] and len(calls) == 2


SERVE = """
import sys, time
from autotimm_deploy.exporter.triton.server import serving
with serving(sys.argv[1]) as server:
    print("ready", flush=True)
    time.sleep(600)
"""


@needs_server
@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_regions_left_by_kill_9_are_removed_by_the_next_start(tmp_path):
    from autotimm_deploy.exporter.triton.server import SHM_PREFIX, serving

    repo = _python_repo(tmp_path)
    before = {p.name for p in Path("/dev/shm").glob(f"{SHM_PREFIX}*")}
    p = subprocess.Popen([sys.executable, "-c", SERVE, str(repo)], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        left = {q.name for q in Path("/dev/shm").glob(f"{SHM_PREFIX}{p.pid}-*")}
        assert left, "the Python backend made no region named after its launcher"
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # launcher, server and stub at once: nobody cleans up
        p.wait()
    time.sleep(1)
    assert all((Path("/dev/shm") / n).exists() for n in left)
    with serving(repo):
        assert not any((Path("/dev/shm") / n).exists() for n in left)
    assert {p.name for p in Path("/dev/shm").glob(f"{SHM_PREFIX}*")} <= before


# i. the LiteRT converter beside the venv -------------------------------------------------------------------
def test_the_litert_converter_is_found_beside_the_running_venv(tmp_path, monkeypatch):
    from autotimm_deploy.exporter.formats import litert_env

    monkeypatch.delenv("AUTOTIMM_LITERT_ENV", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert litert_env.env_dir() == tmp_path / "cache" / "autotimm-deploy" / "litert-env"  # none beside: the cache
    beside = tmp_path / "venv" / "litert-env"
    (beside / "bin").mkdir(parents=True)
    (beside / "bin" / "python").touch()
    (beside / litert_env.READY).write_text(litert_env._main_site() + "\n")
    assert litert_env.env_dir() == beside and litert_env.env_python() == beside / "bin" / "python"
    monkeypatch.setenv("AUTOTIMM_LITERT_ENV", str(tmp_path / "mine"))
    assert litert_env.env_dir() == tmp_path / "mine"  # the variable still wins


# j. unzipping a Core ML package ----------------------------------------------------------------------------
def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], deflate: bool = False) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name, which one case is about
        for info, data in entries:
            z.writestr(info, data)
    return path


def _link(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return (info, target.encode())


@pytest.mark.parametrize("entries, words", [
    ([("m.mlpackage/Manifest.json", b"{}"), ("../evil", b"x")], "a path with .."),
    ([("m.mlpackage/../../evil", b"x")], "a path with .."),
    ([("/tmp/evil", b"x")], "an absolute path"),
    ([("C:/evil", b"x")], "an absolute path"),
    ([("m.mlpackage\\..\\..\\evil", b"x")], "a path with .."),
    ([_link("m.mlpackage/Data", "/etc")], "a symbolic link"),
    ([("m.mlpackage/a", b"1"), ("m.mlpackage/a", b"2")], "an entry twice"),
])
def test_a_core_ml_package_with_a_bad_entry_is_not_unzipped(tmp_path, entries, words):
    from autotimm_deploy.profiler.runtimes.coreml import safe_extract

    archive = _zip(tmp_path / "bad.mlpackage.zip", entries)
    (tmp_path / "into").mkdir()
    with pytest.raises(UserError, match=words):
        safe_extract(archive, tmp_path / "into")
    assert files_under(tmp_path / "into") == [] and not (tmp_path / "evil").exists()


def test_a_core_ml_zip_bomb_is_not_unzipped(tmp_path, monkeypatch):
    import autotimm_deploy.profiler.runtimes.coreml as coreml

    monkeypatch.setattr(coreml, "SLACK", 0)  # the bound: 16 x the archive (plus no slack, to keep it small)
    bomb = _zip(tmp_path / "bomb.mlpackage.zip", [("m.mlpackage/weights.bin", bytes(8 * 2**20))], deflate=True)
    assert bomb.stat().st_size * 100 < 8 * 2**20
    (tmp_path / "into").mkdir()
    with pytest.raises(UserError, match="a zip bomb"):
        coreml.safe_extract(bomb, tmp_path / "into")
    assert files_under(tmp_path / "into") == []
    monkeypatch.setattr(coreml, "MAX_ENTRIES", 3)
    many = _zip(tmp_path / "many.mlpackage.zip", [(f"m.mlpackage/{i}", b"") for i in range(4)])
    with pytest.raises(UserError, match="holds 4 entries"):
        coreml.safe_extract(many, tmp_path / "into")


def test_a_good_core_ml_package_unzips(tmp_path):
    from autotimm_deploy.profiler.runtimes.coreml import safe_extract

    good = _zip(tmp_path / "m.mlpackage.zip", [("m.mlpackage/", b""), ("m.mlpackage/Manifest.json", b"{}"),
                                               ("m.mlpackage/Data/com.apple.CoreML/model.mlmodel", b"spec")])
    (tmp_path / "into").mkdir()
    safe_extract(good, tmp_path / "into")
    assert (tmp_path / "into" / "m.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes() == b"spec"


def test_torchs_chatter_is_not_a_line_before_the_error(capsys):
    """torch's "No CUDA runtime is found" (Inductor, NNCF) and ExecuTorch's pytree notice came before a
    command's one line; --debug keeps them."""
    import argparse
    import logging

    from autotimm_deploy.exporter.core.cli import LIBRARY_CHATTER, run_cli

    def main(a):
        for name in LIBRARY_CHATTER:
            logging.getLogger(name).warning("chatter")
        raise UserError("the one line")

    parser = argparse.ArgumentParser()
    parser.add_argument("--debug", action="store_true")
    levels = {name: logging.getLogger(name).level for name in LIBRARY_CHATTER}
    try:
        assert run_cli("prog", main, parser, []) == 2
        assert capsys.readouterr().err == "prog: error: the one line\n"
        for name in LIBRARY_CHATTER:
            logging.getLogger(name).setLevel(logging.NOTSET)
        run_cli("prog", main, parser, ["--debug"])
        assert capsys.readouterr().err.count("chatter") == len(LIBRARY_CHATTER)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_a_package_that_fails_to_import_is_one_line(capsys):
    """An installed package whose import fails (a shared library missing) was an internal error."""
    import argparse

    from autotimm_deploy.exporter.core.cli import run_cli

    def main(_args):
        raise ImportError("libopenvino.so.2530: cannot open shared object file", name="openvino")

    assert run_cli("autotimm-x", main, argparse.ArgumentParser(), []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["autotimm-x: error: openvino cannot be imported (libopenvino.so.2530: cannot open shared object "
                   "file): the installation is incomplete or broken; install it again (pip install --force-reinstall "
                   "with the extra that provides it)"]


def test_a_path_not_utf8_under_the_locale_is_one_line(tmp_path):
    """Under LC_ALL=C without Python's UTF-8 mode a non-ASCII name reaches Python as undecodable bytes
    (surrogates); onnx.checker, onnxruntime and TorchScript each failed on it with "incompatible arguments"."""
    from autotimm_deploy.exporter.core.errors import UserError
    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.exporter.pipeline import export
    from autotimm_deploy.profiler.artifact import detect

    odd = tmp_path / "caf\udcc3\udca9"
    with pytest.raises(UserError, match="is not valid UTF-8 under this locale"):
        export(ModelSpec("test_resnet", img_size=(64, 64)), ["onnx"], odd)
    artifact = tmp_path / "m\udcc3\udca9.onnx"
    artifact.write_bytes(b"x")
    with pytest.raises(UserError, match="artifact .* is not valid UTF-8 under this locale"):
        detect(artifact)
    assert len(list(tmp_path.iterdir())) == 1  # the artifact alone: no output folder made


def test_our_own_broken_import_is_an_internal_error(capsys):
    """A bug in the project's own imports is not the user's installation."""
    import argparse

    from autotimm_deploy.exporter.core.cli import run_cli

    def main(_args):
        raise ImportError("cannot import name 'nothing'", name="autotimm_deploy.exporter.core.spec")

    assert run_cli("autotimm-x", main, argparse.ArgumentParser(), []) == 1
    assert "internal error: ImportError" in capsys.readouterr().err


def test_answers_go_in_all_or_none(tmp_path):
    """`place_files` (predict -o): on an error the files it replaced are back, nothing of its own stays;
    on success what they replaced is gone from its scratch folder."""
    from autotimm_deploy.exporter.core.files import keeps_replaced, place_files

    out, scratch = tmp_path / "out", tmp_path / "out" / ".autotimm-1-predict-x"
    scratch.mkdir(parents=True)
    (out / "a.pred.png").write_bytes(b"old a")
    (out / "link.pred.png").symlink_to(tmp_path / "elsewhere")
    for name in ("a.pred.png", "link.pred.png"):
        (scratch / name).write_bytes(b"new")
    with pytest.raises(FileNotFoundError):  # the third is missing: the two before are taken back
        place_files(scratch, out, ["a.pred.png", "link.pred.png", "gone.pred.png"])
    assert (out / "a.pred.png").read_bytes() == b"old a" and (out / "link.pred.png").is_symlink()
    assert not (out / "gone.pred.png").exists() and not keeps_replaced(scratch)
    (scratch / "a.pred.png").write_bytes(b"new")
    (scratch / "link.pred.png").write_bytes(b"new")
    place_files(scratch, out, ["a.pred.png", "link.pred.png"])
    assert (out / "a.pred.png").read_bytes() == b"new" and not (out / "link.pred.png").is_symlink()
    assert list(scratch.iterdir()) == []
