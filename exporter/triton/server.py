"""A Triton Inference Server on this machine, for tests and for `autotimm-triton serve`: the real
``tritonserver`` binary that PyPI's ``nvidia-pytriton`` wheel bundles (with the Python backend only),
started the way PyTriton's own launcher starts it: the binaries copied into a work folder with the
Python backend stub for this interpreter, the wheel's libraries on ``LD_LIBRARY_PATH``, and this
interpreter's ``bin/`` first on ``PATH`` so Python-backend models run in this environment. Bound to
127.0.0.1 on free ports; always stopped when the ``with`` block ends, failing or not."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from autotimm_deploy.exporter.core.cli import raise_if_interrupted
from autotimm_deploy.exporter.core.errors import UserError

INSTALL = ("the Triton server binary comes with PyPI's nvidia-pytriton wheel: pip install --no-deps "
           "nvidia-pytriton (Linux x86_64 or aarch64, glibc 2.35+), or run the repository in NVIDIA's Triton container")
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
PORT_TRIES = 3  # starts on fresh free ports when one we picked was taken before the server bound it
SHM = Path("/dev/shm")
# the Python backend's shared-memory regions are named after our pid and the serving's token, so a
# later start removes what a launcher killed with -9 (and its server) left: `remove_stale_regions`
SHM_PREFIX = "autotimm-triton-shm-"
_SHM_OWNER = re.compile(rf"^{re.escape(SHM_PREFIX)}(\d+)-")


@dataclass
class Server:
    """A running server: its ports, its log file, and the process."""

    http_port: int
    grpc_port: int
    metrics_port: int
    log: Path
    process: subprocess.Popen
    loaded: list[str]
    skipped: dict[str, str]  # model -> why this server does not load it

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def bundled_server() -> tuple[Path, Path]:
    """(the wheel's ``tritonserver`` folder, its libraries folder), or a one-line `UserError`."""
    spec = importlib.util.find_spec("pytriton")  # not imported: only its files are needed
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"no tritonserver here: {INSTALL}")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    if not (root / "bin" / "tritonserver").is_file():
        raise UserError(f"nvidia-pytriton is installed without its tritonserver binary ({root}): {INSTALL}")
    return root, libs


def servable(repository: Path, backends: set[str]) -> tuple[list[str], dict[str, str]]:
    """The repository's models this server can load (their backend is among ``backends``; an
    ensemble when all its steps are), and the others with the reason."""
    from autotimm_deploy.exporter.triton.config import schema
    from google.protobuf import text_format

    configs = {}
    for path in sorted(repository.glob("*/config.pbtxt")):
        try:
            configs[path.parent.name] = text_format.Parse(path.read_text(), schema().ModelConfig())
        except text_format.ParseError as e:
            raise UserError(f"{path} is not a valid Triton config: {e}") from None
    skipped = {name: f"this server has no {c.backend} backend" for name, c in configs.items()
               if c.platform != "ensemble" and c.backend not in backends}
    changed = True
    while changed:  # an ensemble over a skipped model is skipped too
        changed = False
        for name, c in configs.items():
            if c.platform == "ensemble" and name not in skipped:
                missing = [s.model_name for s in c.ensemble_scheduling.step
                           if s.model_name in skipped or s.model_name not in configs]
                if missing:
                    skipped[name] = f"its step {missing[0]} is not loaded"
                    changed = True
    return [n for n in configs if n not in skipped], skipped


def free_port(held: contextlib.ExitStack | None = None) -> int:
    """A port free on 127.0.0.1 now; with ``held``, its socket stays bound until ``held`` closes, so the
    next pick cannot return it."""
    s = socket.socket()
    with contextlib.ExitStack() as closing:
        (held or closing).enter_context(s)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_ports(http_port: int | None, grpc_port: int | None) -> tuple[int, int, int]:
    """(http, grpc, metrics): the ports given, the others free now and distinct (each held bound until
    all are picked). Another program may still take one before the server binds it: `serving` then
    starts again on fresh ones."""
    given = {p for p in (http_port, grpc_port) if p}
    with contextlib.ExitStack() as held:
        def pick() -> int:
            return next(port for port in iter(lambda: free_port(held), None) if port not in given)

        return http_port or pick(), grpc_port or pick(), pick()


