"""Recipes: parsing and its file:line errors, the shipped recipes, resume/skip of export and profile,
the seed report (Markdown tables and PNGs holding the measured values), and the 25 backbones'
parameter counts against the seed page."""

import json
import re
from pathlib import Path

import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.recipes.runner import run_exports
from autotimm_deploy.recipes.schema import load_recipe

from tests.conftest import files_under

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

TINY = """\
recipe: 1
name: tiny
models:
  - test_resnet
  - {model: test_vit, reference: {params_m: 0.1, v100_ms: 0.5}}
tasks: [classification]
formats: [onnx, torchscript, trt]
precisions: [fp32, int8]
batch_sizes: [1, 2]
img_size: 64
num_classes: 4
calibration: {data: sample-pictures, samples: 4}
profile: {iterations: 3, warmup_time: 0.1}
"""


def write(tmp_path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    recipe = load_recipe(path)
    jobs = recipe.export_jobs()
    assert jobs and recipe.models and recipe.formats
    assert all(j.skipped is None or "has no" in j.skipped for j in jobs)


@pytest.mark.parametrize("edit,line,message", [
    (("formats: [onnx, torchscript, trt]", "formts: [onnx]"), 7, "unknown key 'formts' in the recipe (did you mean 'formats'?)"),
    (("  - test_resnet", "  - resnet_5O"), 4, "unknown timm model 'resnet_5O'"),
    (("batch_sizes: [1, 2]", "batch_sizes: [1, 0]"), 9, "batch_sizes must be positive integers"),
    (("batch_sizes: [1, 2]", "batch_sizes: [1, two]"), 9, "batch_sizes must be positive integers"),
    (("tasks: [classification]", "tasks: [clasification]"), 6, "unknown task 'clasification'"),
    (("formats: [onnx, torchscript, trt]", "formats: [onx]"), 7, "unknown format 'onx'; did you mean onnx?"),
    (("precisions: [fp32, int8]", "precisions: [fp8]"), 8, "unknown precision 'fp8'"),
    (("img_size: 64", "img_size: -3"), 10, "img_size must be a positive integer"),
    (("profile: {iterations: 3, warmup_time: 0.1}", "profile: {max_tme: 3}"), 13, "unknown key 'max_tme' in profile"),
    (("  - {model: test_vit, reference: {params_m: 0.1, v100_ms: 0.5}}", "  - {model: test_vit, size: 3}"), 5,
     "unknown key 'size' in a model"),
    (("calibration: {data: sample-pictures, samples: 4}", ""), 8, "int8 needs calibration"),
    (("recipe: 1", "recipe: 7"), 1, "recipe schema 7"),
    (("num_classes: 4", "num_classes: 4\nnum_classes: 5"), 12, "duplicate key 'num_classes'"),
    (("tasks: [classification]", "tasks:\n  - {task: detection, head: fcn}"), 7, "unknown key 'head' in a detection task"),
    (("tasks: [classification]", "tasks:\n  - {task: detection, fpn_channels: 0}"), 7, "--fpn-channels takes an integer from 1 to 4096"),
    (("batch_sizes: [1, 2]", "batch_sizes: [1, 2"), 10, "not valid YAML"),
    (("num_classes: 4", "num_classes: 4\neval: {data: nowhere/}"), 12, "eval data not found"),
    (("calibration: {data: sample-pictures, samples: 4}", "calibration: {data: nowhere/, samples: 4}"), 12,
     "calibration data not found"),
    (("num_classes: 4", "num_classes: 4\neval: {data: ., max_drop: 200}"), 12, "max_drop takes 0 to 100"),
    (("num_classes: 4", "num_classes: 4\neval: {dat: .}"), 12, "unknown key 'dat' in eval"),
    (("tasks: [classification]", "tasks: [classification, semantic-segmentation]\neval: {data: .}"), 7,
     "eval scores one task's labelled data; this recipe has classification and semantic-segmentation"),
    (("num_classes: 4", "num_classes: 4\nformat_options: {onnx: {int8_form: u9s9}}"), 12,
     "format_options: onnx.int8_form takes one of s8s8, u8s8, u8s8-qop, got 'u9s9'"),
    (("num_classes: 4", "num_classes: 4\nformat_options: {aoti: {freezing: true}}"), 12,
     "format_options: 'aoti' is not a listed format with options of its own"),
    (("num_classes: 4", "num_classes: 4\nformat_options: {onnx: {int8: u8s8}}"), 12,
     "unknown key 'int8' in onnx's format_options (did you mean 'int8_form'?)"),
])
def test_recipe_errors_name_file_and_line(tmp_path, edit, line, message):
    path = write(tmp_path, TINY.replace(*edit))
    with pytest.raises(UserError) as e:
        load_recipe(path)
    text = str(e.value)
    assert text.startswith(f"{path}:{line}: ") and message in text and "\n" not in text, text


def test_recipe_matrix_and_skips(tmp_path):
    recipe = load_recipe(write(tmp_path, TINY), tmp_path / "out")
    jobs = recipe.export_jobs()
    assert len(jobs) == 2 * 3 * 2
    skipped = {(j.model.name, j.format, j.precision): j.skipped for j in jobs if j.skipped}
    no_gpu = "trt is built on the GPU that runs it: the recipe's devices name no CUDA GPU"
    assert skipped == {**{(m, "torchscript", "int8"): "torchscript has no int8 (it has fp32)" for m in ("test_resnet", "test_vit")},
                       **{(m, "trt", p): no_gpu for m in ("test_resnet", "test_vit") for p in ("fp32", "int8")}}
    assert {j.artifact.name for j in jobs if j.format == "onnx"} == {
        "test_resnet.onnx", "test_resnet-int8.onnx", "test_vit.onnx", "test_vit-int8.onnx"}
    assert all(j.artifact.parent == tmp_path / "out" / "tiny" / "artifacts" for j in jobs)


def test_two_entries_of_one_model_are_told_apart_by_their_labels(tmp_path):
    """The same model at two sizes: the clash asks for a label, and a model's label (as a task's) goes
    into its file stems, profile rows and report."""
    two = "recipe: 1\nmodels: [{model: test_resnet, img_size: 64}, {model: test_resnet, img_size: 96%s}]\nformats: [onnx]\n"
    with pytest.raises(UserError, match="two entries make test_resnet.onnx; give one of the models or tasks that make "
                                        "it a `label:` of its own"):
        load_recipe(write(tmp_path, two % ""), tmp_path / "out").export_jobs()
    recipe = load_recipe(write(tmp_path, two % ", label: s96"), tmp_path / "out")
    assert [(j.artifact.name, j.spec.img_size) for j in recipe.export_jobs()] == [
        ("test_resnet.onnx", (64, 64)), ("test_resnet-s96.onnx", (96, 96))]
    assert [j.key for j in recipe.profile_jobs() if j.kind == "eager"] == ["test_resnet.eager", "test_resnet-s96.eager"]
    with pytest.raises(UserError, match="label must be a short name"):
        load_recipe(write(tmp_path, two % ", label: 'a b'"), tmp_path / "out")


def test_an_artifact_without_its_manifest_fails_its_timing(tmp_path):
    """Not "not exported" (a skip, exit 0): the file is there, its manifest is not."""
    from autotimm_deploy.recipes.jobs import JobStatus
    from autotimm_deploy.recipes.runner import plan_profile

    recipe = load_recipe(write(tmp_path, TINY.replace("formats: [onnx, torchscript, trt]", "formats: [onnx]")),
                         tmp_path / "out")
    job = next(j for j in recipe.profile_jobs() if j.kind != "eager" and j.key == "test_resnet.onnx")
    job.export.artifact.parent.mkdir(parents=True)
    job.export.artifact.write_bytes(b"onnx")
    row, settings, _ = plan_profile(job, recipe)
    assert row["status"] == JobStatus.FAILED and "has no manifest beside it" in row["reason"] and settings is None
    job.export.artifact.unlink()
    assert plan_profile(job, recipe)[0]["status"] == JobStatus.SKIPPED


def test_format_options_reach_the_exports(tmp_path):
    """format_options: a format's own options (what --target cpu's winner needs, e.g. ONNX's u8s8)."""
    text = TINY.replace("num_classes: 4", "num_classes: 4\nformat_options:\n  onnx: {int8_form: u8s8}")
    jobs = {(j.format, j.precision): j for j in load_recipe(write(tmp_path, text), tmp_path / "out").export_jobs()}
    own = jobs[("onnx", "int8")].options().of("onnx")
    assert own.int8_form == "u8s8" and jobs[("onnx", "int8")].fingerprint()["format_options"] == {"int8_form": "u8s8"}
    assert "format_options" not in jobs[("torchscript", "fp32")].fingerprint()


def test_engines_are_built_per_gpu_and_timed_only_there(tmp_path):
    """A TensorRT engine is tied to the GPU it was built on: one per CUDA device of the recipe,
    named after it, timed on it alone; other formats are timed on every device."""
    from autotimm_deploy.recipes.runner import settled_export

    text = TINY.replace("precisions: [fp32, int8]", "precisions: [fp32]").replace("test_resnet\n  - {model: test_vit, "
                                                                                 "reference: {params_m: 0.1, v100_ms: 0.5}}",
                                                                                 "test_resnet")
    recipe = load_recipe(write(tmp_path, text + "devices: [cpu, cuda:0@a100, cuda@t4]\n"), tmp_path / "out")
    jobs = recipe.export_jobs()
    engines = {j.artifact.name: j.device for j in jobs if j.format == "trt"}
    assert engines == {"test_resnet-cuda0@a100.engine": "cuda:0@a100", "test_resnet-cuda0@t4.engine": "cuda@t4"}
    timed = {(p.export.artifact.name, p.device) for p in recipe.profile_jobs() if p.kind == "artifact"}
    assert {(n, d) for n, d in timed if n.endswith(".engine")} == {(n, d) for n, d in engines.items()}
    assert {d for n, d in timed if n.endswith(".onnx")} == {"cpu", "cuda:0@a100", "cuda@t4"}
    # the local runner does not build a fleet node's engine
    row = settled_export(next(j for j in jobs if j.format == "trt"))
    assert row["status"] == "skipped" and "fleet device" in row["reason"] and row["device"] == "cuda:0@a100"
    # a GPU named twice is one line
    with pytest.raises(UserError, match="listed twice"):
        load_recipe(write(tmp_path, text + "devices: [cpu, cuda, cuda:0]\n", "twice.yaml"))


def test_recipe_cli_errors_one_line(tmp_path, export_cli):
    bad = write(tmp_path, TINY.replace("batch_sizes: [1, 2]", "batch_sizes: oops"))
    out = tmp_path / "o"
    for args, msg in ((["--recipe", str(bad)], f"{bad}:9:"), (["--recipe", str(tmp_path / "none.yaml")], "not found"),
                      (["resnet18", "--recipe", str(bad)], "not both"),
                      (["--recipe", str(RECIPES)], "is a folder; give one .yaml file")):
        r = export_cli(*args, "-o", str(out))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, (args, r.stderr)
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Export and profile the tiny recipe once (through the CLIs, as a user would)."""
    from tests.conftest import run_cli

    tmp = tmp_path_factory.mktemp("recipe")
    path = write(tmp, TINY)
    out = tmp / "out"
    exp = run_cli("autotimm_deploy.exporter.cli", "--recipe", str(path), "-o", str(out), "--json")
    prof = run_cli("autotimm_deploy.profiler.cli", "--recipe", str(path), "-o", str(out), "--report", "seed", "--json")
    return path, out, exp, prof


def test_recipe_export_then_resume(tiny_run):
    path, out, exp, _ = tiny_run
    assert exp.returncode in (0, 1), exp.stderr
    rows = {Path(r["artifact"]).name: r for r in json.loads(exp.stdout)["rows"]}
    assert rows["test_resnet.onnx"]["status"] == "exported" and rows["test_resnet.pt"]["status"] == "exported"
    assert rows["test_resnet.engine"]["status"] == "skipped"
    assert "recipe's devices name no CUDA GPU" in rows["test_resnet.engine"]["reason"]
    assert rows["test_resnet-int8.pt"]["status"] == "skipped"
    saved = json.loads((out / "tiny" / "results" / "export.json").read_text())["rows"]
    assert len(saved) == len(rows)  # partial results file holds every job

    recipe = load_recipe(path, out)
    again = {Path(r["artifact"]).name: r for r in run_exports(recipe)}
    for name, r in rows.items():
        if r["status"] == "exported":
            assert again[name]["status"] == "up to date", name
    # a damaged artifact is redone, the rest stays
    damaged = out / "tiny" / "artifacts" / "test_vit.onnx"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    third = {Path(r["artifact"]).name: r for r in run_exports(recipe)}
    assert third["test_vit.onnx"]["status"] == "exported"
    assert third["test_resnet.onnx"]["status"] == "up to date"


def test_recipe_export_time_budget(tmp_path, monkeypatch):
    import itertools

    import autotimm_deploy.recipes.runner

    recipe = load_recipe(write(tmp_path, TINY.replace("formats: [onnx, torchscript, trt]", "formats: [torchscript]")),
                         tmp_path / "out")
    ticks = itertools.count()  # a clock that advances one second per reading
    monkeypatch.setattr(autotimm_deploy.recipes.runner.time, "monotonic", lambda: float(next(ticks)))
    rows = run_exports(recipe, max_time=1.5)
    statuses = [r["status"] for r in rows]
    assert statuses.count("exported") == 1 and statuses.count("not run") == 1, statuses  # first job starts, then stop
    assert all("--max-time" in r["reason"] for r in rows if r["status"] == "not run")


def test_recipe_profile_resume_and_seed_report(tiny_run):
    from autotimm_deploy.recipes.runner import run_profiles

    path, out, _, prof = tiny_run
    assert prof.returncode in (0, 1), prof.stderr
    data = json.loads(prof.stdout)
    rows = {r["key"]: r for r in data["rows"]}
    assert rows["test_resnet.eager"]["status"] == "profiled" and rows["test_resnet.onnx"]["status"] == "profiled"
    assert "test_resnet.engine" not in rows  # skipped at export (no CUDA device): nothing to time

    recipe = load_recipe(path, out)
    again = {r["key"]: r["status"] for r in run_profiles(recipe)}
    assert all(again[k] == "up to date" for k, r in rows.items() if r["status"] == "profiled"), again

    md = Path(data["report"]["markdown"])
    text = md.read_text()
    for heading in ("## Backbone comparison (cpu, batch 1)", "## Batch inference speedup (cpu)",
                    "## Memory by backbone and task", "## Artifacts"):
        assert heading in text
    assert [Path(p).name for p in data["report"]["png"]] == ["params_vs_latency.png", "batch_speedup.png"]
    for p in data["report"]["png"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table holds the measured medians and the computed parameter counts
    result = json.loads((out / "tiny" / "results" / "profile" / "test_resnet.onnx.cpu.json").read_text())
    ms = result["report"]["runs"][0]["points"][0]["stats_ms"]["p50"]
    row = next(line for line in text.splitlines() if line.startswith("| `test_resnet` |") and "M |" in line)
    assert f"{ms:.2f}" in row
    from autotimm_deploy.exporter.core.manifest import load_manifest

    params = load_manifest(out / "tiny" / "artifacts" / "test_resnet.onnx").model["params"]
    assert f"{params / 1e6:.1f}M" in row
    vit = next(line for line in text.splitlines() if line.startswith("| `test_vit` |") and "M |" in line)
    assert vit.rstrip(" |").endswith("0.5")  # the seed's own number, in its labelled column


def test_profile_recipe_flags(tmp_path):
    from tests.conftest import call_cli

    r = call_cli("autotimm_deploy.profiler.cli", "--report", "seed")
    assert r.returncode == 2 and "--recipe" in r.stderr and len(r.stderr.strip().splitlines()) == 1


SEED_PARAMS = re.compile(r"params_m: ([0-9.]+)")


def test_backbones_recipe_params_equal_the_seed_page():
    """Counted on the built models (on the meta device: no memory, no weights) at 1000 classes."""
    import timm
    import torch

    recipe = load_recipe(RECIPES / "backbones.yaml")
    assert len(recipe.models) == 25
    for m in recipe.models:
        with torch.device("meta"):
            net = timm.create_model(m.name, pretrained=False, num_classes=1000)
        params = sum(p.numel() for p in net.parameters())
        assert abs(params / 1e6 - m.reference["params_m"]) <= 0.1, (m.name, params)
        # the page's sizes are the fp32 weights, rounded somewhere between MiB and MB (1e6 bytes)
        assert params * 4 / 2**20 - 0.5 <= m.reference["size_mb"] <= params * 4 / 1e6 + 0.5, (m.name, params)


def test_nothing_written_for_a_bad_recipe(tmp_path, export_cli):
    bad = write(tmp_path, TINY.replace("  - test_resnet", "  - not_a_model_at_all"))
    out = tmp_path / "o"
    r = export_cli("--recipe", str(bad), "-o", str(out))
    assert r.returncode == 2 and files_under(out) == []


def test_profile_recipe_before_export_is_one_line(tmp_path):
    from tests.conftest import call_cli

    path = write(tmp_path, TINY)
    out = tmp_path / "o"
    r = call_cli("autotimm_deploy.profiler.cli", "--recipe", str(path), "-o", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "autotimm-export --recipe" in r.stderr
    assert not out.exists()


def test_recipe_eval_budget_and_report(tmp_path, digits):
    """``eval:`` scores every artifact of the recipe on the labelled data (here the digits folder, on
    random weights: the plumbing, not the accuracy); the budget is the verdict and part of what makes a
    job current, and the seed report's Artifacts table shows the accuracy."""
    from autotimm_deploy.profiler.report.benchmark_page import _artifacts
    from autotimm_deploy.recipes.benchmark import collect

    text = f"""\
recipe: 1
name: digits
models: [test_resnet]
tasks: [classification]
formats: [onnx]
precisions: [fp32, int8]
batch_sizes: [1]
img_size: 32
num_classes: 10
calibration: {{data: {digits.calib}, samples: 16}}
eval: {{data: {digits.folder}, samples: 100, max_drop: 100}}
"""
    recipe = load_recipe(write(tmp_path, text), tmp_path / "out")
    rows = run_exports(recipe)
    assert [r["status"] for r in rows] == ["exported", "exported"], rows
    assert all(r["accuracy"]["metric"] == "top1" and r["accuracy"]["verdict"] == "pass" for r in rows)
    assert recipe.export_jobs()[0].fingerprint()["evaluation"] == {
        "eval_data": str(digits.folder), "eval_samples": 100, "max_drop": 100.0}
    assert [r["status"] for r in run_exports(recipe)] == ["up to date"] * 2
    stricter = load_recipe(write(tmp_path, text.replace("max_drop: 100", "max_drop: 50")), tmp_path / "out")
    assert [r["status"] for r in run_exports(stricter)] == ["exported"] * 2  # a new budget: a new verdict
    table = "\n".join(_artifacts(collect(stricter).artifacts))
    assert "Accuracy (vs eager)" in table and "top1 " in table and ", pass" in table
