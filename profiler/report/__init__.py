"""Report renderers: one module per output format, all reading the same result schema
(`profiler.api.profile` output: raw floats, times in ms). Registered by name."""

from __future__ import annotations

from typing import Callable

from profiler.report import csv_out, json_out, markdown, plot, table

RENDERERS: dict[str, Callable[[dict, str], None]] = {
    "json": json_out.write,
    "csv": csv_out.write,
    "markdown": markdown.write,
    "plot": plot.write,
}


def rows(report: dict) -> list[dict]:
    """One flat row per run and batch size: what the table, CSV and Markdown show."""
    return table.rows(report)


__all__ = ["RENDERERS", "rows", "table"]
