"""Core ML: the zipped package, its interface read back from disk, the preprocessing it records, the
ops we translate for coremltools, and what cannot run off macOS (parity not run, profiling refused
in one line). Prediction itself runs only on macOS: there the same export is parity-checked."""

import json
import sys
import zipfile

import pytest
from autotimm_deploy.exporter.core.capture import quiet_import
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.results import Verdict
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions, get_format
from autotimm_deploy.exporter.pipeline import export

from tests.conftest import call_cli, files_under

SMALL = ModelSpec("test_resnet", num_classes=6, img_size=(64, 64))
ON_MAC = sys.platform == "darwin"


@pytest.fixture(autouse=True)
def _needs_coremltools():
    reason = get_format("coreml").unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml")
    (r,) = export(SMALL, ["coreml"], out, ExportOptions(precision="fp16"))
    return r


def test_package_is_one_zipped_mlpackage_with_its_interface_checked(package, tmp_path):
    from autotimm_deploy.exporter.formats.coreml import package_interface

    r = package
    assert r.ok, (r.error, r.parity and r.parity.failures)
    assert r.artifact.name == "test_resnet-fp16.mlpackage.zip"
    with zipfile.ZipFile(r.artifact) as z:
        names = z.namelist()
        z.extractall(tmp_path)
    assert {n.split("/")[0] for n in names} == {"test_resnet-fp16.mlpackage"}
    assert "test_resnet-fp16.mlpackage/Manifest.json" in names
    assert "test_resnet-fp16.mlpackage/Data/com.apple.CoreML/model.mlmodel" in names
    # read back from the unzipped package, as Xcode would get it
    saved = quiet_import("coremltools").models.MLModel(str(tmp_path / "test_resnet-fp16.mlpackage"), skip_model_load=True)
    interface = package_interface(saved.get_spec())
    assert interface["kind"] == "mlProgram"
    assert interface["inputs"] == [{"name": "input", "dtype": "float32", "shape": [1, 3, 64, 64],
                                    "ranges": [[1, 64], [3, 3], [64, 64], [64, 64]]}]
    assert [(o["name"], o["dtype"]) for o in interface["outputs"]] == [("logits", "float32")]
    m = load_manifest(r.artifact)
    assert m.batch == {"dynamic": True, "min": 1, "max": 64, "opt": 1}
    assert m.export["interface"] == interface and m.export["deployment_target"] == "iOS16"
    assert m.export["compute_precision"] == "fp16" and m.export["coremltools"]
    # the preprocessing travels inside the package too, for an app that has only the package
    meta = saved.user_defined_metadata
    assert json.loads(meta["autotimm_deploy.preprocessing"]) == json.loads(json.dumps(m.preprocessing))
    assert json.loads(meta["autotimm_deploy.outputs"]) == ["logits"]
    # fp16 weights: half of fp32's 4 bytes a parameter, within the program's own overhead
    weights = [i.file_size for i in zipfile.ZipFile(r.artifact).infolist() if i.filename.endswith("weight.bin")]
    assert weights and abs(weights[0] - 2 * r.params) < 0.05 * 2 * r.params + 4096


@pytest.mark.skipif(ON_MAC, reason="on macOS Core ML runs: parity is checked like every other format")
def test_off_macos_parity_is_not_run_and_said_so(package):
    r = package
    assert r.parity.verdict == Verdict.NOT_RUN and "only on macOS" in r.parity.notes[0]
    assert load_manifest(r.artifact).parity.verdict == Verdict.NOT_RUN


@pytest.mark.skipif(not ON_MAC, reason="Core ML predicts only on macOS")
def test_on_macos_parity_passes(package):
    assert package.parity.verdict == Verdict.PASS, package.parity.failures


@pytest.mark.skipif(ON_MAC, reason="on macOS the coreml runtime profiles it")
def test_profiling_off_macos_is_one_line(package):
    p = call_cli("autotimm_deploy.profiler.cli", str(package.artifact))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "autotimm-profile: error: the coreml runtime cannot run here: Core ML runs models only on macOS "
        f"(this is {sys.platform}); run it on a Mac"]


def test_cli_exports_and_says_parity_was_not_run(tmp_path, export_cli):
    p = export_cli("test_resnet", "--format", "coreml", "--num-classes", "4", "--img-size", "64", "--static",
                   "--batch-size", "2", "--json", "-o", str(tmp_path))
    assert p.returncode == 0, p.stderr
    (r,) = json.loads(p.stdout)["results"]
    assert r["ok"] and r["parity"]["verdict"] == ("pass" if ON_MAC else "not run")
    m = load_manifest(tmp_path / "test_resnet-fp16.mlpackage.zip")  # Core ML's own default precision
    assert m.batch == {"dynamic": False, "min": 2, "max": 2} and m.precision == "fp16"
    assert m.export["interface"]["inputs"][0]["shape"] == [2, 3, 64, 64]
    assert files_under(tmp_path) == ["test_resnet-fp16.mlpackage.zip", "test_resnet-fp16.mlpackage.zip.json"]


