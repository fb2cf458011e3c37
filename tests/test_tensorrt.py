"""TensorRT: everything up to the TensorRT calls, on the CPU. The build plan and Polygraphy loader
chain per precision and TensorRT major version (inspected, not executed), the fp16 / bf16 compute
ONNX and its parity in ONNX Runtime, the Q/DQ int8 graph, calibration batches, the engine
compatibility check, and the CLI without TensorRT. GPU tests at the end skip here."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions, get_format
from autotimm_deploy.exporter.formats.tensorrt import (
    BuildPlan,
    TensorRTOptions,
    batch_profile,
    loader_chain,
    parse_dynamic_batch,
    plan_build,
)
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.runtimes.tensorrt import compatibility_problem

from tests.conftest import files_under

pytest.importorskip("polygraphy", reason="polygraphy (the [dev] or [trt] extra) is not installed")

SHAPE = (3, 64, 64)


def trt_options(**kw) -> ExportOptions:
    """ExportOptions with the TensorRT-only options routed into their own object."""
    trt = {k: kw.pop(k) for k in list(kw) if k in TensorRTOptions.__dataclass_fields__}
    return ExportOptions(**kw, format_options={"trt": TensorRTOptions(**trt)} if trt else {})
TRT10, TRT11 = "10.13.0.35", "11.4.0.106"


@pytest.mark.parametrize("version,typing", [(TRT10, "weak"), ("8.6.1", "weak"), (TRT11, "strong")])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_plan_per_precision_and_version(precision, version, typing):
    plan = plan_build(trt_options(precision=precision), SHAPE, version)
    assert plan.typing == typing and plan.precision == precision
    if typing == "weak":  # the fp32 graph; builder flags choose precision per layer
        assert plan.network == "fp32"
        assert plan.builder_flags == {"fp32": [], "fp16": ["fp16"], "bf16": ["bf16"], "int8": ["int8", "fp16"]}[precision]
        assert plan.calibrator is (precision == "int8")
    else:  # TensorRT 11: no precision flags; the ONNX carries the precision
        assert plan.builder_flags == [] and plan.calibrator is False
        assert plan.network == {"fp32": "fp32", "fp16": "fp16-compute", "bf16": "bf16-compute",
                                "int8": "int8-qdq"}[precision]
    assert plan.profile == {"min": [1, *SHAPE], "opt": [1, *SHAPE], "max": [32, *SHAPE]}
    json.dumps(plan.to_dict())  # goes into the manifest as plain data


@pytest.mark.parametrize("version", [TRT10, TRT11])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_loader_chain_inspected_not_built(tmp_path, precision, version):
    cache = tmp_path / "tactics.cache"
    cache.write_bytes(b"x")
    opts = trt_options(precision=precision, dynamic_batch=(2, 4, 8), workspace_gib=1.5, opt_level=5,
                         timing_cache=str(cache), version_compatible=True, hardware_compatibility="ampere+")
    plan = plan_build(opts, SHAPE, version)
    calib = np.zeros((10, *SHAPE), np.float32)
    chain = loader_chain(plan, tmp_path / "m.onnx", tmp_path / "m.engine", calib, tmp_path / "calib.cache")
    assert chain.network.path == str(tmp_path / "m.onnx")
    assert chain.network.strongly_typed is (plan.typing == "strong")
    cfg = chain.config.create()  # CreateConfig without the calibrator: needs no TensorRT
    assert (cfg.fp16, cfg.bf16, cfg.int8) == tuple(f in plan.builder_flags for f in ("fp16", "bf16", "int8"))
    (profile,) = cfg.profiles
    shapes = profile["input"]
    assert (tuple(shapes.min), tuple(shapes.opt), tuple(shapes.max)) == ((2, *SHAPE), (4, *SHAPE), (8, *SHAPE))
    assert cfg.builder_optimization_level == 5
    assert cfg.timing_cache_path == str(cache) and chain.engine.timing_cache_path == str(cache)
    assert cfg.version_compatible is True and cfg.exclude_lean_runtime is False
    assert chain.tweaks.workspace_bytes == int(1.5 * 2**30)
    assert chain.tweaks.hardware_compatibility == "ampere+"
    assert cfg.tf32 is True and plan.tf32 is True  # as trtexec and cuDNN; strict fp32 with --no-tf32
    if plan.calibrator:  # weak int8: TensorRT calibrates at the profile's OPT shape (4), not MIN (2)
        batches = chain.config.calibration_batches
        assert [b["input"].shape[0] for b in batches] == [4, 4]
        assert chain.config.calibration_cache == str(tmp_path / "calib.cache")
        fed = chain.config.device_batches("cpu")  # torch tensors: Polygraphy reads their pointers
        assert all(type(b["input"]).__name__ == "Tensor" and tuple(b["input"].shape) == (4, *SHAPE) for b in fed)
    else:
        assert chain.config.calibration_batches is None


@pytest.mark.parametrize("layout,shape", [("nhwc", lambda h, w: (1, h, w, 3)), ("nchw", lambda h, w: (1, 3, h, w))])
def test_embedded_engine_profile_takes_8_bit_pictures(tmp_path, layout, shape):
    """--embed-preprocessing: one profile over the picture's height and width (batch 1), on input 'image'."""
    from autotimm_deploy.exporter.formats.tensorrt import PICTURE_MAX_SIDE, PICTURE_OPT
    from autotimm_deploy.exporter.inputs.pictures import MIN_SIDE

    plan = plan_build(trt_options(embed_preprocessing=layout), SHAPE, TRT10)
    assert plan.input_name == "image"
    chain = loader_chain(plan, tmp_path / "m.onnx", tmp_path / "m.engine")
    (profile,) = chain.config.create().profiles
    got = profile["image"]
    assert (tuple(got.min), tuple(got.opt), tuple(got.max)) == (
        shape(MIN_SIDE, MIN_SIDE), shape(*PICTURE_OPT), shape(PICTURE_MAX_SIDE, PICTURE_MAX_SIDE))


