"""Reliability round 3 (#30): what a user hands the tools is bounded before it is trusted. A zip-bomb
checkpoint is refused from its zip directory, before torch inflates it; a manifest's dims and
records are held to the command line's bounds wherever a manifest is read; a runtime or server whose
answers lack the declared outputs fails its point instead of reporting a speed; --triton-repo with an
edge format writes the repository for what Triton serves and lists the rest."""

import io
import json
import re
import shutil
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from autotimm_deploy.exporter.cli import entry as export_entry
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import Manifest, TensorSig, load_manifest, manifest_path
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.cli import entry as profile_entry
from autotimm_deploy.profiler.measure.sweep import sweep
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.runtimes.base import Session

from tests.conftest import files_under

SPEC = ModelSpec("test_resnet", num_classes=4, img_size=(64, 64))
MB = 1 << 20


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("art")
    (r,) = export(SPEC, ["onnx"], out, verify=False)
    return r.artifact


# 2: a zip-bomb checkpoint ------------------------------------------------------------------------
def _rezip(saved: bytes, pad: int = 0, junk: int = 0) -> bytes:
    """``saved`` (torch.save's zip) written again with data.pkl deflated and followed by ``pad``
    zero bytes (the unpickler stops at the pickle's end; torch reads the whole entry), plus ``junk``
    deflated entries of 1 MiB of zeros each. Zeros are streamed: the test holds kilobytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(saved)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if not info.filename.endswith("data.pkl"):
                dst.writestr(info, data)
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(entry, "w", force_zip64=True) as f:
                f.write(data)
                for _ in range(pad // MB):
                    f.write(bytes(MB))
        prefix = src.infolist()[0].filename.split("/")[0]
        for i in range(junk):
            dst.writestr(zipfile.ZipInfo(f"{prefix}/junk{i}"), bytes(MB), compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _state_dict() -> dict:
    return {f"net.{k}": v.clone() for k, v in build_model(SPEC).net.state_dict().items()}


def test_a_zip_bomb_state_dict_is_refused_before_it_is_inflated(tmp_path, capsys):
    from autotimm_deploy.exporter.models.weights import read_state_dict

    saved = _saved(_state_dict())
    deflated = tmp_path / "deflated.pth"  # a checkpoint zipped again, deflated: still weights, still read
    deflated.write_bytes(_rezip(saved))
    assert set(read_state_dict(deflated)) == set(_state_dict())
    bomb = tmp_path / "bomb.pth"
    bomb.write_bytes(_rezip(saved, pad=64 * MB))  # 64 MiB of zeros after the pickle, ~64 KB in the file
    assert bomb.stat().st_size < 2 * MB
    out = tmp_path / "out"
    args = ["test_resnet", "--num-classes", "4", "--img-size", "64", "-f", "onnx", "--no-verify", "-o", str(out)]
    assert export_entry([*args, "--checkpoint", str(bomb)]) == 2
    line = _one_line(capsys)
    assert "data.pkl inflates" in line and "zip bomb" in line and str(bomb) in line
    assert files_under(out) == []


def test_a_zip_bomb_lightning_checkpoint_is_refused(tmp_path):
    from autotimm_deploy.exporter.models.autotimm.checkpoint import read_lightning_checkpoint

    saved = _saved({"state_dict": {"w": torch.ones(3)}, "hyper_parameters": {}})
    bomb = tmp_path / "bomb.ckpt"
    bomb.write_bytes(_rezip(saved, pad=64 * MB))
    with pytest.raises(UserError, match=r"data\.pkl inflates .*zip bomb"):
        read_lightning_checkpoint(bomb)
    many = tmp_path / "many.ckpt"  # no entry past a megabyte, 100 MiB in all from ~100 KB
    many.write_bytes(_rezip(saved, junk=100))
    with pytest.raises(UserError, match=r"entries inflate to 100 MB from a .* file: .*zip bomb"):
        read_lightning_checkpoint(many)
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(saved[:-30])  # the zip directory cut short
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_lightning_checkpoint(damaged)


def test_a_checkpoint_larger_than_free_memory_is_refused(tmp_path, monkeypatch):
    from autotimm_deploy.exporter.models import weights
    from safetensors.torch import save_file

    sd = _state_dict()
    pth, st = tmp_path / "w.pth", tmp_path / "w.safetensors"
    torch.save(sd, pth)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    assert weights.read_state_dict(pth) and weights.read_state_dict(st)
    monkeypatch.setattr(weights, "available_memory", lambda: 4096)
    for path in (pth, st):
        with pytest.raises(UserError, match=r"unpacks to .* in memory, 4 KB is available here"):
            weights.read_state_dict(path)
    monkeypatch.undo()
    forged = tmp_path / "forged.safetensors"  # a header length past the file
    forged.write_bytes((10**12).to_bytes(8, "little") + st.read_bytes()[8:])
    with pytest.raises(UserError, match="its header says it is 1,000,000,000,000 bytes long"):
        weights.read_state_dict(forged)


# 3: a manifest's dims and records are bounded wherever one is read -------------------------------
def _tampered(onnx_artifact, tmp_path, change):
    copy = tmp_path / "t" / onnx_artifact.name
    copy.parent.mkdir()
    shutil.copy(onnx_artifact, copy)
    data = json.loads(manifest_path(onnx_artifact).read_text())
    change(data)
    manifest_path(copy).write_text(json.dumps(data))
    return copy


def test_a_tampered_input_shape_is_refused_by_triton_profile_and_predict(onnx_artifact, tmp_path, capsys):
    from autotimm_deploy.profiler.predict import predict
    from PIL import Image

    copy = _tampered(onnx_artifact, tmp_path, lambda d: d["inputs"][0]["shape"].__setitem__(2, 10**15))
    field = "inputs[0].shape[2] is 1000000000000000, not an integer from 1 to 8192 (the largest picture side)"
    picture = tmp_path / "p.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(picture)
    with pytest.raises(UserError, match=r"manifest .* is malformed: " + re.escape(field)):
        predict(copy, [picture])
    assert profile_entry([str(copy), "--no-isolate", "--batch-sizes", "1", "--max-time", "0.1"]) == 2
    line = _one_line(capsys)
    assert str(manifest_path(copy)) in line and field in line
    pytest.importorskip("tritonclient.grpc", reason="tritonclient (the [triton] extra) is not installed")
    from autotimm_deploy.exporter.triton_cli import entry as triton_entry

    repo = tmp_path / "repo"
    assert triton_entry(["build", str(copy), "-o", str(repo)]) == 2
    line = _one_line(capsys)
    assert str(manifest_path(copy)) in line and field in line and not repo.exists()
    assert files_under(tmp_path / "t") == sorted([copy.name, manifest_path(copy).name])


@pytest.mark.parametrize("change,field", [
    (lambda d: d["inputs"][0]["shape"].__setitem__(0, 10**6), "inputs[0].shape[0] is 1000000"),
    (lambda d: d["inputs"][0]["shape"].__setitem__(1, 0), "inputs[0].shape[1] is 0"),
    (lambda d: d["inputs"][0]["shape"].__setitem__(3, 64.0), "inputs[0].shape[3] is 64.0"),
    (lambda d: d["inputs"][0]["shape"].__setitem__(3, True), "inputs[0].shape[3] is True"),
    (lambda d: d["inputs"][0]["shape"].__setitem__(3, None), "inputs[0].shape[3] is None"),
    (lambda d: d["outputs"][0]["shape"].__setitem__(1, 10**15), "outputs[0].shape[1] is 1000000000000000"),
    (lambda d: d["outputs"][0].update(shape=["batch", 8192, 8192, 8192, 64]), "values per picture"),
    (lambda d: d["outputs"][0].update(shape=["batch"] + [1] * 9), "at most 8 dims"),
    (lambda d: d["batch"].update(max=10**9), "batch.max is 1000000000"),
    (lambda d: d["batch"].update(min=-1), "batch.min is -1"),
    (lambda d: d["batch"].update(dynamic="yes"), "batch.dynamic must be true or false"),
    (lambda d: d.update(size={"dynamic": True, "min": [32, 32], "opt": [64, 64], "max": [9000, 64]}),
     "size.max[0] is 9000"),
    (lambda d: d["preprocessing"].update(input_size=[3, 10**15, 64]), "preprocessing.input_size[1] is 1000000000"),
])
def test_manifest_numbers_past_the_bounds_name_their_field(onnx_artifact, tmp_path, change, field):
    copy = _tampered(onnx_artifact, tmp_path, change)
    with pytest.raises(UserError) as e:
        load_manifest(copy)
    assert field in str(e.value) and str(manifest_path(copy)) in str(e.value) and "\n" not in str(e.value)


def test_manifests_within_the_bounds_still_load(onnx_artifact, tmp_path):
    m = load_manifest(onnx_artifact)
    assert m.inputs[0].shape == ["batch", 3, 64, 64] and m.outputs[0].shape == ["batch", 4]
    copy = _tampered(onnx_artifact, tmp_path, lambda d: (d["inputs"][0].update(shape=[4096, 64, 8192, 8192]),
                                                         d["outputs"][0].update(shape=["batch", "logits_dim1", 0]),
                                                         d["batch"].update(dynamic=False, min=4096, max=4096)))
    assert load_manifest(copy).inputs[0].shape == [4096, 64, 8192, 8192]


# 4: every measured point's answers hold the declared outputs -------------------------------------
class _Answering(Session):
    """A session over a fake runtime that answers with ``answer(batch)``."""

    name = "fake"

    def __init__(self, answer, manifest=None):
        super().__init__(None, manifest or Manifest(
            format="onnx", artifact="m.onnx", spec={}, inputs=[TensorSig("input", "float32", ["batch", 3, 8, 8])],
            outputs=[TensorSig("logits", "float32", ["batch", 4])]))
        self.answer = answer
        self.calls = 0

    def prepare(self, arrays):
        return arrays["input"].shape[0]

    def run(self, batch):
        self.calls += 1
        return self.answer(batch)

    def fetch(self, outputs):
        return outputs


@pytest.mark.parametrize("answer,error", [
    (lambda b: {}, "WrongOutputs: fake answered batch 2 with no outputs"),
    (lambda b: {"logits": None}, "without output 'logits' (declared float32 ['batch', 4])"),
    (lambda b: {"scores": np.zeros((b, 4), np.float32)}, "without output 'logits'"),
    (lambda b: {"logits": np.zeros((1, 4), np.float32)}, "with 'logits' of shape [1, 4] (declared float32"),
    (lambda b: {"logits": np.zeros((b, 5), np.float32)}, "with 'logits' of shape [2, 5]"),
    (lambda b: {"logits": np.zeros((b,), np.float32)}, "with 'logits' of shape [2]"),
    (lambda b: {"logits": np.zeros((b, 4), np.int64)}, "with 'logits' as int64"),
])
def test_a_runtime_answering_without_its_outputs_fails_the_point(answer, error):
    session = _Answering(answer)
    (point,) = sweep([session], [2, 4], HarnessConfig(iterations=3, warmup_window=1), _clock())
    assert point.batch == 2 and point.stats == [] and error in point.error, point.error


def test_checked_answers_pass_untimed_and_placeholders_check_names_only():
    session = _Answering(lambda b: {"logits": np.zeros((b, 4), np.float16)})  # fp16 back for a float32: a float
    clock = _clock()
    points = sweep([session], [1, 2], HarnessConfig(iterations=3, warmup_window=1), clock)
    assert [p.error for p in points] == [None, None] and [p.samples for p in points] == [3, 3]
    # per batch: the warm-up (two windows of 1) and 3 samples timed, one checked call before and after, untimed
    assert clock.timed == 2 * (2 + 3) and session.calls == 2 * (2 + 3 + 2)
    eager = _Answering(lambda b: {"logits": np.zeros((b, 4), np.int64)},
                       Manifest(format="eager", artifact="", spec={}, inputs=[TensorSig("input", "float32",
                                                                                       ["batch", 3, 8, 8])],
                                outputs=[TensorSig("logits", "float32", ["batch"])]))  # placeholders
    assert [p.error for p in sweep([eager], [2], HarnessConfig(iterations=2, warmup_window=1), _clock())] == [None]


def _clock():
    class Clock:
        name = "fake"
        timed = 0
        now = 0.0

        def time(self, fn):
            fn()
            self.timed += 1
            self.now += 1e-3
            return 1.0

        def wall(self):
            return self.now

    return Clock()


class _FakeTriton(BaseHTTPRequestHandler):
    """Just enough of Triton's HTTP protocol for a model ``m`` ([batch, 3, 8, 8] -> logits [batch, 4])
    whose every answer is ``answer(batch)``: JSON outputs, or none at all."""

    protocol_version = "HTTP/1.1"
    answer = staticmethod(lambda batch: [])

    def log_message(self, *args):
        pass

    def _send(self, body: dict, status: int = 200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.endswith("/ready"):
            return self._send({})
        if self.path.endswith("/config"):
            return self._send({"name": "m", "max_batch_size": 8})
        if self.path.rstrip("/").endswith("/models/m"):
            return self._send({"name": "m", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 8, 8]}],
                               "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]})
        self._send({"error": "not found"}, 404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        header = json.loads(body[:int(self.headers.get("Inference-Header-Content-Length", len(body)))])
        batch = header["inputs"][0]["shape"][0]
        self._send({"model_name": "m", "outputs": type(self).answer(batch)})


@pytest.mark.parametrize("answer,error", [
    (lambda batch: [], "without output 'logits'"),
    (lambda batch: [{"name": "logits", "datatype": "FP32", "shape": [batch, 3], "data": [0.0] * (3 * batch)}],
     "with 'logits' of shape [1, 3] (declared float32 ['batch', 4])"),
])
def test_profiling_a_server_whose_answers_lack_the_outputs_fails(answer, error, capsys):
    pytest.importorskip("tritonclient.http", reason="tritonclient (the [triton] extra) is not installed")
    handler = type("Handler", (_FakeTriton,), {"answer": staticmethod(answer)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"triton://127.0.0.1:{server.server_address[1]}/m"
        code = profile_entry([url, "--no-isolate", "--batch-sizes", "1", "--max-time", "0.2", "--warmup-time",
                              "0.1", "--json", "-", "--concurrency", "1"])
    finally:
        server.shutdown()
        server.server_close()
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    (point,) = report["runs"][0]["points"]
    assert code == 1 and error in point["error"] and point.get("images_per_s") is None, point
    (level,) = report["concurrency"][0]["levels"]
    assert error in level["error"] and level.get("images_per_s") is None and level["requests"] == 0, level
    assert "1 measurement(s) failed" in captured.err and "Traceback" not in captured.err


# 5: --triton-repo with an edge format ------------------------------------------------------------
def test_triton_repo_with_an_edge_format_serves_the_rest_and_lists_it(tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc", reason="tritonclient (the [triton] extra) is not installed")
    from autotimm_deploy.exporter.formats import get_format

    if get_format("ncnn").unavailable_reason():
        pytest.skip(get_format("ncnn").unavailable_reason())
    out, repo = tmp_path / "out", tmp_path / "repo"
    base = ["test_resnet", "--num-classes", "4", "--img-size", "64", "--no-verify", "-o", str(out)]
    assert export_entry([*base, "-f", "ncnn", "--triton-repo", str(repo)]) == 2  # nothing it serves: before exporting
    line = _one_line(capsys)
    assert "--triton-repo: Triton serves none of ncnn" in line and not out.exists() and not repo.exists()
    assert export_entry([*base, "-f", "onnx,ncnn", "--triton-repo", str(repo)]) == 0, capsys.readouterr().err
    models = json.loads((repo / "models.json").read_text())
    assert [m["name"] for m in models] == ["test_resnet_onnx", "test_resnet_onnx_python", "test_resnet_onnx_preprocess",
                                           "test_resnet_onnx_ensemble", "-"]
    assert models[-1]["artifact"] == "test_resnet.ncnn.param" or models[-1]["artifact"].endswith(".param")
    assert models[-1]["note"].startswith("not written: Triton serves no ncnn artifact")
    assert sorted(p.name for p in repo.iterdir()) == ["client.py", "models.json", "test_resnet_onnx",
                                                      "test_resnet_onnx_ensemble", "test_resnet_onnx_preprocess",
                                                      "test_resnet_onnx_python"]
    assert "Triton serves no ncnn" in capsys.readouterr().err
    from autotimm_deploy.exporter.triton.repository import NothingServed, build_repository

    ncnn = next(out.glob("*.param"))
    with pytest.raises(NothingServed, match="none of these artifacts can be served .*Triton serves no ncnn artifact"):
        build_repository([ncnn], tmp_path / "repo2", skip_unserved=True)
    with pytest.raises(UserError, match="is a 'ncnn' artifact, which no Triton model serves"):  # autotimm-triton build, named: still refused
        build_repository([ncnn], tmp_path / "repo2")
    assert not (tmp_path / "repo2").exists() and not list(tmp_path.glob(".repo2*"))
    # the export's folder (onnx and ncnn) named: the ONNX model served, the ncnn one listed (it refused them all)
    served = build_repository([out], tmp_path / "repo3")
    assert [m.name for m in served][-1] == "-" and served[-1].note.startswith("not written: Triton serves no ncnn")
