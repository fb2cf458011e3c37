"""Parity: an artifact, reloaded from disk through its runtime, against the eager model on the same
deterministic inputs, at batch 1 and a larger batch (to prove the dynamic batch).

Per output tensor we report:
- ``max_abs``: max |artifact - eager|
- ``max_rel``: max_abs / max |eager| (None when the reference is all zeros: only ``max_abs`` counts then)
- ``cosine``: cosine similarity of the flattened tensors
- ``spread``: how much the reference varies across the batch, relative to its scale. A model whose
  output barely depends on its input (a zero-initialised classifier with random weights) would make
  every other metric pass by accident; below ``MIN_SPREAD`` the report says so.
- ``delta_cosine``: cosine of (output - batch mean), i.e. of the input-dependent part only, where the
  spread allows. A large constant bias can hide a broken backbone from ``cosine``; not from this.
- ``top1_agreement`` (2-D outputs): argmax agreement over the rows whose top-2 reference gap exceeds
  the precision's error budget (near-ties excluded; their count is reported).
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import asdict, dataclass

import numpy as np
from autotimm_deploy.exporter.core.errors import first_line
from autotimm_deploy.exporter.core.results import MetricKind, ParityReport, Verdict
from autotimm_deploy.exporter.inputs.samples import sample_images

MIN_SPREAD = 1e-3
BATCHES = (1, 4)
BATCHES_REDUCED = (1, 4, 16)  # reduced precision: more pictures, so top-1 agreement is not 1-of-4


@dataclass(frozen=True)
class Tolerance:
    max_rel: float  # on max_rel
    max_abs: float  # used only when the reference is all zeros
    cosine: float
    delta_cosine: float
    top1: float
    tie_margin: float  # top-2 gaps below tie_margin * max|eager| are near-ties, left out of top1
    pixel: float  # argmax agreement of dense outputs (segmentation) and equality of integer outputs


TOLERANCES = {
    "fp32": Tolerance(max_rel=1e-3, max_abs=1e-4, cosine=0.99999, delta_cosine=0.9999, top1=1.0, tie_margin=2e-3,
                      pixel=0.999),
    # TF32 (TensorRT's fp32 engines by default): fp16's 10-bit mantissa in products, fp32 sums and range
    "tf32": Tolerance(max_rel=1e-2, max_abs=5e-3, cosine=0.9995, delta_cosine=0.995, top1=0.98, tie_margin=5e-3,
                      pixel=0.995),
    "fp16": Tolerance(max_rel=2e-2, max_abs=1e-2, cosine=0.999, delta_cosine=0.99, top1=0.95, tie_margin=1e-2,
                      pixel=0.99),
    "bf16": Tolerance(max_rel=6e-2, max_abs=5e-2, cosine=0.995, delta_cosine=0.98, top1=0.9, tie_margin=2e-2,
                      pixel=0.98),
    "int8": Tolerance(max_rel=0.15, max_abs=0.1, cosine=0.98, delta_cosine=0.9, top1=0.8, tie_margin=2e-2,
                      pixel=0.9),
}


# Detection gates per precision: share of detections matched (IoU >= 0.5, greedy), their mean IoU,
# the largest score difference of a matched pair, label agreement of matched pairs.
DETECTION_TOLERANCES = {
    "fp32": {"match_rate": 0.98, "mean_iou": 0.999, "max_score_diff": 1e-3, "label_agreement": 0.99, "mask_iou": 0.99},
    "tf32": {"match_rate": 0.95, "mean_iou": 0.99, "max_score_diff": 5e-3, "label_agreement": 0.97, "mask_iou": 0.97},
    "fp16": {"match_rate": 0.9, "mean_iou": 0.98, "max_score_diff": 1e-2, "label_agreement": 0.95, "mask_iou": 0.95},
    "bf16": {"match_rate": 0.85, "mean_iou": 0.95, "max_score_diff": 3e-2, "label_agreement": 0.9, "mask_iou": 0.9},
    "int8": {"match_rate": 0.7, "mean_iou": 0.9, "max_score_diff": 5e-2, "label_agreement": 0.85, "mask_iou": 0.8},
}
MASK_THRESHOLD = 0.5
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "num_detections")


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    iou = inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)
    same = np.abs(a[:, None, :] - b[None, :, :]).max(-1) <= 1e-3  # identical (even zero-area) boxes
    return np.where(same, 1.0, iou)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > MASK_THRESHOLD, b > MASK_THRESHOLD
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def compare_detections(ref: dict, out: dict) -> dict:
    """Match each image's detections greedily by IoU (>= 0.5, labels ignored for matching); with
    ``masks`` (instance segmentation), also the mask IoU of each matched pair at 0.5."""
    matched = total_ref = total_out = same_count = 0
    ious, score_diffs, labels_same, mask_ious = [], [], [], []
    masks = "masks" in ref and "masks" in out
    for b in range(len(ref["num_detections"])):
        nr, no = int(ref["num_detections"][b]), int(out["num_detections"][b])
        total_ref, total_out, same_count = total_ref + nr, total_out + no, same_count + (nr == no)
        if not nr or not no:
            continue
        iou = _iou(ref["boxes"][b, :nr].astype(np.float64), out["boxes"][b, :no].astype(np.float64))
        while iou.size and iou.max() >= 0.5:
            i, j = np.unravel_index(iou.argmax(), iou.shape)
            ious.append(iou[i, j])
            score_diffs.append(abs(float(ref["scores"][b, i]) - float(out["scores"][b, j])))
            labels_same.append(int(ref["labels"][b, i]) == int(out["labels"][b, j]))
            if masks:
                mask_ious.append(_mask_iou(ref["masks"][b, i], out["masks"][b, j]))
            iou[i, :], iou[:, j] = -1, -1
            matched += 1
    denom = max(total_ref, total_out)
    result = {"kind": MetricKind.DETECTIONS, "match_rate": matched / denom if denom else 1.0, "mean_iou": float(np.mean(ious)) if ious else None,
              "max_score_diff": max(score_diffs) if score_diffs else None,
              "label_agreement": float(np.mean(labels_same)) if labels_same else None,
              "count_agreement": same_count / len(ref["num_detections"]), "matched": matched,
              "ref_detections": total_ref}
    if masks:
        result["mask_iou"] = float(np.mean(mask_ious)) if mask_ious else None
        result["min_mask_iou"] = float(np.min(mask_ious)) if mask_ious else None
    return result


def compare(ref: np.ndarray, out: np.ndarray, tol: Tolerance) -> dict:
    """Metrics for one output tensor (see module docstring)."""
    if ref.shape != out.shape:
        return error_metrics(f"shape {list(out.shape)} != eager {list(ref.shape)}")
    if not np.issubdtype(ref.dtype, np.floating):  # labels, masks, counts: exact agreement
        return {"kind": MetricKind.EXACT, "agreement": float((ref == out).mean()) if ref.size else 1.0}
    r = ref.astype(np.float64)
    o = out.astype(np.float64)
    if not np.isfinite(r).all():
        return error_metrics("the eager model itself produces NaN or Inf (broken weights?)")
    if not np.isfinite(o).all():
        return error_metrics("artifact produced NaN or Inf")
    err = np.abs(o - r)
    scale = float(np.abs(r).max()) if r.size else 0.0
    m = {"kind": MetricKind.TENSOR, "max_abs": float(err.max()) if r.size else 0.0, "scale": scale}
    m["max_rel"] = m["max_abs"] / scale if scale > 0 else None
    m["cosine"] = _cosine(r, o)
    if r.ndim >= 1 and r.shape[0] >= 2:
        dr, do = r - r.mean(0, keepdims=True), o - o.mean(0, keepdims=True)
        m["spread"] = float(np.abs(dr).max()) / scale if scale > 0 else 0.0
        m["delta_cosine"] = _cosine(dr, do) if m["spread"] >= MIN_SPREAD else None
    if r.ndim == 2 and r.shape[1] >= 2 and np.issubdtype(ref.dtype, np.floating):
        top2 = np.sort(r, axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) > tol.tie_margin * max(scale, 1e-12)
        agree = r.argmax(1) == o.argmax(1)
        m["top1_rows"], m["top1_hits"] = int(decisive.sum()), int(agree[decisive].sum())
        m["top1_agreement"] = float(agree[decisive].mean()) if decisive.any() else None
    if r.ndim == 4 and r.shape[1] >= 2:  # dense logits [B, K, H, W]: per-pixel argmax, near-ties left out
        top2 = np.sort(r, axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) > tol.tie_margin * max(scale, 1e-12)
        agree = r.argmax(1) == o.argmax(1)
        m["pixel_rows"], m["pixel_hits"] = int(decisive.sum()), int(agree[decisive].sum())
        m["pixel_agreement"] = float(agree[decisive].mean()) if decisive.any() else None
    return m


def _cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return None
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))


def error_metrics(reason: str) -> dict:
    return {"kind": MetricKind.ERROR, "error": reason}


def failures(m: dict, precision: str) -> list[str]:
    """What in one output's metrics breaks the gate of ``precision`` (empty: it passes)."""
    return GATES[MetricKind(m["kind"])](m, precision)


