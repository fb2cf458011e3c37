"""The benchmark page (``--report benchmark``): the tables of AutoTimm's benchmark page, which this
project grew from, regenerated from a recipe's results, for each device and runtime
present. Markdown plus PNG charts. It renders plain records (`autotimm_deploy.recipes.benchmark`
collects them from a recipe's manifests and result files).

Tables: backbone comparison (parameters, size, batch-1 ms per runtime), batch inference speedup,
inference speed by device, memory by backbone and task, detection and segmentation speed, and the
artifacts with their parity. Parameters come from the export manifests (counted on the built model),
``Size (MB)`` is the fp32 weights in MiB as on AutoTimm's page (parameters x 4 bytes). Where the
recipe carries AutoTimm's own numbers (``reference:``, measured there on an NVIDIA V100), they are
shown in columns labelled *AutoTimm V100*.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from autotimm_deploy.exporter.core.files import atomic_write_text
from autotimm_deploy.profiler.report.plot import (
    FONT,
    log_ticks,
    plain_linear_axis,
    plain_log_axis,
    pyplot,
    save_png,
    short_label,
)


@dataclass
class PageData:
    """What the page shows: one record per profiled (model, task, runtime, device), the exported
    artifacts, the environment each device was measured in, AutoTimm's published numbers per model."""

    name: str
    description: str
    batch_sizes: list[int]
    records: list[dict] = field(default_factory=list)
    artifacts: list[dict] = field(default_factory=list)
    environments: dict[str, dict] = field(default_factory=dict)  # device -> where its timings ran
    references: dict[str, dict] = field(default_factory=dict)


def _machine(env: dict) -> str:
    gpu = f"; GPU {env['gpu']['name']}" if (env.get("gpu") or {}).get("name") else ""
    return f"{env['cpu']}, {env['cores']} cores, {env['threads']} threads{gpu}"


def _measured_on(environments: dict[str, dict]) -> list[str]:
    """One line when every device's timings ran on one kind of machine; else one per device (a fleet)."""
    if not environments:
        return []
    where = {}
    for device, env in sorted(environments.items()):
        packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
        where[device] = _machine(env) + "." + (f" {packages}." if packages else "")
    if len(set(where.values())) == 1:
        return [f"Measured on {next(iter(where.values()))}", ""]
    return ["Measured on:", ""] + [f"- `{d}`: {w}" for d, w in where.items()] + [""]


def _m(v) -> str:
    return "-" if v is None else f"{v / 1e6:.1f}M"


