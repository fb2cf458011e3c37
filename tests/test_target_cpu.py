"""--target cpu: the choice among candidates with known timings and parity, and end to end."""

import json

import pytest
import yaml
from autotimm_deploy.exporter.core.results import AccuracyReport, ParityReport, Verdict
from autotimm_deploy.exporter.pipeline import ExportResult
from autotimm_deploy.exporter.formats import get_format
from autotimm_deploy.exporter.select import CPU_CANDIDATES, Candidate, choose, rank

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")


def _cand(fmt, precision, ms, verdict="pass", error=None, skipped=None, drop=None):
    parity = ParityReport(Verdict(verdict), precision, {"logits": {"kind": "tensor", "max_rel": 0.01}},
                          failures=[] if verdict == "pass" else ["logits: max_rel"])
    acc = None if drop is None else AccuracyReport(
        data={}, primary="top1", eager={"top1": 90.0}, artifact={"top1": 90.0 - drop}, drop=drop, max_drop=1.0,
        verdict=Verdict.PASS if drop <= 1.0 else Verdict.FAIL)
    r = ExportResult(format=fmt, error=error, parity=parity, accuracy=acc)
    return Candidate(fmt, precision, result=r, median_ms=ms, skipped=skipped,
                     speedup={"ratio": 50.0 / ms, "ci_low": 0, "ci_high": 0} if ms else None)


def test_fastest_passing_candidate_wins():
    cands = [_cand("onnx", "fp32", 29.0), _cand("openvino", "int8", 3.0, verdict="fail"),
             _cand("openvino", "bf16", 6.4), _cand("openvino", "fp32", 20.0), _cand("torchscript", "fp32", 50.0)]
    win = choose(cands)
    assert (win.format, win.precision) == ("openvino", "bf16")
    assert [c.label for c in rank(cands)] == ["openvino bf16", "openvino fp32", "onnx fp32", "torchscript fp32",
                                              "openvino int8"]  # the failed one is ranked last, however fast
    rows = [c.row(c is win) for c in rank(cands)]
    assert rows[0]["chosen"] and not any(r["chosen"] for r in rows[1:])
    assert rows[-1]["parity"] == "fail" and rows[-1]["failures"] == ["logits: max_rel"]


@pytest.mark.parametrize("flags", [set(), {"avx512_bf16"}, {"amx_bf16"}])
def test_bf16_is_a_candidate_only_where_the_cpu_computes_in_it(monkeypatch, flags):
    """Without bf16 instructions every bf16 candidate is skipped, saying why (OpenVINO would emulate
    it, far slower than its fp32); with them none is skipped for that."""
    from autotimm_deploy.exporter import select
    from autotimm_deploy.exporter.formats import ExportOptions, get_format

    monkeypatch.setattr(select, "cpu_flags", lambda: {"avx512f", *flags})
    bf16 = [c for c in select.available_candidates(ExportOptions())
            if c.precision == "bf16" and not get_format(c.format).unavailable_reason()]
    assert "openvino" in {c.format for c in bf16}
    why = [c for c in bf16 if c.skipped and "bfloat16 instructions" in c.skipped]
    assert why == ([] if flags else bf16)


def test_accuracy_budget_decides_over_the_parity_proxy():
    """--eval --max-drop: an int8 candidate that fails the proxy gate but holds the user's metric
    within budget wins; one through the proxy but past the budget loses; fp32 still needs parity."""
    cands = [_cand("onnx", "fp32", 29.0, drop=0.0), _cand("openvino", "int8", 3.0, verdict="fail", drop=0.4),
             _cand("onnx", "int8", 2.0, drop=3.0), _cand("torchscript", "fp32", 1.0, verdict="fail", drop=0.0)]
    win = choose(cands)
    assert (win.format, win.precision) == ("openvino", "int8")
    rows = {r["format"] + r["precision"]: r for r in (c.row(c is win) for c in rank(cands))}
    assert rows["onnxint8"]["accuracy"] == {"metric": "top1", "value": 87.0, "drop": 3.0, "verdict": "fail",
                                            "error": None}
    assert not cands[3].passed  # an fp32 artifact that fails parity is a bug, whatever its accuracy


def test_skipped_and_errored_candidates_never_win():
    cands = [_cand("onnx", "int8", 1.0, skipped="no calibration data (--calib-data)"),
             _cand("onnx", "fp32", None, error="exporter crashed"), _cand("torchscript", "fp32", 9.0)]
    assert choose(cands).format == "torchscript"
    assert choose([_cand("onnx", "fp32", 2.0, verdict="fail")]) is None
    assert choose([]) is None


# AOTInductor's frozen, bf16 and int8 packages compile two models each (~25 s apiece here): their
# exports and parity are tests/test_aoti.py's, what --target cpu asks of them the next test's; the
# end-to-end run keeps the plain package
COMPILED_ELSEWHERE = {("aoti", "fp32", "frozen"), ("aoti", "bf16", None), ("aoti", "int8", None)}


