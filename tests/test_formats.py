"""Every format: export -> reload from disk -> parity, on small models at small sizes."""

import numpy as np
import onnx
import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.files import sha256_file
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import FORMATS, ExportOptions, available_formats, export_order
from autotimm_deploy.exporter.pipeline import export
from autotimm_deploy.profiler.artifact import open_artifact

CPU_FORMATS = available_formats()  # every format this machine can export (TensorRT needs a GPU)
MODELS = {
    "resnet18": ModelSpec("resnet18", num_classes=10, img_size=(64, 64)),
    "mobilenetv3_small_100": ModelSpec("mobilenetv3_small_100", num_classes=10, img_size=(64, 64)),
    "test_vit": ModelSpec("test_vit", num_classes=10, img_size=(64, 96)),  # non-default, non-square
}


EDGE = ("executorch", "litert", "ncnn")


def formats_for(name: str) -> list[str]:
    """AOTInductor compiles C++ for ~25 s a model (CI time): test_aoti.py and test_target_cpu.py
    compile it, not this matrix; Core ML (which predicts only on macOS) has tests/test_coreml.py. The edge formats (10-30 s a model) run on the edge CNN and the ViT
    (ncnn's through the rewrite of tests/test_ncnn_rewrite.py)."""
    return [f for f in CPU_FORMATS if f not in ("aoti", "coreml") and not (f in EDGE and name == "resnet18")]


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    results = export(MODELS[request.param], formats_for(request.param), out)
    return request.param, out, {r.format: r for r in results}


def test_every_format_exports_with_parity(exported):
    name, out, results = exported
    assert set(results) == set(formats_for(name))
    for fmt, r in results.items():
        assert r.ok, (fmt, r.error, r.parity and r.parity.failures)
        # a graph that cannot resize its batch (LiteRT's ViT attention) is held at the fixed batch it says
        assert r.parity.batches == ([1] if r.fallback else [1, 4]), fmt
        m = r.parity.metrics["logits"]
        assert m["max_rel"] < 1e-3 and m["cosine"] > 0.99999 and m["top1_agreement"] == 1.0
        if not r.fallback:  # (a spread needs more than one picture)
            assert m["spread"] > 1e-3  # the reference depends on the input: the check means something
        assert r.artifact.exists() and r.manifest.exists()
    # nothing but artifacts and manifests is left behind (no scratch folders, no temp files)
    names = sorted(p.name for p in out.iterdir())
    listed = {f for r in results.values() for f in load_manifest(r.artifact).files} | {r.manifest.name
                                                                                      for r in results.values()}
    assert names == sorted(listed)
    assert {r.artifact.name for r in results.values()} == {f"{name}{FORMATS[f].suffix}" for f in formats_for(name)}


def test_single_output_programs_return_the_tensor(exported):
    """A classifier's TorchScript and torch.export artifacts return the logits tensor itself."""
    import torch

    name, out, results = exported
    x = torch.zeros(2, 3, *MODELS[name].img_size)
    for fmt, load in (("torchscript", torch.jit.load), ("pt2", lambda p: torch.export.load(p).module())):
        y = load(str(results[fmt].artifact))(x)
        assert isinstance(y, torch.Tensor) and tuple(y.shape) == (2, 10), (fmt, type(y))


def test_manifest_contents(exported):
    name, out, results = exported
    spec = MODELS[name]
    for fmt, r in results.items():
        m = load_manifest(r.artifact)
        assert m.format == fmt and m.artifact == r.artifact.name
        assert m.spec["model"] == name and tuple(m.spec["img_size"]) == spec.img_size
        dim0 = 1 if m.export.get("fallback") else "batch"
        assert m.inputs[0].shape == [dim0, 3, *spec.img_size]
        assert m.outputs[0].name == "logits" and m.outputs[0].shape == [dim0, 10]
        assert m.batch["dynamic"] is (dim0 == "batch")
        assert m.preprocessing["mean"] and m.preprocessing["interpolation"]
        assert m.environment["packages"]["torch"] and m.environment["packages"]["timm"]
        assert m.files[r.artifact.name]["sha256"] == sha256_file(r.artifact)
        assert m.parity.verdict == "pass"
        assert m.export.get("exporter") or m.export.get("source")  # derived formats name their source
    assert load_manifest(results["onnx"].artifact).export["opset"] == 18


def test_dynamic_batch_at_an_unseen_size(exported):
    _, _, results = exported
    for fmt, r in results.items():
        with open_artifact(r.artifact, manifest=load_manifest(r.artifact)) as s:
            if r.fallback:  # fixed: another batch is refused, never silently cut
                with pytest.raises(UserError, match="fixed batch"):
                    s.infer({"input": np.zeros((3, *s.inputs[0].shape[1:]), np.float32)})
                continue
            out = s.infer(s.random_arrays(3))
        assert out["logits"].shape == (3, 10), fmt


def test_onnx_graph_is_valid_with_symbolic_batch(exported):
    _, _, results = exported
    g = onnx.load(str(results["onnx"].artifact)).graph
    assert g.input[0].name == "input" and g.output[0].name == "logits"
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert results["onnx"].info["exporter"] == "torch.onnx.dynamo"
    assert results["onnx"].info["simplifier"]["tool"] == "onnxslim"


SMALL = ModelSpec("test_resnet", num_classes=5, img_size=(64, 64))