def _error_failures(m: dict, precision: str) -> list[str]:
    return [m["error"]]


def _exact_failures(m: dict, precision: str) -> list[str]:
    tol = TOLERANCES[precision]
    return [f"agreement {m['agreement']:.4%} < {tol.pixel:.1%}"] if m["agreement"] < tol.pixel else []


def _tensor_failures(m: dict, precision: str) -> list[str]:
    tol = TOLERANCES[precision]
    bad = []
    if m["max_rel"] is None:
        if m["max_abs"] > tol.max_abs:
            bad.append(f"max_abs {m['max_abs']:.3g} > {tol.max_abs:g} (zero reference)")
    elif m["max_rel"] > tol.max_rel:
        bad.append(f"max_rel {m['max_rel']:.3g} > {tol.max_rel:g}")
    if m["cosine"] is not None and m["cosine"] < tol.cosine:
        bad.append(f"cosine {m['cosine']:.6f} < {tol.cosine}")
    if m.get("delta_cosine") is not None and m["delta_cosine"] < tol.delta_cosine:
        bad.append(f"delta_cosine {m['delta_cosine']:.6f} < {tol.delta_cosine}")
    if m.get("top1_agreement") is not None and m["top1_agreement"] < tol.top1:
        bad.append(f"top1 {m['top1_agreement']:.2%} < {tol.top1:.0%}")
    if m.get("pixel_agreement") is not None and m["pixel_agreement"] < tol.pixel:
        bad.append(f"pixel agreement {m['pixel_agreement']:.4%} < {tol.pixel:.1%}")
    return bad