def test_each_candidate_is_exported_with_its_own_options(tmp_path, monkeypatch):
    """What --target cpu asks of each candidate's export (every one, the three above included): its
    format, precision and format options over the user's, the calibration data, one shared model."""
    from autotimm_deploy.exporter import select
    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.exporter.formats import ExportOptions

    monkeypatch.setattr(select, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})  # bf16 offered too
    calls = []

    def stub(spec, formats, folder, options, verify, model, cache):  # no compile: its arguments, a failure
        calls.append((*formats, options.precision, options.format_options, options.calib_samples, model))
        return [ExportResult(format=formats[0], error="stub")]

    monkeypatch.setattr(select, "export", stub)
    winner, ranked, _ = select.target_cpu(ModelSpec("test_resnet", img_size=(64, 64)), tmp_path / "out",
                                          ExportOptions(calib_data="sample-pictures", calib_samples=4))
    want = [(f, p, own) for f, p, _, own in CPU_CANDIDATES if not get_format(f).unavailable_reason()]
    assert [c[:3] for c in calls] == want
    assert {c[3] for c in calls} == {4} and len({id(c[4]) for c in calls}) == 1  # one model built for all
    assert winner is None and len(ranked) == len(CPU_CANDIDATES)
    assert not (tmp_path / "out").exists()  # nothing chosen: no empty folder left


def test_target_cpu_end_to_end(tmp_path, export_cli, monkeypatch):
    import skimage.data
    from PIL import Image

    kept = [c for c in CPU_CANDIDATES if c[:3] not in COMPILED_ELSEWHERE]
    monkeypatch.setattr("autotimm_deploy.exporter.select.CPU_CANDIDATES", kept)

    calib = tmp_path / "calib"
    calib.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(skimage.data, name)()).save(calib / f"{name}.png")
    out = tmp_path / "out"
    labelled = tmp_path / "labelled"  # class folders named by index: a subset of the 1000 classes
    for i, name in enumerate(("astronaut", "chelsea", "coffee")):
        (labelled / str(i)).mkdir(parents=True)
        Image.fromarray(getattr(skimage.data, name)()).save(labelled / str(i) / f"{name}.png")
    p = export_cli("test_resnet", "--img-size", "64", "--target", "cpu", "--calib-data", str(calib), "-o", str(out),
                   "--max-time", "1.5", "--json", "--recipe-out", str(tmp_path / "chosen.yaml"),
                   "--eval", str(labelled), "--max-drop", "100")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    cands = data["candidates"]
    assert len(cands) == len(kept) and sum(c["chosen"] for c in cands) == 1 and cands[0]["chosen"]
    timed = [c["median_ms"] for c in cands if c["median_ms"] is not None]
    skipped = [c for c in cands if c["note"] and "bfloat16 instructions" in c["note"]]  # bf16 on a CPU without
    assert timed == sorted(timed) and len(timed) == len(cands) - len(skipped)  # every other one passed, was timed
    assert {(c["format"], c["precision"], c["variant"]) for c in cands} == {(f, p, v) for f, p, v, _ in kept}
    chosen = cands[0]
    from autotimm_deploy.exporter.core.manifest import load_manifest

    m = load_manifest(data["chosen"])
    assert m.target["name"] == "cpu" and m.target["ranking"][0]["chosen"]
    assert "within 100 points of eager's metric" in m.target["rule"]
    assert all(c["accuracy"]["metric"] == "top1" and c["accuracy"]["verdict"] == "pass" for c in cands
               if c not in skipped)
    assert m.accuracy.data["samples"] == 3 and "top1 (drop)" in p.stderr
    assert (m.format, m.precision) == (chosen["format"], chosen["precision"])
    # only the winner is kept: its files, its manifest, the recipe
    assert sorted(x.name for x in out.iterdir()) == sorted(list(m.files) + [m.artifact + ".json"])
    recipe = yaml.safe_load((tmp_path / "chosen.yaml").read_text())
    assert recipe["formats"] == [chosen["format"]] and recipe["precisions"] == [chosen["precision"]]
    assert ("format_options" in recipe) == (chosen["variant"] is not None)
    assert recipe["num_classes"] == 1000
    from autotimm_deploy.recipes.schema import load_recipe

    assert load_recipe(tmp_path / "chosen.yaml").formats == [chosen["format"]]  # a recipe the tool itself reads


def test_target_with_bad_calibration_writes_nothing(tmp_path, export_cli):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    p = export_cli("test_resnet", "--img-size", "64", "--target", "cpu", "--calib-data", str(tmp_path / "empty"),
                   "-o", str(out))
    assert p.returncode == 2 and "has no images" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not out.exists()
