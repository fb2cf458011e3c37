import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from autotimm_deploy.exporter.core.spec import ModelSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download weights
if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each (and their subprocesses)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Test files that must share one pytest-xdist worker (run one after another): the fleet's, as
# each starts its own Ray cluster on this machine; the edge tests share `small_artifacts` with the
# profiler's (a session fixture is built once a worker).
SAME_WORKER = {"tests/test_fleet_faults.py": "tests/test_fleet.py", "tests/test_reliability_fleet.py": "tests/test_fleet.py",
               "tests/test_edge_formats.py": "tests/test_profiler.py"}


# The longest files and groups (280 s down to 95 s on 2 Zen 3 cores, measured) go to the workers first,
# so that no long file starts last while the other worker sits idle; the rest follow in collection order.
LONGEST_FIRST = ("tests/test_fleet.py", "tests/test_profiler.py", "tests/test_accuracy.py", "tests/test_formats.py",
                 "tests/test_autotimm.py", "tests/test_aoti.py", "tests/test_cpp_example.py", "tests/test_recipes.py",
                 "tests/test_embedded.py", "tests/test_triton.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}

    def key(item):
        path = SAME_WORKER.get(item.nodeid.split("::", 1)[0], item.nodeid.split("::", 1)[0])
        return rank.get(path, len(rank))

    items.sort(key=key)  # stable: within a file, and among the rest, the collection order stays


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist (``-n``): whole files to a worker (their module fixtures built once), the files
    of `SAME_WORKER` together, in `LONGEST_FIRST`'s order (xdist would otherwise sort them by their
    number of tests: a one-test file of two minutes last)."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SAME_WORKER.get(path, path)

    return FileScheduling(config, log)

ROOT = Path(__file__).resolve().parents[1]


def run_cli(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run a CLI in a fresh interpreter, as a user would."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def call_cli(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run a CLI's ``entry`` in this process, as `run_cli` would run it: its exit code, and as its
    stdout and stderr what Python and C code write to them (file descriptors 1 and 2), warnings as
    Python's defaults print them, and log records that reach no handler (Python's last resort).
    The working folder, environment and torch's thread count are put back after it. Several seconds
    faster a call than a fresh interpreter (importing torch and timm again), which each CLI keeps for
    what only a fresh process shows (import-time noise, signals): see `run_cli`'s callers."""
    import ctypes
    import importlib
    import io
    import tempfile
    import warnings
    from contextlib import ExitStack, redirect_stderr, redirect_stdout

    import torch

    entry = importlib.import_module(module).entry
    out, err, here, env, threads = io.StringIO(), io.StringIO(), os.getcwd(), dict(os.environ), torch.get_num_threads()
    last_resort = _LastResort(err)
    with ExitStack() as stack:
        fds = {fd: stack.enter_context(tempfile.TemporaryFile()) for fd in (1, 2)}
        sys.stdout.flush(), sys.stderr.flush()
        saved = {fd: os.dup(fd) for fd in fds}
        try:
            for fd, f in fds.items():
                os.dup2(f.fileno(), fd)
            os.environ.update(HF_HUB_OFFLINE="1", COLUMNS="200")
            logging.getLogger().addHandler(last_resort)
            with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():
                warnings.simplefilter("default")
                for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                    warnings.simplefilter("ignore", quiet)
                warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
                    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
                if cwd is not None:
                    os.chdir(cwd)
                try:
                    code = entry(list(args))
                except SystemExit as e:  # argparse: --help, or a refusal at parse time
                    if not isinstance(e.code, int) and e.code is not None:
                        print(e.code, file=sys.stderr)
                    code = e.code if isinstance(e.code, int) else int(e.code is not None)
        finally:
            ctypes.CDLL(None).fflush(None)  # what C code buffered for the descriptors
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)
            logging.getLogger().removeHandler(last_resort)
            os.chdir(here)
            os.environ.clear()
            os.environ.update(env)
            torch.set_num_threads(threads)
        written = {fd: (f.seek(0), f.read().decode(errors="replace"))[1] for fd, f in fds.items()}
    return subprocess.CompletedProcess([module, *args], code, out.getvalue() + written[1], err.getvalue() + written[2])


class _LastResort(logging.Handler):
    """Python's ``logging.lastResort`` for an in-process CLI under pytest (whose own handlers sit on
    the root logger): a warning or worse that no other handler takes is printed to ``stream``."""

    def __init__(self, stream):
        super().__init__(logging.WARNING)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self and not type(h).__module__.startswith("_pytest") for h in logger.handlers):
                return  # another handler took it: a real process would not print it here either
            logger = logger.parent if logger.propagate else None
        self.stream.write(self.format(record) + "\n")


@pytest.fixture
def export_cli():
    return lambda *args, **kw: call_cli("autotimm_deploy.exporter.cli", *args, **kw)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


SMALL = ModelSpec("test_resnet", num_classes=6, img_size=(64, 64))


@pytest.fixture(scope="session")
def small_artifacts(tmp_path_factory):
    """`SMALL` in every format this machine exports, each through its parity check (read-only: copy
    before changing one). AOTInductor compiles for ~25 s: tests/test_aoti.py builds its own; Core ML's
    parity runs on macOS only (tests/test_coreml.py)."""
    from autotimm_deploy.exporter.formats import available_formats

    return export_small([f for f in available_formats() if f not in ("aoti", "coreml")], tmp_path_factory.mktemp("small"))


def export_small(formats: list[str], out) -> dict:
    """`SMALL` exported to ``formats`` in ``out``, each through its parity check: format -> artifact."""
    from autotimm_deploy.exporter.pipeline import export

    results = export(SMALL, formats, out)
    for r in results:
        assert r.ok, (r.format, r.error, r.parity and r.parity.failures)
    return {r.format: r.artifact for r in results}


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """A test_resnet trained in seconds on scikit-learn's digits (a real accuracy), its held-out
    pictures as an image folder, and calibration data (tests/labelled_data.py)."""
    pytest.importorskip("sklearn")
    from labelled_data import train_digits

    return train_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def lfw(tmp_path_factory):
    """The same on scikit-image's lfw_subset(): 200 real face / non-face pictures."""
    from labelled_data import train_lfw

    return train_lfw(tmp_path_factory.mktemp("lfw"))
