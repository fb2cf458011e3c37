"""Graphs written so the runtimes fuse them (exporter/formats/onnx_fusable.py, openvino_fusable.py):
GELU in the order ONNX Runtime fuses, and OpenVINO given back its GroupNormalization, Roll and
HSigmoid where ONNX spelled them out. Each rewrite keeps parity; the GELU one is exact."""

import math

import numpy as np
import onnx
import pytest
import torch
from autotimm_deploy.exporter.formats.onnx_fusable import fusable
from autotimm_deploy.exporter.models import from_module
from autotimm_deploy.exporter.pipeline import export
from onnx import TensorProto, helper
from torch import nn

SIZE = 32


class Spelled(nn.Module):
    """One of each: group norm (PoolFormer), torch.roll over two axes (Swin), a hard-sigmoid gate
    (MobileNetV3's squeeze-excite) and an MLP's GELU (every ViT)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.norm = nn.GroupNorm(2, 8)
        self.gate = nn.Conv2d(8, 8, 1)
        self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)
        self.head = nn.Linear(8 * (SIZE // 4) ** 2, 5)  # every position its own weights: a wrong roll shows
        for p in self.parameters():  # an affine norm and biases that are not zero
            nn.init.normal_(p, std=0.5)

    def forward(self, x):
        x = torch.roll(self.norm(self.embed(x)), shifts=(2, 3), dims=(2, 3))
        x = x * nn.functional.hardsigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        x = x.permute(0, 2, 3, 1)
        return self.head((x + self.fc2(self.act(self.fc1(x)))).flatten(1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = from_module(Spelled().eval(), "spelled", SIZE)
    return {r.format: r for r in export(model.spec, ["onnx", "openvino"], tmp_path_factory.mktemp("fusable"), model=model)}


def test_onnxruntime_fuses_the_gelu(exported):
    import onnxruntime as ort

    r = exported["onnx"]
    assert r.ok, (r.error, r.parity and r.parity.failures)
    assert r.info["fusable"] == {"gelu": 1}
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(r.artifact.with_name("optimized.onnx"))
    ort.InferenceSession(str(r.artifact), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert ops & {"Gelu", "BiasGelu"} and "Erf" not in ops, ops


def test_openvino_gets_its_own_operators_back(exported):
    import openvino as ov

    r = exported["openvino"]
    assert r.ok, (r.error, r.parity and r.parity.failures)
    assert r.info["fusable"] == {"gelu": 1, "group_norm": 1, "roll": 2, "hsigmoid": 1}
    rolls = [op for op in ov.Core().read_model(str(r.artifact)).get_ordered_ops() if op.get_type_name() == "Roll"]
    assert len(rolls) == 1  # both axes, with torch's shifts
    shifts, axes = (rolls[0].input_value(i).get_node().get_data().tolist() for i in (1, 2))
    assert dict(zip(axes, shifts)) == {2: 2, 3: 3}
    norms = [op for op in ov.Core().read_model(str(r.artifact)).get_ordered_ops() if op.get_type_name() == "GroupNormalization"]
    assert [op.get_attributes()["num_groups"] for op in norms] == [2]
    ops = {op.get_type_name() for op in ov.Core().read_model(str(r.artifact)).get_ordered_ops()}
    assert {"GroupNormalization", "Roll", "HSigmoid", "Gelu"} <= ops
    assert not ops & {"MVN", "HardSigmoid", "Concat", "Erf"}, ops


def _gelu_graph(last_times: str):
    """``x * (0.5 * (1 + erf(x / sqrt 2)))``, its last product taken with ``last_times``."""
    scalar = lambda name, v: helper.make_tensor(name, TensorProto.FLOAT, [], [v])  # noqa: E731
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["half", "a"], ["h"]),
             helper.make_node("Mul", [last_times, "h"], ["y"])]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [64])
                                              for n in ("x", "other")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
                              [scalar("sqrt2", math.sqrt(2)), scalar("one", 1.0), scalar("half", 0.5)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(proto, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_the_gelu_rewrite_is_exact_and_only_where_the_pattern_is_whole():
    rng = np.random.default_rng(0)
    feeds = {"x": (rng.standard_normal(64) * 30).astype(np.float32), "other": rng.standard_normal(64).astype(np.float32)}
    proto = _gelu_graph("x")
    before = _run(proto, feeds)
    assert fusable(proto) == {"gelu": 1}
    assert [list(n.input) for n in proto.graph.node[-2:]] == [["x", "a"], ["h_times_x", "half"]]
    np.testing.assert_array_equal(_run(proto, feeds), before)  # bit for bit
    assert fusable(_gelu_graph("other")) == {}  # the last product is not with x: not a GELU


@pytest.mark.parametrize("where", ["e", "a", "h"])
def test_the_gelu_rewrite_leaves_a_step_that_is_read_elsewhere(where):
    """An intermediate read by another node, or given as a graph output, must keep its value."""
    proto = _gelu_graph("x")
    proto.graph.output.append(helper.make_tensor_value_info(where, TensorProto.FLOAT, [64]))
    assert fusable(proto) == {}
    proto = _gelu_graph("x")
    proto.graph.node.append(helper.make_node("Neg", [where], ["n"]))
    assert fusable(proto) == {}


def test_the_gelu_rewrite_leaves_float16_alone():
    """(x * s) * 0.5 overflows float16 where x * (0.5 * s) does not."""
    proto = _gelu_graph("x")
    for t in proto.graph.initializer:
        t.CopyFrom(helper.make_tensor(t.name, TensorProto.FLOAT16, [], [onnx.numpy_helper.to_array(t).item()]))
    assert fusable(proto) == {}
