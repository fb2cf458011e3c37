"""The repository options and table both CLIs share (`autotimm-triton build`, `autotimm-export
--triton-repo`)."""

from __future__ import annotations

import argparse

from autotimm_deploy.exporter.core.cli import int_in
from autotimm_deploy.exporter.core.errors import UserError
from rich.markup import escape
from rich.table import Table


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """The repository options `autotimm-export --triton-repo` shares."""
    g = p.add_argument_group("Triton model repository")
    g.add_argument("--kind", choices=("cpu", "gpu"), default="cpu", help="instance kind (KIND_CPU / KIND_GPU)")
    g.add_argument("--instances", type=int_in(1, 64), default=1, help="instances per model")
    g.add_argument("--max-batch", type=int_in(1, 4096), default=32,
                   help="max_batch_size for artifacts with an unbounded dynamic batch (default 32)")
    g.add_argument("--queue-delay-us", type=int_in(0, 10_000_000), default=100,
                   help="dynamic batching: max_queue_delay_microseconds (default 100)")
    g.add_argument("--ort-tensorrt", action="store_true",
                   help="onnxruntime backend on GPU: TensorRT execution accelerator")
    g.add_argument("--ensemble-over", choices=("python", "native"), default="python",
                   help="what the raw-picture ensemble runs: the Python-backend variant (our runtime; default) "
                        "or Triton's native backend")
    g.add_argument("--no-warmup", action="store_true", help="no model_warmup in the configs")


def check_serve_options_used(a: argparse.Namespace) -> None:
    """The repository options mean nothing without a repository: refused, not ignored."""
    defaults = {"kind": "cpu", "instances": 1, "max_batch": 32, "queue_delay_us": 100, "ort_tensorrt": False,
                "ensemble_over": "python", "no_warmup": False}
    given = [k for k, v in defaults.items() if getattr(a, k) != v]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"{flags} only apply with --triton-repo DIR")


def serve_options(a: argparse.Namespace):
    from autotimm_deploy.exporter.triton.config import ServeOptions

    return ServeOptions(kind=a.kind, instances=a.instances, max_batch=a.max_batch, queue_delay_us=a.queue_delay_us,
                        ort_tensorrt=a.ort_tensorrt, warmup=not a.no_warmup)


def print_models(models, repo, out) -> None:
    t = Table(title=f"Triton model repository {escape(str(repo))}")
    for c in ("model", "role", "backend", "artifact", "note"):
        t.add_column(c)
    for m in models:
        t.add_row(escape(m.name), m.role, m.backend, escape(m.artifact), f"[yellow]{escape(m.note)}[/]" if m.note else "")
    out.print(t)
    first = next((m.name for m in models if m.role == "ensemble" and not m.note), None)
    out.print(f"serve: autotimm-triton serve {escape(str(repo))}  (or tritonserver --model-repository {escape(str(repo))})")
    if first:
        out.print(f"ask:   python {escape(str(repo))}/client.py picture.jpg --model {escape(first)}")
