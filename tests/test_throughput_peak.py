"""Issue #31 point 5: FLOPs counted at export, the CPU's peak from its flags, cores and clock, the
"% of peak" column, and the throughput settings each batch ran with (no timing is asserted)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from autotimm_deploy.exporter import export, from_module
from autotimm_deploy.exporter.core.environment import physical_cores
from autotimm_deploy.exporter.core.manifest import load_manifest
from autotimm_deploy.profiler.measure.clock import gemm_flops_per_s
from autotimm_deploy.profiler.measure.peak import (CpuFacts, cpu_peak, device_peak, percent_of_peak, read_cpu_facts,
                                                   with_measured_clock)
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.pipeline import profile
from autotimm_deploy.profiler.report import markdown
from autotimm_deploy.profiler.report.table import COLUMNS, cells, rows
from autotimm_deploy.profiler.runtimes import open_session

SIZE = 64
FAST = HarnessConfig(max_time=0.2, warmup_time=0.05, min_samples=3)
# Conv2d(3, 8, 3, stride 2) on 64 px: 31 x 31 outputs of 8 channels, 3*3*3 MACs each; Linear(8, 5): 40 MACs
MACS = 8 * 31 * 31 * 3 * 3 * 3 + 8 * 5


class ConvLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("peak")
    torch.manual_seed(0)
    model = from_module(ConvLinear(), "convlinear", SIZE)
    results = export(model.spec, ["onnx", "openvino"], out, model=model, verify=False)
    assert all(r.error is None for r in results), [r.error for r in results]
    return {r.format: r for r in results}


def test_manifest_carries_flops_twice_the_macs(artifacts):
    for result in artifacts.values():
        flops = json.loads(result.manifest.read_text())["model"]["flops"]
        assert flops["per_image"] == 2 * MACS  # counted on a batch of 2, per picture
        assert flops["input_size"] == [3, SIZE, SIZE] and "FlopCounterMode" in flops["counted_by"]


SPR = frozenset("avx2 fma avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_bf16 amx_int8".split())
HERE = frozenset("avx2 fma avx512f avx512_vnni".split())  # Intel Xeon family 6 model 207 in a VM: no AMX, no BF16


@pytest.mark.parametrize("flags, precision, isa, per_cycle", [
    (SPR, "bf16", "AMX-BF16", 1024), (SPR, "int8", "AMX-INT8", 2048), (SPR, "fp32", "AVX-512", 64),
    (SPR, "fp16", "AVX512-FP16", 128), (HERE, "int8", "AVX512-VNNI", 256), (HERE, "bf16", "AVX-512", 64),
    (HERE, "fp32", "AVX-512", 64), (frozenset({"avx2", "fma"}), "fp32", "AVX2+FMA", 32),
    (frozenset({"avx2", "fma", "avx_vnni"}), "int8", "AVX-VNNI", 128),
    (frozenset({"avx512f", "avx512_bf16"}), "bf16", "AVX512-BF16", 128),
])
def test_peak_per_flag_set(flags, precision, isa, per_cycle):
    peak = cpu_peak(precision, CpuFacts("GenuineIntel", "6", "143", flags, 2, 2600.0, "test"))
    assert (peak.isa, peak.per_cycle, peak.cores) == (isa, per_cycle, 2)
    assert peak.flops_per_s == 2 * 2600e6 * per_cycle
    assert ("computed in fp32" in " ".join(peak.notes)) == (precision in ("bf16", "fp16") and per_cycle == 64)


def test_peak_two_amx_cores_match_the_issue():
    """Two AMX cores at 2.6 GHz: about 5.3 TFLOP/s bf16 and 10.6 TOP/s int8 (issue #31)."""
    facts = CpuFacts("GenuineIntel", "6", "143", SPR, 2, 2600.0, "test")
    assert cpu_peak("bf16", facts).flops_per_s == pytest.approx(5.32e12, rel=1e-3)
    assert cpu_peak("int8", facts).flops_per_s == pytest.approx(10.65e12, rel=1e-3)


def test_peak_left_empty_with_the_reason():
    no_clock = cpu_peak("fp32", CpuFacts("GenuineIntel", "6", "207", HERE, 2, None, None))
    assert no_clock.flops_per_s is None and "clock could not be read" in no_clock.how
    no_flags = cpu_peak("fp32", CpuFacts(physical_cores=2, mhz=2000.0, mhz_source="test"))
    assert no_flags.flops_per_s is None and "flags could not be read" in no_flags.how
    avx2_int8 = cpu_peak("int8", CpuFacts("GenuineIntel", "6", "85", frozenset({"avx2", "fma"}), 4, 3000.0, "t"))
    assert avx2_int8.flops_per_s is None and "no int8 instruction set" in avx2_int8.how
    gpu = device_peak("cuda", "fp16")
    assert gpu.flops_per_s is None and "GPU peak not derived" in gpu.how
    assert percent_of_peak(1e9, 100.0, no_clock) is None and percent_of_peak(None, 100.0, gpu) is None


def test_peak_on_fewer_threads_and_zen4_half_rate():
    facts = CpuFacts("GenuineIntel", "6", "207", HERE, 8, 2000.0, "test")
    assert cpu_peak("fp32", facts, threads=2).cores == 2
    zen4 = cpu_peak("fp32", CpuFacts("AuthenticAMD", "25", "17", HERE, 1, 1000.0, "test"))
    assert zen4.per_cycle == 32 and "two 256-bit halves" in zen4.notes[0]
    assert percent_of_peak(2e9, 16.0, zen4) == pytest.approx(100.0)


CPUINFO = """processor\t: {p}
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: {name}
cpu MHz\t\t: 2299.998
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu avx2 fma avx512f avx512_vnni
"""


@pytest.mark.parametrize("name, freq, mhz, source", [
    ("Intel(R) Xeon(R) Processor", None, 2299.998, "/proc/cpuinfo 'cpu MHz'"),
    ("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", None, 2000.0, "nominal clock in the CPU model name"),
    ("Intel(R) Xeon(R) Processor", "3800000", 3800.0, "cpuinfo_max_freq"),
])
def test_cpu_facts_from_cpuinfo_and_sys(tmp_path, name, freq, mhz, source):
    """Two hyper-threads of one core count as one physical core; the clock's source is named."""
    (tmp_path / "cpuinfo").write_text("\n".join(CPUINFO.format(p=p, name=name) for p in (0, 1)))
    if freq:
        (tmp_path / "devices/system/cpu/cpu0/cpufreq").mkdir(parents=True)
        (tmp_path / "devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").write_text(freq)
    facts = read_cpu_facts(str(tmp_path / "cpuinfo"), str(tmp_path))
    assert facts.physical_cores == 1 and facts.mhz == mhz and source in facts.mhz_source
    assert {"avx512_vnni", "avx512f"} <= facts.flags and (facts.vendor, facts.family, facts.model) == ("GenuineIntel",
                                                                                                     "6", "207")
    assert read_cpu_facts(str(tmp_path / "missing"), str(tmp_path)).mhz is None


ZEN5 = frozenset("avx2 fma avx512f avx512_vnni avx512_bf16".split())


def test_clock_raised_to_what_a_gemm_proves():
    """A VM's "cpu MHz" (2596) is below the boost the cores ran at: a GEMM at 505 GFLOP/s on 2 cores
    needs 3945 MHz at AVX-512's 64 FLOPs per cycle, and the int8 peak follows that clock."""
    facts = CpuFacts("AuthenticAMD", "26", "2", ZEN5, 2, 2596.0, "/proc/cpuinfo 'cpu MHz'")
    asked = []

    def gemm(cores):
        asked.append(cores)
        return 505e9 * cores / 2

    raised = with_measured_clock(facts, measure=gemm)
    assert raised.mhz == pytest.approx(505e9 / (2 * 64) / 1e6) and asked == [2]
    assert "at least: an fp32 GEMM ran at 505 GFLOP/s on 2 core(s)" in raised.mhz_source
    assert "'cpu MHz' said 2596 MHz" in raised.mhz_source
    assert cpu_peak("int8", raised).flops_per_s == pytest.approx(505e9 * 4)
    assert with_measured_clock(facts, threads=1, measure=gemm).mhz == pytest.approx(505e9 / 2 / 64 / 1e6)
    assert asked[-1] == 1  # measured on the cores the run uses
    # a slower GEMM (a loaded machine), no oneDNN, no flags: the read clock stays
    assert with_measured_clock(facts, measure=lambda cores: 100e9) is facts
    assert with_measured_clock(facts, measure=lambda cores: None) is facts
    bare = CpuFacts(physical_cores=2, mhz=2000.0, mhz_source="test")
    assert with_measured_clock(bare, measure=gemm) is bare
    # Zen 4 runs AVX-512 as two halves: the same rate proves twice the clock; no clock read at all
    zen4 = with_measured_clock(CpuFacts("AuthenticAMD", "25", "17", ZEN5, 2, None, None), measure=lambda c: 250e9)
    assert zen4.mhz == pytest.approx(250e9 / (2 * 32) / 1e6) and "said" not in zen4.mhz_source


def test_clock_left_alone_where_nothing_can_prove_more():
    asked = []
    turbo = CpuFacts("AuthenticAMD", "26", "2", ZEN5, 2, 4100.0, "cpufreq cpuinfo_max_freq, lscpu's 'CPU max MHz'")
    assert with_measured_clock(turbo, measure=lambda cores: asked.append(cores) or 5e11) is turbo and not asked
    vm = CpuFacts("AuthenticAMD", "26", "2", ZEN5, 2, 2596.0, "/proc/cpuinfo 'cpu MHz'")
    assert with_measured_clock(vm, measure=lambda cores: 2e12) is vm  # 15.6 GHz: not an fp32 rate
    assert with_measured_clock(vm, threads=8, measure=lambda cores: asked.append(cores) or 5e11).mhz > 2596
    assert asked == [2]  # more threads than cores: the cores
    assert CpuFacts.from_dict(json.loads(json.dumps(vm.to_dict()))) == vm


def test_gemm_measures_fp32_and_restores_threads(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        state = torch.random.get_rng_state()
        rate = gemm_flops_per_s(1)
        assert rate > 1e9  # ~2 GFLOP in a few ms on any CPU oneDNN supports (x86 and aarch64 builds have it)
        assert torch.get_num_threads() == 2 and torch.equal(torch.random.get_rng_state(), state)
        monkeypatch.setattr(torch.ops.aten, "mkldnn_linear", lambda *a: (_ for _ in ()).throw(RuntimeError("no")))
        assert gemm_flops_per_s(1) is None and torch.get_num_threads() == 2
        monkeypatch.undo()
        torch.set_float32_matmul_precision("medium")  # fp32 products may run in bf16: nothing proves a clock
        assert gemm_flops_per_s(1) is None
    finally:
        torch.set_float32_matmul_precision("highest")
        torch.set_num_threads(before)


def test_one_measured_clock_for_every_row(artifacts, monkeypatch):
    """profile() measures the clock once and every group, isolated in its own worker or not, reads it."""
    from autotimm_deploy.profiler import pipeline

    calls = []

    def measured(facts, threads=None):
        calls.append(threads)
        return CpuFacts(facts.vendor, facts.family, facts.model, facts.flags, facts.physical_cores, 3333.0,
                        "measured in the test")

    monkeypatch.setattr(pipeline, "with_measured_clock", measured)
    report = profile([str(artifacts["onnx"].artifact), str(artifacts["openvino"].artifact)],
                     Settings(batch_sizes=[1], harness=FAST), isolate=True)
    assert len(calls) == 1 and len(report["runs"]) == 2
    for run in report["runs"]:
        if run["peak"]["flops_per_s"]:  # a CPU whose flags give an fp32 rate
            assert run["peak"]["mhz"] == 3333.0 and "measured in the test" in run["peak"]["how"]


@pytest.mark.parametrize("fmt, runtime", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_throughput_split_answers_as_one_call(artifacts, fmt, runtime):
    """A batch split across concurrent requests answers exactly what one call on the whole batch does."""
    r = artifacts[fmt]
    x = {"input": np.random.default_rng(0).standard_normal((5, 3, SIZE, SIZE), dtype=np.float32)}
    m = load_manifest(r.manifest)
    with open_session(r.artifact, runtime, m, batch_mode="throughput") as fast, \
            open_session(r.artifact, runtime, m, batch_mode="latency") as one:
        np.testing.assert_allclose(fast.infer(x)["logits"], one.infer(x)["logits"], rtol=1e-5, atol=1e-5)
        assert one.run_settings(5)["mode"] == "latency"
        assert fast.run_settings(5)["mode"] == ("throughput" if physical_cores() > 1 else "latency")
        assert fast.run_settings(1)["mode"] == "latency"


def test_profile_reports_peak_and_settings(artifacts):
    report = profile([str(artifacts["onnx"].artifact), str(artifacts["openvino"].artifact)],
                     Settings(batch_sizes=[1, 2], harness=FAST), isolate=False)
    for run in report["runs"]:
        assert run["flops_per_image"] == 2 * MACS and run["peak"]["precision"] == "fp32"
        assert run["peak"]["how"]  # the derivation, or why there is none
        for point in run["points"]:
            assert point["settings"]["mode"] in ("latency", "throughput")
            if run["peak"]["flops_per_s"]:
                expected = 100 * 2 * MACS * point["images_per_s"] / run["peak"]["flops_per_s"]
                assert point["percent_of_peak"] == pytest.approx(expected)
            else:
                assert point["percent_of_peak"] is None
    ov = next(r for r in report["runs"] if r["runtime"] == "openvino")
    assert [p["settings"]["hint"] for p in ov["points"]] == ["LATENCY", "THROUGHPUT"]
    table = rows(report)
    assert "% of peak" in COLUMNS and "settings" in COLUMNS and all(len(cells(r)) == len(COLUMNS) for r in table)
    assert table[0]["settings"].startswith("latency")
    text = markdown.render(report)
    assert "% of peak" in text and "peak: " in text and "GFLOPs per picture" in text
    json.dumps(report)  # --json writes it as it is


def test_flops_of_a_model_the_counter_used_to_break():
    """CaiT's class-attention blocks made the counter's module tracker assert ("Expected gradient
    function to be set") and the whole export fail; counted with the weights not requiring grad,
    they count, and the weights' flags come back. A counter that still breaks the forward leaves the
    count empty, with the reason, and the forward's own result."""
    import timm
    from autotimm_deploy.exporter.models.flops import counted

    net = timm.create_model("cait_xxs24_224", pretrained=False, img_size=64, num_classes=4).eval()
    net.head.weight.requires_grad_(False)
    with torch.no_grad():
        out, count = counted(net, lambda: net(torch.zeros(1, 3, 64, 64)))
    assert out.shape == (1, 4) and count.total > 0 and count.error is None
    assert not net.head.weight.requires_grad and net.cls_token.requires_grad
    calls = []

    def breaks_once():
        calls.append(1)
        if len(calls) == 1:
            raise AssertionError("Expected gradient function to be set")
        return "answer"

    out, count = counted(net, breaks_once)
    assert out == "answer" and count.total is None and "the counter broke the forward" in count.error
    assert count.record(1, [3, 64, 64])["per_image"] is None
