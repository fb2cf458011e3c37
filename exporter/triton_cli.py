"""``autotimm-triton``: a Triton model repository from exported artifacts, and a local server for it.

    autotimm-triton build out/resnet18.onnx out/resnet18.xml -o repo     # or a folder of artifacts
    autotimm-triton serve repo                                            # the bundled tritonserver
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from autotimm_deploy.exporter.core.cli import EXIT_OK, OneLineParser, console, int_in, raise_if_interrupted, run_cli
from autotimm_deploy.exporter.triton.console import add_serve_options, print_models, serve_options
from rich.markup import escape

PROG = "autotimm-triton"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Triton Inference Server model repositories from exported artifacts")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    b = sub.add_parser("build", help="write a model repository for artifacts (files with manifests, or folders)")
    b.add_argument("artifacts", nargs="+", help="artifacts with their manifests, or folders holding them")
    b.add_argument("-o", "--repo", required=True, help="the repository folder to create (must not exist)")
    b.add_argument("--name", action="append", help="the served name of each artifact, in order (repeat)")
    b.add_argument("--json", action="store_true", help="print the models as JSON")
    b.add_argument("--allow-failed", action="store_true",
                   help="serve artifacts whose manifest says they failed their parity check (refused otherwise)")
    add_serve_options(b)
    s = sub.add_parser("serve", help="serve a repository with the tritonserver bundled in nvidia-pytriton "
                                     "(Python backend: the _python, _preprocess and _ensemble models)")
    s.add_argument("repo")
    s.add_argument("--model", action="append", help="load only these models (repeat)")
    s.add_argument("--http-port", type=int_in(1, 65535), default=8000)
    s.add_argument("--grpc-port", type=int_in(1, 65535), default=8001)
    for command in (b, s):  # --debug after the command too: where the error lines suggest it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def main(a: argparse.Namespace) -> int:
    return {"build": _build, "serve": _serve}[a.command](a)


def _build(a: argparse.Namespace) -> int:
    from autotimm_deploy.exporter.triton import build_repository

    models = build_repository(a.artifacts, a.repo, serve_options(a), names=a.name, ensemble_over=a.ensemble_over,
                              allow_failed=a.allow_failed)
    if a.json:
        print(json.dumps({"repository": a.repo, "models": [vars(m) for m in models]}, indent=2))
    print_models(models, a.repo, console(a.json))
    return EXIT_OK


def _serve(a: argparse.Namespace) -> int:
    from autotimm_deploy.exporter.triton.server import failure, serving

    out = console(True)
    with serving(a.repo, models=a.model, http_port=a.http_port, grpc_port=a.grpc_port) as server:
        out.print(f"serving {', '.join(server.loaded)} on http {server.http_url}, grpc {server.grpc_url}")
        for name, why in server.skipped.items():
            out.print(f"[yellow]not loaded[/] {escape(name)}: {escape(why)}")
        out.print("Ctrl-C (or SIGTERM) stops the server")
        while server.process.poll() is None:
            raise_if_interrupted()
            time.sleep(0.5)
        why = failure(server.log.read_text(errors="replace"))
        sys.stderr.write(f"{PROG}: error: tritonserver exited ({server.process.returncode}): {why}\n")
        return 1


def entry(argv=None) -> int:
    return run_cli(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(entry())