def _f(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out + [""]


def render(data: PageData) -> str:
    recs = data.records
    lines = [f"# Benchmarks: recipe `{data.name}`", ""]
    if data.description:
        lines += [data.description, ""]
    lines += _measured_on(data.environments)
    lines += ["Latency is the median of the shared harness (warm-up, then sampling until the median's 95 % CI is "
              "within ±2 % or the time budget ends); batch-1 unless stated. Parameters are counted on the built "
              "model; Size (MB) is the fp32 weights (parameters × 4 bytes, MiB) as on AutoTimm's benchmark page. "
              "Columns marked *AutoTimm V100* are that page's own numbers (measured on an NVIDIA V100), shown for "
              "reference only.", ""]
    devices = sorted({r["device"] for r in recs})
    for device in devices:
        mine = [r for r in recs if r["device"] == device]
        lines += _backbones(mine, device, data.references)
        lines += _batch(mine, device, data.batch_sizes)
        lines += _tasks(mine, device)
    if len(devices) > 1:
        lines += _by_device(recs, devices)
    lines += _memory(recs)
    lines += _artifacts(data.artifacts)
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
        header += [f"{REFERENCE} Parameters", f"{REFERENCE} Size (MB)", f"{REFERENCE} Inference (ms)"]
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
    if any(_failed(r) for r in cls):
        lines += [f"{FAILED_MARK} the artifact failed its parity gate (see Artifacts): its speed is not a usable result.", ""]
    scored = next((r["accuracy"] for r in cls if r.get("accuracy")), None)
    if scored:
        lines += [f"In brackets: {scored['metric']} (%) on the labelled data `{scored['data']}` (`--eval`), eager "
                  "and each artifact scored on the same pictures.", ""]
    return lines


FAILED_MARK = "†"
REFERENCE = "*AutoTimm V100*"  # the label of the columns holding AutoTimm's published numbers


def _failed(r) -> bool:
    """The record's artifact failed its parity gate."""
    return r["parity"] == "fail"


def _speedup(r) -> float:
    """Throughput at the largest batch that ran over batch 1."""
    return r["ips"][max(r["ips"])] / r["ips"][1]


def _mark(r) -> str:
    """`` †`` after a value whose artifact failed its parity gate, else nothing."""
    return f" {FAILED_MARK}" if _failed(r) else ""


def _ms_cell(r) -> str:
    if r is None or r["ms"].get(1) is None:
        return "-"
    acc = (r.get("accuracy") or {}).get("value")
    return f"{r['ms'][1]:.2f}" + (f" ({acc:.2f})" if acc is not None else "") + _mark(r)


def _batch(recs, device, batches) -> list[str]:
    shown = sorted(batches)
    if len(shown) < 2:
        return []
    rows = []
    for r in recs:
        if r["task_kind"] != "classification" or 1 not in r["ips"]:
            continue
        rows.append([f"`{r['model']}`", r["runtime"] + _mark(r)]
                    + [f"{r['ms'][b]:.2f} ms" if b in r["ms"] else "-" for b in shown]
                    + [f"{_speedup(r):.1f}x"])
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
    rows = [[f"`{a['model']}`", a["task"], a["format"] + (f" (built on {a['device']})" if a.get("device") else ""),
             a["precision"], f"{a['mb']:.1f}", a["parity"]] for a in arts]
    header = ["Model", "Task", "Format", "Precision", "File MB", "Parity"]
    if any(a.get("accuracy") for a in arts):
        header.append("Accuracy (vs eager)")
        for row, a in zip(rows, arts):
            acc = a.get("accuracy")
            row.append("-" if not acc or acc["value"] is None else
                       f"{acc['metric']} {acc['value']:.2f} ({-acc['drop']:+.2f})"
                       + (f", {acc['verdict']}" if acc["verdict"] else ""))
    return ["## Artifacts", ""] + _table(header, rows)


@dataclass
class _Look:
    """What both charts share: the machine in the title, the runtimes in page order with a colour
    each, a marker per device, and how a (runtime, device) series is named."""

    machine: str
    order: list[str]
    colors: tuple
    color: dict[str, tuple]
    markers: dict[str, str]
    multi_device: bool

    @classmethod
    def of(cls, data: PageData, colors: tuple) -> _Look:
        machines = {(e.get("cpu") or "") + (f", GPU {e['gpu']['name']}" if (e.get("gpu") or {}).get("name") else "")
                    for e in data.environments.values()}
        machine = machines.pop() if len(machines) == 1 else ("several machines" if machines else "")
        order = _runtimes(data.records)
        devices = sorted({r["device"] for r in data.records})
        return cls(machine, order, colors, {rt: colors[i % len(colors)] for i, rt in enumerate(order)},
                   dict(zip(devices, itertools.cycle("osD^v<>"))), len(devices) > 1)

    def series(self, r) -> str:
        return r["runtime"] + (f" ({r['device']})" if self.multi_device else "")

    def title(self, what: str) -> str:
        return what + (f": {self.machine}" if self.machine else "")


def plots(data: PageData, folder: Path) -> list[Path]:
    """``params_vs_latency.png`` (batch-1 latency against model size per device and runtime) and
    ``batch_speedup.png`` (throughput at the largest batch over batch 1, grouped by model); returns the
    paths written, in that order. Axes carry plain numbers; each model is named once per chart."""
    plt = pyplot()
    look = _Look.of(data, plt.get_cmap("tab10").colors)
    written = []
    recs = [r for r in data.records if r["params"] and r["ms"].get(1)]
    if recs:
        written.append(folder / "params_vs_latency.png")
        save_png(_latency_chart(plt, recs, look), written[-1])
    sp = [r for r in data.records if 1 in r["ips"] and len(r["ips"]) > 1]
    if sp:
        written.append(folder / "batch_speedup.png")
        save_png(_speedup_chart(plt, sp, look), written[-1])
    return written


# -- params_vs_latency.png ---------------------------------------------------------------------------

def _latency_chart(plt, recs: list[dict], look: _Look):
    """Batch-1 latency against parameters, both on log axes: a point per record, a thin line and a
    name per model, the names kept inside the axes and apart."""
    fig, ax = plt.subplots(figsize=(10, 5.6), layout="constrained")
    for key in sorted({(r["device"], r["runtime"]) for r in recs}, key=lambda k: (k[0], look.order.index(k[1]))):
        pts = [r for r in recs if (r["device"], r["runtime"]) == key]
        ax.scatter([r["params"] / 1e6 for r in pts], [r["ms"][1] for r in pts], s=42, zorder=3,
                   color=look.color[key[1]], marker=look.markers[key[0]], edgecolors="white", linewidths=0.6,
                   label=look.series(pts[0]))
    labels = _model_names(ax, recs)
    _log_axes(ax, [r["params"] / 1e6 for r in recs], [r["ms"][1] for r in recs])
    _names_inside(ax, labels)
    _names_apart(fig, labels)
    ax.set_xlabel("parameters (millions)", fontsize=FONT + 1)
    ax.set_ylabel("batch-1 median latency (ms)", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=FONT, title="runtime", title_fontsize=FONT, alignment="left", frameon=False,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(look.title("batch-1 latency vs model size"), fontsize=FONT + 2)
    return fig


def _model_names(ax, recs: list[dict]) -> list:
    """One thin line through each model's points and its name at the slowest one; returns the names."""
    labels = []
    for model in dict.fromkeys(r["model"] for r in recs):
        mine = sorted(((r["params"] / 1e6, r["ms"][1]) for r in recs if r["model"] == model), key=lambda p: p[1])
        if len(mine) > 1:
            ax.plot([p[0] for p in mine], [p[1] for p in mine], color="0.6", lw=0.8, zorder=2)
        labels.append(ax.annotate(short_label(model, 28), mine[-1], xytext=(5, 5), textcoords="offset points",
                                  fontsize=FONT - 0.5, color="0.15", zorder=2.5,
                                  bbox={"fc": "white", "ec": "none", "pad": 0.5, "alpha": 0.75}))
    return labels


def _log_axes(ax, xs: list[float], ys: list[float]) -> None:
    """Both axes log with plain ticks, padded around the values (more room above and to the right,
    for the names)."""
    for which, lo, hi in (("x", min(xs), max(xs)), ("y", min(ys), max(ys))):
        pad = max(hi / lo, 1.5) ** 0.12
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        (ax.set_xlim if which == "x" else ax.set_ylim)(lo / pad, hi * pad * (1.15 if which == "y" else 1.25))
        plain_log_axis(ax.xaxis if which == "x" else ax.yaxis, log_ticks(lo / pad, hi * pad))


def _names_inside(ax, labels: list) -> None:
    """Names of points in the right quarter go to their left, inside the axes."""
    x0, x1 = (math.log(v) for v in ax.get_xlim())
    for ann in labels:
        if (math.log(ann.xy[0]) - x0) / (x1 - x0) > 0.75:
            ann.set_horizontalalignment("right")
            ann.xyann = (-5, 5)


def _names_apart(fig, labels: list) -> None:
    """Lift each name, lowest first, above any name already placed that it would overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    for ann in sorted(labels, key=lambda a: (a.xy[1], a.xy[0])):
        for _ in range(12):
            box = ann.get_window_extent(renderer)
            hit = next((b for b in placed if box.overlaps(b)), None)
            if hit is None:
                break
            dx, dy = ann.xyann
            ann.xyann = (dx, dy + (hit.y1 - box.y0 + 1) * 72 / fig.dpi)
        placed.append(ann.get_window_extent(renderer))


# -- batch_speedup.png -------------------------------------------------------------------------------

def _speedup_chart(plt, sp: list[dict], look: _Look):
    """Bars of throughput at the largest batch over batch 1: a group per model (and task, where a
    model has several), a bar per runtime (and device), labelled with the value."""
    top = max(max(r["ips"]) for r in sp)
    tasks = defaultdict(set)
    for r in sp:
        tasks[r["model"]].add(r["task"])
    group_of = {id(r): r["model"] + (f"\n{r['task']}" if len(tasks[r["model"]]) > 1 else "") for r in sp}
    groups = list(dict.fromkeys(group_of[id(r)] for r in sp))
    names = list(dict.fromkeys(look.series(r) for r in sorted(sp, key=lambda r: (look.order.index(r["runtime"]),
                                                                                  r["device"]))))
    width = 0.8 / len(names)
    fig_w = min(22.0, max(7.5, 1.5 + 0.34 * len(sp) + 0.3 * len(groups)))
    fig, ax = plt.subplots(figsize=(fig_w, 5.2), layout="constrained")
    group_in = (fig_w - 1.0) / len(groups)  # inches per model group, roughly
    crowded = group_in * width < 0.3  # value labels wider than their bars: turn them
    failed = False
    for j, name in enumerate(names):
        mine = [(groups.index(group_of[id(r)]), r) for r in sp if look.series(r) == name]
        _bars(ax, mine, j, width, name, look.colors[j % len(look.colors)], top, crowded)
        failed |= any(_failed(r) for _, r in mine)
    _speedup_axes(ax, sp, groups, group_in, top, crowded)
    ax.legend(fontsize=FONT, ncol=min(len(names), 5), frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0))
    fig.suptitle(look.title("batch inference speedup"), fontsize=FONT + 2)
    fig.supxlabel(_speedup_note(sp, top, failed), fontsize=FONT - 1, color="0.35")
    return fig


def _bars(ax, mine: list, j: int, width: float, name: str, color, top: int, crowded: bool) -> None:
    """Series ``j``'s bars, one in each of its groups (``mine``: [(group index, record)]), with their
    values; ``@N`` where batch ``top`` did not run, hatched and marked where parity failed."""
    vals = [_speedup(r) for _, r in mine]
    any_failed = any(_failed(r) for _, r in mine)
    bars = ax.bar([g - 0.4 + width * (j + 0.5) for g, _ in mine], vals, width * 0.92, label=name, color=color,
                  zorder=3, hatch=[("//" if _failed(r) else None) for _, r in mine] if any_failed else None)
    sep = " " if crowded else "\n"
    texts = [f"{v:.1f}x" + (f"{sep}@{max(r['ips'])}" if max(r["ips"]) != top else "")
             + (f"{sep}{FAILED_MARK}" if _failed(r) else "") for v, (_, r) in zip(vals, mine)]
    ax.bar_label(bars, texts, padding=2, fontsize=FONT - (1.5 if crowded else 0.5), rotation=90 if crowded else 0)


def _speedup_axes(ax, sp: list[dict], groups: list[str], group_in: float, top: int, crowded: bool) -> None:
    """Room above the tallest bar, a dashed 1.0x line, the model names under their groups (turned
    when they would not fit), the labels and grid."""
    ax.set_ylim(0, max(1.2, max(_speedup(r) for r in sp)) * (1.3 if crowded else 1.15))
    plain_linear_axis(ax.yaxis, suffix="x")
    ax.axhline(1.0, color="0.3", lw=1, ls="--", zorder=2)
    tick_names = [short_label(g, 24) for g in groups]
    turn_ticks = max(len(line) for t in tick_names for line in t.split("\n")) * 0.075 > group_in * 0.95
    ax.set_xticks(range(len(groups)), tick_names, rotation=30 if turn_ticks else 0,
                  ha="right" if turn_ticks else "center")
    ax.tick_params(labelsize=FONT)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(f"throughput at batch {top} / batch 1", fontsize=FONT + 1)
    ax.grid(True, axis="y", alpha=0.3, zorder=0)


def _speedup_note(sp: list[dict], top: int, failed: bool) -> str:
    """The line under the chart: what the bars are, what ``@N`` and the hatching mean."""
    note = f"throughput at batch {top} over batch 1"
    if any(max(r["ips"]) != top for r in sp):
        note += f"; @N: batch {top} did not run, batch N was the largest that did"
    if failed:
        note += f"; hatched {FAILED_MARK}: failed its parity gate"
    return note


def write(data: PageData, folder: Path) -> tuple[Path, list[Path]]:
    """Render ``<folder>/benchmarks.md`` and its PNGs; returns (markdown path, PNG paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    pngs = plots(data, folder)
    text = render(data)
    if pngs:
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    md = folder / "benchmarks.md"
    atomic_write_text(md, text)
    return md, pngs