def test_dla_and_missing_timing_cache(tmp_path):
    plan = plan_build(trt_options(precision="fp16", dla_core=1, timing_cache=str(tmp_path / "new.cache")),
                      SHAPE, TRT10)
    chain = loader_chain(plan, tmp_path / "m.onnx", tmp_path / "m.engine")
    cfg = chain.config.create()
    assert cfg.use_dla and cfg.allow_gpu_fallback and chain.tweaks.dla_core == 1
    assert cfg.timing_cache_path is None  # nothing to load yet ...
    assert chain.engine.timing_cache_path == str(tmp_path / "new.cache")  # ... but the build writes it
    assert any("DLA" in n for n in plan.notes)


def test_batch_profile_rules():
    assert batch_profile(trt_options()) == (1, 1, 32)
    assert batch_profile(trt_options(batch_size=8)) == (1, 8, 32)
    assert batch_profile(trt_options(static=True, batch_size=4)) == (4, 4, 4)
    assert batch_profile(trt_options(dynamic_batch=(1, 16, 64))) == (1, 16, 64)
    assert parse_dynamic_batch("1:8:32") == (1, 8, 32)
    for bad in ("8:1:32", "0:1:2"):
        with pytest.raises(UserError, match="MIN <= OPT <= MAX"):
            batch_profile(trt_options(dynamic_batch=parse_dynamic_batch(bad)))
    for bad in ("1:8", "a:b:c", "1:2:3:4"):
        with pytest.raises(UserError, match="MIN:OPT:MAX"):
            parse_dynamic_batch(bad)


