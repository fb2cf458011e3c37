"""What both CLIs share: one-line errors, exit codes, the rich consoles."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
from typing import Callable

from autotimm_deploy.exporter.core.environment import cores_available
from autotimm_deploy.exporter.core.errors import Fault, Interrupted, UserError, first_line
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # interrupted: 128 + the signal number, as shells report it

stderr = Console(stderr=True)
if not stderr.is_terminal:  # piped or captured: one line per message, not wrapped at 80 columns
    stderr = Console(stderr=True, width=400)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2."""

    def error(self, message: str):  # noqa: D401
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(EXIT_USAGE)


def run_cli(prog: str, main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse, run, and turn every exception a user can meet into one line and an exit code."""
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):  # clean up on `kill` / a closed terminal
        if sig is not None:
            signal.signal(sig, _terminate)
    try:
        return main(args)
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (UserError, Fault) as e:
        sys.stderr.write(f"{prog}: error: {first_line(e, 2000)}\n")
        return e.exit_code
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        sys.stderr.write(f"{prog}: interrupted ({signal.Signals(signum).name}); no partial files were left\n")
        return 128 + signum
    except Exception as e:  # noqa: BLE001 - a bug: still one line, traceback only on request
        if getattr(args, "debug", False):
            raise
        sys.stderr.write(f"{prog}: internal error: {type(e).__name__}: {first_line(e)} (rerun with --debug)\n")
        return EXIT_FAILED


def _terminate(signum, _frame):  # a signal handler's signature
    signal.signal(signum, signal.SIG_IGN)  # a second signal must not interrupt the cleanup
    raise Interrupted(signum)


def int_in(lo: int, hi: int):
    """An argparse type: an integer from ``lo`` to ``hi`` (a bad one is a one-line usage error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes an integer from {lo} to {hi}, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"takes an integer from {lo} to {hi}, got {value}")
        return value

    return parse


def float_in(lo: float, hi: float, low_open: bool = False):
    """An argparse type: a finite number in [lo, hi] (or (lo, hi] with ``low_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value > hi or value < lo or (low_open and value == lo):
            span = f"{'above' if low_open else 'from'} {lo:g} {'up ' if low_open else ''}to {hi:g}"
            raise argparse.ArgumentTypeError(f"takes a number {span}, got {text!r}")
        return value

    return parse


def threads_type():
    """--threads: 1 to the cores this process may use (more only slows every runtime down)."""
    return int_in(1, cores_available())


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def console(to_stderr: bool = False) -> Console:
    """A console for results: wide when not a terminal, so piped tables are not truncated."""
    c = Console(stderr=to_stderr)
    return c if c.is_terminal else Console(stderr=to_stderr, width=200)


def progress_bar(counts: bool = False) -> Progress:
    """The rich progress bar every long command shows on stderr (off when stderr is not a terminal);
    ``counts`` adds a bar and done/total for work of known size."""
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if counts:
        columns += [BarColumn(), TextColumn("{task.completed}/{task.total}")]
    return Progress(*columns, TimeElapsedColumn(), console=stderr, transient=True, disable=not stderr.is_terminal)
