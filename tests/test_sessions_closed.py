"""Issue #28: the profile pipeline closes every runtime session it opened, on every path out
(success, an error in the sweep, Ctrl-C, a failure opening a later session)."""

import pytest
from autotimm_deploy.profiler import pipeline
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.pipeline import profile

FAST = HarnessConfig(max_time=0.2, warmup_time=0.05, min_samples=3)
MODELS = ["test_resnet", "test_resnet"]  # two eager sessions, measured interleaved in this process


@pytest.fixture
def opened(monkeypatch):
    """Every session the pipeline opens, with how many times each was closed."""
    record = []
    real_open = pipeline.open_target

    def spy(*args, **kwargs):
        session = real_open(*args, **kwargs)
        entry = {"session": session, "closed": 0}
        real_close = session.close

        def close():
            entry["closed"] += 1
            real_close()

        session.close = close
        record.append(entry)
        return session

    monkeypatch.setattr(pipeline, "open_target", spy)
    return record


def _settings():
    return Settings(batch_sizes=[1, 2], threads=1, harness=FAST, img_size=(64, 64))


def test_sessions_closed_after_success(opened):
    report = profile(MODELS, _settings(), interleave=True, isolate=False)
    assert [len(r["points"]) for r in report["runs"]] == [2, 2]
    assert len(opened) == 2 and [e["closed"] for e in opened] == [1, 1]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_sessions_closed_when_the_sweep_is_interrupted(opened, error):
    def on_progress(text):  # raised from inside the sweep, when its first batch starts
        if "batch 1" in text:
            raise error("interrupted mid-sweep")

    with pytest.raises(error, match="interrupted mid-sweep"):
        profile(MODELS, _settings(), interleave=True, isolate=False, on_progress=on_progress)
    assert len(opened) == 2 and [e["closed"] for e in opened] == [1, 1]


def test_sessions_closed_when_measuring_raises(opened, monkeypatch):
    def broken_sweep(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(pipeline, "sweep", broken_sweep)
    with pytest.raises(RuntimeError, match="out of memory"):
        profile(MODELS, _settings(), interleave=True, isolate=False)
    assert len(opened) == 2 and [e["closed"] for e in opened] == [1, 1]


def test_opened_sessions_closed_when_a_later_one_fails_to_open(opened):
    def on_progress(text):
        if text.startswith("loading") and opened:  # the second target's load: the first is open
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        profile(MODELS, _settings(), interleave=True, isolate=False, on_progress=on_progress)
    assert len(opened) == 1 and opened[0]["closed"] == 1
