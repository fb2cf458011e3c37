"""Issue #30, round 3: a fleet run ended by SIGTERM ends like Ctrl-C (Ray's native handler used to
abort it with a stack dump); an export Ray stops for memory is retried once asking for twice the
memory, then fails in one line naming the model and the memory; and a CLI interrupted before its
command starts (imports, argparse) or after it ended (the interpreter's exit) prints one line,
never a traceback."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from autotimm_deploy.exporter.core import cli as core_cli
from autotimm_deploy.exporter.core.manifest import MANIFEST_SUFFIX, load_manifest, verify_files
from autotimm_deploy.recipes.jobs import JobStatus
from autotimm_deploy.recipes.schema import load_recipe

from tests.conftest import ROOT
from tests.test_fleet import RECIPE

CLIS = [("autotimm_deploy.exporter.cli", "autotimm-export"), ("autotimm_deploy.profiler.cli", "autotimm-profile"),
        ("autotimm_deploy.exporter.triton_cli", "autotimm-triton"),
        ("autotimm_deploy.profiler.predict_cli", "autotimm-predict")]


# ---- Ctrl-C (or SIGTERM) before the command runs, or after it ended ------------------------------

# Runs a CLI as `python -m` (runpy, as Python does) or as its console script (argv[0] its name,
# `entry()` called), with a signal sent to itself at one moment of its life.
EARLY = textwrap.dedent("""
    import argparse, atexit, importlib, importlib.abc, os, runpy, signal, sys, time
    module, prog, how, when, sig = sys.argv[1:6]
    sig = getattr(signal, sig)

    def fire():
        os.kill(os.getpid(), sig)
        time.sleep(10)  # the handler runs before this ends

    class DuringImports(importlib.abc.MetaPathFinder):
        # the first module imported after the shared CLI module has set its handlers
        fired = False
        def find_spec(self, name, path, target=None):
            core = sys.modules.get("autotimm_deploy.exporter.core.cli")
            if not DuringImports.fired and signal.getsignal(sig) is getattr(core, "_quit", False):
                DuringImports.fired = True
                fire()
            return None

    if when == "import":
        sys.meta_path.insert(0, DuringImports())
    elif when == "parse":
        argparse.ArgumentParser.parse_args = lambda *a, **k: fire()
    elif when == "exit":
        atexit.register(fire)
    sys.argv = [prog, "--help"]
    if how == "module":
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.exit(importlib.import_module(module).entry())
""")


def run_early(module: str, prog: str, how: str, when: str, sig: str = "SIGINT") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", EARLY, module, prog, how, when, sig], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize("module,prog", CLIS)
@pytest.mark.parametrize("how", ["module", "script"])
def test_ctrl_c_while_a_cli_imports_is_one_line(module, prog, how):
    p = run_early(module, prog, how, "import")
    assert p.returncode == 130, p.stderr
    assert p.stderr == f"{prog}: interrupted (SIGINT); no partial files were left\n"


@pytest.mark.parametrize("when,sig,code", [("parse", "SIGINT", 130), ("import", "SIGTERM", 143),
                                           ("parse", "SIGHUP", 129)])
def test_a_signal_before_the_command_runs_is_one_line(when, sig, code):
    p = run_early("autotimm_deploy.exporter.cli", "autotimm-export", "module", when, sig)
    assert p.returncode == code and p.stderr == f"autotimm-export: interrupted ({sig}); no partial files were left\n"


def test_ctrl_c_after_the_command_ended_keeps_its_output_and_is_one_line():
    """The interpreter's exit (Ray's shutdown runs there): what the command printed stays."""
    p = run_early("autotimm_deploy.profiler.cli", "autotimm-profile", "script", "exit")
    assert p.returncode == 130 and p.stderr == "autotimm-profile: interrupted (SIGINT); no partial files were left\n"
    assert p.stdout.startswith("usage: autotimm-profile")


def test_in_process_a_ctrl_c_while_parsing_is_one_line_and_the_handlers_are_put_back(monkeypatch, capsys):
    """`entry()` called by a program: its handlers are its own again after; nothing quits it."""
    from autotimm_deploy.exporter import cli

    before = {sig: signal.getsignal(sig) for sig in core_cli.ENDING}
    monkeypatch.setattr(core_cli.OneLineParser, "parse_args", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.entry(["--help"]) == 130
    assert capsys.readouterr().err == "autotimm-export: interrupted (SIGINT); no partial files were left\n"
    monkeypatch.undo()
    assert cli.entry(["--list-formats"]) == 0
    assert {sig: signal.getsignal(sig) for sig in core_cli.ENDING} == before


class DropsASignal:
    """A signal raised in a ``__del__``: Python prints its handler's exception ("Exception ignored
    in") instead of raising it, as in logging's at-fork hook when Ray forks while it starts (CI saw
    exit 0 and the export run to its end)."""

    def __init__(self, sig=signal.SIGTERM):
        self.sig = sig

    def __del__(self):
        signal.raise_signal(self.sig)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_whose_exception_python_dropped_still_ends_the_command(sig, capsys):
    """One line, no "Exception ignored" traceback; the handlers and the unraisable hook put back."""
    reached, hook, handlers = [], sys.unraisablehook, {s: signal.getsignal(s) for s in core_cli.ENDING}

    def main(_):
        DropsASignal(sig)  # collected at once
        reached.append("the rest of the command")
        return 0

    assert core_cli.run_cli("autotimm-export", main, core_cli.OneLineParser(prog="autotimm-export"), []) == 128 + sig
    assert reached and capsys.readouterr().err == core_cli.interrupted_line("autotimm-export", sig)
    assert sys.unraisablehook is hook and {s: signal.getsignal(s) for s in core_cli.ENDING} == handlers
    core_cli.raise_if_interrupted()  # the program's own calls after it: not interrupted


def test_a_signal_dropped_while_ray_starts_stops_the_run_there(monkeypatch, capsys):
    from types import SimpleNamespace

    from autotimm_deploy.recipes import fleet

    private = SimpleNamespace(utils=SimpleNamespace(), worker=SimpleNamespace())
    ray = SimpleNamespace(is_initialized=lambda: False, init=lambda **_: DropsASignal(), _private=private)
    monkeypatch.setattr(fleet, "_ray", lambda: ray)
    reached = []

    def main(_):
        fleet.connect("local")
        reached.append("the exports")
        return 0

    assert core_cli.run_cli("autotimm-export", main, core_cli.OneLineParser(prog="autotimm-export"), []) == 143
    assert not reached and capsys.readouterr().err == core_cli.interrupted_line("autotimm-export", signal.SIGTERM)


def test_the_cli_names_are_the_console_scripts():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {v.split(":")[0]: k for k, v in scripts.items()} == core_cli.CLIS
    assert dict(CLIS) == core_cli.CLIS


# ---- SIGTERM in a fleet run --------------------------------------------------------------------

def _recipe(folder: Path, models: list[str], formats: str) -> Path:
    """tests/test_fleet.py's recipe (on plain `cpu`) with these models and formats."""
    path = folder / "r.yaml"
    path.write_text(RECIPE.format(name="r", devices="[cpu]", formats=formats).replace(
        "models: [test_resnet]", f"models: [{', '.join(models)}]"))
    return path


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                out[int(d.name)] = (ppid, (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
    return out


def _descendants(pid: int) -> dict[int, str]:
    procs, out, todo = _processes(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, cmd) in procs.items():
            if ppid == parent and child not in out:
                out[child] = cmd
                todo.append(child)
    return out


def _until(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_ends_a_ray_run_like_ctrl_c(tmp_path):
    """`docker stop`, a scheduler or a CI timeout: SIGTERM while a `ray::_export_task` runs ends the
    run in one line, exit 143, the cells that finished kept with their manifests, the others "not
    run", nothing half-written, no Ray process left (it was exit 134 and a native stack dump)."""
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    path = _recipe(tmp_path, ["test_resnet", "test_vit", "test_efficientnet"], "[onnx, torchscript]")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "autotimm_deploy.exporter.cli", "--recipe", str(path), "--ray",
                             "local", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    artifacts = out / "r" / "artifacts"
    try:
        def one_done_and_one_running() -> bool:
            assert proc.poll() is None, proc.communicate()
            running = any(cmd.startswith("ray::_export_task") for cmd in _descendants(proc.pid).values())
            return running and any(artifacts.glob(f"*{MANIFEST_SUFFIX}"))

        _until(one_done_and_one_running, 400, "an export to finish while another runs")
        ray_processes = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert stderr == "autotimm-export: interrupted (SIGTERM); no partial files were left\n"
    rows = json.loads((out / "r" / "results" / "export.json").read_text())["rows"]
    done = [r for r in rows if r["status"] == "exported"]
    assert done and len(done) < len(rows), rows
    assert all(r["status"] == "not run" and r["reason"] == "interrupted (SIGTERM)" for r in rows if r not in done)
    listed = set()
    for row in done:
        artifact = Path(row["artifact"])
        verify_files(load_manifest(artifact), artifacts)
        listed |= {*load_manifest(artifact).files, artifact.name + MANIFEST_SUFFIX}
    assert sorted(p.name for p in artifacts.iterdir()) == sorted(listed)  # no scratch, nothing half-written
    _until(lambda: not set(ray_processes) & set(_processes()), 60, "Ray's processes to end")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_while_ray_starts_is_one_line(tmp_path):
    """`ray.init` set its own SIGTERM handler for its ~10 s: exit 15, no cleanup, no line."""
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    path = _recipe(tmp_path, ["test_resnet"], "[onnx]")
    proc = subprocess.Popen([sys.executable, "-m", "autotimm_deploy.exporter.cli", "--recipe", str(path), "--ray",
                             "local", "-o", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    try:
        def ray_starting() -> bool:
            assert proc.poll() is None, proc.communicate()
            return any("gcs_server" in cmd for cmd in _descendants(proc.pid).values())

        _until(ray_starting, 120, "Ray to start")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and stderr == "autotimm-export: interrupted (SIGTERM); no partial files were left\n"


# ---- Ray out of memory ---------------------------------------------------------------------------

# What Ray 2.60's memory monitor says, shortened (the real one is a page: object store figures,
# the top 10 processes, advice)
RAY_OOM = ("1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 10.0.0.2, ID: "
           "709c026f) was 30.89GB used / 31.54GB limit (0.979)\nOOM kill reason: Memory usage 33168004300B exceeded "
           "threshold\nSelected to kill: (Task: job ID=01000000, task name=_export_task, required resources={CPU: 1, "
           "memory: 1.0GiB}, pid=3925, actual memory used=21.50GB, worker ID=cb5e)\nRefer to the documentation on how "
           "to address the out of memory issue: https://docs.ray.io/en/latest/ray-observability/user-guides/debug-apps/"
           "debug-memory.html. Consider provisioning more memory on this node or reducing task parallelism.")


def test_ray_out_of_memory_is_one_line_with_the_model_and_its_memory():
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from autotimm_deploy.recipes import fleet

    line = fleet._failure(ray.exceptions.OutOfMemoryError(RAY_OOM), "exporting vit_huge_patch14_224 (onnx)",
                          [10 * 2**30, 20 * 2**30])
    assert line == ("out of memory: exporting vit_huge_patch14_224 (onnx) needs more than 20.0 GiB: Ray stopped it at "
                    "21.5 GB used (its node: 30.89 of 31.54 GB), after asking for 10.0 then 20.0 GiB; run it on a node "
                    "with more memory")
    died = fleet._failure(ray.exceptions.WorkerCrashedError(), "exporting resnet50 (onnx)", [2**30, 2**31])
    assert died.startswith("the worker exporting resnet50 (onnx) died at each try") and "1.0 then 2.0 GiB" in died
    timing = fleet._failure(ray.exceptions.OutOfMemoryError(RAY_OOM), "timing resnet50.onnx on cpu")
    assert timing.startswith("out of memory: timing resnet50.onnx on cpu needs more than 20.0 GiB: Ray stopped it")
    assert all("\n" not in x and "docs.ray.io" not in x for x in (line, died, timing))


# Peak RSS (MB) of `autotimm-export MODEL -f onnx|openvino --img-size 64` measured for #30 (the table
# in recipes/fleet.py), and the real runs the issue names
MEASURED = {"test_resnet": 1428, "resnet18": 1820, "resnet50": 2336, "mobilenetv3_small_100": 1529,
            "mobilenetv3_large_100": 1607, "efficientnet_b0": 1596, "efficientnet_b3": 1844, "convnext_atto": 1553,
            "convnext_tiny": 2494, "vit_tiny_patch16_224": 1660, "vit_small_patch16_224": 2189,
            "vit_base_patch16_224": 4090, "vit_large_patch16_224": 7400, "vit_huge_patch14_224": 21500}


def test_an_export_asks_for_what_its_family_was_measured_to_need():
    """The old budget, 1 GiB + 5.5 x the fp32 weights, was 14.9 GB for vit_huge_patch14_224, which
    peaked at 21.5 GB; now every measured export, a Ray worker's 50 MB added, fits its request."""
    from types import SimpleNamespace

    from autotimm_deploy.recipes import fleet

    def job(model: str):
        return SimpleNamespace(spec=SimpleNamespace(model=model, checkpoint=None, num_classes=None, in_chans=3))

    for model, peak_mb in MEASURED.items():
        asked = fleet.export_memory(job(model), 1 << 50, {})
        assert asked >= (peak_mb + 50) * 1e6, (model, asked / 1e6)
        assert asked <= 1.5 * (peak_mb + 50) * 1e6 + 2**30, (model, asked / 1e6)  # and not far above
    weights, family = fleet.weights_bytes(job("regnetx_002")), fleet.model_family(job("regnetx_002"))
    assert family == "RegNet" and fleet.export_memory(job("regnetx_002"), 1 << 50, {}) == \
        int(fleet.BASE_MEMORY + fleet.DEFAULT_COPIES * weights)  # a family not measured: the most copies
    assert fleet.export_memory(job("vit_huge_patch14_224"), 16 * 2**30, {}) == 16 * 2**30  # the largest node's


def test_a_larger_request_is_twice_the_last_at_most_the_largest_node():
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from autotimm_deploy.recipes import fleet

    oom, gib = ray.exceptions.OutOfMemoryError(RAY_OOM), 2**30
    assert fleet.larger_request(3 * gib, oom, 64 * gib) == 6 * gib
    assert fleet.larger_request(3 * gib, oom, 5 * gib) == 5 * gib  # capped
    assert fleet.larger_request(5 * gib, oom, 5 * gib) is None  # nothing larger to ask for: fail now
    assert fleet.larger_request(None, oom, 64 * gib) == int(2 * 21.5e9)  # asked for none: twice what it used
    assert fleet.larger_request(None, ray.exceptions.WorkerCrashedError(), 64 * gib) is None


@pytest.fixture
def local_ray():
    """`fleet.connect("local")` in this process, shut down after (the other fleet tests start theirs)."""
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    assert not ray.is_initialized()
    yield ray
    ray.shutdown()


def test_an_export_ray_stops_for_memory_is_retried_once_with_twice_the_memory(local_ray, tmp_path, monkeypatch,
                                                                              capsys):
    """Each cell's task is a fake that records the memory Ray gave it and is stopped for memory
    (test_resnet by Ray's memory monitor, test_vit by the kernel: its worker died): tried twice,
    the second time asking for twice the memory, then failed in one line."""
    from autotimm_deploy.recipes import fleet

    ray, tries = local_ray, tmp_path / "tries.jsonl"

    def fake_export_task(job):
        with open(tries, "a") as f:
            f.write(json.dumps({"model": job.spec.model,
                                "memory": ray.get_runtime_context().get_assigned_resources().get("memory")}) + "\n")
        raise (ray.exceptions.OutOfMemoryError(RAY_OOM) if job.spec.model == "test_resnet"
               else ray.exceptions.WorkerCrashedError())

    handlers = {sig: signal.getsignal(sig) for sig in core_cli.ENDING}
    monkeypatch.delenv("RAY_task_oom_retries", raising=False)
    monkeypatch.setattr(fleet, "_export_task", fake_export_task)
    r = load_recipe(_recipe(tmp_path, ["test_resnet", "test_vit"], "[onnx]"), tmp_path / "out")
    rows = fleet.run_exports(r, "local")
    assert {sig: signal.getsignal(sig) for sig in core_cli.ENDING} == handlers  # Ray took none of them
    assert "RAY_task_oom_retries" not in os.environ
    asked = {}
    for line in tries.read_text().splitlines():
        t = json.loads(line)
        asked.setdefault(t["model"], []).append(t["memory"])
    for row in rows:
        first, second = asked[row["model"]]
        assert second == pytest.approx(2 * first, abs=1), asked  # one retry, twice the memory
        assert row["status"] == JobStatus.FAILED and "\n" not in row["error"], row
        assert f"exporting {row['model']} (onnx)" in row["error"]
        assert f"after asking for {first / 2**30:.1f} then {second / 2**30:.1f} GiB" in row["error"]
    assert rows[0]["error"].startswith("out of memory: exporting test_resnet (onnx) needs more than ")
    # what Ray's nodes report to the driver (a page for an out-of-memory kill) is not printed
    ray._private.worker.print_to_stdstream({"lines": ["(raylet) a page"], "pid": "raylet", "is_err": False},
                                           ignore_prefix=False)
    assert "a page" not in capsys.readouterr().out
