"""How the CLIs show a recipe run: a progress callback for the runners and one table row per job."""

from __future__ import annotations

from autotimm_deploy.recipes.jobs import JobStatus
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def recipe_progress(bar, task):
    """A progress callback ``(text, done, total)`` for the recipe runners."""
    def update(text: str, done: int, total: int) -> None:
        bar.update(task, description=text, completed=done, total=total)

    return update


def print_recipe_rows(title: str, rows: list[dict], columns: tuple[str, ...], out: Console) -> None:
    """One line per recipe job: its columns, status, and why (reason / error / parity)."""
    t = Table(title=title)
    for c in (*columns, "status", "note"):
        t.add_column(c)
    for r in rows:
        status = JobStatus(r["status"])
        note = r.get("reason") or r.get("error") or (f"parity {r['parity']}" if r.get("parity") else "")
        t.add_row(*(escape(str(r.get(c) or "")) for c in columns), f"[{status.style}]{status}[/]",
                  escape(str(note))[:120])
    out.print(t)
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
    out.print(", ".join(f"{n} {s}" for s, n in counts.items()))


def any_failed(rows: list[dict]) -> bool:
    return any(r["status"] == JobStatus.FAILED for r in rows)
