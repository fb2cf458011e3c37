"""Wall time of a recipe's export phase: the local runner vs the same recipe on a Ray cluster
simulated on this machine (``ray.cluster_utils.Cluster``: a head that runs nothing and N worker
nodes with the CPUs given). Run by hand, alone on the machine, one mode per call:

    .venv/bin/python benchmarks/fleet_exports.py --mode local   --out /tmp/fleet_bench
    .venv/bin/python benchmarks/fleet_exports.py --mode cluster --nodes 1,1 --out /tmp/fleet_bench
    .venv/bin/python benchmarks/fleet_exports.py --mode cluster --nodes 1,1 --memory 10,5 --tag cluster-mem

Each run exports into its own folder (nothing is up to date at the start) and writes
``<out>/<tag>.json``: the wall time, the sum of the cells' own export seconds, and per cell its
node, start and end; ``--summary`` prints the Markdown table of every mode run so far. A simulated
cluster cannot add cores: on this 2-core machine it shows the fleet's overhead and its
parallelism over the same cores, not a speedup from more machines.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from autotimm_deploy.recipes.schema import load_recipe

MARK = ".autotimm-benchmark"  # written into every folder this script makes, the only folders it deletes


def fresh(folder: Path) -> Path:
    """``folder`` emptied for a new run: only when this script made it (its mark) or it is empty."""
    folder = folder.resolve()
    if folder.exists() and not (folder / MARK).exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} holds files this script did not write; give another --out")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / MARK).touch()
    return folder


def run(mode: str, recipe_path: str, out: Path, nodes: list[int], memory: list[float] | None, tag: str) -> dict:
    recipe = load_recipe(recipe_path, fresh(out / tag))
    cluster = None
    if mode == "cluster":
        from ray.cluster_utils import Cluster

        store = 2 * 2**30  # per node (the test default of 150 MiB would spill every large model to disk)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": store})
        for n, cpus in enumerate(nodes):
            mem = {"memory": int(memory[n] * 2**30)} if memory else {}  # else each node claims the machine's
            cluster.add_node(num_cpus=cpus, resources={f"device:cpu@n{n}": 1}, object_store_memory=store, **mem)
        from autotimm_deploy.recipes import fleet

        start = time.monotonic()
        rows = fleet.run_exports(recipe, cluster.address)
    else:
        from autotimm_deploy.recipes import runner

        start = time.monotonic()
        rows = runner.run_exports(recipe)
    wall = time.monotonic() - start
    if cluster is not None:
        import ray

        ray.shutdown()
        cluster.shutdown()
    cells = [{k: r.get(k) for k in ("artifact", "status", "seconds", "node", "started", "ended", "error")}
             for r in rows]
    size = sum(f.stat().st_size for f in recipe.artifacts_dir.iterdir() if f.is_file())
    result = {"mode": mode, "recipe": recipe_path, "nodes": nodes if cluster else None,
              "memory_gib": memory if cluster else None, "wall_s": round(wall, 1),
              "export_s": round(sum(c["seconds"] or 0 for c in cells), 1), "cells": len(cells),
              "exported": sum(c["status"] == "exported" for c in cells), "bytes": size, "rows": cells}
    (out / f"{tag}.json").write_text(json.dumps(result, indent=1))
    shutil.rmtree(recipe.artifacts_dir, ignore_errors=True)  # inside fresh(out / tag); the next run needs the disk
    return result


def summary(out: Path) -> None:
    """The table; for a cluster run also the span of its tasks (first start to last end: what is
    not in it is the driver's start-up and its tail) and the longest task (its floor at any size)."""
    print("| run | nodes (CPUs) | cells exported | wall s | sum of cells' export s | tasks' span s | longest task s "
          "| busiest node's cells |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for f in sorted(out.glob("*.json")):
        r = json.loads(f.read_text())
        per_node: dict[str, int] = {}
        for c in r["rows"]:
            per_node[c.get("node") or "here"] = per_node.get(c.get("node") or "here", 0) + 1
        nodes = ", ".join(map(str, r["nodes"])) if r["nodes"] else "this machine"
        timed = [c for c in r["rows"] if c.get("started")]
        span = f"{max(c['ended'] for c in timed) - min(c['started'] for c in timed):.0f}" if timed else "-"
        longest = f"{max(c['ended'] - c['started'] for c in timed):.0f}" if timed else \
            f"{max(c['seconds'] or 0 for c in r['rows']):.0f} (export only)"
        if r.get("memory_gib"):
            nodes += " (" + ", ".join(f"{m:g}" for m in r["memory_gib"]) + " GiB)"
        print(f"| {f.stem} | {nodes} | {r['exported']}/{r['cells']} | {r['wall_s']:.0f} | {r['export_s']:.0f} | "
              f"{span} | {longest} | {max(per_node.values())} of {r['cells']} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("local", "cluster"))
    ap.add_argument("--recipe", default="recipes/backbones.yaml")
    ap.add_argument("--nodes", default="1,1", help="CPUs of each simulated worker node")
    ap.add_argument("--memory", help="memory (GiB) each simulated node declares, e.g. 10,5 (default: the machine's)")
    ap.add_argument("--tag", help="the run's name in the table (default: the mode)")
    ap.add_argument("--out", default="/tmp/fleet_bench")
    ap.add_argument("--summary", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.mode:
        memory = [float(m) for m in a.memory.split(",")] if a.memory else None
        r = run(a.mode, a.recipe, out, [int(n) for n in a.nodes.split(",")], memory, a.tag or a.mode)
        print(f"{a.mode}: {r['exported']}/{r['cells']} exported in {r['wall_s']:.0f} s "
              f"(cells' own export seconds {r['export_s']:.0f})", flush=True)
    if a.summary or not a.mode:
        summary(out)


if __name__ == "__main__":
    main()
