"""The CPU's peak arithmetic rate for one precision, for the profiler's "% of peak" column (a
roofline bound: the model's FLOPs per picture x pictures per second / peak).

    peak FLOP/s = physical cores used x clock (Hz) x FLOPs per cycle per core

FLOPs per cycle per core come from the best instruction set the CPU's flags (``/proc/cpuinfo``)
show for that precision, two vector (or one tile) units per core, 2 FLOPs per multiply-accumulate:

| precision | ISA (flags) | FLOPs/cycle/core | from |
|---|---|---:|---|
| int8 | AMX-INT8 (amx_int8, amx_tile) | 2048 | TDPBSSD: 16x16x64 MACs per tile op, one per 16 cycles = 1024 MACs |
| int8 | AVX512-VNNI (avx512_vnni) | 256 | VPDPBUSD: 64 u8 x s8 MACs, 2 ports |
| int8 | AVX-VNNI (avx_vnni) | 128 | VPDPBUSD ymm: 32 MACs, 2 ports |
| bf16 | AMX-BF16 (amx_bf16, amx_tile) | 1024 | TDPBF16PS: 16x16x32 MACs per tile op, one per 16 cycles = 512 MACs |
| bf16 | AVX512-BF16 (avx512_bf16) | 128 | VDPBF16PS: 32 bf16 pairs, 2 ports |
| fp16 | AMX-FP16 (amx_fp16, amx_tile) | 1024 | TDPFP16PS, as TDPBF16PS |
| fp16 | AVX512-FP16 (avx512_fp16) | 128 | VFMADD..PH zmm: 32 lanes, 2 ports |
| fp32 | AVX-512 (avx512f) | 64 | VFMADD..PS zmm: 16 lanes, 2 FMA ports |
| fp32 | AVX2 + FMA (avx2, fma) | 32 | VFMADD..PS ymm: 8 lanes, 2 FMA ports |

bf16 and fp16 on a CPU without their instructions compute in fp32 (OpenVINO falls back to f32,
PyTorch's oneDNN converts), so their peak is fp32's; tf32 is fp32 on a CPU. int8 without a
dot-product instruction (VNNI, AMX) has no single documented rate: no peak. AMD Zen 4 (family 25)
runs 512-bit instructions as two 256-bit halves: its 512-bit rates are halved. Intel parts with
one 512-bit FMA port (some Xeon Bronze/Silver before Sapphire Rapids, client parts) reach half the
AVX-512 rates: the column then understates, never overstates.

Cores: the physical cores (not hyper-threads: they share the vector units) among those this
process may run on, at most the threads the run asked for. Clock, first found: cpufreq's
``cpuinfo_max_freq`` (lscpu's "CPU max MHz": the highest turbo; wide-vector code runs slower, so
the column understates), the nominal clock in the model name ("@ 2.60GHz"), ``/proc/cpuinfo``'s
"cpu MHz" (the kernel's current reading; in a VM, the rate the hypervisor reports). The last two
can be far below the clock the cores run at, so the profiler also times an fp32 GEMM and takes the
clock that rate needs where it is higher (``with_measured_clock``, profiler/measure/clock.py): a
lower bound of the clock, so on that path the column reads the model's rate against what an
fp32 GEMM proves, and can exceed 100 % by the GEMM's own distance from the true peak. Without a
clock (read or measured) or the flags the peak is None and the reason says why. GPUs: no peak (no
device table with a documented source is kept here)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from autotimm_deploy.exporter.core.environment import cpuinfo_blocks, physical_cores, usable_cpu_blocks
from autotimm_deploy.profiler.measure.clock import measured_gemm


@dataclass(frozen=True)
class Rate:
    isa: str
    flags: frozenset[str]  # all needed
    per_cycle: int  # FLOPs (int8: operations) per cycle per core
    wide: bool = True  # a 512-bit vector ISA (halved on AMD Zen 4); tiles and ymm are not


def _rate(isa: str, flags: str, per_cycle: int, wide: bool = True) -> Rate:
    return Rate(isa, frozenset(flags.split()), per_cycle, wide)


FP32 = (_rate("AVX-512", "avx512f", 64), _rate("AVX2+FMA", "avx2 fma", 32, wide=False))
# per precision, best first; bf16/fp16 fall back to fp32's rows (computed in fp32 without their instructions)
CPU_RATES: dict[str, tuple[Rate, ...]] = {
    "int8": (_rate("AMX-INT8", "amx_int8 amx_tile", 2048, wide=False), _rate("AVX512-VNNI", "avx512_vnni", 256),
             _rate("AVX-VNNI", "avx_vnni", 128, wide=False)),
    "bf16": (_rate("AMX-BF16", "amx_bf16 amx_tile", 1024, wide=False), _rate("AVX512-BF16", "avx512_bf16", 128), *FP32),
    "fp16": (_rate("AMX-FP16", "amx_fp16 amx_tile", 1024, wide=False), _rate("AVX512-FP16", "avx512_fp16", 128), *FP32),
    "fp32": FP32,
    "tf32": FP32,
}
HALF_WIDE = {("AuthenticAMD", "25")}  # (vendor, family) running 512-bit instructions as two halves: Zen 4
# (Zen 5, family 26, runs them full width: an fp32 oneDNN GEMM at 245 GFLOP/s a core, 2026-12-08, needs 64
# FLOPs a cycle at 3.8 GHz; at 32 it would need 7.7 GHz)
MAX_MHZ = 7000.0  # above any x86 core's clock: a GEMM "proving" more ran in a reduced precision, not fp32
MAX_FREQ_SOURCE = "cpufreq cpuinfo_max_freq"


@dataclass
class CpuFacts:
    """What the peak is derived from; each field None where it could not be read."""

    vendor: str | None = None
    family: str | None = None
    model: str | None = None
    flags: frozenset[str] = frozenset()
    physical_cores: int | None = None  # among the cores this process may use
    mhz: float | None = None
    mhz_source: str | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "flags": sorted(self.flags)}

    @classmethod
    def from_dict(cls, d: dict) -> "CpuFacts":
        return cls(**{**d, "flags": frozenset(d.get("flags", ()))})


@dataclass
class Peak:
    precision: str
    flops_per_s: float | None
    isa: str | None = None
    per_cycle: int | None = None
    cores: int | None = None
    mhz: float | None = None
    how: str = ""  # the derivation in words, or why there is no peak
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_peak(precision: str, facts: CpuFacts, threads: int | None = None) -> Peak:
    """The peak for ``precision`` from ``facts``, on at most ``threads`` physical cores."""
    if precision not in CPU_RATES:
        return Peak(precision, None, how=f"no CPU rate is known for {precision}")
    rate = next((r for r in CPU_RATES[precision] if r.flags <= facts.flags), None)
    if rate is None:
        need = " or ".join("+".join(sorted(r.flags)) for r in CPU_RATES[precision])
        return Peak(precision, None, how=f"the CPU flags show no {precision} instruction set with a known rate "
                                         f"(needs {need})" if facts.flags else "the CPU flags could not be read")
    if not facts.mhz:
        return Peak(precision, None, isa=rate.isa, how="the CPU clock could not be read (no cpufreq, no "
                                                       "'@ GHz' in the model name, no 'cpu MHz')")
    if not facts.physical_cores:
        return Peak(precision, None, isa=rate.isa, how="the physical core count could not be read")
    per_cycle, notes = rate.per_cycle, []
    if rate.wide and (facts.vendor, facts.family) in HALF_WIDE:
        per_cycle //= 2
        notes.append("AMD Zen 4 runs 512-bit instructions as two 256-bit halves: rate halved")
    if precision in ("bf16", "fp16") and rate in FP32:
        notes.append(f"no {precision} instructions: computed in fp32, peak is fp32's")
    cores = min(facts.physical_cores, threads) if threads else facts.physical_cores
    flops = cores * facts.mhz * 1e6 * per_cycle
    how = (f"{cores} physical core(s) x {facts.mhz:.0f} MHz ({facts.mhz_source}) x {per_cycle} FLOP/cycle "
           f"({rate.isa}) = {flops / 1e12:.3g} TFLOP/s")
    return Peak(precision, flops, rate.isa, per_cycle, cores, facts.mhz, how, notes)


def percent_of_peak(flops_per_image: float | None, images_per_s: float | None, peak: Peak | None) -> float | None:
    """The achieved FLOP/s as a percentage of ``peak``; None when any part is unknown."""
    if not flops_per_image or not images_per_s or peak is None or not peak.flops_per_s:
        return None
    return 100.0 * flops_per_image * images_per_s / peak.flops_per_s


# --- reading the machine -------------------------------------------------------------------------
def read_cpu_facts(cpuinfo: str = "/proc/cpuinfo", sys_root: str = "/sys") -> CpuFacts:
    """The facts for the cores this process may use (tests give a fake ``cpuinfo`` and ``sys_root``)."""
    mine = usable_cpu_blocks(cpuinfo_blocks(cpuinfo))
    if not mine:
        return CpuFacts()
    first = mine[0]
    mhz, source = _clock(Path(sys_root), first)
    return CpuFacts(vendor=first.get("vendor_id"), family=first.get("cpu family"), model=first.get("model"),
                    flags=frozenset(first.get("flags", "").split()), physical_cores=physical_cores(mine),
                    mhz=mhz, mhz_source=source)


def _clock(sys_root: Path, first: dict[str, str]) -> tuple[float | None, str | None]:
    """(MHz, where it came from), trying cpufreq's maximum, the model name, then "cpu MHz"."""
    try:
        cpu = first.get("processor", "0")
        khz = int(Path(sys_root, f"devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1000, f"{MAX_FREQ_SOURCE}, lscpu's 'CPU max MHz'"
    except (OSError, ValueError):
        pass
    named = re.search(r"@\s*([0-9.]+)\s*GHz", first.get("model name", ""))
    if named:
        return float(named.group(1)) * 1000, "nominal clock in the CPU model name"
    try:
        return float(first["cpu MHz"]), "/proc/cpuinfo 'cpu MHz'"
    except (KeyError, ValueError):
        return None, None


def with_measured_clock(facts: CpuFacts, threads: int | None = None,
                        measure: Callable[[int], float | None] = measured_gemm) -> CpuFacts:
    """``facts`` with the clock raised to the least one that ``measure``'s fp32 GEMM rate (FLOP/s on
    that many cores) needs at the flags' fp32 rate, where that is above the read clock
    (profiler/measure/clock.py). Unchanged, and nothing run, where the clock is cpufreq's maximum
    (the highest turbo: nothing proves more) or no fp32 rate or core count is known; unchanged where
    the GEMM could not run or proves an impossible clock."""
    if (facts.mhz_source or "").startswith(MAX_FREQ_SOURCE):
        return facts
    unit = cpu_peak("fp32", replace(facts, mhz=1.0), threads)
    if not unit.per_cycle or not unit.cores:
        return facts
    rate = measure(unit.cores)
    if not rate:
        return facts
    mhz = rate / (unit.cores * unit.per_cycle) / 1e6
    if (facts.mhz and mhz <= facts.mhz) or mhz > MAX_MHZ:
        return facts
    read = f"; {facts.mhz_source} said {facts.mhz:.0f} MHz" if facts.mhz else ""
    return replace(facts, mhz=mhz, mhz_source=f"at least: an fp32 GEMM ran at {rate / 1e9:.0f} GFLOP/s on "
                                              f"{unit.cores} core(s){read}")


def device_peak(device: str, precision: str, threads: int | None = None, facts: CpuFacts | None = None) -> Peak:
    """The peak of ``device`` for ``precision``: the CPU's from its facts (read, then the clock
    measured); none on a GPU (why said)."""
    if device.startswith("cuda"):
        return Peak(precision, None, how="GPU peak not derived: no GPU table with a documented source is kept here, "
                                         "and the clock under load varies")
    return cpu_peak(precision, facts or with_measured_clock(read_cpu_facts(), threads), threads)
