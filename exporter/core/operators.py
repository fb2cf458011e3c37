"""Operators a runtime has of its own, which the graph being traced may call instead of spelling the
same computation out in plain tensor ops, and a record of which form a traced graph got.

Greedy class-aware NMS is the one such computation: the models write it as ``max_detections``
unrolled rounds of plain tensor math (every format holds that), or, while a format that has an
NMS operator traces them (``nms_operator()``: the ONNX graph, whose ``NonMaxSuppression`` ONNX
Runtime, OpenVINO and TensorRT run), as one call the format translates into that operator.
Whichever form a model traces, it says so (``note_nms``); the pipeline records it in the
manifest (``export.nms``) through ``recording()``.

Only the switch and the record live here (the bottom layer, which both the models and the formats
import); the models own the NMS and the formats own its translation.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

ONNX_NMS = "onnx NonMaxSuppression"


def unrolled_nms(rounds: int) -> str:
    """How the manifest names NMS written out as plain tensor math."""
    return f"unrolled greedy ({rounds} rounds)"


@dataclass
class Trace:
    """What a traced graph holds: ``nms`` is ``ONNX_NMS``, ``unrolled_nms(N)``, or None (no NMS)."""

    nms: str | None = None


_OPERATOR = contextvars.ContextVar("autotimm_deploy_nms_operator", default=False)
_RECORD: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("autotimm_deploy_trace", default=None)


@contextlib.contextmanager
def nms_operator() -> Iterator[None]:
    """While inside, models trace NMS as one operator call (the format must translate it)."""
    token = _OPERATOR.set(True)
    try:
        yield
    finally:
        _OPERATOR.reset(token)


def nms_operator_allowed() -> bool:
    return _OPERATOR.get()


@contextlib.contextmanager
def recording() -> Iterator[Trace]:
    """A record of the NMS the models trace while inside (the innermost record gets it)."""
    trace = Trace()
    token = _RECORD.set(trace)
    try:
        yield trace
    finally:
        _RECORD.reset(token)


def note_nms(kind: str) -> None:
    """Called by a model's NMS as it is traced (or run): ``kind`` is what the graph holds."""
    trace = _RECORD.get()
    if trace is not None:
        trace.nms = kind
