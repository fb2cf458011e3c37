"""``autotimm-predict``: a thin shell over `autotimm_deploy.profiler.predict.predict`. Picture files in,
answers out: a table (or ``--json``), and with ``-o DIR`` each picture annotated with its answer."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from autotimm_deploy.exporter.core.cli import EXIT_OK, OneLineParser, console, float_in, int_in, progress_bar, run_cli
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.files import atomic_write_bytes, check_out_dir, out_dir_for, remove_file
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
    taken: set[str] = set()
    for f in files:
        stem, n = f.stem, 1
        while stem in taken:
            n += 1
            stem = f"{f.stem}-{n}"
        taken.add(stem)
        stems[f] = stem
    inputs = {f.resolve() for f in files}
    for stem in stems.values():
        for name in (f"{stem}.pred.png", f"{stem}.mask.png"):
            if (out / name).resolve() in inputs:
                raise UserError(f"-o {out} would overwrite the picture {out / name}: write the answers elsewhere")
    return stems


def main(a) -> int:
    from autotimm_deploy.profiler.predict import picture_files, predict
    from autotimm_deploy.profiler.report.annotate import draw, mask_png

    names = read_class_names(a.class_names) if a.class_names else None
    files = picture_files(a.pictures)
    out = Path(a.out) if a.out is not None else None
    if out is not None:
        if not str(a.out).strip():
            raise UserError("-o needs a folder name (use -o . for the current folder)")
        check_out_dir(out)
        stems = _outputs(out, files)
    made: list[Path] = []  # answers this run wrote where there was no file

    def write(path: Path, data: bytes) -> Path:
        if not path.exists():
            made.append(path)
        atomic_write_bytes(path, data)
        return path

    # the folders it makes are removed again if it stops and leaves them empty
    with out_dir_for(out) if out is not None else contextlib.nullcontext(), progress_bar(counts=True) as bar:
        task = bar.add_task(Path(a.artifact).name, total=len(files))

        def done(answer) -> None:
            if out is not None:
                stem = stems[answer.file]
                if answer.mask is not None:
                    answer.mask_file = write(out / f"{stem}.mask.png", mask_png(answer.mask))
                answer.annotated = write(out / f"{stem}.pred.png", draw(answer.picture, answer))
            bar.advance(task)

        try:
            answers = predict(a.artifact, files, runtime=a.runtime, device=a.device, names=names, top_k=a.top_k,
                              min_score=a.min_score, on_answer=done)
        except BaseException:  # a picture it cannot read, an interrupt: no partial set of new answers is left
            for f in made:
                remove_file(out, f.name)
            raise
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
