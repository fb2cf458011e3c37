"""Errors a user can cause, and faults of the machine. The CLIs print them as one line and exit with
``exit_code``."""

import re


class UserError(Exception):
    """A mistake in the user's input: bad model name, bad shape, unreadable file, missing extra."""

    exit_code = 2


class MissingExtra(UserError):
    """An optional dependency is not installed."""

    def __init__(self, what: str, extra: str | None):
        """``extra`` None: one of autotimm-deploy's own dependencies."""
        super().__init__(f"{what} is not installed; install the [{extra}] extra: pip install 'autotimm-deploy[{extra}]'"
                         if extra else f"{what} is not installed, though autotimm-deploy depends on it: install it "
                                       "again (pip install --force-reinstall autotimm-deploy)")
        self.extra = extra


def broken_install(e: ImportError) -> UserError:
    """An installed package that fails to import (a missing shared library, a version mismatch), as one line."""
    what = getattr(e, "name", None) or "a module autotimm-deploy needs"
    detail = " ".join(str(e).split())[:200]
    return UserError(f"{what} cannot be imported ({detail}): the installation is incomplete or broken; install it "
                     "again (pip install --force-reinstall with the extra that provides it)")


class RuntimeUnavailable(UserError):
    """A runtime that cannot run on this platform at all (Core ML off macOS)."""


class ExportFailed(Exception):
    """A format could not export this model (not the user's fault; exit 1)."""


class Fault(Exception):
    """The machine, not the input, stopped the work (disk full, ...): one line, exit 1."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, or a signal that ends the process (SIGTERM, SIGHUP): cleaned up like Ctrl-C."""

    def __init__(self, signum: int = 2):
        super().__init__(signum)
        self.signum = signum


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


# a line that only says where in a C++ library an error was raised (OpenVINO's "Exception from
# src/inference/src/cpp/core.cpp:84:", "Check 'x' failed at src/core/...cpp:900:")
_WHERE = re.compile(r"^(Exception from \S+:\d+:?|Check '.*' failed at \S+:\d+:?)$")


def first_line(e: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (ANSI colour codes removed, at most
    ``limit`` characters), for one-line reports."""
    text = _ANSI.sub("", str(e))
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    said = [s for s in lines if not _WHERE.match(s)]  # OpenVINO's first lines say where, its last what
    line = next(iter(said or lines), type(e).__name__ if isinstance(e, BaseException) else "")
    return line if len(line) <= limit else line[:limit - 1] + "…"
