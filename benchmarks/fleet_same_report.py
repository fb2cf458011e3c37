"""A recipe through the local runner and through a local Ray (``--ray local``): the same report?
Run by hand, alone on the machine:

    .venv/bin/python benchmarks/fleet_same_report.py [--recipe edge] [--out /tmp/fleet_same]
    .venv/bin/python benchmarks/fleet_same_report.py --compare-only   # again, on the runs already there

Runs ``autotimm-export --recipe`` then ``autotimm-profile --recipe --report benchmark`` both ways
(as a user would, through the CLIs), then compares: every export and timing row's status and
parity verdict, and the benchmark page line by line with its numbers masked (the same tables, rows
and columns). Prints the wall times and the batch-1 milliseconds of both runs side by side.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from fleet_exports import fresh  # this folder's scripts: the same rule for what may be deleted

BIN = Path(sys.executable).parent


def run(out: Path, recipe: str, ray: bool) -> dict[str, float]:
    extra = ["--ray", "local"] if ray else []
    times = {}
    for phase, cmd in (("export", [BIN / "autotimm-export", "--recipe", recipe, "-o", str(out), *extra]),
                       ("profile", [BIN / "autotimm-profile", "--recipe", recipe, "-o", str(out), "--report",
                                    "benchmark", *extra])):
        start = time.monotonic()
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        times[phase] = time.monotonic() - start
        if r.returncode not in (0, 1):  # 1: some cell failed its gate, which the report shows
            raise SystemExit(f"{' '.join(map(str, cmd))} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return times


def rows(root: Path, name: str, keys: tuple[str, ...]) -> list[tuple]:
    data = json.loads((root / "results" / name).read_text())["rows"]
    return [tuple(str(r.get(k)) for k in keys) for r in data]


def masked(page: Path) -> list[str]:
    return [re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", line) for line in page.read_text().splitlines()
            if not line.startswith(("Measured", "Generated"))]


def batch1(root: Path) -> dict[str, float]:
    out = {}
    for f in sorted((root / "results" / "profile").glob("*.json")):
        run = json.loads(f.read_text())["report"]["runs"][0]
        point = next((p for p in run["points"] if p["batch"] == 1 and not p.get("error")), None)
        if point:
            out[f.stem] = point["stats_ms"]["p50"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="edge")
    ap.add_argument("--out", default="/tmp/fleet_same")
    ap.add_argument("--compare-only", action="store_true", help="compare the runs already in --out")
    a = ap.parse_args()
    out = Path(a.out)
    if a.compare_only:
        walls = json.loads((out / "walls.json").read_text())
    else:
        out = fresh(out)
        walls = {"local": run(out / "local", a.recipe, ray=False), "ray": run(out / "ray", a.recipe, ray=True)}
        (out / "walls.json").write_text(json.dumps(walls))
    (name,) = [p.name for p in (out / "local").iterdir()]
    local, ray = out / "local" / name, out / "ray" / name
    same = True
    for results, keys in (("export.json", ("artifact", "status", "parity", "reason")),
                          ("profile.json", ("key", "device", "runtime", "status", "reason"))):
        lr = [tuple(v.replace(str(out / "local"), "OUT") for v in r) for r in rows(local, results, keys)]
        rr = [tuple(v.replace(str(out / "ray"), "OUT") for v in r) for r in rows(ray, results, keys)]
        print(f"{results}: {len(lr)} rows locally, {len(rr)} through Ray: {'identical' if lr == rr else 'DIFFERENT'}")
        same &= lr == rr
        for line in difflib.unified_diff([str(r) for r in lr], [str(r) for r in rr], lineterm="", n=0):
            print("  ", line)
    page_l, page_r = masked(local / "report" / "benchmarks.md"), masked(ray / "report" / "benchmarks.md")
    diff = list(difflib.unified_diff(page_l, page_r, "local", "ray", lineterm="", n=0))
    print(f"benchmarks.md: {len(page_l)} lines, numbers masked: {'identical' if not diff else 'DIFFERENT'}")
    print("\n".join(diff[:40]))
    same &= not diff
    print("\n| phase | local s | --ray local s |\n|---|---:|---:|")
    for phase in ("export", "profile"):
        print(f"| {phase} | {walls['local'][phase]:.0f} | {walls['ray'][phase]:.0f} |")
    b_l, b_r = batch1(local), batch1(ray)
    print("\n| timing (batch 1) | local ms | --ray local ms | ratio |\n|---|---:|---:|---:|")
    for key in b_l:
        if key in b_r:
            print(f"| {key} | {b_l[key]:.2f} | {b_r[key]:.2f} | {b_r[key] / b_l[key]:.2f} |")
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
