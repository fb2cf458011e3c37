"""The typed results every reader shares: the parity report (written by `exporter.parity`, kept in
the manifest) and the profile result (written by `profiler.pipeline`, read by the reports, the CPU
target choice and the recipes). Each converts to and from the plain JSON that files hold."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

# the fewest samples whose extremes hold the median with 95 %: min..max covers it with 1 - 2 * 0.5**n,
# 0.9375 at 5 and 0.969 at 6. Under it there is no 95 % interval: ci_low / ci_high are None.
MIN_CI_SAMPLES = 6


class Verdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    NOT_RUN = "not run"  # the artifact's runtime cannot run on this platform (Core ML off macOS)

    def __str__(self) -> str:
        return self.value


class MetricKind(str, Enum):
    """What one output's parity metrics measure; `exporter.parity` gates each kind by its own rule."""

    TENSOR = "tensor"  # float tensors: max_rel / max_abs, cosine, spread, top-1 / pixel agreement
    EXACT = "exact"  # integer outputs (labels, masks, counts): share of equal elements
    DETECTIONS = "detections"  # boxes + scores + labels (+ masks) matched as detections
    ERROR = "error"  # the output is missing, has the wrong shape, NaN, or the runtime failed

    def __str__(self) -> str:
        return self.value


@dataclass
class ParityReport:
    verdict: Verdict
    precision: str
    metrics: dict[str, dict[str, Any]]  # output name -> metrics, each with "kind": MetricKind
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runtime: str | None = None
    device: str | None = None
    batches: list[int] = field(default_factory=list)
    inputs: str | None = None
    tolerance: dict[str, Any] = field(default_factory=dict)
    per_batch: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # input sizes [h, w] compared, when the artifact takes more than one (--dynamic-size); per_batch
    # keys are then "BATCH@HxW"
    sizes: list[list[int]] | None = None
    # the same artifact outputs against the model's own reference implementation, where it has one
    # (AutoTimm models: their predict()): {"against": str, "metrics": {...}, "failures": [...]}
    reference: dict[str, Any] | None = None
    # raw pictures through AutoTimm's own eval transform, predict() and geometry vs through ours and the
    # artifact (exporter/end_to_end.py): {"verdict", "against", "pictures": [...], "failures": [...]}
    end_to_end: dict[str, Any] | None = None
    # fp32 that missed the gate where eager fp32 itself departs from float64 (exporter/parity_exact.py):
    # {"verdict", "factor", "failures", "eager_vs_float64", "artifact_vs_float64"}
    exact: dict[str, Any] | None = None
    # the precision the runtime really computed in, where it is not ``precision``: OpenVINO runs a
    # bf16 IR in fp32 on a CPU without bf16 support, so the check shows fp32's numbers
    computed_in: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == Verdict.PASS

    @property
    def primary(self) -> tuple[str, dict[str, Any]]:
        """The first output's (name, metrics): what one-line summaries show."""
        return next(iter(self.metrics.items()), ("", {"kind": MetricKind.ERROR, "error": "no outputs compared"}))

    @classmethod
    def failed(cls, precision: str, what: str, reason: str) -> "ParityReport":
        """A report for an artifact that could not even be compared (``what`` names the stage)."""
        return cls(Verdict.FAIL, precision, {what: {"kind": MetricKind.ERROR, "error": reason}},
                   failures=[f"{what} failed: {reason}"])

    @classmethod
    def not_run(cls, precision: str, reason: str) -> "ParityReport":
        """A report for an artifact whose runtime cannot run here: nothing compared, nothing failed."""
        return cls(Verdict.NOT_RUN, precision, {"runtime": {"kind": MetricKind.ERROR, "error": reason}},
                   notes=[f"not compared: {reason}"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ParityReport":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        return cls(**{**d, "verdict": Verdict(d["verdict"])})


@dataclass
class AccuracyReport:
    """An artifact's task metric on the user's labelled data (``--eval``) beside eager PyTorch's, in
    points (percent), and the verdict when an accuracy budget (``--max-drop``) was given."""

    data: dict[str, Any]  # source, kind, samples, classes, how pictures were preprocessed
    primary: str  # the metric the budget holds: top1, mAP, mIoU
    eager: dict[str, float | None]
    artifact: dict[str, float | None]
    drop: float | None  # eager - artifact on the primary metric, in points
    max_drop: float | None = None
    verdict: Verdict | None = None  # None: reported only, no budget given
    seconds: float = 0.0
    error: str | None = None  # the artifact failed on the data (its metrics are then empty)

    @property
    def passed(self) -> bool | None:
        return None if self.verdict is None else self.verdict == Verdict.PASS

    def row(self) -> dict[str, Any]:
        """What one table row or report line shows: the primary metric, its drop, the verdict."""
        return {"metric": self.primary, "value": self.artifact.get(self.primary), "drop": self.drop,
                "verdict": str(self.verdict) if self.verdict else None, "error": self.error}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AccuracyReport":
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        return cls(**{**d, "verdict": Verdict(d["verdict"]) if d.get("verdict") else None})


@dataclass
class ProfilePoint:
    """One batch size of one run: latency statistics (ms), throughput, speedup over the baseline."""

    batch: int
    stats_ms: dict[str, float] | None = None  # n, mean, std, min, p50, p90, p95, p99, max, ci_low, ci_high (None: MIN_CI_SAMPLES)
    images_per_s: float | None = None
    speedup_vs_batch1: float | None = None
    vs_baseline: dict[str, float] | None = None  # ratio, ci_low, ci_high, rounds
    samples: int = 0
    stop: str = ""
    error: str | None = None
    settings: dict[str, Any] | None = None  # how the runtime ran this batch (mode, streams, threads ...)
    percent_of_peak: float | None = None  # FLOPs per picture x images/s / the run's peak, in percent

    @property
    def median_ms(self) -> float | None:
        return self.stats_ms["p50"] if self.stats_ms else None

    def to_dict(self) -> dict[str, Any]:
        if self.error:
            return {"batch": self.batch, "error": self.error}
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProfilePoint":
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})