def test_detection_converts_at_a_fixed_batch_and_says_why(tmp_path):
    """The FCOS head's GroupNorm reshape cannot take a symbolic batch in coremltools: the export
    falls back to a fixed batch, and the NMS (integer floor division, boolean gathers and masks,
    box-area products) converts through our translations."""
    spec = ModelSpec("test_resnet", task="detection", num_classes=3, img_size=(128, 128), head={"fpn_channels": 16, "max_detections": 5})
    (r,) = export(spec, ["coreml"], tmp_path)
    assert r.ok, (r.error, r.parity and r.parity.failures)
    m = load_manifest(r.artifact)
    assert m.batch == {"dynamic": False, "min": 1, "max": 1}
    assert m.export["fallback"].startswith("fixed batch 1: with a dynamic batch the conversion failed")
    outputs = m.export["interface"]["outputs"]
    assert [o["name"] for o in outputs] == ["boxes", "scores", "labels", "num_detections"]
    assert [o["dtype"] for o in outputs] == ["float32", "float32", "int32", "int32"]  # Core ML has no int64


def test_translations_for_ops_coremltools_lacks():
    """Each op here stops a plain coremltools conversion ("not implemented" / wrong dtypes)."""
    import torch
    from autotimm_deploy.exporter.formats import coreml_ops
    from autotimm_deploy.exporter.formats.coreml import package_interface

    class Ops(torch.nn.Module):
        def forward(self, x):
            idx = (x.abs() * 3).int()  # computed from the input: nothing constant-folds away
            floor = torch.div(idx, 5, rounding_mode="floor")  # stays int32 for the gather below
            pos, big = x > 0, x > 0.5
            mask = (pos & big) | ~pos ^ big
            rows = torch.gather(mask, 1, floor[:, :4])  # a boolean gather
            area = torch.ops.aten.alias.default(x).abs().reshape(x.shape[0], 6, 2).prod(-1)
            shifted = torch.gather(x, 1, (floor - 1).clamp(min=0)) + torch.gather(x, 1, (idx + 1).clamp(max=11))
            return torch.gather(x, 1, floor), rows.int(), area, shifted

    ct = quiet_import("coremltools")
    coreml_ops.register()
    x = torch.randn(2, 12)
    program = torch.export.export(Ops(), (x,), strict=False).run_decompositions({})
    model = ct.convert(program, inputs=[ct.TensorType(name="x", shape=x.shape)], convert_to="mlprogram",
                       minimum_deployment_target=ct.target.iOS16, skip_model_load=True)
    ops = {op.op_type for op in model._mil_program.functions["main"].operations}
    assert {"floor_div", "reduce_prod", "gather_along_axis", "logical_and", "logical_or", "logical_xor",
            "logical_not"} <= ops, ops
    assert len(package_interface(model.get_spec())["outputs"]) == 4


@pytest.mark.parametrize("form,op", [("linear", "constexpr_affine_dequantize"), ("palette4", "constexpr_lut_to_dense")])
def test_int8_compresses_the_weights_without_calibration_data(tmp_path, package, form, op):
    """Weight-only int8 / palettised weights (coremltools.optimize): no --calib-data, the interface
    checked as for fp16, the weights stored compressed (the decompression ops are in the saved
    program), the package smaller than fp16's and its size in the manifest."""
    from autotimm_deploy.exporter.formats.coreml import CoreMLOptions

    options = ExportOptions(precision="int8", format_options={"coreml": CoreMLOptions(int8_form=form)})
    (r,) = export(SMALL, ["coreml"], tmp_path, options)
    assert r.ok, r.error
    m = load_manifest(r.artifact)
    assert m.precision == "int8" and m.export["compute_precision"] == "fp16" and form in m.export["options"]["coreml"][
        "int8_form"]
    assert m.export["compressed_weights"] > 0 and m.export["interface"]["inputs"][0]["name"] == "input"
    assert m.export["package_bytes"] < 0.7 * load_manifest(package.artifact).export["package_bytes"]
    ct = quiet_import("coremltools")
    with zipfile.ZipFile(r.artifact) as z:
        z.extractall(tmp_path / "unzipped")
    spec = ct.models.MLModel(str(next((tmp_path / "unzipped").iterdir())), skip_model_load=True).get_spec()
    ops = {o.type for f in spec.mlProgram.functions.values() for b in f.block_specializations.values()
           for o in b.operations}
    assert op in ops
    assert r.parity.verdict == (Verdict.PASS if ON_MAC else Verdict.NOT_RUN)


def test_int8_form_without_int8_is_one_line(tmp_path, export_cli):
    p = export_cli("test_resnet", "--format", "coreml", "--coreml-int8", "palette8", "-o", str(tmp_path))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "autotimm-export: error: --coreml-int8 palette8 sets the form of the int8 model: add --int8"]
