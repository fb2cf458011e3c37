"""Recipes: a YAML matrix of models x tasks x formats x precisions x batch sizes x devices, exported
by ``autotimm-export --recipe`` and profiled by ``autotimm-profile --recipe``. This folder also
holds the recipes that ship with the package (``*.yaml``; ``--recipe edge`` finds ``edge.yaml``).

- `schema`: load and validate a recipe file; every error names the file and line.
- `jobs`: the recipe as jobs (`ExportJob`, `ProfileJob`), the `JobStatus` a run reports for each,
  and the one rule that says a job is already done.
- `runner`: `run_exports`, `run_profiles`: every job not done, resumable, rows written as they end.
- `fleet`: the same on a Ray cluster (``--ray``): exports anywhere, each timing on its device's node.
- `benchmark`: the recipe's benchmark page (AutoTimm's benchmark tables, measured here).
"""