def detection_failures(m: dict, precision: str) -> list[str]:
    gate = DETECTION_TOLERANCES[precision]
    bad = []
    if m["match_rate"] < gate["match_rate"]:
        bad.append(f"match_rate {m['match_rate']:.2%} < {gate['match_rate']:.0%}")
    for key in ("mean_iou", "label_agreement", "mask_iou"):
        if m.get(key) is not None and m[key] < gate[key]:
            bad.append(f"{key} {m[key]:.4f} < {gate[key]}")
    if m.get("max_score_diff") is not None and m["max_score_diff"] > gate["max_score_diff"]:
        bad.append(f"max_score_diff {m['max_score_diff']:.2g} > {gate['max_score_diff']:g}")
    return bad


GATES = {MetricKind.ERROR: _error_failures, MetricKind.EXACT: _exact_failures, MetricKind.TENSOR: _tensor_failures,
         MetricKind.DETECTIONS: detection_failures}


# How the per-batch metrics of one output combine into the reported one: the worse value, except
# agreement rates, which are pooled over every row / pixel of every batch.
_WORST = {"max_abs": max, "max_rel": max, "scale": max, "cosine": min, "spread": min, "delta_cosine": min,
          "top1_rows": sum, "top1_hits": sum, "pixel_rows": sum, "pixel_hits": sum, "agreement": min,
          "match_rate": min, "mean_iou": min, "max_score_diff": max, "label_agreement": min, "count_agreement": min,
          "mask_iou": min, "min_mask_iou": min,
          "matched": sum, "ref_detections": sum}


