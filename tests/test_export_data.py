"""Typed export data: the batch range a format reports, the one fixed-batch fallback, and the fp32
ONNX graph exported once per export call, keyed by every option that shapes it."""

from __future__ import annotations

import dataclasses

import pytest
from autotimm_deploy.exporter.core.errors import ExportFailed
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import BatchRange, ExportContext, ExportOptions, get_format
from autotimm_deploy.exporter.formats.base import with_batch_fallback
from autotimm_deploy.exporter.formats.onnx_graph import graph_key

SMALL = ModelSpec("test_resnet", num_classes=5, img_size=(64, 64))


def test_batch_range_records():
    assert BatchRange.fixed(4).to_dict() == {"dynamic": False, "min": 4, "max": 4}
    assert BatchRange.up_to(8).to_dict() == {"dynamic": True, "min": 1, "max": None, "opt": 8}
    assert BatchRange.up_to(100, 64).to_dict() == {"dynamic": True, "min": 1, "max": 64, "opt": 64}
    assert BatchRange.up_to(2, 2, 2).dynamic is False  # a TensorRT profile of one batch
    assert BatchRange.of_options(ExportOptions(static=True, batch_size=3)) == BatchRange.fixed(3)
    assert BatchRange.of_options(ExportOptions(batch_size=3)) == BatchRange.up_to(3)


def _ctx(tmp_path, **options) -> ExportContext:
    return ExportContext(model=object(), spec=SMALL, options=ExportOptions(**options), workdir=tmp_path, stem="m")


def test_fixed_batch_fallback(tmp_path):
    built = []

    def dynamic():
        built.append("dynamic")
        raise ExportFailed("GroupNorm reshape\nwith a long traceback")

    batch, why = with_batch_fallback(_ctx(tmp_path, batch_size=2), dynamic, lambda: built.append("fixed"),
                                     "the conversion failed")
    assert built == ["dynamic", "fixed"] and batch == BatchRange.fixed(2)
    assert why == "fixed batch 2: with a dynamic batch the conversion failed (GroupNorm reshape)"
    built.clear()  # --static: the fixed build only, and no fallback to report
    assert with_batch_fallback(_ctx(tmp_path, static=True, batch_size=3), dynamic, lambda: built.append("fixed"),
                               "x") == (BatchRange.fixed(3), None)
    assert built == ["fixed"]
    assert with_batch_fallback(_ctx(tmp_path), lambda: BatchRange.up_to(1, 64), lambda: None, "x") == \
        (BatchRange.up_to(1, 64), None)


def test_graph_key_covers_every_shaping_option(tmp_path):
    base = _ctx(tmp_path)
    changes = {"opset": 17, "static": True, "batch_size": 4, "dynamic_size": (64, 128), "simplify": False,
               "optimize_dynamo": False}
    for name, value in changes.items():
        other = dataclasses.replace(base, options=dataclasses.replace(base.options, **{name: value}))
        assert graph_key(other) != graph_key(base), name
    same = dataclasses.replace(base, options=dataclasses.replace(base.options, precision="int8", calib_samples=4))
    assert graph_key(same) == graph_key(base)  # precision and calibration do not shape the fp32 graph


def test_one_fp32_graph_per_export_call(tmp_path, monkeypatch):
    """onnx and openvino in one call share one ONNX export (OpenVINO re-exported it before)."""
    if get_format("openvino").unavailable_reason():
        pytest.skip(get_format("openvino").unavailable_reason())
    from autotimm_deploy.exporter.formats import onnx_graph
    from autotimm_deploy.exporter.pipeline import export

    calls = []
    real = onnx_graph.export_graph
    monkeypatch.setattr(onnx_graph, "export_graph", lambda ctx: calls.append(1) or real(ctx))
    results = export(SMALL, ["onnx", "openvino"], tmp_path, verify=False)
    assert [r.error for r in results] == [None, None] and len(calls) == 1
    m = load_manifest(results[1].artifact)
    assert m.export["exporter"] == "onnx (torch.onnx.dynamo)" and m.batch == {"dynamic": True, "min": 1, "max": None,
                                                                                "opt": 1}


def _parsed(argv: list[str]):
    from autotimm_deploy.exporter import cli

    a = cli.build_parser().parse_args(argv)
    a.precision = a.precision or "fp32"
    formats = [a.format]
    return cli.spec_from_args(a), cli.export_options(a, formats), a.out, a.name


@pytest.mark.parametrize("argv", [
    ["resnet18", "--task", "detection", "--num-classes", "3", "--img-size", "96,128", "--fpn-channels", "32",
     "--depthwise", "--score-threshold", "0.2", "--mean", "0.5,0.5,0.5", "--interpolation", "bilinear", "-f", "trt",
     "--int8", "--calib-data", "sample-pictures", "--calib-samples", "4", "--static", "--batch-size", "2",
     "--dynamic-batch", "1:2:4", "--no-tf32", "--workspace", "2", "--version-compatible", "-o", "some where"],
    ["test_vit", "-f", "aoti", "--device", "cpu", "--dynamic-size", "64:128", "--opset", "17", "--no-simplify",
     "--seed", "7", "--crop-pct", "0.9", "--eval", "data.csv", "--max-drop", "1.5", "--name", "m"],
    ["resnet18", "--task", "semantic-segmentation", "--head", "deeplabv3plus", "--argmax", "-f", "onnx", "--fp16"],
])
def test_reproduce_command_gives_the_same_export(argv):
    """The recorded command, parsed again, asks for exactly the same model, options and place."""
    import shlex

    from autotimm_deploy.exporter.formats.command import reproduce_command

    spec, options, out, name = _parsed(argv)
    fmt = argv[argv.index("-f") + 1]
    command = reproduce_command(spec, fmt, options, out, name)
    assert command.startswith("autotimm-export ")
    again = _parsed(shlex.split(command)[1:])
    assert again == (spec, options, out, name), command


def test_failed_export_records_its_command(tmp_path, monkeypatch):
    from autotimm_deploy.exporter.formats import torchscript
    from autotimm_deploy.exporter.pipeline import export

    monkeypatch.setattr(torchscript.TorchScriptFormat, "export", lambda self, ctx: (_ for _ in ()).throw(
        ExportFailed("no")))
    (r,) = export(SMALL, ["torchscript"], tmp_path, ExportOptions(batch_size=2))
    assert r.error == "no" and r.to_dict()["command"] == r.command
    assert r.command.startswith("autotimm-export test_resnet --task classification") and "--batch-size 2" in r.command
    assert f"-o {tmp_path}" in r.command and "--format torchscript" in r.command
