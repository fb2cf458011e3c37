"""The architecture holds: the import-linter layer contract passes on the code and fails on a
deliberate upward import; the import names cannot be shadowed by a stray module named like a folder
(`profiler.py`, `exporter.py`) in the working folder or on ``sys.path``."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = {"exporter": "exporter", "profiler": "profiler", "recipes": "recipes"}  # import name -> folder


def lint(config: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    return subprocess.run([str(LINT), str(config), "--no-cache"], capture_output=True, text=True,
                          env=env, cwd=config.parent, timeout=300)


def test_layer_contract_is_kept():
    assert LINT.exists(), "import-linter is part of the [dev] extra"
    r = lint(ROOT / "pyproject.toml")
    assert r.returncode == 0, r.stdout[-2000:]
    assert "1 kept, 0 broken" in r.stdout


def test_layer_contract_catches_an_upward_import(tmp_path):
    """A copy of the package where the core imports the command line: the contract must break."""
    pkg = tmp_path / "autotimm_deploy"
    pkg.mkdir()  # a namespace package, as installed
    for name, folder in PACKAGES.items():
        shutil.copytree(ROOT / folder, pkg / name, ignore=shutil.ignore_patterns("__pycache__", "*.yaml"))
    errors = pkg / "exporter" / "core" / "errors.py"
    # inside a function: the copy must still import (grimp sees imports at any depth)
    errors.write_text(errors.read_text() + "\n\ndef upward():\n    from autotimm_deploy.exporter import cli  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    r = lint(tmp_path / "pyproject.toml", pythonpath=str(tmp_path))
    assert r.returncode != 0, r.stdout[-2000:]
    assert "BROKEN" in r.stdout and "autotimm_deploy.exporter.core.errors -> autotimm_deploy.exporter.cli" in \
        r.stdout.replace("\n", " ").replace("  ", " ")


TRAP = "import pathlib, sys; pathlib.Path(__file__).with_suffix('.imported').write_text(' '.join(sys.argv))\n"


@pytest.mark.slow
def test_stray_modules_named_like_our_folders_are_never_imported(tmp_path):
    """onnxruntime's quantization puts onnxruntime/transformers (which has a profiler.py) on sys.path,
    and a user's folder may hold a profiler.py or exporter.py: none of them may be imported, by the
    CLIs, by int8 quantization, or by the profiler's worker process (two targets start one)."""
    import onnxruntime

    transformers = Path(onnxruntime.__file__).parent / "transformers"
    assert (transformers / "profiler.py").exists()
    for name in ("profiler", "exporter"):
        (tmp_path / f"{name}.py").write_text(TRAP)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{tmp_path}{os.pathsep}{transformers}"}

    def run(module: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=600)

    r = run("autotimm_deploy.exporter.cli", "test_resnet", "--img-size", "64", "-f", "onnx", "--int8",
            "--calib-data", "sample-pictures", "--calib-samples", "4", "-o", "out")
    assert r.returncode == 0, r.stderr
    r = run("autotimm_deploy.profiler.cli", "test_resnet", "test_vit", "--img-size", "64", "--iterations", "2",
            "--warmup-time", "0", "--isolate")
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob("*.imported")), [p.read_text() for p in tmp_path.glob("*.imported")]
