"""Triton model repositories (#16): every config written through Triton's own ModelConfig schema
and read back; the Python-backend variant, the raw-picture preprocessing and the ensembles served by
a real tritonserver (the one PyPI's nvidia-pytriton wheel bundles) and answered over HTTP and gRPC
with the artifact's own outputs; bad input is one line, exit 2, nothing written."""

import importlib.util
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions
from autotimm_deploy.exporter.pipeline import export

from tests.conftest import call_cli, files_under, run_cli

pytest.importorskip("tritonclient.grpc", reason="tritonclient (the [triton] extra) is not installed")


def _server_missing() -> str | None:
    from autotimm_deploy.exporter.triton.server import bundled_server

    try:
        bundled_server()
    except UserError as e:
        return str(e)
    return None


needs_server = pytest.mark.skipif(_server_missing() is not None, reason=_server_missing() or "")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A classifier (ONNX, TorchScript, OpenVINO) and a detector (ONNX), exported once."""
    out = tmp_path_factory.mktemp("artifacts")
    formats = ["onnx", "torchscript"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    cls = export(ModelSpec("test_resnet", num_classes=7, img_size=(64, 64)), formats, out / "cls", ExportOptions())
    det = export(ModelSpec("test_resnet", task="detection", num_classes=3, img_size=(128, 128),
                           head={"fpn_channels": 32, "max_detections": 10, "score_threshold": 0.0}),
                 ["onnx"], out / "det", ExportOptions())
    assert all(r.ok for r in cls + det), [(r.format, r.error) for r in cls + det]
    return {r.format: r.artifact for r in cls}, det[0].artifact


def _picture(name: str = "chelsea") -> bytes:
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _configs(repo):
    from autotimm_deploy.exporter.triton.config import schema
    from google.protobuf import text_format

    return {p.parent.name: text_format.Parse(p.read_text(), schema().ModelConfig())
            for p in sorted(repo.glob("*/config.pbtxt"))}


def test_every_config_parses_with_tritons_schema(tmp_path, artifacts):
    from autotimm_deploy.exporter.triton import ServeOptions, build_repository

    cls, det = artifacts
    # a TensorRT engine's manifest (no TensorRT here: the ONNX manifest, renamed, stands in for its config)
    engine = tmp_path / "src" / "test_resnet.engine"
    engine.parent.mkdir()
    shutil.copy(cls["onnx"], engine)
    m = json.loads(cls["onnx"].with_name(cls["onnx"].name + ".json").read_text())
    m.update(format="trt", artifact=engine.name, files={engine.name: m["files"][cls["onnx"].name]},
             batch={"dynamic": True, "min": 1, "opt": 4, "max": 16})
    engine.with_name(engine.name + ".json").write_text(json.dumps(m))

    openvino = [cls["openvino"]] if "openvino" in cls else []
    gpu = build_repository([cls["onnx"], cls["torchscript"], engine, det, *openvino], tmp_path / "gpu",
                           ServeOptions(kind="gpu", instances=2, ort_tensorrt=True, max_batch=8))
    # and an engine whose profile starts at batch 4: Triton must not batch it (its batcher would send fewer)
    engine4 = tmp_path / "src" / "test_resnet-b4.engine"
    shutil.copy(engine, engine4)
    m.update(artifact=engine4.name, files={engine4.name: m["files"][engine.name]},
             batch={"dynamic": True, "min": 4, "opt": 8, "max": 16})
    engine4.with_name(engine4.name + ".json").write_text(json.dumps(m))
    cpu = build_repository([cls["onnx"], cls["torchscript"], *openvino, engine4], tmp_path / "cpu", ServeOptions(queue_delay_us=500))
    notes = {x.name: x.note for x in cpu if x.note}
    assert "runs on gpu, not --kind cpu" in notes["test_resnet-b4_engine"]  # said, not silently dropped
    assert "batches of" in notes["test_resnet-b4_engine_ensemble"]
    assert not (tmp_path / "cpu" / "test_resnet-b4_engine").exists()
    b4 = _configs(tmp_path / "cpu")["test_resnet-b4_engine_python"]
    assert b4.max_batch_size == 0 and list(b4.input[0].dims) == [-1, 3, 64, 64]  # the client sends whole batches
    assert b4.instance_group[0].kind == b4.instance_group[0].KIND_GPU  # our TensorRT runtime needs the GPU
    assert list(b4.model_warmup[0].inputs["input"].dims) == [4, 3, 64, 64]
    configs = {**_configs(tmp_path / "gpu"), **{f"cpu/{k}": v for k, v in _configs(tmp_path / "cpu").items()}}
    written = [x for x in gpu + cpu if not x.note]
    assert len(configs) == len(written)  # every model written has a config, and every config parses

    onnx = configs["test_resnet_onnx"]
    assert onnx.backend == "onnxruntime" and onnx.max_batch_size == 8 and onnx.default_model_filename == "model.onnx"
    assert [(i.name, list(i.dims)) for i in onnx.input] == [("input", [3, 64, 64])]
    assert [(o.name, list(o.dims)) for o in onnx.output] == [("logits", [7])]
    assert onnx.instance_group[0].kind == onnx.instance_group[0].KIND_GPU and onnx.instance_group[0].count == 2
    assert list(onnx.dynamic_batching.preferred_batch_size) == [4, 8]
    accelerator = onnx.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP32"
    assert onnx.model_warmup[0].inputs["input"].zero_data and list(onnx.model_warmup[0].inputs["input"].dims) == [3, 64, 64]
    trt = configs["test_resnet_engine"]
    assert trt.backend == "tensorrt" and trt.max_batch_size == 8 and trt.default_model_filename == "model.plan"
    torch_model = configs["test_resnet_pt"]
    assert torch_model.backend == "pytorch" and [i.name for i in torch_model.input] == ["INPUT__0"]
    assert [o.name for o in torch_model.output] == ["OUTPUT__0"]
    assert configs["cpu/test_resnet_onnx"].dynamic_batching.max_queue_delay_microseconds == 500
    if "openvino" in cls:
        ov = configs["cpu/test_resnet_xml"]
        assert ov.backend == "openvino" and ov.instance_group[0].kind == ov.instance_group[0].KIND_CPU
        assert sorted(p.name for p in (tmp_path / "cpu" / "test_resnet_xml" / "1").iterdir()) == ["model.bin", "model.xml"]
    if openvino:  # Triton's OpenVINO backend has no GPU instances, nor has our OpenVINO runtime
        assert not (tmp_path / "gpu" / "test_resnet_xml").exists()
        ov_py = configs["test_resnet_xml_python"]
        assert ov_py.instance_group[0].kind == ov_py.instance_group[0].KIND_CPU
    # the detector: num_detections is one scalar per picture (dims [1] reshaped to []), boxes go back
    # to the picture's pixels in the ensemble
    det_py = configs["test_resnet-det_onnx_python"]
    count = next(o for o in det_py.output if o.name == "num_detections")
    assert list(count.dims) == [1] and list(count.reshape.shape) == []
    steps = [s.model_name for s in configs["test_resnet-det_onnx_ensemble"].ensemble_scheduling.step]
    assert steps == ["test_resnet-det_onnx_preprocess", "test_resnet-det_onnx_python", "test_resnet-det_onnx_boxes"]
    native = build_repository([cls["torchscript"]], tmp_path / "native", ensemble_over="native")
    (ens,) = [c for n, c in _configs(tmp_path / "native").items() if n.endswith("_ensemble")]
    assert ens.ensemble_scheduling.step[1].model_name == "test_resnet_pt"
    assert dict(ens.ensemble_scheduling.step[1].input_map) == {"INPUT__0": "preprocessed"}
    assert {m.role for m in native} == {"native", "python", "preprocess", "ensemble"}
    assert "__MODEL__" not in (tmp_path / "cpu" / "client.py").read_text()


def _expected(artifact, picture: bytes):
    """The artifact's own outputs (our runtime, in this process) on the picture, preprocessed as
    the manifest says."""
    from autotimm_deploy.exporter.inputs.preprocess import prepare
    from autotimm_deploy.exporter.triton_backend.preprocess_model import decode
    from autotimm_deploy.profiler.artifact import open_artifact

    m = load_manifest(artifact)
    rgb = decode(np.frombuffer(picture, np.uint8))
    x, geometry = prepare(rgb, m.preprocessing)
    with open_artifact(artifact, manifest=m) as s:
        out = s.infer({s.inputs[0].name: x[None]})
    if "boxes" in out:
        out["boxes"] = geometry.boxes_to_picture(out["boxes"])
    return x[None], out


@needs_server
def test_served_by_a_real_triton_over_http_and_grpc(tmp_path, artifacts):
    import tritonclient.grpc as grpc
    import tritonclient.http as http
    from autotimm_deploy.exporter.triton import build_repository
    from autotimm_deploy.exporter.triton.server import serving

    cls, det = artifacts
    repo = tmp_path / "repo"
    build_repository([cls["onnx"], cls["torchscript"], det], repo)
    picture = _picture()
    data = np.frombuffer(picture, np.uint8)
    with serving(repo) as server:
        assert set(server.skipped) == {"test_resnet_onnx", "test_resnet_pt", "test_resnet-det_onnx"}  # native: validated only
        for client, url in ((http, server.http_url), (grpc, server.grpc_url)):
            c = client.InferenceServerClient(url)
            for artifact, base in ((cls["onnx"], "test_resnet_onnx"), (cls["torchscript"], "test_resnet_pt"),
                                   (det, "test_resnet-det_onnx")):
                x, expected = _expected(artifact, picture)
                image = client.InferInput("IMAGE", list(data.shape), "UINT8")
                image.set_data_from_numpy(data)
                got = c.infer(f"{base}_ensemble", [image])  # a raw JPEG in, the answers out
                for name, want in expected.items():
                    np.testing.assert_allclose(got.as_numpy(name), want, rtol=1e-4, atol=1e-4, err_msg=f"{base} {name}")
                batch = np.concatenate([x, -x])  # the Python-backend variant itself, at batch 2
                feed = client.InferInput("input", list(batch.shape), "FP32")
                feed.set_data_from_numpy(batch)
                got = c.infer(f"{base}_python", [feed])
                first = got.as_numpy(load_manifest(artifact).outputs[0].name)
                assert first.shape[0] == 2
                if base != "test_resnet-det_onnx":
                    np.testing.assert_allclose(first[:1], expected["logits"], rtol=1e-4, atol=1e-4)
        broken = http.InferInput("IMAGE", [4], "UINT8")
        broken.set_data_from_numpy(np.array([1, 2, 3, 4], np.uint8))
        with pytest.raises(Exception, match="not an image file"):
            http.InferenceServerClient(server.http_url).infer("test_resnet_onnx_ensemble", [broken])
        p = subprocess.run([sys.executable, str(repo / "client.py"), str(_write(tmp_path, picture)), "--url",
                            server.grpc_url, "--grpc", "--model", "test_resnet_onnx_ensemble"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and p.stdout.count("class") == 5, p.stdout + p.stderr
        _profile_served(server)
        process = server.process
    assert process.poll() is not None  # stopped


def _profile_served(server):
    """autotimm-profile against the served model: the same harness (and the eager twin, from the spec
    the config carries), over HTTP and gRPC, and a concurrency sweep."""
    from autotimm_deploy.profiler.measure.concurrency import sweep
    from autotimm_deploy.profiler.measure.settings import Settings
    from autotimm_deploy.profiler.measure.timing import HarnessConfig
    from autotimm_deploy.profiler.pipeline import profile
    from autotimm_deploy.profiler.targets import open_target, resolve

    http_url = f"triton://{server.http_url}/test_resnet_onnx_python"
    grpc_url = f"triton://{server.grpc_url}/test_resnet_onnx_python?protocol=grpc"
    settings = Settings(batch_sizes=[1, 2], harness=HarnessConfig(max_time=0.5, warmup_time=0.2))
    report = profile([http_url, grpc_url], settings, compare_eager=True, isolate=False)
    runs = {run["target"]["label"]: run for run in report["runs"]}
    assert {"test_resnet [eager]", "test_resnet_onnx_python [triton http]", "test_resnet_onnx_python [triton grpc]"} <= \
        set(runs), runs
    served = [run for run in report["runs"] if run["runtime"] == "triton"]
    assert len(served) == 2 and all(not p.get("error") and p["stats_ms"]["p50"] > 0 for r in served for p in r["points"])
    assert all(p.get("vs_baseline") for r in served for p in r["points"])  # beside eager, interleaved
    session = open_target(resolve(grpc_url), "cpu", None)
    try:
        rows = sweep(lambda: session.caller(1), [1, 3], 0.5, 1, warmup=0.2)
    finally:
        session.close()
    assert [r["concurrency"] for r in rows] == [1, 3] and all(r["requests"] > 0 and "error" not in r for r in rows)
    assert all(r["p50_ms"] <= r["p99_ms"] for r in rows)


def test_profiler_bad_served_targets_are_one_line(tmp_path):
    from autotimm_deploy.exporter.triton.server import free_port

    nobody = f"triton://127.0.0.1:{free_port()}/test_resnet_onnx_python"
    for args, message in [([nobody], "no Triton server answers"),
                          (["triton://127.0.0.1/"], "a served model is triton://HOST[:PORT]/MODEL"),
                          (["test_resnet", "--concurrency", "1,4"], "--concurrency measures served models"),
                          ([nobody, "--concurrency", "0"], "--concurrency takes numbers of clients")]:
        p = call_cli("autotimm_deploy.profiler.cli", *args, "--no-isolate")
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def _write(tmp_path, picture: bytes):
    path = tmp_path / "chelsea.jpg"
    path.write_bytes(picture)
    return path


@needs_server
def test_the_server_is_stopped_when_the_test_fails(tmp_path, artifacts):
    from autotimm_deploy.exporter.triton import build_repository
    from autotimm_deploy.exporter.triton.server import serving

    cls, _ = artifacts
    build_repository([cls["onnx"]], tmp_path / "repo")
    with pytest.raises(RuntimeError, match="a failing test"):
        with serving(tmp_path / "repo", models=["test_resnet_onnx_python"]) as server:
            process = server.process
            raise RuntimeError("a failing test")
    assert process.poll() is not None
    with pytest.raises(UserError, match="this server has no onnxruntime backend"):
        with serving(tmp_path / "repo", models=["test_resnet_onnx"]):
            pass
    import socket

    with socket.socket() as taken:  # another server on the port would answer our readiness check
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="is in use: pass another --http-port"):
            with serving(tmp_path / "repo", http_port=taken.getsockname()[1]):
                pass


def test_a_full_disk_or_a_read_only_folder_is_one_line(tmp_path, artifacts, monkeypatch):
    """Both were internal OSErrors (a read-only folder only after the whole export, with --triton-repo)."""
    import errno

    from autotimm_deploy.exporter.core.errors import Fault
    from autotimm_deploy.exporter.triton import repository

    cls, _ = artifacts

    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(repository.tempfile, "mkdtemp", full)
        with pytest.raises(Fault, match="no space left on the device writing the model repository .*: free some"):
            repository.build_repository([cls["onnx"]], tmp_path / "r1")
    with monkeypatch.context() as m:
        m.setattr(repository.os, "access", lambda *_: False)
        with pytest.raises(UserError, match="is not writable .*: give a new folder inside one you can write"):
            repository.check_destination(tmp_path / "r2")
    assert files_under(tmp_path) == []


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, artifacts):
    cls, _ = artifacts
    bare = tmp_path / "bare.onnx"
    shutil.copy(cls["onnx"], bare)  # an artifact without its manifest
    taken = tmp_path / "taken"
    taken.mkdir()
    cases = [([str(bare), "-o", str(tmp_path / "r1")], "has no manifest"),
             ([str(cls["onnx"]), "-o", str(taken)], "already exists"),
             ([str(cls["onnx"]), "-o", str(tmp_path / "r2"), "--name", "bad/name"], "not a model name Triton accepts"),
             ([str(cls["onnx"]), "-o", str(tmp_path / "r3"), "--name", ".hidden"], "not a model name Triton accepts"),
             ([str(cls["onnx"]), str(cls["onnx"]), "-o", str(tmp_path / "r4")], "would both be served as"),
             ([str(cls["onnx"]), str(cls["torchscript"]), "-o", str(tmp_path / "r4"), "--name", "a", "--name",
               "a_python"], "would both be served as 'a_python'"),
             ([str(tmp_path / "nowhere.onnx"), "-o", str(tmp_path / "r5")], "artifact not found"),
             ([str(cls["onnx"]), "-o", str(tmp_path / "r6"), "--kind", "cpu", "--ort-tensorrt"], "needs --kind gpu"),
             ([str(cls["onnx"]), "-o", str(tmp_path / "no" / "such" / "r7")], "does not exist"),
             ([str(cls["onnx"]), "-o", str(cls["onnx"] / "r8")], "is a file"),
             ([str(cls["torchscript"]), "-o", str(tmp_path / "r9"), "--kind", "gpu", "--ort-tensorrt"],
              "--ort-tensorrt applies to ONNX artifacts")]
    copied = tmp_path / "copied" / "v2.onnx"  # another file with a copy of the artifact's manifest
    copied.parent.mkdir()
    copied.write_bytes(cls["onnx"].read_bytes()[:100_000])
    shutil.copy(cls["onnx"].with_name(cls["onnx"].name + ".json"), copied.with_name("v2.onnx.json"))
    cases.append(([str(copied), "-o", str(tmp_path / "r10")], f"describes {cls['onnx'].name}, not v2.onnx"))
    for name, change, message in [("nopre", lambda j: j.pop("preprocessing"), "preprocessing.input_size"),
                                  ("noout", lambda j: j.update(outputs=[]), "no well-formed outputs"),
                                  ("fmt", lambda j: j.update(format="foo"), "is a 'foo' artifact"),
                                  # a classifier's manifest edited to a detector (an internal StopIteration before)
                                  ("task", lambda j: j["spec"].update(task="detection"),
                                   "says it is a detection model, but its outputs (logits ['batch', 7]) have no "
                                   "boxes [batch, N, 4]"),
                                  ("failed", lambda j: j["parity"].update(verdict="fail", failures=["logits: max_rel 0.5"]),
                                   "failed its checks (logits: max_rel 0.5): served, it would give wrong answers; "
                                   "re-export it, or pass --allow-failed")]:
        odd = tmp_path / name / cls["onnx"].name  # valid JSON, a field a config needs broken
        odd.parent.mkdir()
        shutil.copy(cls["onnx"], odd)
        j = json.loads(cls["onnx"].with_name(cls["onnx"].name + ".json").read_text())
        change(j)
        odd.with_name(odd.name + ".json").write_text(json.dumps(j))
        cases.append(([str(odd), "-o", str(tmp_path / f"r-{name}")], message))
    before = files_under(tmp_path)
    for i, (args, message) in enumerate(cases):  # the first in a fresh interpreter, as a user runs it
        p = (call_cli if i else run_cli)("autotimm_deploy.exporter.triton_cli", "build", *args)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert files_under(tmp_path) == before  # nothing written, no temporary folder left
    # served anyway when asked (--debug after the command, where the internal-error line points)
    p = call_cli("autotimm_deploy.exporter.triton_cli", "build", str(tmp_path / "failed" / cls["onnx"].name), "-o",
                 str(tmp_path / "r-anyway"), "--allow-failed", "--debug")
    assert p.returncode == 0 and (tmp_path / "r-anyway" / "models.json").is_file(), p.stderr
    # found in a folder (a recipe's output) beside one that passed: listed as not written, the rest served
    shutil.copy(cls["onnx"], tmp_path / "failed" / "good.onnx")
    good = json.loads(cls["onnx"].with_name(cls["onnx"].name + ".json").read_text())
    (tmp_path / "failed" / "good.onnx.json").write_text(json.dumps({**good, "artifact": "good.onnx", "files": {
        "good.onnx" if k == cls["onnx"].name else k: v for k, v in good["files"].items()}}))
    p = call_cli("autotimm_deploy.exporter.triton_cli", "build", str(tmp_path / "failed"), "-o", str(tmp_path / "r-dir"),
                 "--json")
    assert p.returncode == 0, p.stderr
    models = json.loads(p.stdout)["models"]
    (failed,) = [m for m in models if m["artifact"] == cls["onnx"].name]
    assert failed["name"] == "-" and failed["note"].startswith("not written: it failed its checks (logits: max_rel 0.5)")
    assert "good_onnx" in {m["name"] for m in models if m["artifact"] == "good.onnx"}
    # autotimm-export --triton-repo checks its folder before exporting anything
    out = tmp_path / "out"
    p = call_cli("autotimm_deploy.exporter.cli", "test_resnet", "-o", str(out), "--triton-repo", str(taken))
    assert p.returncode == 2 and "already exists" in p.stderr and not out.exists()
    p = call_cli("autotimm_deploy.exporter.cli", "test_resnet", "-f", "torchscript", "-o", str(out), "--triton-repo",
                 str(tmp_path / "new"), "--kind", "gpu", "--ort-tensorrt")
    assert p.returncode == 2 and "--ort-tensorrt applies to the ONNX model" in p.stderr and not out.exists()
    p = call_cli("autotimm_deploy.exporter.cli", "test_resnet", "-o", str(out), "--kind", "gpu")
    assert p.returncode == 2 and "--kind only apply with --triton-repo" in p.stderr and not out.exists()


def test_export_writes_the_repository_for_the_artifacts_that_pass(tmp_path):
    p = call_cli("autotimm_deploy.exporter.cli", "test_resnet", "--num-classes", "4", "--img-size", "64", "-f",
                 "onnx", "-o", str(tmp_path / "out"), "--triton-repo", str(tmp_path / "repo"), "--instances", "2")
    assert p.returncode == 0, p.stderr
    models = json.loads((tmp_path / "repo" / "models.json").read_text())
    assert [m["name"] for m in models] == ["test_resnet_onnx", "test_resnet_onnx_python",
                                           "test_resnet_onnx_preprocess", "test_resnet_onnx_ensemble"]
    assert _configs(tmp_path / "repo")["test_resnet_onnx"].instance_group[0].count == 2
    # the artifact and its manifest beside the Python-backend model; the native one under Triton's file name
    assert sorted(p.name for p in (tmp_path / "repo" / "test_resnet_onnx_python" / "1").iterdir()) == \
        ["model.py", "test_resnet.onnx", "test_resnet.onnx.json"]
    assert (tmp_path / "repo" / "test_resnet_onnx" / "1" / "model.onnx").is_file()


@needs_server
def test_ensemble_gives_autotimms_boxes_on_a_non_square_picture(tmp_path):
    """An AutoTimm FCOS checkpoint served as a raw-picture ensemble: a non-square JPEG in, the same
    boxes out as AutoTimm's own letterbox, predict() and geometry give, in the picture's pixels."""
    pytest.importorskip("autotimm")
    import tritonclient.http as http
    from autotimm_deploy.exporter.end_to_end import reference_geometry, reference_transform
    from autotimm_deploy.exporter.inputs.answers import answer
    from autotimm_deploy.exporter.models import build_model
    from autotimm_deploy.exporter.models.autotimm import spec_from_checkpoint
    from autotimm_deploy.exporter.triton import build_repository
    from autotimm_deploy.exporter.triton.server import serving
    from autotimm_deploy.exporter.triton_backend.preprocess_model import decode
    from autotimm_models import SIZE, make_checkpoints

    ckpt = make_checkpoints(tmp_path / "ckpt", names=("fcos",))["fcos"]
    spec = spec_from_checkpoint(ckpt, img_size=(SIZE, SIZE))
    (r,) = export(spec, ["onnx"], tmp_path / "out", verify=False)  # held to AutoTimm's boxes below, through Triton
    assert r.ok and load_manifest(r.artifact).preprocessing["resize"] == "letterbox"
    picture = _picture("coffee")  # 600 x 400
    rgb = decode(np.frombuffer(picture, np.uint8))
    model = build_model(spec)
    prep = model.preprocessing
    import torch

    with torch.no_grad():
        ref = model.reference(torch.from_numpy(reference_transform(prep, spec.task, spec.model)(rgb)[None]))
    want = answer({k: v.numpy() for k, v in ref.items()}, reference_geometry(rgb.shape[:2], prep), spec.task, None, "")
    assert want.detections
    repo = tmp_path / "repo"
    build_repository([r.artifact], repo)
    data = np.frombuffer(picture, np.uint8)
    with serving(repo) as server:
        image = http.InferInput("IMAGE", list(data.shape), "UINT8")
        image.set_data_from_numpy(data)
        got = http.InferenceServerClient(server.http_url).infer(f"{r.artifact.stem}_onnx_ensemble", [image])
    n = int(got.as_numpy("num_detections")[0])
    boxes, labels = got.as_numpy("boxes")[0][:n], got.as_numpy("labels")[0][:n]
    assert n == len(want.detections) and (boxes[:, [0, 2]] <= 600).all() and (boxes[:, [1, 3]] <= 400).all()
    for d, box, label in zip(want.detections, boxes, labels):
        assert int(label) == d["label"] and np.allclose(box, d["box"], atol=0.05), (box, d)
