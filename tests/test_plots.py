"""The PNG charts: the profile report's figure (`profiler.report.plot`) and the benchmark page's two
charts (`profiler.report.benchmark_page.plots`). Built from hand-made reports, inspected as matplotlib
figures (captured in `save_png` before they are written) and checked as PNG files."""

from __future__ import annotations

import copy
import re

import pytest
from autotimm_deploy.profiler.report import benchmark_page, plot
from autotimm_deploy.profiler.report.benchmark_page import PageData
from matplotlib.container import BarContainer

PNG = b"\x89PNG\r\n\x1a\n"
BASE = "resnet18 [eager]"
ONNX = "resnet18.onnx [onnxruntime]"
RATIOS = {1: (1.8, 1.7, 1.9), 2: (2.05, 1.96, 2.12), 8: (2.31, 2.2, 2.45)}
PLAIN = re.compile(r"^-?[0-9][0-9,]*(\.[0-9]+)?x?$")


def _stats(p50: float) -> dict:
    return {"n": 50, "mean": p50 * 1.01, "std": p50 * 0.03, "min": p50 * 0.95, "p50": p50, "p90": p50 * 1.05,
            "p95": p50 * 1.07, "p99": p50 * 1.1, "max": p50 * 1.2, "ci_low": p50 * 0.98, "ci_high": p50 * 1.03}


def _point(batch: int, p50: float, vs: dict | None = None) -> dict:
    return {"batch": batch, "stats_ms": _stats(p50), "images_per_s": batch / (p50 / 1e3),
            "speedup_vs_batch1": None, "vs_baseline": vs, "samples": 50, "stop": "converged"}


def _run(label: str, runtime: str, points: list[dict], baseline: str | None) -> dict:
    return {"target": {"label": label, "runtime": runtime, "format": runtime}, "runtime": runtime, "device": "cpu",
            "baseline": baseline, "batches_skipped": [], "phases_ms": None, "points": points,
            "memory": {"loaded_mb": 50.0, "peak_rss_mb": 400.0, "baseline_rss_mb": 300.0, "peak_gpu_mb": None}}


def report(baseline: bool = True, gpu: str | None = None) -> dict:
    """Two targets on batch sizes 1, 2, 8: eager (the baseline; its batch 8 failed) and ONNX Runtime."""
    eager = [_point(1, 10.0), _point(2, 17.0), {"batch": 8, "error": "RuntimeError: out of memory"}]
    onnx = [_point(b, ms, {"ratio": r, "ci_low": lo, "ci_high": hi, "rounds": 40} if baseline else None)
            for (b, ms), (r, lo, hi) in zip(((1, 5.5), (2, 8.3), (8, 30.0)), RATIOS.values())]
    return {"schema_version": 1,
            "environment": {"cpu": "AMD EPYC 9R14", "cores": 2, "threads": 2,
                            "gpu": {"name": gpu, "compute_capability": "9.0"} if gpu else None, "packages": {}},
            "settings": {"copies_timed": True, "clock": "perf_counter_ns", "batch_sizes": [1, 2, 8]},
            "runs": [_run(BASE, "eager", eager, None), _run(ONNX, "onnxruntime", onnx, BASE if baseline else None)]}


@pytest.fixture
def figures(monkeypatch):
    """Every figure handed to `save_png` (drawn first, so tick labels are final); still written."""
    caught = []
    real = plot.save_png

    def capture(fig, target):
        fig.canvas.draw()
        caught.append(fig)
        real(fig, target)

    monkeypatch.setattr(plot, "save_png", capture)
    monkeypatch.setattr(benchmark_page, "save_png", capture)
    return caught


def _panels(fig) -> dict:
    return {ax.get_title(loc="left"): ax for ax in fig.axes if ax.get_title(loc="left")}


def _panel(fig, word: str):
    """The panel whose title or y label names ``word``."""
    found = [ax for ax in fig.axes if word in ax.get_title(loc="left") or word in ax.get_ylabel()]
    assert len(found) == 1, f"{len(found)} panels about {word!r}"
    return found[0]


def _tick_texts(fig) -> list[str]:
    out = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for minor in (False, True):
                out += [t.get_text() for t in axis.get_ticklabels(minor=minor)]
    return out


def _assert_plain_ticks(fig) -> None:
    texts = _tick_texts(fig)
    assert texts, "no tick labels at all"
    for t in texts:
        assert "^" not in t and "times" not in t and "$" not in t and "e+" not in t, t


def _is_png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG


