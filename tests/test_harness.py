"""The timing harness and its statistics on synthetic sessions with known timings: exact answers."""

import itertools

import numpy as np
import pytest
from autotimm_deploy.profiler.measure.stats import median_ci, median_ci_ranks, ratio_summary, summarize
from autotimm_deploy.profiler.measure.sweep import Point, batches_in_range, powers_of_two, sweep
from autotimm_deploy.profiler.measure.timing import HarnessConfig, measure


class FakeClock:
    """Each timed function returns its own duration in ms; wall time is the sum of durations."""

    name = "fake"

    def __init__(self):
        self.now = 0.0

    def time(self, fn):
        ms = fn()
        self.now += ms / 1e3
        return ms

    def wall(self):
        return self.now


def scripted(*values, then=None):
    it = itertools.chain(values, itertools.repeat(then) if then is not None else ())
    return lambda: next(it)


def test_summary_statistics_exact():
    s = summarize(list(range(1, 101)))
    assert (s.n, s.min, s.max, s.mean) == (100, 1, 100, 50.5)
    assert s.p50 == 50.5 and s.p90 == pytest.approx(90.1) and s.p99 == pytest.approx(99.01)
    assert s.std == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert median_ci_ranks(100) == (39, 60)  # ranks 40 and 61 (1-based), the textbook answer
    assert (s.ci_low, s.ci_high) == (40, 61)
    assert median_ci([5.0] * 9) == (5.0, 5.0)


