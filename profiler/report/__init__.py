"""Report renderers: one module per output format, all reading the same result schema
(`autotimm_deploy.profiler.pipeline.profile` output: raw floats, times in ms). Registered by name."""

from __future__ import annotations

from typing import Callable

from autotimm_deploy.profiler.report import csv_out, json_out, markdown, plot, table

RENDERERS: dict[str, Callable[[dict, str], None]] = {
    "json": json_out.write,
    "csv": csv_out.write,
    "markdown": markdown.write,
    "plot": plot.write,
}

__all__ = ["RENDERERS", "table"]
