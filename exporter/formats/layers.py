"""Layer-by-layer comparison of an artifact with its reference, shared by the formats that can mark
every intermediate tensor as an output (ONNX, OpenVINO): the tensors both name, in graph order,
compared by cosine and relative error, each mapped back to the timm module that produced it."""

from __future__ import annotations

import numpy as np

SHOWN = 5


def compare_layers(order: list[dict], ref: dict[str, np.ndarray], out: dict[str, np.ndarray], cosine_gate: float,
                   against: str, pictures: int) -> dict:
    """``order``: {"tensor", "node", "op", "module"} per tensor in graph order; ``ref`` / ``out``: the
    values by tensor key, compared flat (onnxruntime's augmentation saves tensors flattened). The
    first tensors whose cosine falls below ``cosine_gate``, and the worst."""
    rows = []
    for spec in order:
        a, b = ref.get(spec["tensor"]), out.get(spec["tensor"])
        if a is None or b is None or a.size != b.size or a.size == 0 or not np.issubdtype(a.dtype, np.floating):
            continue
        a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        scale = float(np.abs(a).max())
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosine = float(a @ b / denom) if denom > 0 else (1.0 if not b.any() else 0.0)
        rows.append({**spec, "cosine": round(cosine, 6) if np.isfinite(cosine) else None,
                     "max_rel": round(float(np.abs(a - b).max()) / scale, 6) if scale > 0 else None})
    low = [r for r in rows if r["cosine"] is None or r["cosine"] < cosine_gate]
    found = {"against": against, "pictures": int(pictures), "compared": len(rows), "cosine_gate": cosine_gate,
             "first": low[:SHOWN],
             "worst": sorted(rows, key=lambda r: -1.0 if r["cosine"] is None else r["cosine"])[:SHOWN]}
    if not rows:
        found["note"] = "no tensor of the artifact could be matched with the reference by name"
    elif not low:
        found["note"] = ("every compared tensor is within the gate: the departure lies in a tensor that could not be "
                         "compared, or in what the runtime does to the graph when not every tensor is an output "
                         "(its fusions and optimisations)")
    return found


def module_after(module: str | None, node: str, last: str | None) -> str:
    """A tensor's module: its own (a layer with weights), else the last one before it in the graph."""
    if module and module != node:
        return module
    return f"after {last}" if last else ""