def test_weak_int8_needs_enough_calibration(tmp_path):
    plan = plan_build(trt_options(precision="int8", dynamic_batch=(4, 4, 8)), SHAPE, TRT10)
    with pytest.raises(UserError, match="at least 4 samples"):
        loader_chain(plan, tmp_path / "m.onnx", tmp_path / "m.engine", np.zeros((3, *SHAPE), np.float32))
    # --batch-size 8: profile 1:8:32, calibrated at 8 per batch (feeding MIN-sized batches made
    # TensorRT's shape check fail on the first batch and the build end with zero batches)
    plan = plan_build(trt_options(precision="int8", batch_size=8), SHAPE, TRT10)
    with pytest.raises(UserError, match="at batch 8"):
        loader_chain(plan, tmp_path / "m.onnx", tmp_path / "m.engine", np.zeros((4, *SHAPE), np.float32))
    chain = loader_chain(plan, tmp_path / "m.onnx", tmp_path / "m.engine", np.zeros((20, *SHAPE), np.float32))
    assert [b["input"].shape[0] for b in chain.config.calibration_batches] == [8, 8]
    with pytest.raises(UserError, match="calibration data"):
        loader_chain(plan, tmp_path / "m.onnx", tmp_path / "m.engine", None)


@pytest.mark.parametrize("spec", [ModelSpec("test_resnet", num_classes=10, img_size=(64, 64)),
                                  ModelSpec("test_resnet", task="detection", num_classes=5, img_size=(128, 128),
                                            head={"fpn_channels": 32, "max_detections": 20})],
                         ids=["classification", "detection"])
def test_fp16_compute_onnx_parity_in_onnxruntime(tmp_path, spec):
    """The graph TensorRT 11 parses for --fp16: fp16 weights and compute, fp32 inputs and outputs,
    post-processing in fp32; it runs in ONNX Runtime on the CPU and passes the fp16 gate."""
    (r,) = export(spec, ["onnx"], tmp_path, trt_options(precision="fp16"))
    assert r.ok, r.parity and r.parity.failures
    graph = onnx.load(str(r.artifact)).graph
    f16 = onnx.TensorProto.FLOAT16
    assert all(v.type.tensor_type.elem_type != f16 for v in list(graph.input) + list(graph.output))
    weights = [t for t in graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, f16) and len(t.dims) == 4]
    assert weights and all(t.data_type == f16 for t in weights)  # every conv kernel is fp16
    m = load_manifest(r.artifact)
    assert m.precision == "fp16" and m.export["compute"]["dtype"] == "float16"
    if spec.task == "classification":  # really ran in fp16: less exact than fp32, inside the fp16 gate
        assert 1e-5 < r.parity.metrics["logits"]["max_rel"] < 2e-2


def test_bf16_compute_onnx_is_a_valid_typed_graph(tmp_path):
    """bf16 compute (opset 22): ONNX Runtime has no CPU bf16 kernels, so here the graph is checked
    by ONNX's full type inference and the cast model's numerics against fp32 in PyTorch."""
    import torch
    from autotimm_deploy.exporter.formats import ExportContext
    from autotimm_deploy.exporter.formats.onnx_reduced import cast_model, reduced_proto
    from autotimm_deploy.exporter.models import build_model

    spec = ModelSpec("resnet18", num_classes=10, img_size=(64, 64))
    model = build_model(spec)
    ctx = ExportContext(model=model, spec=model.spec, options=trt_options(precision="bf16"), workdir=tmp_path,
                        stem="m")
    proto, graph = reduced_proto(ctx, "bf16")
    onnx.checker.check_model(proto, full_check=True)
    assert graph.info["opset"] == 22 and graph.info["compute"]["dtype"] == "bfloat16"
    bf16 = onnx.TensorProto.BFLOAT16
    assert any(t.data_type == bf16 for t in proto.graph.initializer)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        ref, out = model(x)[0], cast_model(model, "bf16")(x)[0]
    assert out.dtype == torch.float32
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert 1e-4 < rel < 6e-2


