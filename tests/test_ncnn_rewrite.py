"""The rewrite that lets pnnx map transformers to ncnn layers (exporter/formats/ncnn_rewrite.py,
issue #32): on small modules that each use one rewritten op and on test_vit, the rewritten graph
computes what the module computes, the ops pnnx cannot map are gone from it, and the ncnn export
of each passes parity (the ncnn runtime against eager)."""

import pytest
import torch
import torch.nn.functional as F
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import get_format
from autotimm_deploy.exporter.formats.ncnn_rewrite import ncnn_module
from autotimm_deploy.exporter.models import build_model, from_module
from autotimm_deploy.exporter.pipeline import export
from torch import nn

SIZE = 32  # pictures: a 4 x 4 grid of 8-pixel patches


class Tokens(nn.Module):
    """Patches -> tokens ``[B, 16, 16]`` -> ``mixer`` -> mean token -> 5 logits."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.mixer = mixer
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.mixer(tokens).mean(1))


class QkvAttention(nn.Module):
    """A ViT's attention: the qkv projection reshaped with the batch, permuted to put q/k/v first,
    then unbound (``indexed``: ``qkv[0]``, ``qkv[1]``, ``qkv[2]``, a select on dim 0)."""

    def __init__(self, indexed: bool = False, heads: int = 2):
        super().__init__()
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)
        self.indexed, self.heads = indexed, heads

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = (qkv[0], qkv[1], qkv[2]) if self.indexed else qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1) * 0.25).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class CrossCovariance(nn.Module):
    """XCiT's / EdgeNeXt's attention: q and k normalized along their last axis (``F.normalize``)."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 2, C // 2).permute(2, 0, 3, 4, 1).unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)).softmax(-1)
        return (attn @ v).permute(0, 3, 1, 2).reshape(B, N, C)


class Variance(nn.Module):
    """EvoNorm's group variance (biased, several dims) and an unbiased variance over channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.conv(x)
        groups = y.reshape(y.shape[0], 2, 4, *y.shape[2:])
        y = (groups / (groups.var(dim=(2, 3, 4), unbiased=False, keepdim=True) + 1e-5).sqrt()).reshape(y.shape)
        return self.head((y * torch.var(y, dim=1, keepdim=True)).mean((2, 3)))


class RelativeLogits(nn.Module):
    """BoTNet's relative-position logits: five axes without the batch, ``(B * heads, H, W, H, W)``."""

    def __init__(self):
        super().__init__()
        from timm.layers.bottleneck_attn import BottleneckAttn

        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.attn = BottleneckAttn(16, feat_size=(4, 4), num_heads=2)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.attn(self.embed(x)).mean((2, 3)))


class Windows(nn.Module):
    """Swin's six-axis window partition and its reverse, then its patch merging."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        y = self.embed(x).permute(0, 2, 3, 1)  # B, 8, 8, 8
        B, H, W, C = y.shape
        w = y.view(B, 2, 4, 2, 4, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, 16, C)  # 4 windows of 4 x 4
        w = (w @ w.transpose(1, 2) * 0.1).softmax(-1) @ w
        y = w.view(B, 2, 2, 4, 4, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C) + y
        merged = y.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.head(merged.mean((1, 2)))


class Halo(nn.Module):
    """HaloNet's attention: ``unfold`` twice into overlapping windows (six axes), blocked queries
    (with ``channels=64``, heads of 32 channels: the query blocks' six axes, once the heads are
    split off, left five that could not be split again, as in halonet26t)."""

    def __init__(self, channels: int = 16):
        super().__init__()
        from timm.layers.halo_attn import HaloAttn

        self.embed = nn.Conv2d(3, channels, 4, stride=4)
        self.attn = HaloAttn(channels, feat_size=(8, 8), num_heads=2, block_size=4, halo_size=1)
        self.head = nn.Linear(channels, 5)

    def forward(self, x):
        return self.head(self.attn(self.embed(x)).mean((2, 3)))


class GroupedWindows(nn.Module):
    """Twins' locally grouped attention: its qkv projection runs on six axes."""

    def __init__(self):
        super().__init__()
        from timm.models.twins import LocallyGroupedAttn

        self.attn = LocallyGroupedAttn(16, num_heads=2, ws=2)

    def forward(self, tokens):
        return self.attn(tokens, (4, 4))


class FoldedBatchNorm(nn.Module):
    """LeViT's linear + BatchNorm over ``x.flatten(0, 1)`` (the batch folded into the tokens), and
    GCViT's ``repeat_interleave`` of one global token per window."""

    def __init__(self):
        super().__init__()
        from timm.models.levit import LinearNorm

        self.linear = LinearNorm(16, 16)
        with torch.no_grad():  # statistics that are not the identity
            self.linear.bn.running_mean.uniform_(-1, 1)
            self.linear.bn.running_var.uniform_(0.5, 2)

    def forward(self, tokens):
        y = self.linear(tokens)
        windows = y.reshape(-1, 4, 16)  # B * 4 windows of 4 tokens
        shared = y.mean(1, keepdim=True).repeat_interleave(4, dim=0)
        return (windows * shared.sigmoid()).reshape(y.shape)


