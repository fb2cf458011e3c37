"""Export a random sample of timm architectures to every CPU format and report parity. Run by hand:

    .venv/bin/python benchmarks/arch_sample.py [--n 30] [--seed 0] [--formats onnx,torchscript,pt2]

Models are built with random weights; models that accept any input size run at --img-size
(default 128), models with a fixed size at their own. Prints one Markdown row per model and format, and a summary."""

from __future__ import annotations

import argparse
import random
import re
import tempfile

import timm
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.pipeline import export

BIG = re.compile(r"giant|huge|gigantic|large|xlarge|_l2|_b7|_b8|[0-9]+b_|_e\d|_h\d|_g\d|7b|3b|1b")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formats", default="onnx,torchscript,pt2")
    ap.add_argument("--models", help="comma-separated names instead of a random sample")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--big", action="store_true", help="include giant/huge/large models (slow, >10 GB RAM)")
    a = ap.parse_args()
    pool = [n for n in timm.list_models() if a.big or not BIG.search(n)]
    names = a.models.split(",") if a.models else random.Random(a.seed).sample(pool, a.n)
    tally = {"pass": 0, "fail": 0, "error": 0}
    print("| model | format | exporter | s | parity |\n|---|---|---|---:|---|")
    for name in names:
        try:
            with tempfile.TemporaryDirectory() as d:
                cfg = timm.models.get_pretrained_cfg(name)
                size = None if cfg is not None and cfg.fixed_input_size else (a.img_size, a.img_size)
                results = export(ModelSpec(name, img_size=size), a.formats.split(","), d)
        except UserError as e:
            print(f"| {name} | - | - | - | user error: {e} |", flush=True)
            tally["error"] += 1
            continue
        for r in results:
            if r.error:
                verdict = f"ERROR {r.error[:160]}"
                tally["error"] += 1
            else:
                m = r.parity.primary[1]
                verdict = f"{r.parity.verdict} rel={m.get('max_rel')} {'; '.join(r.parity.failures)[:160]}"
                tally[str(r.parity.verdict)] += 1
            print(f"| {name} | {r.format} | {r.info.get('exporter', '-')} | {r.export_seconds:.1f} | {verdict} |",
                  flush=True)
    print(f"\n{tally}")


if __name__ == "__main__":
    main()