def test_no_interval_under_six_samples():
    """min..max holds the median with 1 - 2 * 0.5**n: 0.9375 at five samples, under 95 %, so no CI is
    reported there (None, shown as "no CI"); at six it is min..max (0.969)."""
    assert median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) == (None, None) and median_ci([]) == (None, None)
    assert median_ci([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == (1.0, 6.0)
    s = summarize([2.0])
    assert (s.n, s.p50, s.ci_low, s.ci_high) == (1, 2.0, None, None)
    assert ratio_summary([1.5, 2.0]) == {"ratio": 1.75, "ci_low": None, "ci_high": None, "rounds": 2}


def test_warmup_runs_until_stable_then_forced_iterations():
    # 12 slow, decreasing iterations, then a constant 2 ms; warm-up ends when the medians of two
    # consecutive windows of 5 agree: windows 11-15 (10, 8, 2, 2, 2) and 16-20 (all 2) -> 20 iterations
    fn = scripted(*[30 - 2 * i for i in range(12)], then=2.0)
    m = measure([fn], HarnessConfig(warmup_window=5, warmup_tolerance=0.0, warmup_time=1e9, iterations=7), FakeClock())
    assert m.warmup_iterations == [20]
    assert m.samples == [[2.0] * 7] and m.stop == "iterations"


def test_converges_at_min_samples_when_latency_is_constant():
    m = measure([scripted(then=4.0)], HarnessConfig(min_samples=10, round_time=0.004), FakeClock())
    assert m.stop == "converged" and len(m.samples[0]) == 10  # one sample per round (4 ms per 4 ms round)
    assert m.stats().p50 == 4.0 and m.stats().ci_low == m.stats().ci_high == 4.0


def test_time_budget_stops_a_noisy_measurement():
    rng = np.random.default_rng(0)
    noisy = lambda: float(rng.choice([1.0, 10.0]))  # never converges to ±2 %
    clock = FakeClock()
    m = measure([noisy], HarnessConfig(max_time=0.5, warmup_time=0.05, target_ci=0.02), clock)
    assert m.stop == "time budget"
    sampled = sum(m.samples[0]) / 1e3
    assert 0.5 <= sampled < 0.5 + 0.6  # the budget ends the measurement after the round that crosses it


def test_interleaved_rounds_and_speedup_ratio():
    order = []

    def a():
        order.append("a")
        return 6.0

    def b():
        order.append("b")
        return 2.0

    cfg = HarnessConfig(min_samples=10, round_time=0.001, warmup_window=2, warmup_tolerance=0.0)
    m = measure([a, b], cfg, FakeClock())
    assert order[:8] == ["a"] * 4 + ["b"] * 4  # warm-up of each (two equal windows of 2)
    assert order[8:14] == ["a", "b"] * 3  # then strictly interleaved rounds
    r = m.ratio(1)
    assert r["ratio"] == 3.0 and r["ci_low"] == r["ci_high"] == 3.0 and r["rounds"] == 10


def test_drift_cancels_in_interleaved_ratio():
    """The machine slows down 3x halfway; the per-round ratio stays exact."""
    state = {"n": 0}

    def slowdown():
        return 1.0 if state["n"] < 40 else 3.0

    def a():
        state["n"] += 1
        return 4.0 * slowdown()

    def b():
        return 1.0 * slowdown()

    m = measure([a, b], HarnessConfig(iterations=60, warmup_window=2, warmup_tolerance=1.0), FakeClock())
    assert m.ratio(1)["ratio"] == 4.0 and m.ratio(1)["ci_low"] == m.ratio(1)["ci_high"] == 4.0
    assert m.stats(0).max == 12.0 and m.stats(0).min == 4.0  # the raw latencies did drift


class FakeSession:
    name = "fake"

    def __init__(self, fail_at=None):
        self.fail_at = fail_at
        self.calls = []
        self.last = None
        self.fetched = 0

    def random_arrays(self, batch, seed=0):
        return {"input": batch}

    def make_inputs(self, batch, seed=0):
        return batch

    def prepare(self, arrays):
        return arrays["input"]

    def run(self, batch):
        if self.fail_at is not None and batch >= self.fail_at:
            raise MemoryError("out of memory at this batch")
        self.calls.append(batch)
        self.last = 0.5 * batch + 1.0  # known latency model: 1 ms + 0.5 ms per image
        return self.last

    def fetch(self, out):
        self.fetched += 1
        return out

    def synchronize(self):
        pass


class SessionClock(FakeClock):
    """Reads the latency the fake session says its last run took."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def time(self, fn):
        fn()
        self.now += self.session.last / 1e3
        return self.session.last


def test_sweep_stops_cleanly_on_injected_failure():
    cfg = HarnessConfig(iterations=5, warmup_window=2)
    session = FakeSession(fail_at=8)
    points = sweep([session], [1, 2, 4, 8, 16, 32], cfg, SessionClock(session))
    assert [p.batch for p in points] == [1, 2, 4, 8]
    assert [p.error for p in points[:3]] == [None] * 3
    assert points[3].error == "MemoryError: out of memory at this batch"
    assert [p.stats[0]["p50"] for p in points[:3]] == [1.5, 2.0, 3.0]


def test_sweep_compute_only_path_uses_prepared_inputs():
    s = FakeSession()
    cfg = HarnessConfig(iterations=3, warmup_window=2, warmup_tolerance=1.0)
    (point,) = sweep([s], [4], cfg, SessionClock(s), device_io=True)
    assert isinstance(point, Point) and point.samples == 3 and point.stats[0]["p50"] == 3.0
    assert s.fetched == 0 and len(s.calls) == 4 + 3  # warm-up (two windows of 2) + samples, no copies back
    s2 = FakeSession()
    sweep([s2], [4], cfg, SessionClock(s2), device_io=False)
    assert s2.fetched == len(s2.calls) == 7  # default: every timed call pays the copy back


def test_batch_ranges():
    assert powers_of_two(32) == [1, 2, 4, 8, 16, 32] and powers_of_two(5) == [1, 2, 4]
    assert batches_in_range([1, 2, 4, 8], 1, None) == ([1, 2, 4, 8], [])
    assert batches_in_range([1, 2, 4, 8], 1, 4) == ([1, 2, 4], [8])
    assert batches_in_range([1, 8, 32], 4, 4) == ([4], [1, 8, 32])  # static: only its own batch