def test_static_batch(tmp_path):
    (r,) = export(SMALL, ["onnx"], tmp_path, ExportOptions(static=True, batch_size=2))
    assert r.ok and r.parity.batches == [2]
    m = load_manifest(r.artifact)
    assert m.inputs[0].shape[0] == 2 and m.batch == {"dynamic": False, "min": 2, "max": 2}
    assert onnx.load(str(r.artifact)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_old_opset_uses_torchscript_exporter_without_simplify(tmp_path):
    (r,) = export(SMALL, ["onnx"], tmp_path, ExportOptions(opset=17, simplify=False))
    assert r.ok and r.info["exporter"] == "torch.onnx.torchscript" and "simplifier" not in r.info
    assert onnx.load(str(r.artifact)).opset_import[0].version == 17


def test_torchlib_is_listed_once_a_process(tmp_path, monkeypatch):
    """torch.onnx.export lists onnxscript's torchlib anew at each call, for its operator registry:
    the exporter lets it list once a process, and puts torch's lookup back after each export."""
    from torch.onnx._internal import _lazy_import

    import autotimm_deploy.exporter.formats.onnx_graph as og

    apis = _lazy_import.onnxscript_apis
    real, calls = apis.get_torchlib_ops, []
    og._listed_by.cache_clear()
    monkeypatch.setattr(apis._module, "get_torchlib_ops", lambda: calls.append(1) or real())
    for i in range(2):
        (r,) = export(SMALL, ["onnx"], tmp_path / str(i), verify=False)
        assert r.ok and r.info["exporter"] == "torch.onnx.dynamo"
    assert len(calls) == 1 and "get_torchlib_ops" not in vars(apis) and og._LISTED["users"] == 0
    og._listed_by.cache_clear()  # (it holds this test's lister)


def test_dynamo_failure_falls_back_and_is_recorded(tmp_path, monkeypatch):
    import autotimm_deploy.exporter.formats.onnx_graph as fo

    def broken(ctx, names):
        raise RuntimeError("dynamo cannot trace this\nsecond line")

    monkeypatch.setitem(fo.EXPORTERS, "torch.onnx.dynamo", broken)
    (r,) = export(SMALL, ["onnx"], tmp_path)
    assert r.ok and r.info["exporter"] == "torch.onnx.torchscript"
    assert r.info["fallback_from"] == {"torch.onnx.dynamo": "dynamo cannot trace this"}


def test_large_models_use_external_data(tmp_path, monkeypatch):
    import autotimm_deploy.exporter.formats.onnx_graph as fo

    monkeypatch.setattr(fo, "INLINE_LIMIT", 0)
    (r,) = export(SMALL, ["onnx"], tmp_path)
    data = tmp_path / "test_resnet.onnx.data"
    assert r.ok and r.info["external_data"] and data.exists()
    assert load_manifest(r.artifact).files[data.name]["sha256"] == sha256_file(data)
    # --force over it with an inline export removes the stale data file
    monkeypatch.setattr(fo, "INLINE_LIMIT", 1 << 40)
    (r,) = export(SMALL, ["onnx"], tmp_path, force=True)
    assert r.ok and not data.exists()


def test_existing_outputs_need_force(tmp_path):
    export(SMALL, ["torchscript"], tmp_path, verify=False)
    before = (tmp_path / "test_resnet.pt").stat().st_mtime_ns
    with pytest.raises(UserError, match="already exists; pass --force"):
        export(SMALL, ["torchscript"], tmp_path)
    assert (tmp_path / "test_resnet.pt").stat().st_mtime_ns == before


def test_failed_parity_keeps_the_verdict(tmp_path, monkeypatch):
    import autotimm_deploy.exporter.parity as v

    monkeypatch.setitem(v.TOLERANCES, "fp32", v.Tolerance(max_rel=-1, max_abs=-1, cosine=2, delta_cosine=2, top1=2, tie_margin=0, pixel=2))
    monkeypatch.setattr("autotimm_deploy.exporter.parity_exact.FACTOR", 0.0)  # no allowance against float64 either
    (r,) = export(SMALL, ["torchscript"], tmp_path)
    assert not r.ok and r.parity.verdict == "fail"
    assert load_manifest(r.artifact).parity.verdict == "fail"


def test_missing_extra_refuses_before_writing(tmp_path, monkeypatch):
    from autotimm_deploy.exporter.formats import Format

    class Needy(Format):
        name, suffix, extra, requires = "needy", ".needy", "trt", ("surely_not_installed_mod",)

    monkeypatch.setitem(FORMATS, "needy", Needy)
    with pytest.raises(UserError, match=r"install the \[trt\] extra"):
        export(SMALL, ["onnx", "needy"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_order_puts_parents_first(monkeypatch):
    from autotimm_deploy.exporter.formats import Format

    class Child(Format):
        name, suffix, derives_from = "child", ".c", "onnx"

    monkeypatch.setitem(FORMATS, "child", Child)
    assert export_order(["child", "torchscript"]) == ["onnx", "child", "torchscript"]
    with pytest.raises(UserError, match="did you mean onnx"):
        export_order(["onx"])


def test_parity_inputs_are_real_pictures():
    from autotimm_deploy.exporter.inputs.samples import sample_images

    prep = {"input_size": [3, 32, 48], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear",
            "crop_pct": 0.875}
    x = sample_images(4, prep)
    assert x.shape == (4, 3, 32, 48) and x.dtype == np.float32
    assert not np.allclose(x[0], x[1])
    np.testing.assert_array_equal(x, sample_images(4, prep))
    # the same path as calibration images: preprocess, then the faint seeded noise
    from autotimm_deploy.exporter.inputs.preprocess import preprocess
    from autotimm_deploy.exporter.inputs.samples import PICTURES, _picture

    clean = preprocess(_picture(PICTURES[0]), prep)
    assert np.abs(x[0] - clean).max() < 10 * (2 / 255) / 0.25
