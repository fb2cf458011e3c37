"""What both CLIs share: one-line errors, exit codes, the rich consoles."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable

from autotimm_deploy.exporter.core.errors import UserError, first_line
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

stderr = Console(stderr=True)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2."""

    def error(self, message: str):  # noqa: D401
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(EXIT_USAGE)


def run_cli(prog: str, main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse, run, and turn every exception a user can meet into one line and an exit code."""
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # clean up scratch files on `kill` as on Ctrl-C
    try:
        return main(args)
    except UserError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; no partial files were left\n")
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a bug: still one line, traceback only on request
        if getattr(args, "debug", False):
            raise
        sys.stderr.write(f"{prog}: internal error: {type(e).__name__}: {first_line(e)} (rerun with --debug)\n")
        return EXIT_FAILED


def _terminate(signum, frame):
    raise KeyboardInterrupt


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