def test_qdq_int8_graph_is_symmetric_for_tensorrt(tmp_path):
    """TensorRT's explicit int8 path (TensorRT 11's only one) needs Q/DQ pairs with zero points 0."""
    from onnx import numpy_helper

    spec = ModelSpec("resnet18", num_classes=10, img_size=(64, 64))
    (r,) = export(spec, ["onnx"], tmp_path, trt_options(precision="int8", calib_data="sample-pictures", calib_samples=8))
    assert r.ok, r.parity and r.parity.failures
    graph = onnx.load(str(r.artifact)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {t.name: t for t in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(z).any()
                               for z in zero_points)


BUILT = {"version": "10.13.0", "gpu": "NVIDIA L4", "compute_capability": "8.9"}


@pytest.mark.parametrize("built,current,problem", [
    (BUILT, dict(BUILT), None),
    (None, dict(BUILT), None),
    (BUILT, {**BUILT, "version": "10.14.1"}, "TensorRT 10.13.0 (this machine has 10.14.1)"),
    ({**BUILT, "version_compatible": True}, {**BUILT, "version": "10.14.1"}, None),
    # TensorRT 11 loads TensorRT 10 version-compatible engines; 8.6+ ones load in 10, never in 11
    ({**BUILT, "version_compatible": True}, {**BUILT, "version": "11.0.0"}, None),
    (BUILT, {**BUILT, "version": "11.0.0"}, "TensorRT 10.13.0 (this machine has 11.0.0)"),
    ({**BUILT, "version": "8.6.1", "version_compatible": True}, {**BUILT, "version": "10.2.0"}, None),
    ({**BUILT, "version": "8.6.1", "version_compatible": True}, {**BUILT, "version": "11.4.0"}, "TensorRT 8.6.1"),
    ({**BUILT, "version": "8.5.3", "version_compatible": True}, {**BUILT, "version": "8.6.1"}, "TensorRT 8.5.3"),
    ({**BUILT, "version": "11.1.0", "version_compatible": True}, {**BUILT, "version": "10.13.0"}, "TensorRT 11.1.0"),
    ({**BUILT, "version_compatible": True}, {**BUILT, "version": "10.9.0"}, "TensorRT 10.13.0"),
    (BUILT, {**BUILT, "gpu": "NVIDIA H100", "compute_capability": "9.0"}, "sm_89 (this GPU, NVIDIA H100, is sm_90)"),
    ({**BUILT, "hardware_compatibility": "ampere+"}, {**BUILT, "compute_capability": "9.0"}, None),
    ({**BUILT, "hardware_compatibility": "ampere+"}, {**BUILT, "compute_capability": "7.5"}, "sm_89"),
    (BUILT, {"version": "10.9.0", "gpu": "Tesla T4", "compute_capability": "7.5"}, "sm_89 (this GPU, Tesla T4, is sm_75) with TensorRT"),
])
def test_engine_compatibility_check(built, current, problem):
    got = compatibility_problem(built, current)
    if problem is None:
        assert got is None
    else:
        assert got.startswith("engine built for ") and problem in got and "rebuild" in got and "\n" not in got


@pytest.mark.parametrize("fmt,module,extra", [("trt", "tensorrt", "trt"), ("torch-trt", "torch_tensorrt", "torch-trt")])
def test_cli_without_the_extra_one_line_nothing_written(tmp_path, export_cli, fmt, module, extra):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    out = tmp_path / "out"
    r = export_cli("resnet18", "--format", fmt, "--fp16", "--img-size", "64", "-o", str(out))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and module in lines[0] and f"[{extra}]" in lines[0], lines
    assert files_under(out) == [] and not out.exists()
    r = export_cli("--list-formats", "--json")
    row = {row["format"]: row for row in json.loads(r.stdout)}[fmt]
    assert not row["available"] and module in row["reason"]
    assert get_format(fmt).unavailable_reason() == row["reason"]


def test_cli_trt_option_errors(tmp_path, export_cli):
    for args, msg in ((["--format", "onnx", "--workspace", "2"], "--workspace only applies to --format trt"),
                      (["--format", "onnx", "--dynamic-batch", "1:2:4"], "--dynamic-batch only applies"),
                      (["--format", "onnx", "--no-tf32"], "--no-tf32 only applies"),
                      (["--format", "trt", "--dynamic-batch", "1:2"], "MIN:OPT:MAX"),
                      (["--format", "onnx", "--bf16"], "does not support bf16")):
        r = export_cli("resnet18", "--img-size", "64", "-o", str(tmp_path / "o"), *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, (args, r.stderr)
        assert not (tmp_path / "o").exists()


def test_plan_option_validation():
    from autotimm_deploy.exporter.formats.tensorrt import check_plan_options

    for opts, msg in ((trt_options(opt_level=7), "--opt-level"), (trt_options(workspace_gib=0), "--workspace"),
                      (trt_options(dla_core=-1), "--dla-core"),
                      (trt_options(hardware_compatibility="turing+"), "--hardware-compatible"),
                      (trt_options(timing_cache="/no/such/dir/t.cache"), "does not exist"),
                      (trt_options(static=True, dynamic_batch=(1, 2, 4)), "--static")):
        with pytest.raises(UserError, match=msg):
            check_plan_options(opts)
    assert isinstance(plan_build(trt_options(), SHAPE, TRT11), BuildPlan)
    # hardware-compatibility levels exist from a TensorRT version on: said, not a generic build failure
    with pytest.raises(UserError, match="same-cc needs TensorRT 10.9 or later; this machine has TensorRT 10.8"):
        plan_build(trt_options(hardware_compatibility="same-cc"), SHAPE, "10.8.0.43")
    assert plan_build(trt_options(hardware_compatibility="same-cc"), SHAPE, "10.9.0.34").hardware_compatibility


def test_tf32_is_recorded_and_gates_parity():
    from autotimm_deploy.exporter.formats.tensorrt import gate_precision
    from autotimm_deploy.exporter.parity import TOLERANCES

    plan = plan_build(trt_options(), SHAPE, TRT10)
    assert plan.tf32 and plan.to_dict()["tf32"] is True and gate_precision(plan) == "tf32"
    strict = plan_build(trt_options(tf32=False), SHAPE, TRT10)
    assert gate_precision(strict) == "fp32"
    assert gate_precision(plan_build(trt_options(precision="fp16"), SHAPE, TRT10)) == "fp16"
    assert TOLERANCES["fp32"].max_rel < TOLERANCES["tf32"].max_rel < TOLERANCES["fp16"].max_rel


# --- on a GPU with TensorRT (skipped here) ----------------------------------------------------------------

def _gpu_with_trt() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'autotimm-deploy[trt]' on a CUDA machine)"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU visible"


needs_trt = pytest.mark.skipif(_gpu_with_trt() is not None, reason=_gpu_with_trt() or "")


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_engine_build_reload_parity_on_gpu(tmp_path, precision):
    from autotimm_deploy.profiler.measure.settings import Settings
    from autotimm_deploy.profiler.measure.timing import HarnessConfig
    from autotimm_deploy.profiler.pipeline import profile

    spec = ModelSpec("resnet18", num_classes=10, img_size=(64, 64))
    cache = tmp_path / "tactics.cache"
    (r,) = export(spec, ["trt"], tmp_path, trt_options(precision=precision, timing_cache=str(cache)))
    assert r.ok, r.error or r.parity.failures
    m = load_manifest(r.artifact)
    assert m.export["tensorrt"]["compute_capability"] and m.export["timing_cache_sha256"] and cache.exists()
    report = profile([str(r.artifact)], Settings(device=None, batch_sizes=[1, 4],
                                                 harness=HarnessConfig(max_time=1, warmup_time=0.5)),
                     compare_eager=True, isolate=False)
    run = report["runs"][1]
    assert run["runtime"] == "tensorrt" and run["phases_ms"]["compute_ms"] > 0
    assert all(not p.get("error") for p in run["points"])


@pytest.mark.gpu
@needs_trt
def test_engine_int8_and_cuda_graph_on_gpu(tmp_path):
    from autotimm_deploy.profiler.artifact import open_artifact

    spec = ModelSpec("resnet18", num_classes=10, img_size=(64, 64))
    (r,) = export(spec, ["trt"], tmp_path, trt_options(precision="int8", calib_random=True, calib_samples=8))
    assert r.ok, r.error or r.parity.failures
    m = load_manifest(r.artifact)
    with open_artifact(r.artifact, manifest=m) as plain, open_artifact(r.artifact, manifest=m, cuda_graph=True) as g:
        x = plain.random_arrays(2)
        np.testing.assert_allclose(g.infer(x)["logits"], plain.infer(x)["logits"], rtol=1e-3, atol=1e-3)


# --- Torch-TensorRT (--format torch-trt): everything up to torch_tensorrt's own calls -----------------------

def test_torch_trt_settings_follow_the_installed_api():
    from autotimm_deploy.exporter.formats.torch_trt import compile_settings

    dtype = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}.get
    current = {"inputs", "use_explicit_typing", "enable_autocast", "autocast_low_precision_type", "min_block_size"}
    older = {"inputs", "enabled_precisions", "min_block_size"}
    assert compile_settings("fp32", current, dtype) == {"min_block_size": 1, "use_explicit_typing": True}
    assert compile_settings("fp16", current, dtype) == {"min_block_size": 1, "enable_autocast": True,
                                                        "use_explicit_typing": True, "autocast_low_precision_type": "f16"}
    assert compile_settings("bf16", older, dtype) == {"min_block_size": 1, "enabled_precisions": {"f32", "bf16"}}
    assert compile_settings("fp32", older, dtype) == {"min_block_size": 1}