def _worst(metrics: list[dict]) -> dict:
    errors = [m for m in metrics if m["kind"] == MetricKind.ERROR]
    if errors:
        return errors[0]
    out = {"kind": metrics[0]["kind"]}
    for key, pick in _WORST.items():
        if any(key in m for m in metrics):
            values = [m[key] for m in metrics if m.get(key) is not None]
            out[key] = pick(values) if values else None
    for rate, rows, hits in (("top1_agreement", "top1_rows", "top1_hits"), ("pixel_agreement", "pixel_rows", "pixel_hits")):
        if rows in out:
            out[rate] = out[hits] / out[rows] if out[rows] else None
    return out


def compare_outputs(ref: dict, out: dict, tol: Tolerance) -> dict:
    """Per-output metrics; final detections (boxes/scores/labels/count) are compared as detections."""
    missing = [n for n in ref if n not in out]
    if missing:
        return {n: error_metrics("output missing") for n in missing}
    if set(DETECTION_OUTPUTS) <= set(ref):
        metrics = {"detections": compare_detections(ref, out)}
        rest = [n for n in ref if n not in DETECTION_OUTPUTS and n != "masks"]
    else:
        metrics, rest = {}, list(ref)
    metrics.update({n: compare(ref[n], out[n], tol) for n in rest})
    return metrics


# The eager model's outputs per model and input, computed once: the formats of one export (and the
# signature forward before them, `keep_reference`) hold their artifacts against the same pictures.
_EAGER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(model) -> tuple:
    """What an eager output depends on besides its input: each weight and buffer (which tensor, and
    its in-place version) and the train/eval mode. A model changed in place misses the cache."""
    return (model.training, *((id(t), t._version) for t in (*model.parameters(), *model.buffers())))


def _input_key(x: np.ndarray) -> tuple:
    return x.shape, x.dtype.str, hashlib.blake2b(np.ascontiguousarray(x).data, digest_size=16).digest()


def _cached(model, kind: str, x: np.ndarray):
    entry = _EAGER.get(model)
    if entry is None or entry[0] != _state(model):
        return None
    return entry[1].get((kind, _input_key(x)))


def _store(model, kind: str, x: np.ndarray, value) -> None:
    state = _state(model)
    entry = _EAGER.get(model)
    if entry is None or entry[0] != state:
        entry = _EAGER[model] = (state, {})
    entry[1][(kind, _input_key(x))] = value


def _frozen(tensors, names) -> dict[str, np.ndarray]:
    out = {}
    for name, t in zip(names, tensors):
        a = t.detach().numpy()
        a.setflags(write=False)  # shared by every format's comparison
        out[name] = a
    return out