def test_report_png_batch_axis_plain_and_error_point_skipped(tmp_path, figures):
    out = tmp_path / "profile.png"
    plot.write(report(), str(out))
    assert _is_png(out)
    assert not list(tmp_path.glob(".profile.png.*")), "temporary file left behind"
    (fig,) = figures
    lat, tp = _panel(fig, "latency"), _panel(fig, "throughput")
    for ax in (lat, tp):
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "8"]
        assert all(t.get_text() == "" for t in ax.get_xticklabels(minor=True))
    _assert_plain_ticks(fig)
    for t in lat.get_yticklabels():
        assert PLAIN.match(t.get_text()), t.get_text()
    # the failed eager batch 8 is not drawn; ONNX Runtime's three points are
    assert sorted(list(line.get_xdata()) for line in tp.lines) == [[1, 2], [1, 2, 8]]
    assert sorted(list(line.get_ydata()) for line in tp.lines)[0] == pytest.approx([100.0, 2 / 0.017])


def test_report_latency_shows_median_ci(figures, tmp_path):
    plot.write(report(), str(tmp_path / "p.png"))
    lat = _panel(figures[0], "latency")
    bands = lat.collections[0].get_paths()[0].vertices  # fill_between: the first target's CI band
    assert min(bands[:, 1]) == pytest.approx(10.0 * 0.98)
    assert max(bands[:, 1]) == pytest.approx(17.0 * 1.03)


def test_report_legend_once_title_and_footnote(tmp_path, figures):
    plot.write(report(gpu="NVIDIA H200"), str(tmp_path / "p.png"))
    (fig,) = figures
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    assert len(legends) == 1
    assert [t.get_text() for t in legends[0].get_texts()] == [BASE, ONNX]
    assert not _panel(fig, "latency").texts, "no per-point labels"
    title = fig.get_suptitle()
    assert "AMD EPYC 9R14" in title and "2 threads" in title and "NVIDIA H200" in title
    foot = fig.get_supxlabel()
    assert "copies timed" in foot and "NOT" not in foot
    assert "batch 8" in foot  # the failed point is named

    figures.clear()
    r = report()
    r["settings"]["copies_timed"] = False
    plot.write(r, str(tmp_path / "q.png"))
    assert "NOT timed" in figures[0].get_supxlabel()
    assert "GPU" not in figures[0].get_suptitle()


def test_report_speedup_panel_matches_ratios(tmp_path, figures):
    plot.write(report(), str(tmp_path / "p.png"))
    (fig,) = figures
    panels = _panels(fig)
    titles = [t for t in panels if t.startswith("speedup over")]
    assert titles == [f"speedup over {BASE}"]
    sp = panels[titles[0]]
    bars = [c for c in sp.containers if isinstance(c, BarContainer)]
    widths = [rect.get_width() for c in bars for rect in c]
    assert widths == pytest.approx([r for r, _, _ in RATIOS.values()])
    # 95 % CI as error bars: each whisker runs from ci_low to ci_high
    whiskers = []
    for c in bars:
        for seg in c.errorbar.lines[2][0].get_segments():
            whiskers += sorted(seg[:, 0])
    assert whiskers == pytest.approx([x for _, lo, hi in RATIOS.values() for x in (lo, hi)])
    texts = [t.get_text() for t in sp.texts]
    for r, _, _ in RATIOS.values():
        assert f"{r:.2f}x" in texts
    assert ONNX in texts and BASE not in texts  # only runs with a baseline get bars
    assert any(list(line.get_xdata()) == [1.0, 1.0] for line in sp.lines), "no line at 1.0x"
    assert [t.get_text() for t in sp.get_yticklabels()] == ["batch 1", "batch 2", "batch 8"]
    for t in sp.get_xticklabels():
        assert PLAIN.match(t.get_text()), t.get_text()


def test_report_without_baseline_has_two_panels(tmp_path, figures):
    out = tmp_path / "p.png"
    plot.write(report(baseline=False), str(out))
    assert _is_png(out)
    (fig,) = figures
    assert sorted(_panels(fig)) == ["latency vs batch", "throughput vs batch"]
    _assert_plain_ticks(fig)

    # a baseline run whose points carry no comparison is left out too
    figures.clear()
    r = report(baseline=False)
    r["runs"][1]["baseline"] = BASE
    plot.write(r, str(out))
    assert not any(t.startswith("speedup") for t in _panels(figures[0]))


def test_report_all_failed_still_writes_png(tmp_path, figures):
    r = report()
    for run in r["runs"]:
        run["points"] = [{"batch": 1, "error": "RuntimeError: boom"}]
    out = tmp_path / "p.png"
    plot.write(r, str(out))
    assert _is_png(out)
    texts = [t.get_text() for t in figures[0].texts]
    assert "no measurements" in texts


