"""One descriptor per format and per runtime: what a format or runtime declares in its own module is
what the CLI, --list-formats, the pipeline, the profiler's artifact detection and the docs read."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import FORMATS
from autotimm_deploy.profiler.runtimes import RUNTIMES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
registry = importlib.import_module("registry")  # docs/registry.py


def export_help() -> str:
    from autotimm_deploy.exporter.cli import build_parser

    return build_parser().format_help()


def profile_help() -> str:
    from autotimm_deploy.profiler.cli import build_parser

    return build_parser().format_help()


def missing(names, text: str) -> list[str]:
    return [n for n in names if f"`{n}`" not in text and f" {n}," not in text and f" {n})" not in text]


def not_documented() -> dict[str, list[str]]:
    """Registered formats and runtimes a page or a --help text does not name."""
    arch, formats = (ROOT / "docs/architecture.md").read_text(), (ROOT / "docs/formats.md").read_text()
    out = {
        "docs/architecture.md formats": missing(FORMATS, arch),
        "docs/architecture.md runtimes": missing(RUNTIMES, arch),
        "docs/formats.md": missing(FORMATS, formats),
        "autotimm-export --help": [n for n in FORMATS if n not in export_help()],
        "autotimm-profile --help": [n for n in RUNTIMES if n not in profile_help()],
    }
    return {k: v for k, v in out.items() if v}


def test_docs_name_every_format_and_runtime():
    assert not_documented() == {}
    assert registry.main(["--check"]) == 0, "a docs page is behind the registries: run python docs/registry.py"


@pytest.fixture
def toy():
    module = importlib.reload(importlib.import_module("toy_format"))
    yield module
    module.unregister()


def test_toy_format_in_one_file_is_seen_everywhere(toy, tmp_path, capsys):
    from autotimm_deploy.exporter.cli import _format_options, build_parser, list_formats
    from autotimm_deploy.exporter.pipeline import export
    from autotimm_deploy.profiler.artifact import detect, open_artifact
    from autotimm_deploy.profiler.targets import resolve

    # the CLI: --format help, its own --help group, its option refused without it, --list-formats
    text = export_help()
    assert "toy" in text and "toy (--format toy)" in text and "--toy-flavour" in text
    args = build_parser().parse_args(["test_resnet", "--toy-flavour", "salty"])
    with pytest.raises(UserError, match="--toy-flavour only applies to --format toy"):
        _format_options(args, ["onnx"])
    assert _format_options(args, ["toy"])["toy"].flavour == "salty"
    list_formats(as_json=True)
    row = next(r for r in json.loads(capsys.readouterr().out) if r["format"] == "toy")
    assert row["runtime"] == "toy-runtime" and row["companions"] == [".toy.txt"] and row["options"] == ["--toy-flavour"]

    # the pipeline: exported, reloaded through its runtime for parity, companion installed
    options = _format_options(args, ["toy"])
    from autotimm_deploy.exporter.formats import ExportOptions

    (r,) = export(ModelSpec("test_resnet", num_classes=5, img_size=(64, 64)), ["toy"], tmp_path,
                  ExportOptions(format_options=options))
    assert r.ok and r.artifact.name.endswith(".toy") and r.parity.passed, r.error or r.parity.failures
    assert (tmp_path / (r.artifact.name + ".txt")).read_text() == "salty"

    # the profiler: detected by its ending without a manifest, its magic and companion checked
    Path(str(r.artifact) + ".json").unlink()
    assert detect(r.artifact) == ("toy", None)
    assert resolve(str(r.artifact)).runtime == "toy-runtime"
    bad = tmp_path / "bad.toy"
    bad.write_bytes(b"nothing")
    with pytest.raises(UserError, match="not a toy artifact"):
        detect(bad)
    (tmp_path / (r.artifact.name + ".txt")).unlink()
    with pytest.raises(UserError, match="needs its .txt beside the .toy"):
        detect(r.artifact)
    with pytest.raises(UserError, match="no manifest and no --runtime"):
        open_artifact(r.artifact)

    # the docs check: the toy format and runtime are registered and not documented
    gaps = not_documented()
    assert gaps["docs/formats.md"] == ["toy"] and gaps["docs/architecture.md runtimes"] == ["toy-runtime"]
    assert registry.main(["--check"]) == 1
