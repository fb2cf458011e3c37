"""Where the test suite's CPU time goes. Run by hand, alone on the machine (the suite takes ~25 min):

    pip install --target /tmp/pyspy py-spy
    /tmp/pyspy/bin/py-spy record --subprocesses --rate 25 --format raw -o /tmp/suite.raw -- \\
        .venv/bin/python -m pytest -q -p no:cacheprovider
    .venv/bin/python benchmarks/suite_profile.py /tmp/suite.raw [--rate 25] [--phase "torch.export tracing"]

py-spy samples every Python process of the run: the two pytest workers and every process they start
(the CLIs, the profiler's isolated workers, Ray's workers, the LiteRT converter, Triton's Python
stubs). Prints three markdown tables of sampled CPU seconds: by process kind, by phase (a phase is a
library frame on the stack; phases nest, so the column does not add up), and, for ``--phase``, by the
test function or fixture that reached it. py-spy counts a thread blocked inside C code as busy, so a
process that mostly waits (a Ray worker's main loop) reads higher than its CPU use.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

# A process kind: the first pattern found in the sampled process's command line.
PROCESSES = (("exec(eval(sys.stdin", "pytest worker"), ("litert_convert", "LiteRT converter"),
             ("profiler.worker", "profiler worker (--isolate)"), ("exporter.cli", "autotimm-export (subprocess)"),
             ("profiler.cli", "autotimm-profile (subprocess)"), ("triton_python_backend_stub", "Triton Python stub"),
             ("/ray/", "Ray (its own processes)"), ("ray::", "Ray (its own processes)"))
# A phase: a frame's text on the stack (file and function as py-spy writes them).
PHASES = (("all imports", "_find_and_load"),
          ("torch.export tracing", "_log_export_wrapper.<locals>.wrapper (torch/export/_trace.py"),
          ("run_decompositions (every caller)", "ExportedProgram.run_decompositions"),
          ("ONNX: torch.onnx.export", "_dynamo_program.<locals>.call"),
          ("ONNX: its decompositions", "_prepare_exported_program_for_export"),
          ("ONNX: torchlib registry", "ONNXRegistry.from_torchlib"),
          ("ONNX: onnxscript optimizer", "ONNXProgram.optimize"),
          ("onnxslim", "_simplify (exporter/formats/onnx_graph.py"),
          ("ExecuTorch lowering", "_lower (exporter/formats/executorch.py"),
          ("edge formats' folded program", "folded_program (exporter/formats/torch_program.py"),
          ("AOTInductor compile", "_compile (exporter/formats/aoti.py"),
          ("OpenVINO", "(openvino/"), ("NNCF", "(nncf/"), ("Core ML", "(coremltools/"),
          ("sympy", "(sympy/"), ("parity", "(exporter/parity.py"))
_PROCESS = re.compile(r'process \d+:"(.*?)"(?:;|$)', re.S)
_TEST = re.compile(r"^(\w+) \(((test_\w+)|conftest)\.py")


def _samples(path: str):
    """(stack frames, sampled process's command line, count) for each line of a py-spy raw file."""
    record = ""
    with open(path) as f:
        for line in f:  # a command line with a newline in it (python -c) goes on over the next lines
            record += line
            stack, _, count = record.rstrip("\n").rpartition(" ")
            if not (count.isdigit() and stack.endswith((")", '"'))):  # a sample ends in a frame, then its count
                continue
            record = ""
            commands = _PROCESS.findall(stack)
            yield stack, (commands[-1] if commands else ""), int(count)


def _kind(command: str) -> str:
    return next((kind for pattern, kind in PROCESSES if pattern in command), "other")


def _table(title: str, counts: Counter, total: int, rate: float, rows: int = 25) -> str:
    lines = [f"| {title} | CPU s | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v / rate:.1f} | {100 * v / total:.1f} % |" for k, v in counts.most_common(rows)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw", help="py-spy's --format raw output")
    p.add_argument("--rate", type=float, default=25.0, help="the --rate it was recorded at (samples a second)")
    p.add_argument("--phase", default="torch.export tracing", choices=[name for name, _ in PHASES],
                   help="the phase to split by test")
    a = p.parse_args()
    by_kind, by_phase, by_test, total = Counter(), Counter(), Counter(), 0
    wanted = dict(PHASES)[a.phase]
    for stack, command, n in _samples(a.raw):
        total += n
        by_kind[_kind(command)] += n
        for name, frame in PHASES:
            if frame in stack:
                by_phase[name] += n
        if wanted in stack:
            tests = [m.group(1) + " (" + m.group(2) + ")" for f in stack.split(";") if (m := _TEST.match(f))]
            by_test[tests[0] if tests else f"(no test on the stack: {_kind(command)})"] += n  # the test or fixture
    print(f"{total / a.rate:.0f} CPU s sampled\n")
    print(_table("process", by_kind, total, a.rate), end="\n\n")
    print(_table("phase (nested)", by_phase, total, a.rate), end="\n\n")
    print(_table(f"test reaching '{a.phase}'", by_test, total, a.rate))


if __name__ == "__main__":
    main()
