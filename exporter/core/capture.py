"""Silence what libraries print: converters write graphs, warnings and C++ logs straight to the
process's stdout and stderr (file descriptors 1 and 2), which Python's ``redirect_stdout`` cannot
catch and which would flood the terminal. `captured_output` sends both descriptors to a temporary
file for the duration and hands the text back (for ``--debug`` and error details)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


class Captured:
    text: str = ""


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    result = Captured()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _flush_c_streams()  # what C wrote before goes where it was going, not into the sink
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no real descriptors (an embedded interpreter): nothing to redirect
        yield result
        return
    with tempfile.TemporaryFile("w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(open(os.devnull, "w")) as devnull:  # noqa: SIM115
                try:
                    yield result
                finally:
                    devnull.close()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            _flush_c_streams()  # what C++ wrote through stdio's buffers goes to the sink, not after it
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            result.text = sink.read().decode("utf-8", "replace")


def _flush_c_streams() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)


def quiet_import(name: str):
    """Import module ``name`` without what it prints or warns on import (coremltools on Linux
    reports its macOS-only parts and untested torch versions); its logger keeps errors only."""
    import importlib
    import logging
    import warnings

    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(name)
    logging.getLogger(name.split(".")[0]).setLevel(logging.ERROR)
    return module
