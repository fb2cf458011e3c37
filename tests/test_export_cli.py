"""``autotimm-export`` as a user runs it, with its exit codes and streams: the first test in a fresh
interpreter, the rest through its entry point in this process (tests/conftest.py's `call_cli`)."""

import json
import os

import pytest
import torch

from tests.conftest import files_under, run_cli


def test_export_json_and_table(tmp_path):
    out = tmp_path / "out"
    p = run_cli("autotimm_deploy.exporter.cli", "test_resnet", "--img-size", "64", "--num-classes", "4", "-f",
                "onnx,torchscript", "-o", str(out), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)  # stdout is pure JSON; the table went to stderr
    assert [r["format"] for r in data["results"]] == ["onnx", "torchscript"]
    assert all(r["ok"] and r["parity"]["verdict"] == "pass" for r in data["results"])
    assert "autotimm-export" in p.stderr and "pass" in p.stderr
    assert files_under(out) == ["test_resnet.onnx", "test_resnet.onnx.json", "test_resnet.pt", "test_resnet.pt.json"]
    # again without --force: refused, nothing touched
    again = run_cli("autotimm_deploy.exporter.cli", "test_resnet", "--img-size", "64", "-f", "onnx", "-o", str(out))
    assert again.returncode == 2 and "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_list_formats(export_cli):
    p = export_cli("--list-formats", "--json")
    assert p.returncode == 0
    rows = {r["format"]: r for r in json.loads(p.stdout)}
    assert {"onnx", "torchscript", "pt2"} <= set(rows) and rows["onnx"]["available"]


def _bad_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(256))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    return garbage, wrong


