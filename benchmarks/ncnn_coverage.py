"""Which transformer and attention-hybrid timm models convert to ncnn (issue #32): each model is
exported to ncnn fp32 through the pipeline (pnnx, then parity against eager on the ncnn runtime),
and optionally to the other edge formats for comparison. Run by hand, alone:

    .venv/bin/python benchmarks/ncnn_coverage.py [--models vit_small_patch16_224,halonet26t@256,...]
                                                 [--formats ncnn,executorch]

Weights are random (offline), --img-size px (224) unless the name says another (``halonet26t@256``).
Prints a Markdown row per model and format as it goes and writes the raw rows to --out/coverage.json."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

MODELS = ("vit_small_patch16_224,deit_small_patch16_224,eva02_tiny_patch14_224,xcit_nano_12_p16_224,coat_lite_tiny,"
          "edgenext_xx_small,botnet26t_256,regnetz_b16_evos,halonet26t@256,mobilevit_xxs,levit_128s,efficientformer_l1,"
          "swin_tiny_patch4_window7_224,tiny_vit_5m_224,twins_svt_small,gcvit_xxtiny,maxvit_nano_rw_256@256,"
          "efficientvit_m0,convit_tiny,crossvit_tiny_240@240,mvitv2_tiny,hiera_tiny_224")


def outcome(r) -> str:
    if r.ok:
        m = (r.parity.metrics.get("logits") or {}) if r.parity else {}
        return f"pass (cos {m['cosine']:.5f}, max_rel {m['max_rel']:.1e})" if "cosine" in m else "pass"
    if r.parity is not None and r.error is None:
        return f"parity {r.parity.verdict}: {'; '.join(r.parity.failures)[:90]}"
    return f"fails: {(r.error or '?')[:110]}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=MODELS)
    p.add_argument("--formats", default="ncnn")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--out", default="out/bench-ncnn-coverage")
    p.add_argument("--without-rewrite", action="store_true",
                   help="ncnn as before issue #32: the traced model straight to pnnx, for comparison")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    if a.without_rewrite:
        from autotimm_deploy.exporter.formats import ncnn

        ncnn.ncnn_module = lambda module, example: module

    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.exporter.models import build_model
    from autotimm_deploy.exporter.pipeline import export

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| model | format | result | export s |\n|---|---|---|---:|", flush=True)
    for name in a.models.split(","):
        name, _, size = name.partition("@")
        size = int(size or a.img_size)
        spec = ModelSpec(name, img_size=(size, size))
        try:
            model = build_model(spec)
        except Exception as e:  # a model that cannot be built at this size is a row, not a crash
            print(f"| `{name}` | - | not built: {str(e).splitlines()[0][:100]} | |", flush=True)
            continue
        for fmt in a.formats.split(","):
            t0 = time.perf_counter()
            (r,) = export(spec, [fmt], out / name, force=True, model=model)
            row = {"model": name, "format": fmt, "ok": r.ok, "result": outcome(r),
                   "export_s": round(r.export_seconds or time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"| `{name}` | {fmt} | {row['result']} | {row['export_s']} |", flush=True)
            (out / "coverage.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
