"""``unfold`` written as its windows once for the four edge formats (exporter/formats/edge_rewrite.py,
issue #32): on a tiny module that unfolds the way timm's HaloAttn does, the rewritten program computes
what the module computes at any batch, and each edge format exports it with parity (Core ML: its
interface, off macOS). Each export failed without the rewrite."""

import pytest
import torch
from autotimm_deploy.exporter.formats import ExportOptions, get_format
from autotimm_deploy.exporter.formats.edge_rewrite import edge_program
from autotimm_deploy.exporter.models import from_module
from autotimm_deploy.exporter.pipeline import export
from torch import nn

SIZE = 32


class Halo(nn.Module):
    """HaloNet's attention on 8 channels: ``kv.unfold(2, 6, 4).unfold(3, 6, 4)`` (overlapping 6 x 6
    windows every 4 pixels of an 8 x 8 map padded by 1), then reshaped and permuted."""

    def __init__(self):
        super().__init__()
        from timm.layers.halo_attn import HaloAttn

        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.attn = HaloAttn(8, feat_size=(8, 8), num_heads=2, block_size=4, halo_size=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.attn(self.embed(x)).mean((2, 3)))


def test_unfold_is_gone_and_the_program_computes_the_same_at_any_batch():
    from torch.export import Dim

    torch.manual_seed(0)
    module = Halo().eval()
    program = edge_program(module, torch.randn(2, 3, SIZE, SIZE), ({0: Dim("batch", min=1, max=8)},))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.unfold.default" not in ops and "aten.stack.default" in ops
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        (got,) = program.module()(x)
        torch.testing.assert_close(got, module(x), rtol=1e-5, atol=1e-6)


def test_folded_constants_are_stored_contiguous():
    """HaloAttn's relative embeddings fold to a transpose; kept with its strides, LiteRT's converter
    read it wrongly in about half its runs (the halo LiteRT export below failed in CI, cos 0.9989)."""
    torch.manual_seed(0)
    program = edge_program(Halo().eval(), torch.randn(1, 3, SIZE, SIZE))
    tensors = {**program.state_dict, **program.constants}
    assert any("FOLDED" in name for name in tensors)
    assert all(t.is_contiguous() for t in tensors.values() if isinstance(t, torch.Tensor)), \
        {k: t.stride() for k, t in tensors.items() if isinstance(t, torch.Tensor) and not t.is_contiguous()}


class FoldedThenInPlace(nn.Module):
    """SwinV2's continuous position bias: an MLP with ``ReLU(inplace=True)`` over a fixed table, all of it
    computable from the weights alone."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(4, 8))
        self.mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 5))
        self.embed = nn.Conv2d(3, 4, 4, stride=4)

    def forward(self, x):
        return (self.embed(x).mean((2, 3)) @ self.mlp(self.table)).relu_()


def test_an_in_place_op_on_a_folded_constant_stays_functional(tmp_path):
    """Folded, the in-place ReLU wrote to a stored constant: a parameter mutation that Core ML refused
    ("Only 2 types of outputs handled yet") and ExecuTorch returned as its first output
    (swinv2_tiny_window8_256 in a held-out draw)."""
    torch.manual_seed(0)
    module = FoldedThenInPlace().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    program = edge_program(module, x).run_decompositions({})
    assert [o.kind.name for o in program.graph_signature.output_specs] == ["USER_OUTPUT"]
    assert any("FOLDED" in name for name in program.state_dict)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x)[0], module(x))
    if get_format("executorch").unavailable_reason() is None:
        model = from_module(module, "cpb", SIZE)
        (r,) = export(model.spec, ["executorch"], tmp_path, model=model)
        assert r.ok, (r.error, r.parity and r.parity.failures)


@pytest.mark.parametrize("fmt", ["executorch", "litert", "coreml", "ncnn"])
def test_halo_attention_exports_to_every_edge_format(fmt, tmp_path):
    reason = get_format(fmt).unavailable_reason()
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    model = from_module(Halo(), "halo", SIZE)
    (r,) = export(model.spec, [fmt], tmp_path, model=model)
    assert r.ok, (r.error, r.parity and r.parity.failures)
    if fmt != "coreml":  # Core ML predicts only on macOS: its interface is what is checked here
        assert r.parity.metrics["logits"]["max_rel"] < 1e-4


class ResponseNorm(nn.Module):
    """ConvNeXt-V2's global response norm (``torch.addcmul``), which Core ML and pnnx cannot take."""

    def __init__(self):
        super().__init__()
        from timm.layers.grn import GlobalResponseNorm

        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.grn = GlobalResponseNorm(8, channels_last=False)
        with torch.no_grad():
            self.grn.weight.normal_()
            self.grn.bias.normal_()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.grn(self.embed(x)).mean((2, 3)))


