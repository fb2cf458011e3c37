"""No dead code (issue #28): vulture finds nothing unused in exporter/, profiler/ or recipes/, apart
from the names tests/vulture_whitelist.py lists with the reason each is used; and the check does
catch a function nobody calls."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("exporter", "profiler", "recipes")
WHITELIST = "tests/vulture_whitelist.py"
MIN_CONFIDENCE = "60"
# classes and builders registered by these are reached through their registry, by name
REGISTRIES = "@register_format,@register_runtime,@register_metric,@register_task"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vulture") is None,
                                reason="vulture is not installed (it is part of the [dev] extra: pip install -e '.[dev]')")


def vulture(root: Path = ROOT) -> subprocess.CompletedProcess:
    """vulture over the packages and the whitelist, from ``root`` (paths in its report are relative)."""
    return subprocess.run([sys.executable, "-m", "vulture", *PACKAGES, WHITELIST, "--min-confidence", MIN_CONFIDENCE,
                           "--ignore-decorators", REGISTRIES], capture_output=True, text=True, cwd=root, timeout=300)


def test_no_dead_code():
    r = vulture()
    findings = (r.stdout + r.stderr).strip()
    assert r.returncode == 0 and not findings, (
        "vulture found unused code: remove it, or, where it is used by a name vulture cannot follow "
        f"(a registry, a library hook, a serialized field), add it to {WHITELIST} with the reason:\n{findings}")


def test_the_check_finds_an_unused_function(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.yaml"))
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / WHITELIST, tmp_path / WHITELIST)
    (tmp_path / "profiler" / "measure" / "forgotten.py").write_text("def never_called_anywhere():\n    return 1\n")
    r = vulture(tmp_path)
    assert "profiler/measure/forgotten.py:1: unused function 'never_called_anywhere'" in r.stdout, r.stdout
