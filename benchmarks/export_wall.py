"""Export wall time as a user sees it (issue #31 point 7): whole commands in fresh processes, parity
included, side by side with timmx, interleaved. Run by hand on a quiet machine:

    python -m venv /tmp/timmx-venv   # timmx 0.10.1 beside the same torch/timm/onnx stack, e.g.
    echo $PWD/.venv/lib/python3.11/site-packages > /tmp/timmx-venv/lib/python3.11/site-packages/shared.pth
    /tmp/timmx-venv/bin/pip install --no-deps timmx==0.10.1
    .venv/bin/python benchmarks/export_wall.py --timmx /tmp/timmx-venv/bin/timmx [--before SRC] [--rounds 3]

Each round runs every command once, in an order rotated from round to round:
- timmx's ONNX export (its default: batch fixed to 1; and ``--dynamic-batch --batch-size 2``, the
  dynamic batch ours has by default), with its own check: one ONNX Runtime run against PyTorch;
- ``autotimm-export MODEL -f onnx`` (parity at batches 1 and 4, manifest, hashes);
- ``-f onnx,torchscript,openvino`` in one command, and the same three formats as three commands;
- with ``--before SRC`` (a source tree of this project, e.g. ``git archive REV | tar -x -C SRC``),
  the single-format command again from that tree (``--before-three``: the three-format one too).
  ``--tree SRC`` runs "ours" from a tree too (default: the installed package, i.e. this checkout
  with any edits in it).

Prints the median seconds per command (and each round's), the load average around the run, and the
ratios the issue asks for. Random weights, the model's default size; nothing is downloaded."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREE = ("onnx", "torchscript", "openvino")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def ours(formats: str, model: str, tree: Path | None = None):
    """An ``autotimm-export`` command line and its environment (``tree``: run that source tree)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    exe = Path(sys.executable).with_name("autotimm-export")
    return lambda out: ([str(exe), model, "-f", formats, "-o", str(out)], env)


def timmx(exe: str, model: str, dynamic: bool):
    extra = ["--dynamic-batch", "--batch-size", "2"] if dynamic else []
    return lambda out: ([exe, "export", "onnx", model, *extra, "--output", str(out / f"{model}.onnx")],
                        dict(os.environ))


def run(make) -> float:
    with tempfile.TemporaryDirectory(prefix="wall-") as d:
        argv, env = make(Path(d) / "out")
        (Path(d) / "out").mkdir()
        t0 = time.perf_counter()
        p = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=d)
        seconds = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}):\n{(p.stdout + p.stderr)[-2000:]}")
    return seconds


def shim(src: Path) -> Path:
    """A folder whose ``autotimm_deploy`` is ``src``, to put first on PYTHONPATH."""
    d = Path(tempfile.mkdtemp(prefix="before-"))
    (d / "autotimm_deploy").symlink_to(src.resolve())
    return d


def commands(a) -> dict[str, list]:
    """Each measured entry: the commands it runs one after another (their seconds are summed)."""
    tree = shim(Path(a.tree)) if a.tree else None
    cmds = {
        "timmx onnx (batch fixed to 1, its default)": [timmx(a.timmx, a.model, False)],
        "timmx onnx --dynamic-batch": [timmx(a.timmx, a.model, True)],
        "ours -f onnx": [ours("onnx", a.model, tree)],
        "ours -f onnx,torchscript,openvino (one command)": [ours(",".join(THREE), a.model, tree)],
        "ours onnx, torchscript, openvino (three commands)": [ours(f, a.model, tree) for f in THREE],
    }
    if a.before:
        before = shim(Path(a.before))
        cmds["before: ours -f onnx"] = [ours("onnx", a.model, before)]
        if a.before_three:
            cmds["before: ours -f onnx,torchscript,openvino (one command)"] = [ours(",".join(THREE), a.model, before)]
    if not a.timmx:
        cmds = {k: v for k, v in cmds.items() if not k.startswith("timmx")}
    return cmds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timmx", help="the timmx executable (its own venv); left out: ours only")
    ap.add_argument("--before", help="a source tree of this project to time as well (before a change)")
    ap.add_argument("--before-three", action="store_true", help="with --before: its three-format command too")
    ap.add_argument("--tree", help="the source tree \"ours\" runs (default: the installed package)")
    a = ap.parse_args()
    cmds = commands(a)
    names = list(cmds)
    times: dict[str, list[float]] = {n: [] for n in names}
    loads = [load()]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; load average before: {loads[0]}", flush=True)
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(sum(run(make) for make in cmds[name]))
            print(f"  round {r + 1}: {name}: {times[name][-1]:.1f} s (load {load()})", flush=True)
        loads.append(load())
    print(f"\nload average (1, 5, 15 min) after each round: {'; '.join(loads[1:])}\n")
    print("| command | median s | rounds |")
    print("|---|---:|---|")
    for name in names:
        print(f"| {name} | {statistics.median(times[name]):.1f} | {', '.join(f'{t:.1f}' for t in times[name])} |")
    med = {n: statistics.median(t) for n, t in times.items()}
    one, three = med["ours -f onnx,torchscript,openvino (one command)"], \
        med["ours onnx, torchscript, openvino (three commands)"]
    print(f"\nthree formats: one command {three / one:.2f}x faster than three commands")
    for name in [n for n in names if n.startswith("timmx")]:
        print(f"ours -f onnx / {name}: {med['ours -f onnx'] / med[name]:.2f}")
    for name in [n for n in names if n.startswith("before: ")]:
        print(f"{name[len('before: '):]}: before / after {med[name] / med[name[len('before: '):]]:.2f}")


if __name__ == "__main__":
    main()