def test_addcmul_is_decomposed_for_the_edge_converters(tmp_path):
    torch.manual_seed(0)
    module = ResponseNorm().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    program = edge_program(module, x)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.addcmul.default" not in ops
    with torch.no_grad():
        (got,) = program.module()(x)
        torch.testing.assert_close(got, module(x), rtol=1e-5, atol=1e-6)
    for fmt in ("ncnn", "coreml"):  # both failed before: "no layer for aten::addcmul", "Unsupported fx node addcmul"
        if get_format(fmt).unavailable_reason():
            continue
        model = from_module(ResponseNorm(), "grn", SIZE)
        (r,) = export(model.spec, [fmt], tmp_path / fmt, model=model)
        assert r.ok, (r.error, r.parity and r.parity.failures)


class StackedHeads(nn.Module):
    """EfficientViM's distilled head: per-stage logits stacked on a new first axis and summed over it."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.heads = nn.ModuleList(nn.Linear(8, 5) for _ in range(3))

    def forward(self, x):
        f = self.embed(x).mean((2, 3))
        return torch.stack([h(f) for h in self.heads]).sum(0) + torch.stack([f[:, :5], f[:, 3:]]).mean(0)


def test_sum_over_a_stack_is_added_for_the_edge_converters(tmp_path):
    torch.manual_seed(0)
    module = StackedHeads().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    program = edge_program(module, x)
    assert "aten.stack.default" not in {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    with torch.no_grad():
        got = program.module()(x)
        torch.testing.assert_close(got[0] if isinstance(got, (tuple, list)) else got, module(x), rtol=1e-5, atol=1e-6)
    if get_format("ncnn").unavailable_reason() is None:  # before: ncnn summed over the classes, shape [1, 1]
        model = from_module(StackedHeads(), "stacked", SIZE)
        (r,) = export(model.spec, ["ncnn"], tmp_path, model=model)
        assert r.ok, (r.error, r.parity and r.parity.failures)


class PointwiseConv1d(nn.Module):
    """EfficientViM's HSM-SSD mixer in small: 1-wide Conv1d projections (one with a bias) of a flattened
    map and of a matmul's result, and a 3-wide Conv1d that stays a convolution."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.bc = nn.Conv1d(8, 12, 1, bias=False)
        self.hz = nn.Conv1d(8, 16, 1)
        self.out = nn.Conv1d(8, 8, 1, bias=False)
        self.wide = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        f = self.embed(x).flatten(2)  # B 8 N
        b, c = torch.split(self.bc(f), [6, 6], dim=1)
        h, z = torch.split(self.hz(f @ b.softmax(-1).transpose(-2, -1)), [8, 8], dim=1)  # B 8 6
        return self.head(self.wide(self.out(h * torch.sigmoid(z)) @ c).mean(2))


def test_pointwise_conv1d_is_a_matmul_for_litert(tmp_path):
    """LiteRT's converter failed on this ("'tfl.batch_matmul' op found invalid output rank, expected 3
    but got 4", as on EfficientViM); with the 1-wide Conv1d written as a matmul, for LiteRT only, it
    exports with parity, and the 3-wide convolution is kept."""
    from autotimm_deploy.exporter.formats.edge_rewrite import LITERT_REWRITES

    torch.manual_seed(0)
    module = PointwiseConv1d().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    plain, litert = edge_program(module, x), edge_program(module, x, also=LITERT_REWRITES)
    ops = {name: [str(n.target) for n in p.graph.nodes if n.op == "call_function"]
           for name, p in (("plain", plain), ("litert", litert))}
    assert ops["plain"].count("aten.conv1d.default") == 4
    assert ops["litert"].count("aten.conv1d.default") == 1
    assert ops["litert"].count("aten.matmul.default") == ops["plain"].count("aten.matmul.default") + 3
    _same_then_litert(litert, module, x, tmp_path)


