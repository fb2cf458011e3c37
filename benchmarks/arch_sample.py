"""Export a random sample of timm architectures and report parity, per model and per family. Run by hand:

    .venv/bin/python benchmarks/arch_sample.py [--n 30] [--seed 0] [--formats onnx,torchscript,pt2]

The edge coverage sample of issue #32 (held-out models under a parameter and size bound, the four edge formats
in one export call per model, a format x family table, raw rows as JSON):

    .venv/bin/python benchmarks/arch_sample.py --n 24 --seed 32 --held-out --max-params 30e6 --max-size 256 \\
        --img-size 224 --formats executorch,litert,coreml,ncnn --json out/arch-sample.json

Models are built with random weights; models that accept any input size run at --img-size (default 128), models
with a fixed size at their own (skipped when it is above --max-size). Parameters are counted on the meta device,
before anything is exported; a model over a bound is passed over and the next one drawn, so N models are tested.
A model's family is the timm module that registers it (``timm.models.vision_transformer`` -> vision_transformer).
Always left out of the pool: names matching BIG (over ~10 GB to export) and models without a pretrained cfg.
A Core ML artifact off macOS has its interface checked but is not run; it counts as passed ("interface checked")."""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import timm
import torch
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.pipeline import export

BIG = re.compile(r"giant|huge|gigantic|large|xlarge|_l2|_b7|_b8|[0-9]+b_|_e\d|_h\d|_g\d|7b|3b|1b")
TESTS = Path(__file__).resolve().parent.parent / "tests"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formats", default="onnx,torchscript,pt2")
    ap.add_argument("--models", help="comma-separated names instead of a random sample")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--big", action="store_true", help="include giant/huge/large models (slow, >10 GB RAM)")
    ap.add_argument("--max-params", type=float, help="draw only models with at most this many parameters")
    ap.add_argument("--max-size", type=int, help="pass over fixed-size models whose input is larger (px)")
    ap.add_argument("--held-out", action="store_true", help="pass over models named anywhere under tests/")
    ap.add_argument("--json", help="write the raw rows (model, family, format, outcome, first error line) here")
    return ap.parse_args()


def families() -> dict[str, str]:
    """Model name -> the timm module that registers it, without its package (``vision_transformer``)."""
    return {m: mod.rsplit(".", 1)[-1] for mod in timm.list_modules() for m in timm.list_models(module=mod)}


def names_in_tests() -> set[str]:
    """Every word in every file under tests/: a model named there is not held out."""
    words: set[str] = set()
    for f in TESTS.rglob("*"):
        if f.is_file() and f.suffix in {".py", ".txt", ".json", ".yaml", ".yml", ".toml", ".md", ".cfg"}:
            words.update(re.findall(r"[A-Za-z0-9_]+", f.read_text(errors="ignore")))
    return words


def param_count(name: str) -> int:
    """Parameters of ``name``, counted without allocating them (the meta device)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return sum(p.numel() for p in model.parameters())


def input_size(name: str, a: argparse.Namespace) -> tuple[int, int] | None:
    """The size to export at: --img-size unless the model is fixed-size; None where over --max-size."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.fixed_input_size:
        return a.img_size, a.img_size
    h, w = cfg.input_size[-2:]
    return None if a.max_size and max(h, w) > a.max_size else (h, w)


def why_not(name: str, a: argparse.Namespace) -> str | None:
    """Why a drawn model is passed over (and another drawn), or None to test it."""
    if input_size(name, a) is None:
        return f"fixed input above {a.max_size} px"
    if a.max_params:
        try:
            n = param_count(name)
        except Exception as e:  # noqa: BLE001 - a model that will not build on meta is passed over, said why
            return f"not countable on meta: {str(e).splitlines()[0][:80]}"
        if n > a.max_params:
            return f"{n / 1e6:.1f} M parameters"
    return None


