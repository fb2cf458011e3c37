"""What the CLIs share: one-line errors, exit codes, the rich consoles.

Signals. While a command runs (`run_cli`), Ctrl-C, SIGTERM and SIGHUP raise `Interrupted`, so what it
was writing is cleaned up; it ends in one line, exit 128 + the signal. Before that (while a CLI's
modules import and argparse runs) and after it (the interpreter's exit: Ray's shutdown), nothing is
being written: this module, which every CLI imports before the rest of its own, makes them end the
process at once with the same line (`_quit`), never a traceback. (Before it: Python's start and the
package's ``__init__``, some 40 ms.) Only in a CLI's own process: a program that imports the package
keeps its own signal handling.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

# The CLIs, by module (``python -m``) and console script (pyproject.toml's [project.scripts]).
CLIS = {"autotimm_deploy.exporter.cli": "autotimm-export", "autotimm_deploy.profiler.cli": "autotimm-profile",
        "autotimm_deploy.exporter.triton_cli": "autotimm-triton",
        "autotimm_deploy.profiler.predict_cli": "autotimm-predict"}
ENDING = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def _cli_running() -> str | None:
    """The CLI this process is (its console script, or ``python -m`` its module), else None."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name in CLIS:
        return CLIS[spec.name]
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name if name in CLIS.values() else None


def interrupted_line(prog: str, signum: int) -> str:
    return f"{prog}: interrupted ({signal.Signals(signum).name}); no partial files were left\n"


def _quit(signum, _frame):  # a signal handler's signature
    """Ends a CLI that is not running a command (nothing is being written): the line, 128 + signal."""
    for stream in (sys.stdout, sys.stderr):  # what was printed is kept (a signal handler: best effort)
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - a closed pipe or a reentrant call: nothing more to keep
            pass
    if not _reported:  # a second signal after the command said it was interrupted: no second line
        try:
            os.write(2, interrupted_line(_PROG or "autotimm", signum).encode())
        except OSError:  # stderr gone (a closed terminal)
            pass
    os._exit(128 + signum)


def _on_signals(handler, sigint=None) -> dict:
    """``handler`` for SIGTERM and SIGHUP, ``sigint`` (else ``handler``) for Ctrl-C; the handlers
    they replaced. Only the main thread sets handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, sigint if sig == signal.SIGINT and sigint else handler) for sig in ENDING}


def _spawned() -> bool:
    """A child a multiprocessing pool started (it runs the CLI's module again, not the command)."""
    mp = sys.modules.get("multiprocessing")
    return mp is not None and mp.current_process().name != "MainProcess"


_PROG = _cli_running()
_reported = False  # the interrupted line was written
_signalled = 0  # the signal `_terminate` took: code that turns KeyboardInterrupts into its own (Ray's
# ray.wait, in C) raises a plain one, without `Interrupted.signum`
if _PROG is not None and not _spawned():
    _on_signals(_quit)

# after the handlers: Ctrl-C while these import is one line too
import argparse  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
from typing import Callable  # noqa: E402

from autotimm_deploy.exporter.core.environment import cores_available  # noqa: E402
from autotimm_deploy.exporter.core.errors import Fault, Interrupted, UserError, broken_install, first_line  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # interrupted: 128 + the signal number, as shells report it

stderr = Console(stderr=True)
if not stderr.is_terminal:  # piped or captured: one line per message, not wrapped at 80 columns
    stderr = Console(stderr=True, width=400)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2."""

    def error(self, message: str):  # noqa: D401
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(EXIT_USAGE)


# torch's warnings a user can do nothing about, each a stray line before a command's own: "No CUDA runtime
# is found" (Inductor, NNCF on a CPU machine), "<enum 'KernelPreference'> is an Enum subclass" (ExecuTorch)
LIBRARY_CHATTER = ("torch.utils.cpp_extension", "torch.utils._pytree")


def run_cli(prog: str, main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse, run, and turn every exception a user can meet into one line and an exit code. While
    ``main`` runs, Ctrl-C, SIGTERM and SIGHUP raise `Interrupted` (cleaned up like Ctrl-C); the
    handlers before are back after it (in a CLI's process: `_quit`, see the module's docstring)."""
    global _signalled
    _signalled = 0
    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt as e:  # called in-process (a CLI's own process ends in `_quit`)
        return _interrupted(prog, e)
    if not getattr(args, "debug", False):
        for name in LIBRARY_CHATTER:
            logging.getLogger(name).setLevel(logging.ERROR)
    before = _on_signals(_terminate, sigint=_ctrl_c)
    hook, sys.unraisablehook = sys.unraisablehook, _quiet_dropped(sys.unraisablehook)
    try:
        code = main(args)
        raise_if_interrupted()  # a dropped signal: the command went on, but was asked to stop
        return code
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (UserError, Fault) as e:
        sys.stderr.write(f"{prog}: error: {first_line(e, 2000)}\n")
        return e.exit_code
    except KeyboardInterrupt as e:
        return _interrupted(prog, e)
    except Exception as e:  # noqa: BLE001 - a bug: still one line, traceback only on request
        if getattr(args, "debug", False):
            raise
        if isinstance(e, ImportError) and not (e.name or "").startswith("autotimm_deploy"):
            error = broken_install(e)  # a package installed but broken, or removed after installing
            sys.stderr.write(f"{prog}: error: {first_line(error, 2000)}\n")
            return error.exit_code
        sys.stderr.write(f"{prog}: internal error: {type(e).__name__}: {first_line(e)} (rerun with --debug)\n")
        return EXIT_FAILED
    finally:
        _signalled, sys.unraisablehook = 0, hook  # a program's own calls after it are not interrupted
        for sig, handler in before.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)


def _quiet_dropped(hook):
    """``sys.unraisablehook`` that prints nothing for an interrupt Python dropped (no traceback:
    `raise_if_interrupted` raises it again), and what ``hook`` prints for anything else."""
    def quiet(unraisable) -> None:
        if not (_signalled and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            hook(unraisable)
    return quiet


def interrupting_signal(e: KeyboardInterrupt) -> int:
    """The signal behind ``e``: its own, else the one `_terminate` took, else Ctrl-C's."""
    return getattr(e, "signum", None) or _signalled or signal.SIGINT


def raise_if_interrupted() -> None:
    """Raises again the `Interrupted` a signal raised where Python drops exceptions: an at-fork hook
    (logging's runs in the parent of each fork Ray makes while it starts, or a Popen with
    ``preexec_fn``), a ``__del__``, a weakref callback. Python prints "Exception ignored in ..." and
    the command goes on as if no signal had come. Work that forks, and loops over long steps, call
    this; `run_cli` does when the command returns. Outside a running CLI: nothing."""
    if _signalled:
        raise Interrupted(_signalled)


def _interrupted(prog: str, e: KeyboardInterrupt) -> int:
    global _reported
    signum = interrupting_signal(e)
    sys.stderr.write(interrupted_line(prog, signum))
    _reported = True
    return 128 + signum


def _ctrl_c(signum, frame):  # a signal handler's signature
    """Ctrl-C: a KeyboardInterrupt, as ever (a second one interrupts the cleanup), and noted (after
    SIGTERM or SIGHUP: that one, which the exit code reports)."""
    global _signalled
    _signalled = _signalled or signum
    signal.default_int_handler(signum, frame)


def _terminate(signum, _frame):  # a signal handler's signature
    global _signalled
    signal.signal(signum, signal.SIG_IGN)  # a second signal must not interrupt the cleanup
    _signalled = signum
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
