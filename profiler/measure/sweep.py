"""Batch sweep: the harness at each batch size, within the artifact's declared batch range. An
error at one size (out of memory, a runtime refusing a shape, an answer without the declared
outputs) is recorded and ends the sweep."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from autotimm_deploy.exporter.core.errors import first_line
from autotimm_deploy.profiler.measure.timing import HarnessConfig, measure


def powers_of_two(max_batch: int) -> list[int]:
    out, b = [], 1
    while b <= max_batch:
        out.append(b)
        b *= 2
    return out


def batches_in_range(batches: Sequence[int], lo: int, hi: int | None) -> tuple[list[int], list[int]]:
    """(kept, dropped) batch sizes; a static artifact keeps only its own batch."""
    if hi == lo:
        return [lo], [b for b in batches if b != lo]
    kept = [b for b in batches if b >= lo and (hi is None or b <= hi)]
    return kept, [b for b in batches if b not in kept]


def on_stream(session, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` tagged with the CUDA stream ``session`` computes on: `CudaClock` records its events there."""
    stream = getattr(session, "timing_stream", None)  # duck-typed sessions may not have one
    fn.stream = stream() if stream else None  # type: ignore[attr-defined]
    return fn


def timed_call(session, batch: int, device_io: bool, seed: int = 0) -> Callable[[], Any]:
    """What one timed iteration does. Default: host arrays in, host arrays out (a deployed caller
    pays the copies); ``device_io``: inputs already on the device, compute only."""
    if device_io:
        prepared = session.make_inputs(batch, seed)

        def compute():
            session.run(prepared)
            session.synchronize()

        return on_stream(session, compute)
    host = session.random_arrays(batch, seed)
    return on_stream(session, lambda: session.fetch(session.run(session.prepare(host))))


def checked_call(session, batch: int, seed: int = 0) -> None:
    """One untimed call at ``batch`` whose outputs the session checks against what it declares
    (`Session.check_outputs`: names, shapes, dtypes); a duck-typed session without it is not checked."""
    check = getattr(session, "check_outputs", None)
    if check is not None:
        check(session.fetch(session.run(session.prepare(session.random_arrays(batch, seed)))), batch)


def run_settings(session, batch: int) -> dict:
    """How ``session`` ran calls at ``batch`` (a duck-typed session without `run_settings`: nothing known)."""
    describe = getattr(session, "run_settings", None)
    return describe(batch) if describe is not None else {}


PHASES = ("h2d_ms", "compute_ms", "d2h_ms")


def phase_split(session, batch: int, cfg: HarnessConfig, clock, seed: int = 0) -> dict[str, float]:
    """Median ms of the host->device copy, the compute and the device->host copy of one batch,
    each timed on its own (trtexec's H2D / GPU compute / D2H split)."""
    host = session.random_arrays(batch, seed)
    prepared = session.prepare(host)
    session.synchronize()
    outputs = session.run(prepared)
    session.synchronize()

    def h2d():
        session.prepare(host)
        session.synchronize()

    def compute():
        session.run(prepared)
        session.synchronize()

    m = measure([on_stream(session, f) for f in (h2d, compute, lambda: session.fetch(outputs))], cfg, clock)
    return {k: m.stats(i).p50 for i, k in enumerate(PHASES)}


@dataclass
class Point:
    batch: int
    stats: list[dict] = field(default_factory=list)  # per session
    speedup: list[dict | None] = field(default_factory=list)  # per session vs the first (None for it)
    samples: int = 0
    stop: str = ""
    error: str | None = None
    warmup_settled: list[bool | None] = field(default_factory=list)  # per session
    settings: list[dict] = field(default_factory=list)  # per session: how its calls ran (`Session.run_settings`)


def sweep(sessions: Sequence, batches: Sequence[int], cfg: HarnessConfig, clock, device_io: bool = False,
          on_point: Callable[[int, str], None] | None = None) -> list[Point]:
    """Measure ``sessions`` (interleaved when more than one) at each batch size in turn. Around each
    measurement, outside the clock, a call of each session has its outputs checked, so a runtime or
    server that answers without them (or with other shapes) fails the point instead of reporting a speed."""
    points = []
    for b in batches:
        if on_point:
            on_point(b, "measuring")
        try:
            fns = [timed_call(s, b, device_io) for s in sessions]
            for s in sessions:
                checked_call(s, b)
            m = measure(fns, cfg, clock)
            for s in sessions:
                checked_call(s, b)
        except Exception as e:  # noqa: BLE001 - OOM or a runtime error ends the sweep, recorded
            points.append(Point(batch=b, error=f"{type(e).__name__}: {first_line(e, 200)}"))
            break
        points.append(Point(
            batch=b,
            stats=[m.stats(i).to_dict() for i in range(len(sessions))],
            speedup=[None] + [m.ratio(i) for i in range(1, len(sessions))],
            samples=min(len(s) for s in m.samples),
            stop=m.stop,
            warmup_settled=m.warmup_settled,
            settings=[run_settings(s, b) for s in sessions],
        ))
    return points