def draw(a: argparse.Namespace) -> list[str]:
    """N models: --models as given, else a seeded sample of the pool, honouring the bounds."""
    if a.models:
        return a.models.split(",")
    held = names_in_tests() if a.held_out else set()
    pool = [n for n in timm.list_models() if (a.big or not BIG.search(n)) and timm.models.get_pretrained_cfg(n)
            and n not in held]
    rng = random.Random(a.seed)
    if not (a.max_params or a.max_size or a.held_out):
        return rng.sample(pool, a.n)  # the draw of the earlier runs of this script, same seed same models
    print(f"pool: {len(pool)} models ({len(held & set(timm.list_models()))} named in tests/ left out)")
    names = []
    for name in rng.sample(pool, len(pool)):
        reason = why_not(name, a)
        if reason:
            print(f"passed over {name}: {reason}", flush=True)
            continue
        names.append(name)
        if len(names) == a.n:
            break
    return names


def outcome(r) -> tuple[bool, str]:
    """Whether one result passed, and its verdict in words (the first line of an error)."""
    if r.error:
        return False, f"ERROR {r.error.strip().splitlines()[0][:300]}"
    if r.parity is None:
        return r.ok, "exported, not verified"
    if str(r.parity.verdict) == "not run":
        return r.ok, "interface checked (not run off macOS)"
    m = r.parity.metrics.get("logits") or {}
    return r.ok, f"{r.parity.verdict} max_rel={m.get('max_rel')} {'; '.join(r.parity.failures)[:200]}".strip()


def run_one(name: str, family: str, a: argparse.Namespace) -> list[dict]:
    """One export call with every format, as a user runs it; one row per format."""
    size = input_size(name, a) or (a.img_size, a.img_size)
    formats = a.formats.split(",")
    base = {"model": name, "family": family, "img_size": size[0]}
    try:
        with tempfile.TemporaryDirectory() as d:
            results = export(ModelSpec(name, img_size=size), formats, d)
    except (UserError, Exception) as e:  # noqa: BLE001 - an export call that raises is a row per format
        line = f"ERROR (export raised) {str(e).strip().splitlines()[0][:300]}"
        return [{**base, "format": f, "ok": False, "verdict": line, "s": 0.0} for f in formats]
    rows = []
    for r in results:
        ok, verdict = outcome(r)
        rows.append({**base, "format": r.format, "ok": ok, "verdict": verdict, "s": round(r.export_seconds, 1),
                     "exporter": r.info.get("exporter", "-")})
    return rows


def family_table(rows: list[dict], formats: list[str]) -> str:
    """Markdown: one row per family, one column per format, passed/tried; a totals row."""
    cell: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    models: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        c = cell[r["family"], r["format"]]
        c[0] += r["ok"]
        c[1] += 1
        models[r["family"]].add(r["model"])
    lines = [f"| family (models) | {' | '.join(formats)} |", "|---|" + "---:|" * len(formats)]
    for fam in sorted(models):
        cells = " | ".join("{}/{}".format(*cell[fam, f]) for f in formats)
        lines.append(f"| {fam} ({', '.join(sorted(models[fam]))}) | {cells} |")
    totals = [sum(cell[fam, f][i] for fam in models) for f in formats for i in (0, 1)]
    lines.append("| **total** | " + " | ".join(f"**{p}/{t}**" for p, t in zip(totals[::2], totals[1::2])) + " |")
    return "\n".join(lines)


def main() -> None:
    a = parse_args()
    fam = families()
    names = draw(a)
    print(f"drawn ({len(names)}): {', '.join(names)}\n", flush=True)
    rows: list[dict] = []
    print("| model | family | format | exporter | s | verdict |\n|---|---|---|---|---:|---|")
    for name in names:
        for row in run_one(name, fam.get(name, "?"), a):
            rows.append(row)
            print(f"| {name} | {row['family']} | {row['format']} | {row.get('exporter', '-')} | {row['s']} | "
                  f"{row['verdict']} |", flush=True)
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(rows, indent=1))
    print("\n" + family_table(rows, a.formats.split(",")))
    tally = {f: f"{sum(r['ok'] for r in rows if r['format'] == f)}/{sum(r['format'] == f for r in rows)}"
             for f in a.formats.split(",")}
    print(f"\n{tally}")


if __name__ == "__main__":
    main()