def _same_then_litert(program, module, x, tmp_path):
    """``program`` computes what ``module`` computes on ``x``; where LiteRT's converter is set up, a
    fresh ``module`` of the same class exports to LiteRT with parity."""
    with torch.no_grad():
        got = program.module()(x)
        torch.testing.assert_close(got[0] if isinstance(got, (tuple, list)) else got, module(x), rtol=1e-5, atol=1e-6)
    if get_format("litert").unavailable_reason() is None:
        model = from_module(type(module)(), type(module).__name__.lower(), SIZE)
        (r,) = export(model.spec, ["litert"], tmp_path, model=model)
        assert r.ok, (r.error, r.parity and r.parity.failures)


class EcaBlock(nn.Module):
    """ecaresnet's bottleneck in small: ECA's gate (``x * y.expand_as(x)``) after a BatchNorm, then the
    residual add."""

    def __init__(self):
        super().__init__()
        from timm.layers import EcaModule

        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.eca = EcaModule(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        f = self.embed(x)
        return self.head(torch.relu(f + self.eca(self.bn(self.conv(f)))).mean((2, 3)))


def test_an_expanded_gate_broadcasts_along_a_symbolic_batch(tmp_path):
    """LiteRT's converter failed on ECA's gate with a dynamic batch ("'tfl.mul' op operands don't have
    broadcast-compatible shapes", ecaresnet50d): the expand_as is left to broadcast, batch symbol and
    all, and the program computes the same at another batch."""
    from torch.export import Dim

    torch.manual_seed(0)
    module = EcaBlock().eval()
    program = edge_program(module, torch.randn(2, 3, SIZE, SIZE), ({0: Dim("batch", min=1, max=8)},))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.expand_as.default" not in ops and "aten.expand.default" not in ops
    _same_then_litert(program, module, torch.randn(3, 3, SIZE, SIZE), tmp_path)


def test_broadcast_of_symbolic_shapes():
    from autotimm_deploy.exporter.formats.edge_rewrite import _broadcast

    assert _broadcast(["s0", 16, 8, 8], ["s0", 16, 1, 1]) == ["s0", 16, 8, 8]
    assert _broadcast([16, 1, 1], ["s0", 16, 8, 8]) == ["s0", 16, 8, 8]
    assert _broadcast([1, 16, 1, 1], ["s0", 16, 8, 8]) == ["s0", 16, 8, 8]
    assert _broadcast(["s0", 16], ["s1", 16]) is None  # two batches that may differ: undecided
    assert _broadcast(["s0", 16], [4, 16]) is None  # s0 may be 1 or 4


class BicubicBranches(nn.Module):
    """CrossViT's cross-branch resize in small: a map resized bicubically to other grids (by size,
    with and without aligned corners, and by a kept scale factor), then classified."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        f = self.embed(x)  # B 8 8 8 at 32 px
        import torch.nn.functional as F

        grids = (F.interpolate(f, size=(11, 5), mode="bicubic", align_corners=False),
                 F.interpolate(f, size=(3, 17), mode="bicubic", align_corners=True),
                 F.interpolate(f, scale_factor=0.7, mode="bicubic", recompute_scale_factor=False))
        return self.head(sum(g.mean((2, 3)) for g in grids))


def test_bicubic_resize_is_two_matmuls_for_core_ml(tmp_path):
    """coremltools has no upsample_bicubic2d ("Unsupported fx node upsample_bicubic2d", CrossViT in
    the held-out draw); for Core ML alone it is written as Mh @ x @ Mw with PyTorch's bicubic weights,
    exact to float rounding with a static and a dynamic batch, and the package converts."""
    from autotimm_deploy.exporter.formats.edge_rewrite import COREML_REWRITES, cubic_matrix
    from torch.export import Dim

    torch.manual_seed(0)
    module = BicubicBranches().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    for dims in (None, ({0: Dim("batch", min=1, max=4)},)):
        program = edge_program(module, x, dims, also=COREML_REWRITES)
        ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
        assert not [o for o in ops if "bicubic" in o] and ops.count("aten.matmul.default") == 6
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), module(x), rtol=1e-5, atol=1e-6)
    assert cubic_matrix(7, 7, False).tolist() == torch.eye(7).tolist()  # the same size: each row itself
    if get_format("coreml").unavailable_reason() is None:
        model = from_module(BicubicBranches(), "bicubic", SIZE)
        (r,) = export(model.spec, ["coreml"], tmp_path, model=model)
        assert r.artifact is not None and r.error is None, r.error


def test_roi_align_as_matrix_products_equals_torchvisions():
    """Against torchvision's kernel: adaptive and fixed sampling, aligned or not, several pictures,
    empty boxes, boxes past the picture and the whole picture, bins of two shapes."""
    from torchvision.ops import roi_align as torchvision_roi_align

    from autotimm_deploy.exporter.formats.roi_align import roi_align

    torch.manual_seed(0)
    for batch, height, width in ((1, 8, 8), (3, 13, 17)):
        maps = torch.randn(batch, 4, height, width)
        corner = torch.rand(40, 2) * torch.tensor([width * 8.8, height * 8.8]) - 4  # past the picture too
        boxes = torch.cat([corner, corner + torch.rand(40, 2) * torch.tensor([width * 7.2, height * 7.2])], 1)
        boxes[:4, 2:] = boxes[:4, :2]  # empty
        boxes[4:6] = torch.tensor([0.0, 0.0, width * 8, height * 8])
        rois = torch.cat([torch.randint(0, batch, (40, 1)).float(), boxes], 1)
        for aligned in (True, False):
            for sampling in (-1, 2):
                for bins in ((7, 7), (5, 3)):
                    want = torchvision_roi_align(maps, rois, bins, 1 / 8, sampling, aligned)
                    got = roi_align(maps, rois, 1 / 8, *bins, sampling, aligned)
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class MaskPooling(nn.Module):
    """An instance segmenter's mask branch in small: RoIAlign (adaptive sampling, aligned) of boxes
    the model computes from the picture, on a stride-4 map."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 8, 4, stride=4)
        self.box = nn.Linear(8, 4)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        from torchvision.ops import roi_align

        f = self.features(x)
        corners = torch.sigmoid(self.box(f.mean((2, 3)))) * SIZE
        boxes = torch.cat([torch.minimum(corners[:, :2], corners[:, 2:]), torch.maximum(corners[:, :2], corners[:, 2:])], 1)
        index = torch.arange(x.shape[0], dtype=boxes.dtype)[:, None]
        pooled = roi_align(f, torch.cat([index, boxes], 1), (4, 4), 0.25, -1, True)
        return self.head(pooled.flatten(1))


def test_roi_align_is_matrix_products_for_the_edge_converters(tmp_path):
    """ExecuTorch had no kernel for it ("Missing out variants: {'torchvision::roi_align'}"), LiteRT and
    Core ML could not read it: AutoTimm's InstanceSegmentor failed all three."""
    torch.manual_seed(0)
    module = MaskPooling().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    program = edge_program(module, x)
    assert "torchvision.roi_align.default" not in {str(n.target) for n in program.graph.nodes}
    with torch.no_grad():
        got = program.module()(x)
        torch.testing.assert_close(got[0] if isinstance(got, (tuple, list)) else got, module(x), rtol=1e-5, atol=1e-5)
    if get_format("executorch").unavailable_reason() is None:
        model = from_module(MaskPooling(), "mask-pooling", SIZE)
        (r,) = export(model.spec, ["executorch"], tmp_path, ExportOptions(static=True), model=model)  # (CI time)
        assert r.ok, (r.error, r.parity and r.parity.failures)
