"""Is the machine quiet enough to measure on? CPU time used by other processes while we measured
(from ``/proc/stat`` against this process's own ``/proc/self/stat``), the load average before, the
threads asked for against the cores this process may use, and whether warm-up ever settled. Every
report records the numbers; the warnings say in words what makes a measurement untrustworthy."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from autotimm_deploy.exporter.core.environment import cores_available

# Another process using this much of a core while we measure disturbs CPU timings noticeably.
BUSY_CORES_WARN = 0.25


@dataclass
class CpuSnapshot:
    wall: float
    busy_ticks: int | None  # all processes, all cores (None where /proc/stat is not readable)
    total_ticks: int | None
    own_ticks: int | None  # this process

    @classmethod
    def take(cls) -> "CpuSnapshot":
        busy = total = own = None
        try:
            with open("/proc/stat") as f:
                values = [int(v) for v in f.readline().split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
            busy = total - idle
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own = int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, ValueError, IndexError):
            pass
        return cls(time.monotonic(), busy, total, own)


@dataclass
class MachineLoad:
    cores: int  # cores this process may run on
    threads: int  # intra-op threads the runtimes were asked to use
    loadavg_1m: float | None  # before measuring
    other_busy_cores: float | None  # cores' worth of CPU other processes used while we measured
    warmup_unsettled: list[str] = field(default_factory=list)  # targets whose warm-up never settled
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def other_busy_cores(before: CpuSnapshot, after: CpuSnapshot, ncpu: int | None = None) -> float | None:
    """Cores' worth of CPU time other processes used between the two snapshots."""
    if None in (before.busy_ticks, after.busy_ticks, before.own_ticks, after.own_ticks):
        return None
    total = after.total_ticks - before.total_ticks
    if total <= 0:
        return None
    others = (after.busy_ticks - before.busy_ticks) - (after.own_ticks - before.own_ticks)
    return max(0.0, others / total * (ncpu or os.cpu_count() or 1))


def assess(threads: int, load_before: float | None, before: CpuSnapshot, after: CpuSnapshot,
           unsettled: list[str]) -> MachineLoad:
    cores = cores_available()
    busy = other_busy_cores(before, after)
    m = MachineLoad(cores=cores, threads=threads, loadavg_1m=load_before,
                    other_busy_cores=None if busy is None else round(busy, 2), warmup_unsettled=unsettled)
    if threads > cores:
        m.warnings.append(f"{threads} threads on {cores} usable cores: oversubscribed, latency is inflated "
                          f"(pass --threads {cores} or fewer)")
    if busy is not None and busy >= BUSY_CORES_WARN:
        free = max(0.0, cores - busy)
        m.warnings.append(f"other processes kept {busy:.1f} of {cores} cores busy while measuring "
                          f"({free:.1f} left for {threads} thread(s)): timings are disturbed, rerun on a quiet machine")
        if threads > free + 0.5:
            m.warnings.append(f"{threads} threads competed for {free:.1f} free cores")
    if unsettled:
        m.warnings.append(f"warm-up never settled for {', '.join(unsettled)}: latency kept drifting "
                          "(a busy or throttling machine)")
    return m
