"""One isolated profiling group: reads a job (JSON) on stdin, writes its runs (JSON) on stdout,
progress lines on stderr. Started by `autotimm_deploy.profiler.pipeline` so each group's peak memory is its own."""

from __future__ import annotations

import json
import sys

from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.profiler.measure.peak import CpuFacts
from autotimm_deploy.profiler.measure.settings import Settings
from autotimm_deploy.profiler.pipeline import run_group, target_from_dict


def main() -> int:
    job = json.loads(sys.stdin.read())
    settings = Settings.from_dict(job["settings"])
    try:
        targets = [target_from_dict(d, settings.img_size) for d in job["targets"]]
        facts = CpuFacts.from_dict(job["cpu_facts"]) if job.get("cpu_facts") else None
        runs = run_group(targets, settings, lambda t: print(f"progress: {t}", file=sys.stderr, flush=True), facts)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json.dump([r.to_dict() for r in runs], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
