"""One isolated profiling group: reads a job (JSON) on stdin, writes its runs (JSON) on stdout,
progress lines on stderr. Started by `profiler.api` so each group's peak memory is its own."""

from __future__ import annotations

import json
import sys

from exporter.errors import UserError


def main() -> int:
    from profiler.api import Settings, _target_from_dict, run_group

    job = json.loads(sys.stdin.read())
    settings = Settings.from_dict(job["settings"])
    try:
        targets = [_target_from_dict(d, settings.img_size) for d in job["targets"]]
        runs = run_group(targets, settings, on_progress=lambda t: print(f"progress: {t}", file=sys.stderr, flush=True))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json.dump(runs, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