class SplitsAndSteps(nn.Module):
    """An uneven ``chunk`` (16 channels in 6, 6, 4) and strided slices (LeViT's subsampling)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 4, stride=4)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        a, b, c = self.conv(x).chunk(3, dim=1)
        y = torch.cat([a * 2, b.sigmoid(), c], 1)[:, :, ::2, 1::3]
        return self.head(y.mean((2, 3)))


class ClassMap(nn.Module):
    """A segmentation's outputs: scores and their class map (``argmax`` over channels), with ties
    at most pixels (scores rounded to whole numbers; PyTorch's argmax takes the first of them)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        logits = self.conv(x)
        scores = torch.round(logits * 3) * 1e38  # infinite from 4 up (as fp16 overflows), class 0's too
        return logits, scores.argmax(1)


MODULES = {
    "batch_reshape_unbind": lambda: Tokens(QkvAttention()),
    "select_on_dim_0": lambda: Tokens(QkvAttention(indexed=True)),
    "normalize_last_axis": lambda: Tokens(CrossCovariance()),
    "variance": Variance,
    "over_rank_region": RelativeLogits,
    "six_axis_windows": Windows,
    "six_axis_projection": lambda: Tokens(GroupedWindows()),
    "folded_batch_norm_repeat_interleave": lambda: Tokens(FoldedBatchNorm()),
    "unfold": Halo,
    "query_blocks_of_wide_heads": lambda: Halo(64),
    "uneven_chunk_strided_slice": SplitsAndSteps,
}
GONE = {"aten.argmax.default", "aten.unbind.int", "aten.var.correction", "aten.var.dim", "aten.linalg_vector_norm.default", "aten.chunk.default",
        "aten.unfold.default", "aten.repeat_interleave.self_int"}


def rewritten(module: nn.Module, size=(SIZE, SIZE)):
    torch.manual_seed(0)
    example = torch.randn(1, 3, *size)
    graph_module = ncnn_module(module.eval(), example)
    return example, graph_module


def assert_equal(module: nn.Module, graph_module, example) -> None:
    with torch.no_grad():
        want, got = module(example), graph_module(example)
    want = want[0] if isinstance(want, tuple) else want
    got = got[0] if isinstance(got, (tuple, list)) else got
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(MODULES))
def test_rewrite_computes_the_same(name):
    torch.manual_seed(0)
    module = MODULES[name]().eval()
    example, graph_module = rewritten(module)
    assert_equal(module, graph_module, example)
    ops = {str(n.target) for n in graph_module.graph.nodes if n.op == "call_function"}
    assert not ops & GONE, ops & GONE
    shapes = [n.meta["val"].shape for n in graph_module.graph.nodes if hasattr(n.meta.get("val"), "shape")]
    # what ncnn holds: four axes beside the batch in front, or four without it
    assert all(len(s) <= 4 or (len(s) == 5 and s[0] == 1) for s in shapes), [s for s in shapes if len(s) > 4]


def test_rewrite_of_a_timm_transformer():
    model = build_model(ModelSpec("test_vit", num_classes=10, img_size=(64, 64)))
    example, graph_module = rewritten(model, (64, 64))
    assert_equal(model, graph_module, example)
    ops = [str(n.target) for n in graph_module.graph.nodes if n.op == "call_function"]
    assert "aten.unbind.int" not in ops and "aten.slice.Tensor" in ops  # q, k and v sliced from the projection


@pytest.mark.parametrize("name", list(MODULES))
def test_ncnn_export_passes_parity(name, tmp_path):
    reason = get_format("ncnn").unavailable_reason()
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    model = from_module(MODULES[name](), name.replace("_", "-"), SIZE)
    (r,) = export(model.spec, ["ncnn"], tmp_path, model=model)
    assert r.ok, (r.error, r.parity and r.parity.failures)
    assert r.parity.metrics["logits"]["max_rel"] < 1e-4


def test_class_map_is_exact_with_ties(tmp_path):
    """ncnn's ArgMax takes the whole blob: the class map is a running comparison, which keeps
    PyTorch's answer (the first of equal scores) at every pixel; the ncnn artifact gives it exactly."""
    torch.manual_seed(0)
    module = ClassMap().eval()
    example, graph_module = rewritten(module)
    assert "aten.argmax.default" not in {str(n.target) for n in graph_module.graph.nodes}
    with torch.no_grad():
        logits, classes = module(example)
        got = graph_module(example)[1]
    scores = torch.round(logits * 3) * 1e38
    top = scores.max(1, keepdim=True).values
    assert ((scores == top).sum(1) > 1).float().mean() > 0.3  # ties at many pixels: the check means something
    assert scores[:, 0].isinf().any() and (scores.isinf() & (scores > 0)).any()
    assert torch.equal(got.long(), classes)
    reason = get_format("ncnn").unavailable_reason()
    if reason:
        pytest.skip(reason)
    model = from_module(module, "class-map", SIZE, output_names=("logits", "mask"), task="semantic-segmentation")
    (r,) = export(model.spec, ["ncnn"], tmp_path, model=model)
    assert r.ok, (r.error, r.parity and r.parity.failures)
    assert r.parity.metrics["mask"]["agreement"] == 1.0
