"""JSON: the report as it is (schema_version, raw floats)."""

from __future__ import annotations

import json
import sys

from autotimm_deploy.exporter.core.files import atomic_write_text


def write(report: dict, path: str) -> None:
    text = json.dumps(report, indent=2, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        from pathlib import Path

        atomic_write_text(Path(path), text)
