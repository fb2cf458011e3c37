"""``autotimm-predict``: a thin shell over `autotimm_deploy.profiler.predict.predict`. Picture files in,
answers out: a table (or ``--json``), and with ``-o DIR`` each picture annotated with its answer."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

from autotimm_deploy.exporter.core.cli import EXIT_OK, OneLineParser, console, float_in, int_in, progress_bar, run_cli
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.files import (
    SCRATCH_PREFIX,
    check_out_dir,
    folder_lock,
    keeps_replaced,
    out_dir_for,
    place_files,
    remove_stale_scratch,
    scratch_dir,
    write_bytes,
)
from autotimm_deploy.exporter.core.spec import read_class_names
from autotimm_deploy.profiler.runtimes import runtime_names
from rich.markup import escape
from rich.table import Table

PROG = "autotimm-predict"
MAX_TOP_K = 100


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Run an exported artifact on picture files: the answers in each "
                      "picture's own pixels, with the preprocessing the model was evaluated with.")
    p.add_argument("artifact", help="an artifact autotimm-export wrote (its .json manifest beside it)")
    p.add_argument("pictures", nargs="+", help="picture files or folders (searched recursively)")
    p.add_argument("-o", "--out", metavar="DIR", help="write each picture annotated (<name>.pred.png) and, for "
                   "semantic segmentation, its class mask (<name>.mask.png) into DIR")
    p.add_argument("--json", action="store_true", help='print {"results": [...]} on stdout (table to stderr)')
    p.add_argument("--top-k", type=int_in(1, MAX_TOP_K), default=5, help="classification: classes per picture (5)")
    p.add_argument("--min-score", type=float_in(0, 1), default=0.0, help="detection: keep detections scoring at "
                   "least this (default 0: every one the model returns, which its own score threshold already cut)")
    p.add_argument("--class-names", metavar="FILE", help="class names (one per line, or a JSON list) for an "
                   "artifact whose manifest has none")
    p.add_argument("--runtime", help=f"run it on this runtime ({runtime_names()}; default: its format's own)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: the runtime's own)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


def _outputs(out: Path, files: list[Path]) -> dict[Path, str]:
    """Each picture's output stem in ``out``, unique (a second ``cat.jpg`` from another folder: cat-2)."""
    stems: dict[Path, str] = {}
    taken: set[str] = set()  # case-folded: Cat.jpg and cat.png are one file name on macOS and Windows
    for f in files:
        stem, n = f.stem, 1
        while stem.casefold() in taken:
            n += 1
            stem = f"{f.stem}-{n}"
        taken.add(stem.casefold())
        stems[f] = stem
    inputs = {f.resolve() for f in files}
    for stem in stems.values():
        for name in (f"{stem}.pred.png", f"{stem}.mask.png"):
            if (out / name).resolve() in inputs:
                raise UserError(f"-o {out} would overwrite the picture {out / name}: write the answers elsewhere")
            if (out / name).is_dir() and not (out / name).is_symlink():
                raise UserError(f"-o {out} holds a folder named {name}, where this picture's answer goes: rename "
                                "it or pass another -o")
    return stems


ANSWER_SUFFIXES = (".pred.png", ".mask.png")


def _not_answers(files: list[Path], given: list[str], out: Path | None) -> list[Path]:
    """The pictures to answer: those a folder search found inside ``-o`` named like this tool's answers
    (an earlier run's ``*.pred.png``, ``*.mask.png``), or in a scratch folder a killed run left, are
    left out; a file named on the command line stays."""
    if out is None:
        return files
    named = {Path(g).resolve() for g in given if Path(g).is_file()}
    home = out.resolve()
    kept = [f for f in files if f.resolve() in named or (
        not any(part.startswith(SCRATCH_PREFIX) for part in f.parts)
        and (f.resolve().parent != home or not f.name.endswith(ANSWER_SUFFIXES)))]
    if not kept:
        raise UserError(f"the pictures given are only answers written into -o {out} by an earlier run")
    return kept


def main(a) -> int:
    from autotimm_deploy.profiler.predict import picture_files, predict
    from autotimm_deploy.profiler.report.annotate import draw, mask_png

    names = read_class_names(a.class_names) if a.class_names else None
    out = Path(a.out) if a.out is not None else None
    if out is not None:
        if not str(a.out).strip():
            raise UserError("-o needs a folder name (use -o . for the current folder)")
        check_out_dir(out)
    files = _not_answers(picture_files(a.pictures), a.pictures, out)
    stems = _outputs(out, files) if out is not None else {}
    # answers go to a scratch folder inside -o and into place together at the end: a run that stops
    # (a picture it cannot read, an interrupt) leaves -o as it was; the folders it made, if left empty, go
    with contextlib.ExitStack() as stack:
        scratch = None
        if out is not None:
            stack.enter_context(out_dir_for(out))
            stack.enter_context(folder_lock(out))
            remove_stale_scratch(out)
            scratch = scratch_dir(out, "predict-")
            stack.callback(lambda: keeps_replaced(scratch) or shutil.rmtree(scratch, ignore_errors=True))
        bar = stack.enter_context(progress_bar(counts=True))
        written: list[str] = []

        def write(name: str, data: bytes) -> Path:
            write_bytes(scratch / name, data)
            written.append(name)
            return out / name

        task = bar.add_task(Path(a.artifact).name, total=len(files))

        def done(answer) -> None:
            if out is not None:
                stem = stems[answer.file]
                if answer.mask is not None:
                    answer.mask_file = write(f"{stem}.mask.png", mask_png(answer.mask))
                answer.annotated = write(f"{stem}.pred.png", draw(answer.picture, answer))
            bar.advance(task)

        answers = predict(a.artifact, files, runtime=a.runtime, device=a.device, names=names, top_k=a.top_k,
                          min_score=a.min_score, on_answer=done)
        if scratch is not None:
            place_files(scratch, out, written)
    if a.json:
        print(json.dumps({"artifact": str(a.artifact), "results": [x.to_dict() for x in answers]}, indent=2))
    print_answers(answers, console(a.json))
    return EXIT_OK


def _summary(answer) -> str:
    if answer.top:
        return ", ".join(f"{t['name']} {t['prob']:.1%}" for t in answer.top[:3])
    if answer.task in ("detection", "instance-segmentation"):
        names = [d["name"] for d in answer.detections]
        counted = sorted({n: names.count(n) for n in names}.items(), key=lambda kv: -kv[1])
        return f"{len(names)}: " + ", ".join(f"{n} x{c}" for n, c in counted[:4]) if names else "nothing found"
    return ", ".join(f"class {c['label']} {c['share']:.0%}" for c in answer.class_shares()[:4])


def print_answers(answers, out) -> None:
    t = Table(title=PROG)
    for col in ("picture", "size", "answer", "written"):
        t.add_column(col)
    for x in answers:
        written = ", ".join(str(p.name) for p in (x.annotated, x.mask_file) if p) or "-"
        t.add_row(escape(str(x.file)), f"{x.width}x{x.height}", escape(_summary(x)), escape(written))
    out.print(t)


def entry(argv=None) -> int:
    return run_cli(PROG, main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(entry())
