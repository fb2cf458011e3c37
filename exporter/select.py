"""``--target cpu``: export every CPU candidate (runtime x precision), verify each, time the ones that
pass parity at batch 1 interleaved with eager PyTorch, and keep the fastest.

A pipeline above both the export and the profile pipelines (`autotimm_deploy.profiler.pipeline.run_group`):
choosing needs both halves. See docs/formats.md, "Choosing for a CPU target".
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from autotimm_deploy.exporter.core.files import (
    check_out_dir,
    folder_lock,
    install_artifact,
    out_dir_for,
    remove_stale_scratch,
    scratch_dir,
)
from autotimm_deploy.exporter.core.environment import cpu_flags
from autotimm_deploy.exporter.core.manifest import load_manifest, manifest_path
from autotimm_deploy.exporter.core.spec import ModelSpec
from autotimm_deploy.exporter.formats import ExportOptions, get_format
from autotimm_deploy.exporter.formats.aoti import AOTIOptions
from autotimm_deploy.exporter.formats.onnx import OnnxOptions
from autotimm_deploy.exporter.inputs.calibration import load_calibration
from autotimm_deploy.exporter.models import build_model
from autotimm_deploy.exporter.pipeline import (
    ExportResult,
    _refuse_taken,
    check_calibration_source,
    check_eval_options,
    export,
    planned_paths,
    prepare_evaluation,
)
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.measure.timing import HarnessConfig
from autotimm_deploy.profiler.pipeline import run_group
from autotimm_deploy.profiler.targets import eager_twin, resolve

# ONNX's int8 candidate is the u8s8 form (asymmetric uint8 activations), which ONNX Runtime's CPU
# kernels run natively: 2.8x fp32 on resnet18 here, where the default s8s8 (TensorRT's form) ran as
# fast as fp32 (benchmarks/ort_int8_forms.py). AOTInductor comes plain, frozen (weights folded and
# prepacked), bf16 and PT2E int8 (both frozen). A bf16 candidate of any format is one only where the
# CPU has bf16 instructions: without them OpenVINO emulates bf16, far slower than its own fp32
# (convnext_tiny 2155 ms against 79 ms, vit_base 8695 against 239, on an AVX-512 VNNI Xeon).
FROZEN = {"aoti": AOTIOptions(freezing=True)}

# (format, precision, variant, format options): every artifact a CPU deployment could use, in export order.
CPU_CANDIDATES = [("onnx", "fp32", None, {}), ("onnx", "int8", "u8s8", {"onnx": OnnxOptions(int8_form="u8s8")}),
                  ("torchscript", "fp32", None, {}), ("aoti", "fp32", None, {}), ("aoti", "fp32", "frozen", FROZEN),
                  ("aoti", "bf16", None, {}), ("aoti", "int8", None, {}),
                  ("openvino", "fp32", None, {}), ("openvino", "bf16", None, {}), ("openvino", "int8", None, {})]
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs that compute in bfloat16


@dataclass
class Candidate:
    format: str
    precision: str
    variant: str | None = None  # what sets it apart from the format's plain export at that precision
    format_options: dict[str, Any] = field(default_factory=dict)
    result: ExportResult | None = None
    median_ms: float | None = None
    speedup: dict[str, float] | None = None  # vs eager: ratio, ci_low, ci_high
    skipped: str | None = None

    @property
    def label(self) -> str:
        return f"{self.format} {self.precision}" + (f" ({self.variant})" if self.variant else "")

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.result is not None and self.result.ok

    def row(self, chosen: bool) -> dict[str, Any]:
        parity = self.result.parity if self.result else None
        acc = self.result.accuracy if self.result else None
        m = parity.primary[1] if parity else {}
        return {"format": self.format, "precision": self.precision, "variant": self.variant, "median_ms": self.median_ms,
                "speedup_vs_eager": self.speedup, "parity": str(parity.verdict) if parity else None,
                "max_rel": m.get("max_rel"), "cosine": m.get("cosine"), "top1_agreement": m.get("top1_agreement"),
                "accuracy": acc.row() if acc else None,
                "diagnosis": self.result.diagnosis if self.result else None,
                "failures": parity.failures if parity else [],
                "note": self.skipped or (self.result.error if self.result and self.result.error else None),
                "chosen": chosen}


def rank(candidates: list[Candidate]) -> list[Candidate]:
    """Fastest first among those that passed parity and were timed; then the rest, in input order."""
    timed = sorted((c for c in candidates if c.passed and c.median_ms is not None), key=lambda c: c.median_ms)
    return timed + [c for c in candidates if c not in timed]


def choose(candidates: list[Candidate]) -> Candidate | None:
    best = rank(candidates)[0] if candidates else None
    return best if best is not None and best.passed and best.median_ms is not None else None


def available_candidates(options: ExportOptions) -> list[Candidate]:
    out = []
    bf16 = cpu_flags() & set(BF16_FLAGS)
    for fmt, precision, variant, format_options in CPU_CANDIDATES:
        c = Candidate(fmt, precision, variant, dict(format_options))
        reason = get_format(fmt).unavailable_reason()
        if reason:
            c.skipped = reason
        elif precision == "bf16" and not bf16:
            c.skipped = f"this CPU has no bfloat16 instructions ({' or '.join(BF16_FLAGS)})"
        elif options.dynamic_size and not get_format(fmt).dynamic_size:
            c.skipped = "fixes the input size (--dynamic-size)"
        elif precision == "int8" and options.calib_data is None and not options.calib_random:
            c.skipped = "no calibration data (--calib-data)"
        out.append(c)
    return out


def target_cpu(spec: ModelSpec, out_dir: str | Path, options: ExportOptions | None = None, force: bool = False,
               max_time: float = 15.0, threads: int | None = None,
               progress: Callable[..., None] | None = None) -> tuple[Candidate | None, list[Candidate], dict]:
    """Returns (winner or None, all candidates ranked, eager timing). The winner's files are moved
    into ``out_dir`` and its manifest records the ranking under ``target``."""
    options = options or ExportOptions()
    step = progress or (lambda _t, advance=True: None)
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    candidates = available_candidates(options)
    # taken (without --force) or, with it, not replaceable (immutable): said before the search
    _refuse_taken({c.label: planned_paths([c.format], out_dir, spec.stem(c.precision))[c.format]
                   for c in candidates}, force)
    if options.calib_data or options.calib_random:
        check_calibration_source(replace(options, precision="int8"))
    check_eval_options(options)
    step(f"build {spec.model}")
    model = build_model(spec)
    if any(c.precision == "int8" and not c.skipped for c in candidates):  # bad calibration data: fail now
        load_calibration(options.calib_data, options.calib_samples, model.preprocessing, options.calib_random,
                         exact=options.calib_samples_given)
    shared: dict = {}  # one fp32 ONNX graph for the ONNX and OpenVINO candidates, one eager --eval pass
    prepare_evaluation(options, model, shared, step)  # bad evaluation data: fail now, before writing
    with out_dir_for(out_dir), folder_lock(out_dir):  # nothing chosen or a refusal: no empty -o left
        remove_stale_scratch(out_dir)
        scratch = scratch_dir(out_dir, "target-")
        try:
            return _search(spec, model, candidates, options, scratch, out_dir, max_time, threads, step, shared)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _search(spec, model, candidates: list[Candidate], options: ExportOptions, scratch: Path, out_dir: Path,
            max_time: float, threads: int | None, step, shared: dict) -> tuple[Candidate | None, list[Candidate], dict]:
    """Export and verify every candidate into ``scratch``, time the passing ones, install the winner."""
    for c in candidates:
        if c.skipped:
            continue
        step(f"export + verify {c.label}")
        own = replace(options, precision=c.precision, format_options={**options.format_options, **c.format_options})
        folder = scratch / "-".join(filter(None, (c.format, c.precision, c.variant)))
        (c.result,) = export(spec, [c.format], folder, own, verify=True, model=model, cache=shared)
    passing = [c for c in candidates if c.passed]
    if not passing:
        return None, rank(candidates), {}
    step(f"timing {len(passing)} candidates against eager, interleaved")
    targets = [resolve(str(c.result.artifact)) for c in passing]
    targets.insert(0, eager_twin(targets[0]))
    settings = Settings(threads=threads, batch_sizes=[1],
                        harness=HarnessConfig(max_time=max_time, warmup_time=min(5.0, max_time / 3)))
    runs = run_group(targets, settings, on_progress=step)
    eager = runs[0].points[0]
    for c, run in zip(passing, runs[1:]):
        point = run.points[0]
        if point.error:
            c.skipped = f"timing failed: {point.error}"
            continue
        c.median_ms = point.median_ms
        c.speedup = point.vs_baseline
    ranked = rank(candidates)
    winner = choose(candidates)
    warnings = list(dict.fromkeys(w for run in runs for w in run.machine.get("warnings", [])))
    eager_info = {"median_ms": eager.median_ms, "warnings": warnings}
    if winner is not None:
        _install_winner(winner, ranked, eager_info, out_dir, options.max_drop)
    return winner, ranked, eager_info


RULE = "fastest batch-1 median among candidates that passed their precision's parity gate"
RULE_BUDGET = ("fastest batch-1 median among candidates within {drop:g} points of eager's metric on the labelled "
               "data (fp32 ones also through their parity gate)")


def _install_winner(winner: Candidate, ranked: list[Candidate], eager: dict, out_dir: Path,
                    max_drop: float | None = None) -> None:
    src = winner.result.artifact
    manifest = load_manifest(src)
    manifest.target = {"name": "cpu", "eager_ms": eager["median_ms"],
                       "ranking": [c.row(c is winner) for c in ranked],
                       "rule": RULE if max_drop is None else RULE_BUDGET.format(drop=max_drop),
                       "warnings": eager.get("warnings", [])}
    files = {name: src.parent / name for name in manifest.files}
    winner.result.artifact, winner.result.manifest = install_artifact(out_dir, manifest.artifact, files, manifest)
    manifest_path(src).unlink(missing_ok=True)