def test_torch_trt_input_ranges_and_partitions():
    import torch
    from autotimm_deploy.exporter.formats.torch_trt import input_ranges, partitions

    assert input_ranges(ExportOptions(batch_size=4), (3, 64, 64)) == {
        "min_shape": (1, 3, 64, 64), "opt_shape": (4, 3, 64, 64), "max_shape": (32, 3, 64, 64)}
    assert input_ranges(ExportOptions(static=True, batch_size=2, dynamic_size=(32, 128)), (3, 64, 96)) == {
        "min_shape": (2, 3, 32, 32), "opt_shape": (2, 3, 64, 96), "max_shape": (2, 3, 128, 128)}

    class Fallback(torch.nn.Module):
        def forward(self, x):
            return torch.sort(x)[0]

    graph = torch.nn.Module()  # Torch-TensorRT's partitioned module: engines and PyTorch submodules by name
    graph.add_module("_run_on_acc_0", torch.nn.Identity())
    graph.add_module("_run_on_gpu_1", torch.fx.symbolic_trace(Fallback()))
    parts = partitions(graph)
    assert parts["tensorrt"] == ["_run_on_acc_0"] and parts["pytorch"] == ["_run_on_gpu_1"]
    assert parts["fallback_ops"] == ["sort"] or "sort" in " ".join(parts["fallback_ops"])


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is None, reason="Torch-TensorRT is not installed")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_trt_exports_and_reloads_on_gpu(tmp_path, precision):
    spec = ModelSpec("resnet18", num_classes=10, img_size=(64, 64))
    (r,) = export(spec, ["torch-trt"], tmp_path, ExportOptions(precision=precision))
    assert r.ok, r.error or r.parity.failures
    m = load_manifest(r.artifact)
    assert m.export["tensorrt_subgraphs"] >= 1 and isinstance(m.export["fallback_ops"], list)


