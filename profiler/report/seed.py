"""``--report seed``: the seed benchmark page's tables, regenerated from a recipe's results on this
machine, for each device and runtime present. Markdown plus two PNG charts.

Tables: backbone comparison (parameters, size, batch-1 ms per runtime), batch inference speedup,
inference speed by device, memory by backbone and task, detection and segmentation speed, and the
artifacts with their parity. Parameters come from the export manifests (counted on the built model),
``Size (MB)`` is the fp32 weights in MiB as on the seed page (parameters x 4 bytes). Where the recipe
carries the seed page's own numbers (``reference:``), they are shown in columns labelled as the
V100 page's.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from exporter.manifest import atomic_write_text, load_manifest
from profiler.report.plot import save_png


def collect(recipe) -> dict:
    """Flat records from the recipe's export manifests and profile result files."""
    from profiler.recipe import profile_jobs, result_path

    params, artifacts = {}, []
    for job in recipe.export_jobs():
        if job.skipped or not job.exported:
            continue
        m = load_manifest(job.artifact)
        params[_model_key(job)] = m.model.get("params")
        artifacts.append({"artifact": job.artifact.name, "model": job.model.name, "task": _task_label(job), "format": job.format,
                          "precision": job.precision, "mb": sum(e["bytes"] for e in m.files.values()) / 2**20,
                          "parity": (m.parity or {}).get("verdict", "not checked"), "params": m.model.get("params")})
    verdicts = {a["artifact"]: a["parity"] for a in artifacts}
    records, environment = [], None
    for pj in profile_jobs(recipe):
        path = result_path(recipe, pj)
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        report = data["report"]
        environment = environment or report["environment"]
        run = report["runs"][0]
        points = {p["batch"]: p for p in run["points"] if not p.get("error")}
        mem = run["memory"]
        records.append({
            "model": pj.export.model.name, "task": _task_label(pj.export), "device": pj.device,
            "runtime": "eager" if pj.kind == "eager" else f"{pj.runtime} {pj.export.precision}",
            "params": params.get(_model_key(pj.export)), "img_size": pj.export.spec.img_size,
            "ms": {b: p["stats_ms"]["p50"] for b, p in points.items()},
            "ips": {b: p["images_per_s"] for b, p in points.items()},
            "peak_mb": _inference_memory(mem),
            "reference": pj.export.model.reference, "task_kind": pj.export.task.task,
            "parity": "pass" if pj.kind == "eager" else verdicts.get(pj.export.artifact.name),
        })
    return {"records": records, "artifacts": artifacts, "environment": environment,
            "references": {m.name: m.reference for m in recipe.models if m.reference}}


def _inference_memory(mem: dict) -> float | None:
    """What inference cost: torch's peak allocation on a GPU; on the CPU the process's peak resident
    memory above what it held before loading the model (the Python runtime and its imports)."""
    if mem.get("peak_gpu_mb") is not None:
        return mem["peak_gpu_mb"]
    if mem.get("peak_rss_mb") is None:
        return None
    return max(0.0, mem["peak_rss_mb"] - (mem.get("baseline_rss_mb") or 0.0))


def _model_key(job) -> str:
    return f"{job.model.name}|{_task_label(job)}"


def _task_label(job) -> str:
    t = job.task
    label = t.task if t.task != "semantic-segmentation" else f"segmentation ({t.head.get('head', 'fcn')})"
    return f"{label} [{t.label}]" if t.label else label


def _m(v) -> str:
    return "-" if v is None else f"{v / 1e6:.1f}M"