def eager_outputs(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """The eager ``model``'s outputs for ``x`` (read-only), run once per model state and input."""
    import torch

    ref = _cached(model, "eager", x)
    if ref is None:
        with torch.no_grad():
            ref = _frozen(model(torch.from_numpy(x.copy())), model.output_names)  # (a model may write its input)
        _store(model, "eager", x, ref)
    return ref


def keep_reference(model, x: np.ndarray, outputs) -> None:
    """Keep ``outputs``, the eager model's tensors for ``x`` that a caller just computed, so that
    `verify` does not run the same forward again."""
    try:
        _store(model, "eager", x, _frozen(outputs, model.output_names))
    except (TypeError, RuntimeError):  # an output numpy cannot hold: computed again by `verify`
        pass


def parity_pictures(prep: dict, batch: int, batches: tuple[int, ...] = BATCHES) -> np.ndarray:
    """The pictures `verify` feeds at ``batch``, one of ``batches`` (at the export size): each batch
    starts where the one before it ended in the sample list."""
    return sample_images(batch, prep, offset=sum(batches[:batches.index(batch)]))


def verify(model, session, precision: str = "fp32", batches: tuple[int, ...] | None = None,
           sizes: list[tuple[int, int]] | None = None) -> dict:
    """Run ``session`` (an open `autotimm_deploy.profiler.runtimes` session on the artifact) and the eager ``model``
    on the same pictures; return the parity report that goes into the manifest. ``sizes``: the input
    sizes (h, w) to compare at, for artifacts that take more than one (default: the export size)."""
    tol = TOLERANCES[precision]
    lo, hi = session.batch_range()
    if batches is None:
        wanted = BATCHES if precision == "fp32" else BATCHES_REDUCED
        batches = (lo,) if hi == lo else tuple(b for b in wanted if b >= lo and (hi is None or b <= hi)) or (lo,)
    prep = model.preprocessing
    input_name = session.inputs[0].name
    reference = getattr(model, "reference", None)  # the model's own postprocessing, run eagerly
    per_batch, against, offset, compared = {}, {}, 0, []
    runs = [(b, None) for b in batches] if not sizes else [(b, tuple(hw)) for hw in sizes for b in batches]
    for b, hw in runs:
        key = str(b) if hw is None else f"{b}@{hw[0]}x{hw[1]}"
        x = sample_images(b, prep if hw is None else {**prep, "input_size": [prep["input_size"][0], *hw]},
                          offset=offset)
        offset += b
        ref = eager_outputs(model, x)
        own = _own_reference(model, reference, x) if reference else None
        try:
            out = session.infer({input_name: x})
        except Exception as e:  # noqa: BLE001 - a runtime crash is a parity failure, reported as such
            at = "" if hw is None else f" at {hw[0]}x{hw[1]}"
            per_batch[key] = {"runtime": error_metrics(f"runtime failed{at}: {first_line(e, 200)}")}
        else:
            per_batch[key] = compare_outputs(ref, out, tol)
            compared.append((x, ref, out))
            if isinstance(own, str):
                against[key] = {"reference": error_metrics(own)}
            elif own is not None:
                against[key] = compare_outputs(own, out, tol)
    merged = _merge(per_batch)
    problems = [f"{name}: {p}" for name, m in merged.items() for p in failures(m, precision)]
    # a model that is not deterministic has no answer to be judged by, float64's included
    shaky = _unreproducible(model, compared[0]) if problems and compared else []
    exact, notes = (None, []) if shaky else _exact(model, precision, merged, problems, compared, tol)
    if exact is not None and exact["verdict"] == "pass":
        problems = []
    problems += shaky
    report_against = None
    if reference and against:  # (none when the runtime itself failed: that failure is reported once, above)
        metrics = _merge(against)
        missed = [f"vs {model.reference_name}: {name}: {p}" for name, m in metrics.items() for p in failures(m, precision)]
        problems += missed
        report_against = {"against": model.reference_name, "metrics": metrics, "failures": missed}
    notes += [
        f"{name}: the eager output barely depends on the input (spread {m['spread']:.2g}); parity covers little"
        for name, m in merged.items()
        if m["kind"] == MetricKind.TENSOR and m.get("spread") is not None and m["spread"] < MIN_SPREAD
    ]
    notes += [f"{name}: the eager model detects nothing in the sample pictures; parity covers little"
              for name, m in merged.items() if m["kind"] == MetricKind.DETECTIONS and not m.get("ref_detections")]
    computed_in, said = _computed_in(session, precision)
    notes += said
    return ParityReport(
        verdict=Verdict.FAIL if problems else Verdict.PASS,
        precision=precision,
        runtime=session.name,
        device=session.device,
        batches=list(batches),
        inputs="scikit-image sample pictures, resized and normalised as the manifest's preprocessing",
        tolerance=asdict(tol),
        metrics=merged,
        per_batch=per_batch,
        sizes=[list(hw) for hw in sizes] if sizes else None,
        failures=problems,
        notes=notes,
        reference=report_against,
        exact=exact,
        computed_in=computed_in,
    )


def _computed_in(session, precision: str) -> tuple[str | None, list[str]]:
    """The precision ``session`` really computes in, where it is not the reduced ``precision`` asked,
    and the report's note saying so (None and no note where it is)."""
    if precision not in ("bf16", "fp16") or not hasattr(session, "compute_precision"):
        return None, []
    computed = session.compute_precision()
    return (None, []) if computed == precision else (computed, [precision_untested(session.name, precision, computed)])


def precision_untested(runtime: str, precision: str, computed: str) -> str:
    """The line that says a reduced-precision artifact was checked at another precision."""
    return (f"{runtime} computed this {precision} artifact in {computed} on this CPU (no {precision} support "
            f"here): its check shows {computed}'s numbers; check it again on the CPU that will run it")


def _exact(model, precision: str, merged: dict, problems: list[str], compared: list, tol) -> tuple[dict | None, list]:
    """fp32 that misses its gate on tensor tolerances alone, judged against float64 instead where eager
    fp32 itself departs from it (`parity_exact`): (the judgement or None, notes)."""
    if precision != "fp32" or not problems or any(m["kind"] != MetricKind.TENSOR for m in merged.values()):
        return None, []
    from autotimm_deploy.exporter.parity_exact import against_float64, float64_outputs

    outputs = [_cached(model, "float64", x) for x, _, _ in compared]  # once per model and pictures, as eager's
    if any(o is None for o in outputs):
        outputs = float64_outputs(model, [x for x, _, _ in compared])
        if outputs is None:
            return None, []
        for (x, _, _), o in zip(compared, outputs):
            _store(model, "float64", x, o)
    exact = against_float64(outputs, compared, tol, compare, _merge)
    if not any(failures(m, precision) for m in exact["eager_vs_float64"].values()):
        return None, []  # eager fp32 holds the gate against float64 itself: the gate against eager decides
    if exact["verdict"] != "pass":
        return exact, []
    worst = {n: m.get("max_rel") for n, m in exact["eager_vs_float64"].items()}
    return exact, [f"judged against float64: eager fp32 itself is off by max_rel {worst} on these pictures; the "
                   f"artifact is within {exact['factor']:g}x that (gate against eager: {'; '.join(problems)})"]


def _unreproducible(model, run: tuple) -> list[str]:
    """Where eager itself gives other outputs for the same pictures (random ops, dropout left in training
    mode, state kept between calls), past fp32's tolerance whatever the artifact's precision, the failure
    that says so; else none. Run only once parity has failed."""
    import torch

    tol = TOLERANCES["fp32"]
    x, ref, _ = run
    with torch.no_grad():
        again = dict(zip(model.output_names, (t.detach().numpy() for t in model(torch.from_numpy(x.copy())))))
    drift = {n: compare(ref[n], again[n], tol).get("max_rel") for n in ref
             if n in again and np.issubdtype(ref[n].dtype, np.floating) and ref[n].shape == again[n].shape}
    drift = {n: d for n, d in drift.items() if d is not None and d > tol.max_rel}
    return [f"{n}: eager itself is not reproducible (max_rel {d:.3g} between two runs on the same pictures): "
            "the model has random ops, dropout in training mode or state kept between calls; make it "
            "deterministic (model.eval()) before exporting" for n, d in drift.items()]


def verify_pictures(model, session, precision: str = "fp32") -> ParityReport:
    """An artifact with its preprocessing inside (``--embed-preprocessing``): it and the eager wrapper
    on the same raw non-square 8-bit pictures, one at a time (each its own size)."""
    import torch

    from autotimm_deploy.exporter.inputs.samples import non_square_pictures
    from autotimm_deploy.exporter.inputs.pictures import picture_input

    tol = TOLERANCES[precision]
    name = session.inputs[0].name
    per_picture = {}
    for key, img in non_square_pictures().items():
        x = picture_input(img, model.layout)
        with torch.no_grad():
            ref = dict(zip(model.output_names, (t.numpy() for t in model(torch.tensor(x)))))  # (x may be read-only)
        try:
            per_picture[key] = compare_outputs(ref, session.infer({name: x}), tol)
        except Exception as e:  # noqa: BLE001 - a runtime crash is a parity failure
            per_picture[key] = {"runtime": error_metrics(f"runtime failed on {key}: {first_line(e, 200)}")}
    merged = _merge(per_picture)
    problems = [f"{n}: {p}" for n, m in merged.items() for p in failures(m, precision)]
    computed_in, said = _computed_in(session, precision)
    return ParityReport(verdict=Verdict.FAIL if problems else Verdict.PASS, precision=precision, runtime=session.name,
                        device=session.device, batches=[1], tolerance=asdict(tol), metrics=merged,
                        inputs="four raw non-square scikit-image pictures (8-bit), preprocessed inside the graph",
                        per_batch=per_picture, failures=problems, computed_in=computed_in,
                        notes=said)


def _own_reference(model, reference, x: np.ndarray) -> dict[str, np.ndarray] | str:
    """`_reference_outputs`, once per model state and input."""
    own = _cached(model, "reference", x)
    if own is None:
        own = _reference_outputs(reference, x)
        _store(model, "reference", x, own)
    return own


def _reference_outputs(reference, x: np.ndarray) -> dict[str, np.ndarray] | str:
    """The model's own reference outputs for ``x``, or why it could not run (a parity failure)."""
    import torch

    try:
        with torch.no_grad():
            return {k: v.numpy() for k, v in reference(torch.from_numpy(x.copy())).items()}
    except Exception as e:  # noqa: BLE001 - the reference implementation's own error, in one line
        return f"the reference failed: {type(e).__name__}: {first_line(e, 200)}"


def _merge(per_batch: dict[str, dict[str, dict]]) -> dict[str, dict]:
    names = dict.fromkeys(name for pb in per_batch.values() for name in pb)
    return {name: _worst([pb[name] for pb in per_batch.values() if name in pb]) for name in names}


def summary(report: ParityReport | None) -> str:
    """One short line for tables: verdict and the primary output's key numbers."""
    if not report:
        return "skipped"
    _, m = report.primary
    return _line(report.verdict, m) + (" (degenerate reference)" if report.notes and m["kind"] != MetricKind.ERROR
                                       else "")


def reference_summary(report: ParityReport) -> str:
    """The same line for the artifact against the model's own reference (AutoTimm's predict())."""
    ref = report.reference
    verdict = Verdict.FAIL if ref["failures"] else Verdict.PASS
    m = next(iter(ref["metrics"].values()), {"kind": MetricKind.ERROR, "error": "no outputs compared"})
    return _line(verdict, m)


def _line(verdict: Verdict, m: dict) -> str:
    """``verdict: error``, or the verdict and one output's key numbers."""
    kind = MetricKind(m["kind"])
    if kind == MetricKind.ERROR:
        return f"{verdict}: {m['error']}"
    parts = [str(verdict)]
    if kind == MetricKind.DETECTIONS:
        parts.append(f"matched={m['match_rate']:.1%}")
        if m.get("mean_iou") is not None:
            parts.append(f"iou={m['mean_iou']:.4f} dscore={m['max_score_diff']:.1e}")
        if m.get("mask_iou") is not None:
            parts.append(f"mask_iou={m['mask_iou']:.4f}")
    elif kind == MetricKind.EXACT:
        parts.append(f"agreement={m['agreement']:.2%}")
    else:
        parts.append(f"rel={m['max_rel']:.1e}" if m.get("max_rel") is not None else f"abs={m['max_abs']:.1e}")
    if m.get("cosine") is not None:
        parts.append(f"cos={m['cosine']:.6f}")
    if m.get("top1_agreement") is not None:
        parts.append(f"top1={m['top1_agreement']:.0%}")
    if m.get("pixel_agreement") is not None:
        parts.append(f"pixels={m['pixel_agreement']:.2%}")
    return " ".join(parts)
