"""The int8 retry ladder (issue #31 point 3): an int8 artifact that misses its parity gate on
tolerances alone is exported again along `int8_plan`'s steps, each in its own scratch folder, and the
first that passes is kept. What was tried, and why, goes into the manifest (``export.int8_fallback``)
and the result's fallback line; when no step passes, the plain artifact stays, failing, with the same
record. The pipeline gives the two things it owns: ``attempt(plan)`` (export and check one step)
and ``passes(result)`` (its acceptance rule)."""

from __future__ import annotations

from typing import Any, Callable

from autotimm_deploy.exporter.formats.int8_plan import Int8Plan, calibrator_plans, float_plans, narrow_plans


def closeness(result) -> float:
    """How near an attempt came to eager: its primary output's cosine (-1 when it has none)."""
    parity = result.parity
    cosine = parity.primary[1].get("cosine") if parity is not None and parity.metrics else None
    return -1.0 if cosine is None else float(cosine)


def _row(plan: Int8Plan, result) -> dict[str, Any]:
    parity = result.parity
    return {"step": plan.label, **plan.record(), "error": result.error,
            "verdict": str(parity.verdict) if parity is not None else None,
            "cosine": None if closeness(result) == -1.0 else round(closeness(result), 6),
            "failures": list(parity.failures) if parity is not None else []}


def retry_int8(fmt, model, first, attempt: Callable[[Int8Plan], tuple], passes: Callable[[Any], bool]):
    """``first`` (result, exported, manifest) failed its gate: try the ladder, return the attempt to keep."""
    plain = Int8Plan()
    tried, chosen = [_row(plain, first[0])], None
    best = [closeness(first[0]), plain]  # the closest weights and calibrator so far: later steps use them

    def run(plans: list[Int8Plan]):
        for plan in plans:
            made = attempt(plan)
            tried.append(_row(plan, made[0]))
            if made[1] is not None and passes(made[0]):
                return plan, made
            if not plan.groups and made[1] is not None and closeness(made[0]) > best[0]:
                best[:] = [closeness(made[0]), plan]
        return None

    chosen = run(narrow_plans(fmt)) or run(calibrator_plans(fmt, best[1])) or run(float_plans(fmt, model, best[1]))
    why = "; ".join(first[0].parity.failures)
    result, exported, manifest = chosen[1] if chosen else first
    exported.info["int8_fallback"] = {"why": f"plain int8 missed its gate: {why}", "tried": tried,
                                      "chosen": chosen[0].label if chosen else None}
    if chosen:
        exported.fallback = "; ".join(filter(None, (exported.fallback, f"int8 kept with {chosen[0].label} "
                                                                       f"(plain int8 missed its gate: {why})")))
    return result, exported, manifest
