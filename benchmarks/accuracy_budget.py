"""What an accuracy budget buys on ``--target cpu``: each benchmark model is trained for a bounded
time on scikit-learn's digits (real weights, a real accuracy), then ``--target cpu`` runs twice on it,
both times scoring every candidate on the held-out digits (``--eval``):

- today's rule: the fastest candidate through its precision's parity gate (no ``--max-drop``);
- the budget: ``--max-drop POINTS``, int8 built accuracy-aware, the fastest within the budget.

Run by hand on a quiet machine (it trains, exports 7 candidates per run and times them):

    .venv/bin/python benchmarks/accuracy_budget.py [--models resnet50,...] [--size 64] [--train-seconds 120]
        [--max-drop 1.0] [--max-time 8] [--out bench-budget]

Prints, per model, every candidate's top-1, drop, parity verdict and batch-1 time in both runs, and
a summary table: each rule's choice, its top-1 and its speedup over eager."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the digits helpers the tests use

MODELS = "resnet50,mobilenetv3_small_100,efficientnet_b0,convnext_tiny,vit_base_patch16_224"


def digits_pictures(size: int) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.from_numpy(x.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(u8), y


def train(model_name: str, size: int, seconds: float, root: Path) -> dict:
    """Train ``model_name`` from random weights on 78 % of the digits for ``seconds``; write the
    checkpoint, calibration data (training pictures) and the held-out pictures as an image folder."""
    import timm
    import torch
    from labelled_data import DIGITS_PREP
    from PIL import Image
    from safetensors.torch import save_file

    pics, labels = digits_pictures(size)
    u8 = torch.from_numpy(pics).permute(0, 3, 1, 2)
    mean = torch.tensor(DIGITS_PREP["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(DIGITS_PREP["std"]).view(1, 3, 1, 1)
    xn = (u8.float() / 255 - mean) / std
    y = torch.from_numpy(labels).long()
    perm = torch.randperm(len(xn), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    kw = {"img_size": size} if "vit" in model_name else {}
    net = timm.create_model(model_name, pretrained=False, num_classes=10, **kw)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3 if "vit" in model_name or "convnext" in model_name else 3e-3)
    net.train()
    t0, epochs = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for idx in tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(epochs))].split(32):
            loss = torch.nn.functional.cross_entropy(net(xn[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if time.perf_counter() - t0 > seconds:
                break
        epochs += 1
    net.eval()
    with torch.no_grad():
        acc = float(torch.cat([net(xn[te][i:i + 64]).argmax(1) for i in range(0, len(te), 64)]).eq(y[te]).float().mean())
    root.mkdir(parents=True, exist_ok=True)
    save_file(net.state_dict(), str(root / "model.safetensors"))
    np.save(root / "calib.npy", xn[tr[:64]].numpy())
    for i in te.tolist():
        (root / "heldout" / str(int(y[i]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pics[i]).save(root / "heldout" / str(int(y[i])) / f"{i}.png")
    return {"epochs": epochs, "seconds": round(time.perf_counter() - t0, 1), "eager_top1": 100 * acc}


def run(model_name: str, size: int, root: Path, max_drop: float | None, max_time: float) -> dict:
    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.exporter.formats import ExportOptions
    from autotimm_deploy.exporter.select import target_cpu
    from labelled_data import DIGITS_PREP

    spec = ModelSpec(model_name, num_classes=10, img_size=(size, size), weights="checkpoint",
                     checkpoint=str(root / "model.safetensors"), preprocess=dict(DIGITS_PREP))
    opts = ExportOptions(calib_data=str(root / "calib.npy"), calib_samples=64, eval_data=str(root / "heldout"),
                         max_drop=max_drop)
    label = "budget" if max_drop is not None else "today"
    t0 = time.perf_counter()
    winner, ranked, eager = target_cpu(spec, root / f"target-{label}", opts, force=True, max_time=max_time)
    rows = [c.row(c is winner) for c in ranked]
    for c, r in zip(ranked, rows):
        control = (c.result.info.get("quantization") or {}).get("accuracy_control") if c.result else None
        r["kept_float"] = len(control["kept_float"]) if control else None
    return {"rule": label, "eager_ms": eager.get("median_ms"), "seconds": round(time.perf_counter() - t0, 1),
            "chosen": (winner.format, winner.precision) if winner else None, "rows": rows}


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train-seconds", type=float, default=120.0)
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--max-time", type=float, default=8.0)
    ap.add_argument("--out", default="bench-budget")
    a = ap.parse_args()
    out, summary = Path(a.out), []
    for model in a.models.split(","):
        root = out / model
        trained = train(model, a.size, a.train_seconds, root)
        print(f"\n### {model} at {a.size} px: trained {trained['epochs']} epochs in {trained['seconds']} s, "
              f"eager top-1 {trained['eager_top1']:.2f} % on 397 held-out digits\n", flush=True)
        runs = [run(model, a.size, root, None, a.max_time), run(model, a.size, root, a.max_drop, a.max_time)]
        print("| rule | candidate | top-1 | drop | parity | int8 layers kept in float | batch-1 ms | vs eager | chosen |")
        print("|---|---|---:|---:|---|---:|---:|---:|---|")
        for r in runs:
            for row in r["rows"]:
                acc = row.get("accuracy") or {}
                sp = row["speedup_vs_eager"]
                print(f"| {r['rule']} | {row['format']} {row['precision']} | {_fmt(acc.get('value'))} | "
                      f"{_fmt(acc.get('drop'))} | {row['parity']} | {_fmt(row['kept_float'], 'd')} | "
                      f"{_fmt(row['median_ms'])} | {_fmt(sp and sp['ratio'])}x | {'**yes**' if row['chosen'] else ''} |")
        summary.append({"model": model, **trained, "runs": runs})
        (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    print("\n| model | eager top-1 | today's choice | its top-1 | its speedup | budget's choice | its top-1 | its speedup |")
    print("|---|---:|---|---:|---:|---|---:|---:|")
    for s in summary:
        cells = []
        for r in s["runs"]:
            row = next((x for x in r["rows"] if x["chosen"]), None)
            acc = (row or {}).get("accuracy") or {}
            sp = (row or {}).get("speedup_vs_eager")
            cells += [" ".join(r["chosen"]) if r["chosen"] else "none", _fmt(acc.get("value")),
                      f"{_fmt(sp and sp['ratio'])}x"]
        print(f"| {s['model']} | {s['eager_top1']:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