def test_weak_int8_with_an_accuracy_budget_parses_the_qdq_graph():
    """TensorRT 10 int8 under --max-drop: the accuracy-aware Q/DQ graph (explicit quantization, the
    layers the budget kept in float stay float) instead of the calibrator; TensorRT 11 always does."""
    import dataclasses

    plain = plan_build(trt_options(precision="int8"), SHAPE, TRT10)
    budget = plan_build(dataclasses.replace(trt_options(precision="int8"), eval_data="val/", max_drop=1.0), SHAPE, TRT10)
    assert (plain.network, plain.calibrator) == ("fp32", True)
    assert (budget.network, budget.calibrator) == ("int8-qdq", False) and "int8" in budget.builder_flags
    assert any("accuracy-aware" in n for n in budget.notes)


def test_failed_engine_is_diagnosed_by_rebuilding_with_every_tensor_marked(tmp_path, monkeypatch):
    """Everything of the TensorRT layer comparison but TensorRT: the engine's own network loader and
    config are rebuilt with Polygraphy's MARK_ALL, fed at most the profile's largest batch, and the
    tensors (named as in the ONNX graph, which TensorRT keeps) are compared with eager PyTorch's.
    Here a stand-in runner answers with the source ONNX's tensors through onnxruntime, one conv
    negated as a wrong build would; on a GPU it is Polygraphy's TrtRunner."""
    import onnx.numpy_helper as nh
    import polygraphy.backend.trt as ptrt
    from autotimm_deploy.exporter.formats import tensorrt_layers
    from autotimm_deploy.exporter.formats.base import ExportContext, Exported
    from autotimm_deploy.exporter.formats.onnx import precision_proto
    from autotimm_deploy.exporter.formats.onnx_layers import _all_tensors
    from autotimm_deploy.exporter.models import build_model
    from polygraphy import constants

    spec = ModelSpec("test_resnet", num_classes=10, img_size=(64, 64))
    model = build_model(spec)
    opts = trt_options(precision="fp16", dynamic_batch=(1, 2, 3))
    ctx = ExportContext(model=model, spec=model.spec, options=opts, workdir=tmp_path, stem="m")
    proto, info = precision_proto(ctx, "fp32")
    (w,) = [t for t in proto.graph.initializer if t.name.endswith("layer2.0.downsample.1.weight")]
    w.CopyFrom(nh.from_array(-nh.to_array(w), w.name))
    src = tmp_path / "m.onnx"
    onnx.save_model(proto, str(src))
    plan = plan_build(opts, SHAPE, TRT10)
    chain = loader_chain(plan, src, tmp_path / "m.engine")
    built = {}

    def marked(network, outputs):
        built["network"], built["outputs"] = network, outputs
        return network

    def engine(network, config):
        built["config"] = config
        return network

    class Runner:
        def __init__(self, network):
            self.path = network.path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def infer(self, feed):
            built["batch"] = len(feed["input"])
            return _all_tensors(Path(self.path), tmp_path / "all.onnx", feed["input"])

    for name, fake in [("ModifyNetworkOutputs", marked), ("EngineFromNetwork", engine), ("TrtRunner", Runner)]:
        monkeypatch.setattr(ptrt, name, fake)
    monkeypatch.setattr(tensorrt_layers, "device_feed", lambda pictures: pictures)
    exported = Exported([tmp_path / "m.engine"], exporter=f"onnx ({info.exporter})", reference=(chain, plan))
    pictures = np.random.default_rng(0).normal(size=(4, *SHAPE)).astype(np.float32)
    d = get_format("trt").diagnose(ctx, exported, pictures, 0.999)
    assert built["network"] is chain.network and built["outputs"] == constants.MARK_ALL
    assert built["config"]._func is chain.tweaks and built["batch"] == 3  # the profile's max batch
    assert d["compared"] > 20 and d["first"][0]["module"].startswith("layer2.0.downsample"), d
