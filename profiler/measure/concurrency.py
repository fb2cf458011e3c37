"""A concurrency sweep, as Triton's perf_analyzer runs one: at each level N, N client threads each send
requests back to back (each on its own connection) for a fixed time after a warm-up; every request's
round trip is kept. Reported per level: requests, throughput (requests and pictures per second, over
the time from the start of the measurement to the last request's answer) and latency percentiles. A
request that fails stops its client thread, and the level reports the first error. Before and after
each level one request (untimed) has its answer checked against the model's declared outputs: a
server that answers without them reports that error, not a speed."""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np


def sweep(make_caller: Callable[[], Callable[[], object]], levels: list[int], seconds: float, batch: int,
          warmup: float = 1.0, progress: Callable[[str], None] | None = None) -> list[dict]:
    rows = []
    for n in levels:
        if progress:
            progress(f"concurrency {n}: {seconds:g} s")
        rows.append(_level(make_caller, n, seconds, batch, warmup))
    return rows


def _level(make_caller, n: int, seconds: float, batch: int, warmup: float) -> dict:
    callers = [make_caller() for _ in range(n)]
    try:
        wrong = _wrong_answer(callers[0])
        row = _measure(callers, seconds, batch, warmup) if wrong is None else None
        wrong = wrong or _wrong_answer(callers[0])
        return row if wrong is None else {"concurrency": n, "batch": batch, "requests": 0, "error": wrong}
    finally:
        for c in callers:
            if hasattr(c, "close"):
                c.close()


def _wrong_answer(caller) -> str | None:
    """What is wrong with one untimed answer of ``caller`` (a caller that cannot check is not checked)."""
    check = getattr(caller, "checked_call", None)
    try:
        if check is not None:
            check()
    except Exception as e:  # noqa: BLE001 - reported in the row
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return None


def _measure(callers, seconds: float, batch: int, warmup: float) -> dict:
    n = len(callers)
    latencies: list[list[float]] = [[] for _ in range(n)]
    last = [0.0] * n
    errors: list[str] = []
    start = threading.Barrier(n + 1)
    clock: dict[str, float] = {}

    def work(i: int) -> None:
        call = callers[i]
        try:
            start.wait()
            while time.perf_counter() < clock["measure"]:
                call()
            while time.perf_counter() < clock["stop"]:
                t0 = time.perf_counter()
                call()
                last[i] = time.perf_counter()
                latencies[i].append(last[i] - t0)
        except Exception as e:  # noqa: BLE001 - reported in the row
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    clock.update(measure=now + warmup, stop=now + warmup + seconds)
    start.wait()
    for t in threads:
        t.join()
    done = np.array([x for per in latencies for x in per]) * 1000
    elapsed = max(last) - clock["measure"]
    row = {"concurrency": n, "batch": batch, "seconds": round(elapsed, 3), "requests": int(done.size)}
    if errors:
        row["error"] = errors[0]
    if done.size and elapsed > 0:
        row.update(requests_per_s=round(done.size / elapsed, 2), images_per_s=round(done.size * batch / elapsed, 2),
                   mean_ms=round(float(done.mean()), 3),
                   **{f"p{q}_ms": round(float(np.percentile(done, q)), 3) for q in (50, 90, 99)})
    return row