BAD = {
    "unknown model": (["resnet5000"], "unknown timm model"),
    "unknown format": (["test_resnet", "-f", "onnx,tflite", "--img-size", "64"], "unknown format 'tflite'"),
    "bad size text": (["test_resnet", "--img-size", "0"], "--img-size"),
    "impossible size": (["test_vit", "--img-size", "50"], "cannot run at 50x50"),
    "bad task": (["test_resnet", "--task", "pose"], "invalid choice"),
    "no model": ([], "give a timm model name"),
    "pretrained offline": (["test_resnet", "--pretrained", "--img-size", "64"], "could not load pretrained weights"),
    "missing checkpoint": (["test_resnet", "--checkpoint", "nope.pth", "--img-size", "64"], "checkpoint not found"),
    "missing checkpoint as the model": (["nope.ckpt"], "nor is there a checkpoint file of that name"),
    "state dict as the model": (["{wrong}"], "name the model: autotimm-export MODEL --checkpoint"),
    "a checkpoint and --pretrained": (["{wrong}", "--pretrained"], "--pretrained does not apply with a checkpoint"),
    "a checkpoint and --architecture builtin": (["--checkpoint", "{wrong}", "--architecture", "builtin"],
                                                "an AutoTimm checkpoint names its own model: leave --architecture "
                                                "builtin out"),
    "a folder named as a checkpoint": (["{folder}"], "is a folder, not a checkpoint file"),
    "an empty checkpoint": (["{empty}"], "is empty (0 bytes): an interrupted save or copy?"),
    "garbage checkpoint": (["test_resnet", "--checkpoint", "{garbage}", "--img-size", "64"], "cannot read checkpoint"),
    "wrong checkpoint": (["test_resnet", "--checkpoint", "{wrong}", "--img-size", "64"], "does not match the model"),
    "opset out of range": (["test_resnet", "--opset", "99", "--img-size", "64"], "--opset 99 is out of range"),
    "in chans": (["test_resnet", "--in-chans", "0", "--img-size", "64"], "--in-chans"),
    "instance option": (["test_resnet", "--task", "instance-segmentation", "--img-size", "128", "--raw"],
                        "--raw does not apply to instance-segmentation"),
    "detection size": (["test_resnet", "--task", "detection", "--img-size", "100"], "must be divisible by 128"),
    "option for another task": (["test_resnet", "--fpn-channels", "64", "--img-size", "64"],
                                "--fpn-channels does not apply to classification"),
    "name with a newline": (["test_resnet", "--name", "a\nb", "--img-size", "64"], "--name takes 1 to 200 bytes"),
    "num classes": (["test_resnet", "--num-classes", "0", "--img-size", "64"], "--num-classes"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, export_cli):
    args, message = BAD[case]
    garbage, wrong = _bad_checkpoints(tmp_path)
    (tmp_path / "run.ckpt").mkdir()
    (tmp_path / "empty.ckpt").write_bytes(b"")
    args = [a.format(garbage=garbage, wrong=wrong, folder=tmp_path / "run.ckpt", empty=tmp_path / "empty.ckpt")
            for a in args]
    out = tmp_path / "out"
    p = export_cli(*args, "-o", str(out))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert files_under(out) == []


def test_unwritable_output(tmp_path, export_cli):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = export_cli("test_resnet", "--img-size", "64", "-o", str(blocker))
    assert p.returncode == 2 and "not a folder" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = export_cli("test_resnet", "--img-size", "64", "-o", str(blocker / "sub"))
    assert p.returncode == 2 and "cannot create output folder" in p.stderr


def test_failed_parity_exits_1(tmp_path, monkeypatch, capsys):
    import autotimm_deploy.exporter.parity as v
    from autotimm_deploy.exporter.cli import entry

    monkeypatch.setitem(v.TOLERANCES, "fp32", v.Tolerance(max_rel=-1, max_abs=-1, cosine=2, delta_cosine=2, top1=2, tie_margin=0, pixel=2))
    monkeypatch.setattr("autotimm_deploy.exporter.parity_exact.FACTOR", 0.0)  # no allowance against float64 either
    assert entry(["test_resnet", "--img-size", "64", "-f", "torchscript", "-o", str(tmp_path), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["results"][0]["parity"]["verdict"] == "fail"
    assert entry(["test_resnet", "--img-size", "64", "-f", "torchscript", "-o", str(tmp_path), "--force",
                  "--no-verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["parity"] is None


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_interrupted_export_leaves_nothing(tmp_path, signame):
    """A signal in the middle of an export: one line, exit 128 + signal, no artifact, no scratch folder."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "autotimm_deploy.exporter.cli", "resnet18", "--img-size", "64", "-f",
                             "torchscript,onnx,pt2", "-o", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.glob(".autotimm-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(out.glob(".autotimm-*")), "the export never started"
    sig = getattr(signal, signame)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig and f"interrupted ({signame})" in err and len(err.strip().splitlines()) == 1
    leftover = [p.name for p in out.iterdir() if not p.name.endswith((".pt", ".pt.json"))] if out.exists() else []
    assert leftover == []  # torchscript may have finished and been installed; nothing partial remains
    assert out.exists() == any(out.glob("*.pt"))  # the folder it made goes when nothing was kept in it


def test_task_heads_through_the_cli(tmp_path, export_cli):
    p = export_cli("test_resnet", "--task", "detection", "--img-size", "128", "--fpn-channels", "32",
                   "-f", "torchscript", "-o", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "test_resnet-det.pt" in p.stdout and "matched=100.0%" in p.stdout
    p = export_cli("test_resnet", "--task", "semantic-segmentation", "--argmax", "--img-size", "64",
                   "-f", "torchscript", "-o", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "test_resnet-fcn.pt" in p.stdout and "pixels=100.00%" in p.stdout


def test_the_preprocessing_line_describes_each_resize():
    """What an AutoTimm checkpoint's export says it assumed: each resize mode in its own words, with
    the flags that change it (a letterbox has no crop, and its pad value is one of them)."""
    from autotimm_deploy.exporter.cli import preprocessing_line

    norm = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    box = preprocessing_line({**norm, "resize": "letterbox", "library": "cv2", "pad_value": [114, 114, 114]},
                             "detection")
    assert box.startswith("letterboxed (longest side to the input, padded [114, 114, 114] center), bilinear as OpenCV")
    assert "crop" not in box and "--resize/--pad-value/--interpolation/--mean/--std" in box
    crop = preprocessing_line({**norm, "crop_pct": 0.875, "interpolation": "bicubic"}, "classification")
    assert crop.startswith("resized to crop 0.875, centre-cropped, bicubic as PIL") and "--crop-pct" in crop
    assert preprocessing_line({**norm, "library": "cv2"}, "semantic-segmentation").startswith("stretched")


def test_in_process_runs_show_what_a_process_would(monkeypatch):
    """tests/conftest.py's `call_cli` (most CLI tests here run through it) shows on stderr what a
    process would: C code's writes to the descriptor, a library's warning no handler takes (and not
    one its own handler takes), a SystemExit's message."""
    import logging
    import sys
    import types

    from tests.conftest import call_cli

    monkeypatch.setattr(logging.getLogger("quiet.lib"), "handlers", [])  # its handler goes with the test

    def entry(argv):
        os.write(2, b"from C\n")
        logging.getLogger("some.lib").warning("a library warning")
        quiet = logging.getLogger("quiet.lib")
        quiet.addHandler(logging.NullHandler())
        quiet.warning("taken by its own handler")
        print("out")
        if argv:
            raise SystemExit("bad thing")
        return 3

    monkeypatch.setitem(sys.modules, "fake_cli", types.SimpleNamespace(entry=entry))
    p = call_cli("fake_cli")
    assert (p.returncode, p.stdout, p.stderr.splitlines()) == (3, "out\n", ["a library warning", "from C"])
    p = call_cli("fake_cli", "x")
    assert p.returncode == 1 and "bad thing" in p.stderr


def test_triton_repo_is_not_the_output_folder(tmp_path, export_cli):
    """Refused before the export, which would have made the folder and left its artifacts behind."""
    out = tmp_path / "out"
    for repository in (out, tmp_path):
        p = export_cli("test_resnet", "--img-size", "64", "-f", "onnx", "-o", str(out), "--triton-repo", str(repository))
        assert p.returncode == 2 and "would hold -o" in p.stderr and len(p.stderr.strip().splitlines()) == 1
        assert not out.exists()


def test_what_a_path_really_is_is_said(tmp_path, export_cli):
    """A broken link as -o, a folder as --checkpoint, a served model given to predict: each said as it is."""
    from autotimm_deploy.exporter.core.errors import UserError
    from autotimm_deploy.profiler.predict import predict

    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    p = export_cli("test_resnet", "--img-size", "64", "-o", str(link))
    assert p.returncode == 2 and "is a broken symbolic link" in p.stderr and not (tmp_path / "gone").exists()
    folder = tmp_path / "best.ckpt"
    folder.mkdir()
    p = export_cli("test_resnet", "--checkpoint", str(folder), "--img-size", "64", "-o", str(tmp_path / "o"))
    assert p.returncode == 2 and "is a folder, not a file" in p.stderr
    with pytest.raises(UserError, match="is a served model: autotimm-predict runs an artifact file"):
        predict("triton://localhost:8000/m", [tmp_path])


def test_names_with_brackets_are_shown_as_they_are(tmp_path, export_cli):
    """The table is rich markup: a file named m[bold]x.pt was shown as mx.pt, and "[dev]" in a parity
    failure vanished."""
    p = export_cli("test_resnet", "--img-size", "64", "-f", "torchscript", "-o", str(tmp_path), "--name", "m[bold]x")
    assert p.returncode == 0, p.stderr
    assert "m[bold]x.pt" in p.stdout + p.stderr and (tmp_path / "m[bold]x.pt").is_file()