def _f(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out + [""]


def render(recipe, data: dict) -> str:
    recs, env = data["records"], data["environment"]
    lines = [f"# Benchmarks: recipe `{recipe.name}` on this machine", ""]
    if recipe.description:
        lines += [recipe.description, ""]
    if env:
        gpu = f"; GPU {env['gpu']['name']}" if env.get("gpu") else ""
        pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        lines += [f"Measured on {env['cpu']}, {env['cores']} cores, {env['threads']} threads{gpu}. {pk}.", ""]
    lines += ["Latency is the median of the shared harness (warm-up, then sampling until the median's 95 % CI is "
              "within ±2 % or the time budget ends); batch-1 unless stated. Parameters are counted on the built "
              "model; Size (MB) is the fp32 weights (parameters × 4 bytes, MiB) as on the seed page. Columns marked "
              "*seed V100* are the seed page's own numbers (NVIDIA V100), shown for reference only.", ""]
    devices = sorted({r["device"] for r in recs})
    for device in devices:
        mine = [r for r in recs if r["device"] == device]
        lines += _backbones(mine, device, data["references"])
        lines += _batch(mine, device, recipe.batch_sizes)
        lines += _tasks(mine, device)
    if len(devices) > 1:
        lines += _by_device(recs, devices)
    lines += _memory(recs)
    lines += _artifacts(data["artifacts"])
    return "\n".join(lines)


def _runtimes(recs) -> list[str]:
    names = sorted({r["runtime"] for r in recs})
    return (["eager"] if "eager" in names else []) + [n for n in names if n != "eager"]


def _backbones(recs, device, references) -> list[str]:
    cls = [r for r in recs if r["task_kind"] == "classification"]
    if not cls:
        return []
    runtimes = _runtimes(cls)
    by_model = defaultdict(dict)
    for r in cls:
        by_model[r["model"]][r["runtime"]] = r
    with_ref = any(references.get(m) for m in by_model)
    header = ["Backbone", "Parameters", "Size (MB)"] + [f"{rt} (ms)" for rt in runtimes]
    if with_ref:
        header += ["*seed V100* Parameters", "*seed V100* Size (MB)", "*seed V100* Inference (ms)"]
    rows = []
    for model, by_rt in by_model.items():
        params = next((r["params"] for r in by_rt.values() if r["params"]), None)
        row = [f"`{model}`", _m(params), _f(params * 4 / 2**20 if params else None, ".0f")]
        row += [_ms_cell(by_rt.get(rt)) for rt in runtimes]
        if with_ref:
            ref = references.get(model) or {}
            row += [f"{ref['params_m']}M" if "params_m" in ref else "-", _f(ref.get("size_mb"), "g"),
                    _f(ref.get("v100_ms"), "g")]
        rows.append(row)
    lines = [f"## Backbone comparison ({device}, batch 1)", ""] + _table(header, rows)
    if any(r["parity"] == "fail" for r in cls):
        lines += [f"{FAILED_MARK} the artifact failed its parity gate (see Artifacts): its speed is not a usable result.", ""]
    return lines


FAILED_MARK = "†"


def _ms_cell(r) -> str:
    if r is None or r["ms"].get(1) is None:
        return "-"
    return f"{r['ms'][1]:.2f}" + (f" {FAILED_MARK}" if r["parity"] == "fail" else "")


def _batch(recs, device, batches) -> list[str]:
    shown = sorted(batches)
    if len(shown) < 2:
        return []
    rows = []
    for r in recs:
        if r["task_kind"] != "classification" or 1 not in r["ips"]:
            continue
        top = max(b for b in r["ips"])
        rows.append([f"`{r['model']}`", r["runtime"] + (f" {FAILED_MARK}" if r["parity"] == "fail" else "")] + [f"{r['ms'][b]:.2f} ms" if b in r["ms"] else "-" for b in shown]
                    + [f"{r['ips'][top] / r['ips'][1]:.1f}x"])
    if not rows:
        return []
    header = ["Backbone", "Runtime"] + [f"Batch {b}" for b in shown] + ["Speedup"]
    return ([f"## Batch inference speedup ({device})", "",
             "Time per batch; speedup = images/s at the largest batch / images/s at batch 1.", ""]
            + _table(header, rows))


def _tasks(recs, device) -> list[str]:
    rows = [[f"`{r['model']}`", r["task"], "x".join(map(str, r["img_size"] or ["?"])), r["runtime"],
             _f(r["ms"].get(1)), _f(1000 / r["ms"][1] if r["ms"].get(1) else None, ".1f")]
            for r in recs if r["task_kind"] != "classification"]
    if not rows:
        return []
    return ([f"## Detection and segmentation speed ({device}, batch 1)", ""]
            + _table(["Model", "Task", "Input", "Runtime", "ms", "FPS"], rows))


def _by_device(recs, devices) -> list[str]:
    table = defaultdict(dict)
    for r in recs:
        table[(r["model"], r["task"], r["runtime"])][r["device"]] = r["ms"].get(1)
    rows = [[f"`{m}`", t, rt] + [_f(by.get(d)) for d in devices] for (m, t, rt), by in table.items()]
    return (["## Inference speed by device (batch 1, ms)", ""]
            + _table(["Model", "Task", "Runtime"] + devices, rows))


def _memory(recs) -> list[str]:
    tasks = sorted({r["task"] for r in recs})
    table = defaultdict(dict)
    for r in recs:
        table[(r["model"], r["device"], r["runtime"])][r["task"]] = r["peak_mb"]
    rows = [[f"`{m}`", d, rt] + [_f(by.get(t), ".0f") for t in tasks] for (m, d, rt), by in table.items()]
    if not rows:
        return []
    return (["## Memory by backbone and task (peak MB during inference)", "",
             "Each artifact is profiled in its own process: peak resident memory of that process above what "
             "it held before loading the model (on a GPU, torch's peak allocated memory), over every batch "
             "size profiled.", ""]
            + _table(["Backbone", "Device", "Runtime"] + tasks, rows))


def _artifacts(arts) -> list[str]:
    if not arts:
        return []
    rows = [[f"`{a['model']}`", a["task"], a["format"], a["precision"], f"{a['mb']:.1f}", a["parity"]] for a in arts]
    return ["## Artifacts", ""] + _table(["Model", "Task", "Format", "Precision", "File MB", "Parity"], rows)


def plots(data: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in data["records"] if r["params"] and r["ms"].get(1)]
    written = []
    if recs:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for key in sorted({(r["device"], r["runtime"]) for r in recs}):
            pts = [r for r in recs if (r["device"], r["runtime"]) == key]
            ax.scatter([r["params"] / 1e6 for r in pts], [r["ms"][1] for r in pts], label=" ".join(key))
            for r in pts:
                ax.annotate(r["model"], (r["params"] / 1e6, r["ms"][1]), fontsize=6, alpha=0.7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel("batch-1 median latency (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(folder / "params_vs_latency.png")
        save_png(fig, written[-1])
    sp = [(f"{r['model']}\n{r['runtime']}", r["ips"][max(r["ips"])] / r["ips"][1], max(r["ips"]))
          for r in data["records"] if 1 in r["ips"] and len(r["ips"]) > 1]
    if sp:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(sp)), 4.5))
        ax.bar(range(len(sp)), [s for _, s, _ in sp])
        ax.set_xticks(range(len(sp)), [n for n, _, _ in sp], rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("throughput speedup vs batch 1")
        ax.set_title(f"batch {max(b for *_, b in sp)} vs batch 1", fontsize=9)
        ax.axhline(1.0, color="gray", lw=0.8)
        fig.tight_layout()
        written.append(folder / "batch_speedup.png")
        save_png(fig, written[-1])
    return written


def write(recipe, folder: Path | None = None) -> tuple[Path, list[Path], dict]:
    """Render ``<root>/report/seed.md`` and its PNGs; returns (markdown path, PNG paths, data)."""
    folder = Path(folder or recipe.root / "report")
    folder.mkdir(parents=True, exist_ok=True)
    data = collect(recipe)
    pngs = plots(data, folder)
    text = render(recipe, data)
    if pngs:
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    md = folder / "seed.md"
    atomic_write_text(md, text)
    return md, pngs, data