def test_report_single_batch_size(tmp_path, figures):
    r = report()
    for run in r["runs"]:
        run["points"] = run["points"][:1]
    plot.write(r, str(tmp_path / "p.png"))
    lat = _panel(figures[0], "latency")
    assert [t.get_text() for t in lat.get_xticklabels()] == ["1"]
    _assert_plain_ticks(figures[0])


# -- the benchmark page ------------------------------------------------------------------------------

MODELS = {"resnet18": 11.7e6, "resnet50": 25.6e6, "efficientnet_b0": 5.3e6, "regnety_016": 11.2e6}
RUNTIMES = {"eager": 1.0, "onnxruntime fp32": 0.55, "openvino fp32": 0.45}


def page() -> PageData:
    recs = []
    for m, params in MODELS.items():
        for rt, f in RUNTIMES.items():
            ms = {b: (2 + params / 1e6 * 0.9) * f * b ** 0.8 for b in (1, 2, 8)}
            recs.append({"model": m, "task": "classification", "device": "cpu", "runtime": rt, "params": int(params),
                         "img_size": 224, "ms": ms, "ips": {b: b / (v / 1e3) for b, v in ms.items()},
                         "peak_mb": 100.0, "reference": None, "task_kind": "classification",
                         "parity": "fail" if (m, rt) == ("resnet50", "openvino fp32") else "pass"})
    env = {"cpu": "AMD EPYC 9R14", "cores": 2, "threads": 2, "gpu": None, "packages": {}}
    return PageData("demo", "", [1, 2, 8], recs, environments={"cpu": env})


def test_benchmark_page_files_and_order(tmp_path, figures):
    paths = benchmark_page.plots(page(), tmp_path)
    assert [p.name for p in paths] == ["params_vs_latency.png", "batch_speedup.png"]
    assert all(_is_png(p) for p in paths)
    assert len(figures) == 2
    for fig in figures:
        _assert_plain_ticks(fig)


def test_params_vs_latency_plain_log_ticks_and_names_once(tmp_path, figures):
    benchmark_page.plots(page(), tmp_path)
    ax = figures[0].axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    for t in ax.get_xticklabels() + ax.get_yticklabels():
        assert PLAIN.match(t.get_text()), t.get_text()
    assert all(t.get_text() == "" for t in ax.get_xticklabels(minor=True) + ax.get_yticklabels(minor=True))
    assert sorted(t.get_text() for t in ax.texts) == sorted(MODELS)  # each model named once
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == sorted(RUNTIMES)


def test_batch_speedup_grouped_bars(tmp_path, figures):
    data = page()
    benchmark_page.plots(data, tmp_path)
    ax = figures[1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(MODELS)  # one group per model
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(RUNTIMES)
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == len(RUNTIMES)
    for container, rt in zip(bars, RUNTIMES):
        want = [r["ips"][8] / r["ips"][1] for r in data.records if r["runtime"] == rt]
        assert [rect.get_height() for rect in container] == pytest.approx(want)
        centres = [rect.get_x() + rect.get_width() / 2 for rect in container]
        assert [round(c) for c in centres] == list(range(len(MODELS)))  # each bar inside its model's group
    labels = [t.get_text() for t in ax.texts]
    assert len(labels) == len(data.records)
    assert all(re.match(r"^[0-9.]+x", t) for t in labels)
    assert sum(benchmark_page.FAILED_MARK in t for t in labels) == 1


def test_benchmark_page_without_batches_or_params(tmp_path, figures):
    data = page()
    for r in data.records:
        r["params"] = None
        r["ms"] = {1: r["ms"][1]}
        r["ips"] = {1: r["ips"][1]}
    assert benchmark_page.plots(data, tmp_path) == []


def test_report_is_not_mutated(tmp_path, figures):
    r = report()
    before = copy.deepcopy(r)
    plot.write(r, str(tmp_path / "p.png"))
    assert r == before


def test_benchmark_page_says_where_each_device_ran():
    """A fleet's devices ran on different machines: the page names each one's, not the first's."""
    data = page()
    cpu = data.environments["cpu"]
    text = benchmark_page.render(data)
    assert "Measured on AMD EPYC 9R14, 2 cores, 2 threads." in text and "- `cpu`" not in text
    gpu = {**cpu, "cpu": "Intel Xeon", "cores": 16, "threads": 16, "gpu": {"name": "NVIDIA A100"}}
    data.environments = {"cpu@edge": cpu, "cuda:0@a100": gpu}
    lines = benchmark_page.render(data).splitlines()
    assert "- `cpu@edge`: AMD EPYC 9R14, 2 cores, 2 threads." in lines
    assert "- `cuda:0@a100`: Intel Xeon, 16 cores, 16 threads; GPU NVIDIA A100." in lines