def check_port(port: int, what: str) -> None:
    """A port something else listens on would answer our readiness check for the wrong server."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UserError(f"port {port} ({what}) on 127.0.0.1 is in use: pass another --{what}-port") from None


TMP_PREFIX = "autotimm-triton-"


def remove_stale_copies() -> None:
    """Server copies left by a launcher that was killed (``kill -9``): their pid is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*-*"):
        pid = folder.name[len(TMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and folder.is_dir() and not folder.is_symlink() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def remove_stale_regions(shm: Path = SHM, prefix: str | None = None) -> list[str]:
    """Shared-memory regions of ours (`SHM_PREFIX`) whose launcher is gone, or, with ``prefix``, those
    of one serving (its server stopped); returns their names. Nobody else's region is touched."""
    removed = []
    with contextlib.suppress(OSError):
        for p in shm.iterdir():
            owner = _SHM_OWNER.match(p.name)
            if owner is None:
                continue
            ours = p.name.startswith(prefix) if prefix else not Path(f"/proc/{owner.group(1)}").exists()
            if ours and p.is_file() and not p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p.name)
    return removed


def check_model_files(repository: Path, models: list[str]) -> None:
    """Each Python-backend model to be loaded (the steps of an ensemble too) has the version folder and
    the ``model.py`` the server would load: without them tritonserver waits silently until the timeout."""
    from autotimm_deploy.exporter.triton.config import schema
    from google.protobuf import text_format

    todo, seen = list(models), set()
    while todo:
        name = todo.pop()
        config = repository / name / "config.pbtxt"
        if name in seen or not config.is_file():
            continue
        seen.add(name)
        c = text_format.Parse(config.read_text(), schema().ModelConfig())
        todo += [s.model_name for s in c.ensemble_scheduling.step]
        if c.backend != "python":
            continue
        filename = c.default_model_filename or "model.py"
        versions = sorted(int(v.name) for v in (repository / name).iterdir() if v.is_dir() and v.name.isdigit())
        for v in _loaded_versions(c, versions) or [1]:
            if not (repository / name / str(v) / filename).is_file():
                raise UserError(f"{repository / name / str(v) / filename} is missing: the Python backend loads model "
                                f"{name} from it (version {v})")


def _loaded_versions(config, versions: list[int]) -> list[int]:
    """The versions of a model the server loads by its version policy (default: the latest one)."""
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return versions
    if kind == "specific":
        return list(policy.specific.versions)
    latest = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
    return versions[-latest:]


def _prepare(root: Path, workdir: Path) -> Path:
    """The binaries in ``workdir`` with the Python backend stub for this interpreter."""
    server = workdir / "tritonserver"
    shutil.copytree(root, server, ignore=shutil.ignore_patterns("python_backend_stubs"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"the bundled tritonserver has no Python backend stub for Python {version}")
    shutil.copy2(stub, server / "backends" / "python" / "triton_python_backend_stub")
    return server


def _environment(libs: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (env.get("LD_LIBRARY_PATH"), str(libs)) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _die_with_parent() -> None:
    """The server gets SIGTERM if this process dies without stopping it (Linux prctl)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def serving(repository: str | Path, models: list[str] | None = None, http_port: int | None = None,
            grpc_port: int | None = None, timeout: float = READY_TIMEOUT_S, log: Path | None = None,
            verbose: bool = False):
    """Start ``tritonserver`` on ``repository`` and yield a `Server` once ``models`` (default: every
    model whose backend this server has) are ready; a model that fails to load ends it with a
    `UserError` carrying the server's own words."""
    repository = Path(repository).resolve()
    if not repository.is_dir():
        raise UserError(f"model repository not found: {repository}")
    root, libs = bundled_server()
    loadable, skipped = servable(repository, {p.name for p in (root / "backends").iterdir() if p.is_dir()})
    if models is None:
        models = loadable
    for name in models:
        if name in skipped:
            raise UserError(f"model {name} cannot be served here: {skipped[name]}")
        if name not in loadable:
            raise UserError(f"no model {name!r} in {repository} (it has: {', '.join(loadable + list(skipped))})")
    if not models:
        raise UserError(f"none of the models in {repository} can be served by this tritonserver "
                        f"({'; '.join(f'{k}: {v}' for k, v in skipped.items()) or 'the repository is empty'})")
    check_model_files(repository, models)
    for port, what in ((http_port, "http"), (grpc_port, "grpc")):
        if port:
            check_port(port, what)
    remove_stale_copies()
    remove_stale_regions()
    with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{os.getpid()}-") as tmp:
        server = _prepare(root, Path(tmp))
        launch = _Launch(server, repository, models, libs, log or Path(tmp) / "tritonserver.log", verbose,
                         f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-")
        running = None
        try:
            running = _start(launch, http_port, grpc_port, timeout)
            running.skipped = {k: v for k, v in skipped.items() if k not in models}
            yield running
        finally:
            if running is not None:
                stop(running.process)
            remove_stale_regions(prefix=launch.shm_prefix)  # what a server killed with -9 left


@dataclass
class _Launch:
    """What every start of one serving shares: the server's copy, the models, its log, its regions' prefix."""

    server: Path
    repository: Path
    models: list[str]
    libs: Path
    log: Path
    verbose: bool
    shm_prefix: str

    def args(self, ports: tuple[int, int, int]) -> list[str]:
        server = self.server
        return [str(server / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={server / 'backends'}", f"--cache-directory={server / 'caches'}",
                "--http-address=127.0.0.1", f"--http-port={ports[0]}",
                "--grpc-address=127.0.0.1", f"--grpc-port={ports[1]}",
                "--metrics-address=127.0.0.1", f"--metrics-port={ports[2]}",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                "--exit-on-error=true", "--strict-readiness=true", f"--log-verbose={1 if self.verbose else 0}",
                "--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]


class _PortTaken(UserError):
    """The server could not bind one of its ports (``service``: HTTP, GRPC or Metrics)."""

    def __init__(self, service: str, line: str):
        super().__init__(line)
        self.service = service


def _start(launch: _Launch, http_port: int | None, grpc_port: int | None, timeout: float) -> Server:
    """The server started and ready; when another program took a port we picked between the pick and
    the server's bind, started again on fresh ports (`PORT_TRIES` in all)."""
    attempt = 0
    while True:
        attempt += 1
        ports = pick_ports(http_port, grpc_port)
        with open(launch.log, "wb") as out:
            process = subprocess.Popen(launch.args(ports), stdout=out, stderr=subprocess.STDOUT,
                                       env=_environment(launch.libs), preexec_fn=_die_with_parent)
        running = Server(*ports, log=launch.log, process=process, loaded=list(launch.models), skipped={})
        try:
            raise_if_interrupted()  # a signal in the fork's at-fork hooks (``preexec_fn``) is dropped
            _wait_ready(running, timeout)
            return running
        except _PortTaken as e:
            stop(process)
            given = {"HTTP": (http_port, "http"), "GRPC": (grpc_port, "grpc")}.get(e.service, (None, ""))
            if given[0]:
                raise UserError(f"port {given[0]} ({given[1]}) on 127.0.0.1 is in use: pass another "
                                f"--{given[1]}-port") from None
            if attempt == PORT_TRIES:
                raise UserError(f"tritonserver found its ports taken {PORT_TRIES} times: {e}") from None
        except BaseException:
            stop(process)
            raise


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = server.log.read_text(errors="replace")
            taken = re.search(r"failed to start (HTTP|GRPC|Metrics) service", log)
            if taken:
                raise _PortTaken(taken.group(1), failure(log))
            raise UserError(f"tritonserver stopped (exit {server.process.returncode}) before it was ready: "
                            f"{failure(log)}")
        log = server.log.read_text(errors="replace")
        if "failed to load" in log or "Poll failed" in log:  # it may wait for other models before exiting
            raise UserError(f"tritonserver could not load a model: {failure(log)}")
        if _ready(server.http_port):
            return
        time.sleep(0.25)
    log = server.log.read_text(errors="replace")
    waiting = [m for m in server.loaded if f"successfully loaded '{m}'" not in log]
    raise UserError(f"tritonserver was not ready within {timeout:.0f} s; still loading: {', '.join(waiting) or '?'} "
                    f"(its last line: {failure(log)})")


def failure(log: str) -> str:
    """The server's own line about what failed (a model that did not load), else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for key in ("Poll failed", "failed to load", "UNAVAILABLE", "error:"):
        for line in lines:
            if key in line:
                return line[-400:]
    return lines[-1][-400:] if lines else "no output"


def stop(process: subprocess.Popen) -> None:
    """SIGINT (Triton's graceful stop), then SIGKILL after ``STOP_TIMEOUT_S``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
