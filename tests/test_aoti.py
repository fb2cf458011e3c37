"""AOTInductor packages: compiled on this CPU, verified, profiled, refused where they cannot run, and
run without Python by the C++ example in docs/examples/aoti against the torch wheel's own libraries."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions, get_format
from autotimm_deploy.exporter.formats.aoti import AOTIOptions, check_device
from autotimm_deploy.exporter.formats.file_checks import zip_names
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.artifact import open_artifact

from tests.conftest import ROOT, files_under

pytestmark = pytest.mark.skipif(get_format("aoti").unavailable_reason() is not None,
                                reason=get_format("aoti").unavailable_reason() or "")

SPEC = ModelSpec("test_resnet", num_classes=7, img_size=(64, 64))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("aoti")
    (r,) = export(SPEC, ["aoti"], out)
    return r


def test_package_exports_verifies_and_reloads(package):
    r = package
    assert r.ok, (r.error, r.parity and r.parity.failures)
    assert r.artifact.name == "test_resnet.aoti.pt2" and r.parity.batches == [1, 4]
    assert r.parity.metrics["logits"]["max_rel"] < 1e-3
    m = load_manifest(r.artifact)
    assert m.format == "aoti" and m.export["device"] == "cpu" and m.batch["dynamic"]
    assert m.export["options"]["aoti"] == {"device": "cpu", "freezing": False, "max_autotune": False}
    runner = torch._inductor.aoti_load_package(str(r.artifact))  # a plain torch user loads it alike
    with torch.no_grad():
        y = runner(torch.zeros(3, 3, 64, 64))  # a batch size parity never used
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (3, 7)


def test_package_profiles_against_eager(package):
    from autotimm_deploy.profiler.measure.settings import Settings
    from autotimm_deploy.profiler.measure.timing import HarnessConfig
    from autotimm_deploy.profiler.pipeline import profile

    report = profile([str(package.artifact)], Settings(batch_sizes=[1, 2], harness=HarnessConfig(
        max_time=0.5, warmup_time=0.2, min_samples=3)), compare_eager=True, isolate=False)
    eager, aoti = report["runs"]
    assert aoti["runtime"] == "aoti" and eager["runtime"] == "eager"
    assert [p["batch"] for p in aoti["points"]] == [1, 2] and all(not p.get("error") for p in aoti["points"])


def test_package_without_manifest_is_recognised(package, tmp_path):
    from autotimm_deploy.profiler.artifact import detect

    bare = tmp_path / "model.pt2"
    shutil.copy(package.artifact, bare)
    assert detect(bare)[0] == "aoti"


def test_a_package_refuses_a_size_it_was_not_compiled_for(package, tmp_path):
    """Its kernels do not check: at 32 px they read past their buffers (NaN, exit 0), at 256 px they
    answered another class. The package records its input shape, and the runtime holds inputs to it,
    whatever an edited manifest or --img-size says."""
    meta = torch._inductor.aoti_load_package(str(package.artifact)).get_metadata()
    assert meta["autotimm_deploy.input_shape"] == "[null, 3, 64, 64]"
    bare = tmp_path / "model.aoti.pt2"  # no manifest: the profiler's --img-size decides what it is fed
    shutil.copy(package.artifact, bare)
    with open_artifact(bare, runtime="aoti") as session:
        for shape in [(1, 3, 32, 32), (2, 3, 256, 256)]:
            with pytest.raises(UserError, match=r"compiled for inputs of shape \[any, 3, 64, 64\] and cannot run"):
                session.run(session.prepare({"input": np.zeros(shape, np.float32)}))
        (y,) = session.run(session.prepare({"input": np.zeros((3, 3, 64, 64), np.float32)}))  # its own size runs
        assert tuple(y.shape) == (3, 7)


def test_an_unusable_tmpdir_is_named(package, tmp_path, monkeypatch):
    """AOTInductor unpacks a package into $TMPDIR itself (no fallback): a missing one gave torch's "Loading
    outdated pt2 file" warning and a hint to re-export the package; the export kept a failed artifact."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "gone"))
    with pytest.raises(UserError, match=r"TMPDIR=.*gone does not exist, and AOTInductor unpacks into it"):
        open_artifact(package.artifact, manifest=load_manifest(package.artifact))
    with pytest.raises(UserError, match="does not exist, and AOTInductor unpacks into it"):
        export(SPEC, ["aoti"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refusals_are_one_line(package, tmp_path, export_cli):
    with pytest.raises(UserError, match="compiled for cpu and cannot run on cuda"):
        open_artifact(package.artifact, manifest=load_manifest(package.artifact), device="cuda")
    bad = tmp_path / "broken.aoti.pt2"
    bad.write_bytes(package.artifact.read_bytes()[:5000])
    with pytest.raises(UserError, match="not a valid AOTInductor package"):
        from autotimm_deploy.profiler.artifact import detect

        detect(bad)
    for device, msg in (("gpu", "--device takes cpu, cuda or cuda:N"), ("cpu:1", "--device takes")):
        with pytest.raises(UserError, match=msg):
            check_device(device)
    out = tmp_path / "o"
    for args, msg in ((["--format", "onnx", "--device", "cuda"], "--device only applies to --format aoti"),
                      (["--format", "aoti", "--device", "tpu"], "--device takes cpu, cuda or cuda:N")):
        r = export_cli("test_resnet", "--img-size", "64", "-o", str(out), *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr
        assert files_under(out) == []
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU is visible"):
            check_device("cuda")



@pytest.mark.parametrize("precision,own", [("fp32", AOTIOptions(freezing=True)), ("bf16", AOTIOptions()),
                                           ("int8", AOTIOptions())])
def test_frozen_bf16_and_int8_packages(tmp_path, precision, own):
    """The --target cpu candidates beside the plain package: frozen fp32, bf16 and PT2E int8 (both
    frozen), each through its precision's parity gate, with what Inductor was told in the manifest."""
    options = ExportOptions(precision=precision, format_options={"aoti": own},
                            calib_data="sample-pictures" if precision == "int8" else None, calib_samples=8)
    (r,) = export(SPEC, ["aoti"], tmp_path, options)
    assert r.ok, (r.error, r.parity and r.parity.failures)
    info = load_manifest(r.artifact).export
    assert info["inductor_configs"] == {"freezing": True, "max_autotune": False}
    if precision == "int8":
        assert info["quantization"]["tool"] == "torchao pt2e + X86InductorQuantizer"
    # frozen with a dynamic batch: a second model with the batch fixed to 1 (weights packed for oneDNN)
    assert info["tuned"]["model"] == "batch1" and info["tuned"]["input_shape"] == [1, 3, 64, 64]
    assert {n.split("/aotinductor/")[1].split("/")[0] for n in zip_names(r.artifact) if "/aotinductor/" in n} == \
        {"model", "batch1"}
    with open_artifact(r.artifact, manifest=load_manifest(r.artifact)) as s:  # float32 in and out, whatever it computes in
        tuned, calls = s.module.tuned, []
        s.module.tuned = lambda *a: calls.append(a[0].shape[0]) or tuned(*a)
        x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
        both, first = s.infer({s.inputs[0].name: x}), s.infer({s.inputs[0].name: x[:1]})
        assert calls == [1] and all(v.dtype == np.float32 for v in both.values())
        for name, v in first.items():  # the two models agree on the same picture
            np.testing.assert_allclose(v[0], both[name][0], rtol=0, atol=1e-3 * np.abs(v).max())


def test_int8_quantizes_small_signals_and_narrows_weights_on_the_retry():
    """What the int8 build quantizes, before Inductor compiles it: activations spanning 1e-5 keep
    their signal (no 2**-12 floor on the scales: random-weight efficientnet_b0's logits rounded to 0
    with it), and the 7-bit retry of a CPU without VNNI keeps every int8 weight in [-64, 63]."""
    pytest.importorskip("torchao")
    from types import SimpleNamespace

    from autotimm_deploy.exporter.formats.aoti import _quantize_x86
    from autotimm_deploy.exporter.formats.int8_plan import Int8Plan

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    with torch.no_grad():
        model[2].weight.mul_(1e-4), model[2].bias.zero_()  # its outputs span ~1e-5
    calibration = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    x = torch.from_numpy(calibration[:4])
    program = torch.export.export(model, (x[:1],))
    weights = {}
    for plan in (None, Int8Plan(narrow_weights=True)):
        ctx = SimpleNamespace(calibration=calibration, int8_plan=plan, calibration_info={},
                              options=ExportOptions(precision="int8", static=True, batch_size=1))
        quantized, info = _quantize_x86(program, x[:1], ctx)
        weights[plan] = [t for t in quantized.state_dict.values() if t.dtype == torch.int8]
        with torch.no_grad():
            y, ref = torch.cat([quantized.module()(x[i:i + 1]) for i in range(4)]), model(x)
        assert float(torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0)) > 0.99
        assert ("weights" in info) == (plan is not None)
    assert weights[None] and max(int(w.abs().max()) for w in weights[None]) > 64  # 8 bits use their range
    narrow = weights[Int8Plan(narrow_weights=True)]
    assert narrow and all(int(w.min()) >= -64 and int(w.max()) <= 63 for w in narrow)


def test_bf16_refusals(tmp_path):
    with pytest.raises(UserError, match="cannot export detection at bf16: its boxes would be computed in bfloat16"):
        export(ModelSpec("test_resnet", task="detection", num_classes=3, img_size=(128, 128)), ["aoti"], tmp_path / "d",
               ExportOptions(precision="bf16"))
    with pytest.raises(UserError, match="does not combine with --embed-preprocessing"):
        export(SPEC, ["aoti"], tmp_path / "e", ExportOptions(precision="bf16", embed_preprocessing="nhwc"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
def test_package_compiled_for_cuda_with_cuda_graphs(tmp_path):
    from autotimm_deploy.exporter.models import build_model

    # parity by hand (the GPU machine may lack scikit-image, whose pictures the parity gate uses)
    (r,) = export(SPEC, ["aoti"], tmp_path, ExportOptions(format_options={"aoti": AOTIOptions(device="cuda")}),
                  verify=False)
    assert r.error is None, r.error
    m = load_manifest(r.artifact)
    assert m.export["device"] == "cuda" and m.export["gpu"]["compute_capability"]
    with open_artifact(r.artifact, manifest=m) as plain, open_artifact(r.artifact, manifest=m, cuda_graph=True) as g:
        assert plain.device == "cuda"  # its default: where it was compiled
        x = plain.random_arrays(2)
        with torch.no_grad():
            ref = build_model(SPEC)(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(plain.infer(x)["logits"], ref, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(g.infer(x)["logits"], plain.infer(x)["logits"], rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="compiled for cuda and cannot run on cpu"):
        open_artifact(r.artifact, manifest=m, device="cpu")