@dataclass
class ProfileRun:
    """One target measured on one device: its points per batch size, memory, GPU time split."""

    target: dict[str, Any]
    runtime: str
    device: str
    points: list[ProfilePoint]
    memory: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    batches_skipped: list[int] = field(default_factory=list)
    phases_ms: dict[str, float] | None = None
    machine: dict[str, Any] = field(default_factory=dict)  # load while measuring and its warnings
    flops_per_image: int | None = None  # counted at export (the manifest's model.flops)
    peak: dict[str, Any] | None = None  # the device's peak for the precision computed, and how it was derived

    @property
    def label(self) -> str:
        return self.target["label"]

    def point(self, batch: int) -> ProfilePoint | None:
        return next((p for p in self.points if p.batch == batch), None)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["points"] = [p.to_dict() for p in self.points]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProfileRun":
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in known},
                      "points": [ProfilePoint.from_dict(p) for p in d["points"]]})


def accepted(parity: ParityReport | None, accuracy: AccuracyReport | None) -> bool:
    """The one rule for an artifact that exported: within the accuracy budget when one was given, and
    through the parity gate, which for reduced precision (a proxy on sample pictures) yields to a
    budget held on the user's own data. An fp32 artifact off eager is a bug, whatever its accuracy."""
    if accuracy is not None and accuracy.error:
        return False
    budget = accuracy is not None and accuracy.verdict is not None
    if budget and not accuracy.passed:
        return False
    if parity is None or parity.passed or parity.verdict == Verdict.NOT_RUN:
        return True
    return budget and parity.precision != "fp32" and tolerance_only(parity)


def tolerance_only(parity: ParityReport) -> bool:
    """Every parity failure is a number past its tolerance; none is an error (a runtime failure at
    another batch or size, a missing output, NaN) that the budget, scored at one size, never saw."""
    metrics = [*parity.metrics.values(), *((parity.reference or {}).get("metrics") or {}).values()]
    return all(str(m.get("kind")) != str(MetricKind.ERROR) for m in metrics)
