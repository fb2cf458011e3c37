"""Recipes on a Ray cluster (``--ray [ADDRESS]``): every export cell and every timing becomes a Ray
task; results come back to the driver, which writes them where the local runner would, so resume,
the reports and ``--report benchmark`` work unchanged.

Devices. A recipe's device is ``KIND[@NODE]`` (``cpu``, ``cuda:0``, ``cpu@edgebox``, ``cuda:0@a100``).
Each is a Ray resource, ``device:<name>`` (``cuda`` counts as ``cuda:0``), that exactly one node
declares with amount 1:

    ray start --address HEAD:6379 --resources '{"device:cpu@edgebox": 1}'

``--ray local`` starts a Ray on this machine that declares ``device:cpu`` (and ``device:cuda:N``
for each visible GPU), so an unchanged recipe runs through Ray.

Placement. Exports that need no particular device run on any node (one CPU each, and the memory
`export_memory` estimates, so a node never takes more large models at once than it holds); formats built on
the GPU that runs them (``trt``, ``torch-trt``) are one export per CUDA device of the recipe, built on
the node that declares it (and timed only there: an engine is tied to its GPU model). A timing
holds its device's resource, so at most one timing runs per device at a time; a CPU timing also
holds every CPU of its node, so no export or other timing shares its cores.

Transport. A task returns its files' bytes through Ray's object store; the driver installs them as
the local exporter installs its own (`install_artifact`: companions, then the artifact, its manifest
last, each by rename; of the names the manifest it replaces listed, only the old artifact's own
companions are removed). A timing gets the artifact's files the same way and writes them to a
temporary folder on its node.

Faults. A task whose worker or node dies is retried by Ray (``RETRIES`` times), on another node
where one can take it; then its row is failed with Ray's reason. An export Ray's memory monitor
stops, or whose worker still dies, is tried once more asking for twice the memory (at most the
largest node's), then failed in one line naming the model and the memory (Ray's own retries of a
task stopped for memory, endless by default and with the same request, are off for this driver). A
device whose node leaves the cluster fails its remaining timings at once (nothing else could run
them). Every finished row is written as it arrives; Ctrl-C, SIGTERM or SIGHUP cancel what is left
and write what finished.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from autotimm_deploy.exporter.core.cli import raise_if_interrupted
from autotimm_deploy.exporter.core.errors import MissingExtra, UserError, first_line
from autotimm_deploy.exporter.core.files import disk_full_is_fault, install_artifact, remove_stale_scratch, scratch_dir
from autotimm_deploy.exporter.core.manifest import MANIFEST_SUFFIX, load_manifest, manifest_path, verify_files
from autotimm_deploy.exporter.formats import get_format
from autotimm_deploy.recipes.jobs import ExportJob, JobStatus, ProfileJob, canonical_device, device_kind
from autotimm_deploy.recipes.runner import (
    Progress,
    export_job,
    export_row,
    missing_here,
    over_budget,
    plan_profile,
    prepare_exports,
    prepare_profiles,
    profile_target,
    settled_export,
    store_profile,
    write_results,
)
from autotimm_deploy.recipes.schema import Recipe

RETRIES = 2  # attempts after the first when a worker or node dies
POLL_S = 2.0  # how often the driver looks at the cluster while it waits
# An export's peak memory (RSS) is its process (torch, timm, the exporters and runtimes) and some copies
# of the fp32 weights (model, traced graph, serialised file, the parity session), by family:
# BASE_MEMORY + COPIES[family] x weights. Measured (#30) with `autotimm-export MODEL -f FORMAT
# --img-size 64` (random weights, parity check on; peak RSS from os.wait4). A Ray worker adds ~50 MB
# (resnet50 onnx: 2094 MB in a task, 2042 MB from the CLI); 128 px adds under 10 MB at batch 1.
#
#   family (timm class)  model                  fp32 weights     onnx  openvino  slope onnx/openvino
#   ResNet               test_resnet                    2 MB  1358 MB   1428 MB
#                        resnet18                      47 MB  1662 MB   1820 MB
#                        resnet50                     102 MB  2042 MB   2336 MB  6.9 / 9.3 -> 9.5
#   MobileNetV3          mobilenetv3_small_100         10 MB  1432 MB   1529 MB
#                        mobilenetv3_large_100         22 MB  1505 MB   1607 MB  6.2 / 6.7 -> 7
#   EfficientNet         efficientnet_b0               21 MB  1480 MB   1596 MB
#                        efficientnet_b3               49 MB  1673 MB   1844 MB  7.0 / 9.0 -> 9
#   ConvNeXt             convnext_atto                 15 MB  1451 MB   1553 MB
#                        convnext_tiny                114 MB  2208 MB   2494 MB  7.6 / 9.5 -> 9.5
#   VisionTransformer    vit_tiny_patch16_224          23 MB  1460 MB   1660 MB
#                        vit_small_patch16_224         88 MB  1904 MB   2189 MB
#                        vit_base_patch16_224         346 MB  4063 MB   4090 MB  8.1 / 7.5 -> 8.5
#                        vit_large_patch16_224       1217 MB  7.4 GB in a Ray worker (a real run)
#                        vit_huge_patch14_224        2523 MB  21.5 GB at 56 px (a real run, #30): 8.0
#
# The slopes are between the two largest of a family; the intercepts, 1.28-1.49 GB: BASE_MEMORY (1.5
# GiB) holds them and the Ray worker. torchscript and pt2 peak lower (resnet50: 1454 and 1384 MB,
# vit_base torchscript: 2099 MB). A family not measured asks for DEFAULT_COPIES, above all of these;
# a request too small is retried once at twice the size (`larger_request`).
BASE_MEMORY = int(1.5 * 2**30)
COPIES = {"ResNet": 9.5, "MobileNetV3": 7.0, "EfficientNet": 9.0, "ConvNeXt": 9.5, "VisionTransformer": 8.5}
DEFAULT_COPIES = 10.0


def device_resource(device: str) -> str:
    return f"device:{canonical_device(device)}"


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingExtra("Ray", "ray") from None
    return ray


def connect(address: str) -> Any:
    """Join the cluster at ``address`` (``auto``: the one ``ray start`` made here, or $RAY_ADDRESS),
    or start one on this machine (``local``); Ray stays up until the process ends. This process's
    signal handling is left as it was (see `_keep_signal_handlers`)."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "error"}
    try:
        with _keep_signal_handlers(ray), _env(RAY_task_oom_retries="0"):
            if address == "local":  # a new one, even where $RAY_ADDRESS is set
                ray.init(address="local", resources=local_devices(), **quiet)
            else:
                ray.init(address=address, **quiet)
        raise_if_interrupted()  # a signal in logging's at-fork hook, as Ray starts its processes, is dropped
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot join the Ray cluster at {address!r}: {first_line(e, 200)} (start one with "
                        "`ray start --head`, or pass --ray local)") from None
    _quiet_error_messages(ray)
    return ray


@contextlib.contextmanager
def _env(**values: str):
    """``values`` in the environment while Ray starts (read by this driver's Ray, and the local
    cluster's processes it starts), unless the user set them; the environment as it was after."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _quiet_error_messages(ray) -> None:
    """Ray prints what its nodes report to this driver's job, ``log_to_driver`` or not: "(raylet) ..."
    on stdout (into ``--json`` too), for a worker killed for memory a page of advice. The CLIs say
    what failed in one line per cell (`_failure`); the rest is in the nodes' logs (/tmp/ray)."""
    import logging

    printer = getattr(ray._private.worker, "print_to_stdstream", None)  # noqa: SLF001 - no public switch
    if printer is not None:
        log = logging.getLogger("ray")
        ray._private.worker.print_to_stdstream = lambda data, **_: log.debug("%s", data.get("lines"))  # noqa: SLF001


@contextlib.contextmanager
def _keep_signal_handlers(ray):
    """``ray.init`` takes SIGTERM from the process: for its ~10 s a Python handler that exits with
    status 15 (no cleanup, no line), then, in C, its core worker's crash handler, which prints a
    native stack ("*** SIGTERM received ... PC: @") and aborts (exit 134). Its Python handler is not
    set, and the handlers SIGTERM, SIGHUP and Ctrl-C had before are put back after it (`signal.signal`
    installs Python's own C handler again), so the CLIs end a fleet run on SIGTERM as on Ctrl-C:
    cancelled, what finished kept, one line, exit 143. (Left: the few milliseconds between Ray's C
    handler and the end of ``ray.init``.)"""
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    main = threading.current_thread() is threading.main_thread()  # only the main thread sets handlers
    before = {sig: signal.getsignal(sig) for sig in (getattr(signal, n, None) for n in names) if sig} if main else {}
    utils = ray._private.utils  # noqa: SLF001 - no public switch
    setter = getattr(utils, "set_sigterm_handler", None)
    if setter is not None:
        utils.set_sigterm_handler = lambda *_: None
    try:
        yield
    finally:
        if setter is not None:
            utils.set_sigterm_handler = setter
        for sig, handler in before.items():
            if handler is not None:  # None: set outside Python; nothing to put back
                signal.signal(sig, handler)


def local_devices() -> dict[str, float]:
    devices = {device_resource("cpu"): 1.0}
    try:
        import torch

        for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            devices[device_resource(f"cuda:{i}")] = 1.0
    except Exception:  # noqa: BLE001 - no torch CUDA: CPU only
        pass
    return devices


def check_devices(ray, devices: list[str]) -> dict[str, float]:
    """{device: CPUs of the node that declares it}; a device no node (or two nodes) declares is one line."""
    out = {}
    for device in devices:
        res = device_resource(device)
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(res)]
        if not nodes:
            raise UserError(f"no node of the Ray cluster declares device {device}: start one with "
                            f"ray start --resources '{{\"{res}\": 1}}' (or pass --ray local for this machine)")
        if len(nodes) > 1 or nodes[0]["Resources"][res] != 1:
            raise UserError(f"{len(nodes)} nodes declare {res} (amount {nodes[0]['Resources'][res]:g}): a device "
                            f"is one node's, with amount 1; name each node's own (cpu@NODE)")
        out[device] = float(nodes[0]["Resources"].get("CPU", 1))
    return out


def weights_bytes(job: ExportJob) -> int | None:
    """The fp32 weights of ``job``'s model, without building it: a checkpoint's size, else the model
    made on the meta device (no memory, no download); None when neither can tell."""
    if job.spec.checkpoint:
        with contextlib.suppress(OSError):
            return Path(job.spec.checkpoint).stat().st_size
        return None
    net = _meta_model(job)
    return None if net is None else 4 * sum(p.numel() for p in net.parameters())


def model_family(job: ExportJob) -> str | None:
    """The timm class of ``job``'s model (``ResNet``, ``VisionTransformer``, ...; see COPIES), or None."""
    net = _meta_model(job)
    return None if net is None else type(net).__name__


def _meta_model(job: ExportJob):
    """``job``'s timm model on the meta device (no memory, no download), or None."""
    try:
        import timm
        import torch

        with torch.device("meta"):
            return timm.create_model(job.spec.model, pretrained=False, num_classes=job.spec.num_classes or 1000,
                                     in_chans=job.spec.in_chans)
    except Exception:  # noqa: BLE001 - an estimate only: a model timm cannot make here asks for none
        return None


def export_memory(job: ExportJob, largest: float, cache: dict) -> int | None:
    """The memory (bytes) an export asks Ray for: BASE_MEMORY and its family's copies of the fp32
    weights (see COPIES), at most the ``largest`` node's (else nothing could take it); None when
    its model's size is unknown."""
    key = (job.spec.model, job.spec.checkpoint, job.spec.num_classes, job.spec.in_chans)
    if key not in cache:
        cache[key] = weights_bytes(job), model_family(job)
    weights, family = cache[key]
    if weights is None:
        return None
    return int(min(BASE_MEMORY + COPIES.get(family, DEFAULT_COPIES) * weights, largest)) or None


# ---- the tasks (run on the nodes) --------------------------------------------------------------

def _node() -> str:
    import socket

    import ray

    return f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:8]}"


@contextlib.contextmanager
def _scratch():
    """A scratch folder for one task, named with its worker's pid under this user's
    ``$TMPDIR/autotimm-fleet-UID``; what workers killed on this node left there is swept first."""
    base = Path(tempfile.gettempdir()) / f"autotimm-fleet-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    if base.is_symlink() or base.stat().st_uid != os.getuid():  # not ours: sweep nothing, share nothing
        base = Path(tempfile.mkdtemp(prefix="autotimm-fleet-"))
    remove_stale_scratch(base)
    folder = scratch_dir(base)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _artifact_files(artifact: Path) -> dict[str, bytes]:
    """An artifact's files as its manifest lists them, and the manifest: name -> bytes."""
    names = [*load_manifest(artifact).files, manifest_path(artifact).name]
    return {n: (artifact.parent / n).read_bytes() for n in names}


def _export_task(job: ExportJob) -> dict:
    """Export one cell on this node; its row and files (name -> bytes), the manifest's name apart."""
    start, files = time.time(), {}
    reason = get_format(job.format).unavailable_reason() or (missing_here(device_kind(job.device))
                                                             if job.device else None)
    row = {**export_row(job), "status": JobStatus.SKIPPED, "reason": f"on this node: {reason}"} if reason else None
    if row is None:
        with _scratch() as d:
            row = export_job(job, d)
            artifact = d / job.artifact.name
            if manifest_path(artifact).exists():
                files = _artifact_files(artifact)
    return {"row": {**row, "node": _node(), "started": start, "ended": time.time()}, "files": files,
            "manifest": manifest_path(job.artifact).name}


def _profile_task(job: ProfileJob, settings, files: dict[str, bytes]) -> dict:
    """Time one job on this node (its device's resource held); its report, its error, or why this
    node cannot run it (a runtime or format it lacks: skipped, as the local runner would)."""
    from autotimm_deploy.profiler.pipeline import profile

    start = time.time()
    out: dict[str, Any] = {"node": _node()}
    reason = _node_lacks(job)
    if reason:
        return {**out, "skipped": reason, "started": start, "ended": time.time()}
    with _scratch() as d:
        for name, data in files.items():
            (d / name).write_bytes(data)
        artifact = d / job.export.artifact.name if files else None
        try:
            out["report"] = profile([profile_target(job, artifact)], settings, isolate=True)
        except (UserError, RuntimeError) as e:
            out["error"] = first_line(e, 300)
    return {**out, "started": start, "ended": time.time()}


def _node_lacks(job: ProfileJob) -> str | None:
    """What this node lacks to time ``job`` (a GPU, the runtime's extra, its platform), or None."""
    from autotimm_deploy.profiler.runtimes import runtime_class

    if reason := missing_here(device_kind(job.device)):
        return f"on the node of {job.device}: {reason}"
    try:
        reason = runtime_class(job.runtime).unavailable_reason()
    except UserError as e:  # its extra is not installed there
        return f"on the node of {job.device}: {e}"
    return f"the {job.runtime} runtime cannot run on the node of {job.device}: {reason}" if reason else None


# ---- the driver ---------------------------------------------------------------------------------

# CUDA work asks Ray for no GPU (the device resource keeps it apart): Ray would then hide every GPU
CUDA_ENV = {"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}


def run_exports(recipe: Recipe, address: str, max_time: float | None = None, progress: Progress | None = None,
                force: bool = False) -> list[dict]:
    """`runner.run_exports` on a Ray cluster: the same rows, in the recipe's order."""
    ray = connect(address)
    jobs = prepare_exports(recipe)
    rows: list[dict | None] = [settled_export(job, force, here=False) for job in jobs]
    devices = {i: job.device for i, job in enumerate(jobs) if rows[i] is None and job.device}  # engines
    check_devices(ray, sorted(set(devices.values())))  # before anything is submitted
    remote = ray.remote(_export_task)
    largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")
                   and n.get("Resources", {}).get("CPU")), default=0)
    asked: dict[int, list[int | None]] = {}  # row -> the memory each try asked for

    def submit(i: int, memory: int | None):
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": RETRIES}
        if memory:
            options["memory"] = memory
        if i in devices:  # built on the node of its GPU
            options.update(resources={device_resource(jobs[i].device): 1}, runtime_env=CUDA_ENV)
        asked.setdefault(i, []).append(memory)
        return remote.options(**options).remote(jobs[i])

    sizes: dict = {}
    pending = {submit(i, export_memory(job, largest, sizes)): i for i, job in enumerate(jobs) if rows[i] is None}

    def retry(i: int, error: Exception):
        """Once more, asking for twice the memory (at most the largest node's), an export whose
        worker Ray stopped for memory or the kernel killed; None: fail it."""
        if len(asked[i]) > 1 or not _killed(error):
            return None
        more = larger_request(asked[i][-1], error, largest)
        return submit(i, more) if more else None

    def finish(i: int, result: dict) -> None:
        _install(recipe.artifacts_dir, result["files"], result["manifest"])
        rows[i] = result["row"]

    _gather(ray, pending, rows, jobs, finish, recipe, "export.json", max_time, progress,
            lambda i: export_row(jobs[i]), devices, retry=retry,
            failure=lambda i, e: _failure(e, f"exporting {jobs[i].spec.model} ({jobs[i].format})", asked[i]))
    return rows  # type: ignore[return-value]


def _ray_error(error: Exception, name: str) -> bool:
    """``error`` (or the task's exception it wraps) is ``ray.exceptions.<name>``."""
    import ray

    kind = getattr(ray.exceptions, name)
    return isinstance(error, kind) or isinstance(getattr(error, "cause", None), kind)


def _killed(error: Exception) -> bool:
    """Ray's memory monitor stopped the task, or its worker died past Ray's own retries (an export:
    most likely the kernel's out-of-memory killer, its memory growing faster than Ray looks)."""
    return _ray_error(error, "OutOfMemoryError") or _ray_error(error, "WorkerCrashedError")


def larger_request(before: int | None, error: Exception, largest: float) -> int | None:
    """Twice what the try Ray stopped asked for (or, where it asked for none, twice what it used
    then), at most the ``largest`` node's memory; None where that is not more than before."""
    used = _memory_used(str(error))
    more = int(min(2 * (before or used or 0), largest))
    return more if more > (before or 0) else None


def _memory_used(text: str) -> int | None:
    """What the task Ray's memory monitor stopped was using then (its message: ``actual memory
    used=3.20GB``), in bytes."""
    found = re.search(r"memory used=([\d.]+)\s*GB", text)
    return int(float(found.group(1)) * 1e9) if found else None


def _failure(error: Exception, what: str, asked: list[int | None] | None = None) -> str:
    """A failed task's one line. Ray's memory kill (its message is a page) says what ran, the memory
    it used and, given ``asked``, what it asked for; with ``asked`` (an export), a dead worker says
    so too. Else the task's error's first line."""
    cause = getattr(error, "cause", None) or error  # a task's own exception, not Ray's wrapper
    gib = [f"{a / 2**30:.1f}" for a in asked or () if a]
    request = f", after asking for {' then '.join(gib)} GiB" if gib else ""
    if _ray_error(error, "OutOfMemoryError"):
        text = str(error)
        used = _memory_used(text)
        need = max([used or 0] + [a or 0 for a in asked or ()])
        node = re.search(r"was ([\d.]+)\s*GB used / ([\d.]+)\s*GB limit", text)
        at = f" at {used / 1e9:.1f} GB used" if used else ""
        on = f" (its node: {node.group(1)} of {node.group(2)} GB)" if node else ""
        needs = f" needs more than {need / 2**30:.1f} GiB:" if need else ""
        return f"out of memory: {what}{needs} Ray stopped it{at}{on}{request}; run it on a node with more memory"
    if asked is not None and _ray_error(error, "WorkerCrashedError"):
        return (f"the worker {what} died at each try (the kernel's out-of-memory killer, or a crash: see the "
                f"node's dmesg){request}")
    return f"{type(cause).__name__}: {first_line(cause, 300)}"


def run_profiles(recipe: Recipe, address: str, max_time: float | None = None, progress: Progress | None = None,
                 force: bool = False) -> list[dict]:
    """`runner.run_profiles` on a Ray cluster: each timing on the node that declares its device."""
    ray = connect(address)
    jobs = prepare_profiles(recipe)
    remote = ray.remote(_profile_task)
    rows: list[dict | None] = []
    plans: dict[int, tuple[dict, dict, Any]] = {}
    for i, job in enumerate(jobs):
        row, settings, fingerprint = plan_profile(job, recipe, force, here=False)
        if settings is not None and job.kind != "eager":
            try:  # what is shipped must be what the manifest says
                verify_files(load_manifest(job.export.artifact), job.export.artifact.parent)
            except UserError as e:
                row, settings = {**row, "status": JobStatus.FAILED, "error": str(e)}, None
        rows.append(None if settings is not None else row)
        if settings is not None:
            plans[i] = (row, fingerprint, settings)
    cpus = check_devices(ray, sorted({jobs[i].device for i in plans}))  # only devices with work to do
    pending, devices = {}, {}
    shipped: dict[str, Any] = {}  # artifact -> its files in the object store, put once for every device
    for i, (_, _, settings) in plans.items():
        job = jobs[i]
        files = {}
        if job.kind != "eager":
            key = str(job.export.artifact)
            if key not in shipped:
                shipped[key] = ray.put(_artifact_files(job.export.artifact))
            files = shipped[key]
        kind = device_kind(job.device)
        options: dict[str, Any] = {"resources": {device_resource(job.device): 1}, "max_retries": RETRIES,
                                   "num_cpus": cpus[job.device] if kind == "cpu" else 1}  # a CPU timing: all cores
        if kind.startswith("cuda"):
            options["runtime_env"] = CUDA_ENV
        pending[remote.options(**options).remote(job, settings, files)] = i
        devices[i] = job.device

    def finish(i: int, result: dict) -> None:
        row, fingerprint, _ = plans[i]
        row.update(node=result["node"], started=result["started"], ended=result["ended"])
        if "skipped" in result:
            row.update(status=JobStatus.SKIPPED, reason=result["skipped"])
        elif "error" in result:
            row.update(status=JobStatus.FAILED, error=result["error"])
        else:
            store_profile(recipe, jobs[i], row, fingerprint, result["report"])
        rows[i] = row

    _gather(ray, pending, rows, jobs, finish, recipe, "profile.json", max_time, progress, lambda i: plans[i][0],
            devices, failure=lambda i, e: _failure(e, f"timing {jobs[i].key} on {jobs[i].device}"))
    return rows  # type: ignore[return-value]


def _gather(ray, pending: dict, rows: list, jobs: list, finish, recipe: Recipe, results_name: str,
            max_time: float | None, progress: Progress | None, base_row, devices: dict[int, str],
            failure, retry=lambda i, e: None) -> None:
    """Wait for ``pending`` tasks (ref -> row index), filling ``rows`` as they end; write the rows
    after each. A failed task is tried again where ``retry(i, error)`` submits it anew (its new
    ref), else its row fails with ``failure(i, error)``'s line. A task bound to a device
    (``devices``: row index -> device) whose node left fails at once. The time budget, Ctrl-C or a
    driver error cancel what is left, after taking in what finished; the rows are written either way."""
    start, total = time.monotonic(), len(jobs)

    def settle(i: int, status: JobStatus, **why) -> None:
        rows[i] = {**base_row(i), "status": status, **why}

    def write() -> None:
        write_results(recipe, results_name, [r for r in rows if r is not None])

    def take(refs) -> None:
        for ref in refs:
            i = pending.pop(ref)
            try:
                finish(i, ray.get(ref))
            except ray.exceptions.RayError as e:  # the worker or node died past its retries, or cancelled
                if (again := retry(i, e)) is not None:
                    pending[again] = i
                    continue
                settle(i, JobStatus.FAILED, error=failure(i, e))
            if progress:
                progress(jobs[i].key, sum(r is not None for r in rows), total)
            write()

    def cancel_all(status: JobStatus, reason: str) -> None:
        if pending:  # take in what already finished first
            take(ray.wait(list(pending), num_returns=len(pending), timeout=0)[0])
        for ref, i in pending.items():
            ray.cancel(ref)  # a running task is interrupted (its temporary files cleaned up), not killed
            settle(i, status, reason=reason)
        pending.clear()
        write()

    write()
    with disk_full_is_fault(f"into {recipe.root}"):  # after what is left was cancelled
        try:
            while pending:
                raise_if_interrupted()
                take(ray.wait(list(pending), num_returns=1, timeout=POLL_S)[0])
                declared = ray.cluster_resources()
                for ref, i in list(pending.items()):
                    if i in devices and not declared.get(device_resource(devices[i])):
                        ray.cancel(ref)
                        pending.pop(ref)
                        settle(i, JobStatus.FAILED, error=f"the node with device {devices[i]} left the cluster")
                        write()
                if over_budget(start, max_time):
                    cancel_all(JobStatus.NOT_RUN, f"--max-time {max_time:g} s spent")
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP in the CLIs
            cancel_all(JobStatus.NOT_RUN, f"interrupted ({_signal_name(e)})")
            raise
        except BaseException as e:
            cancel_all(JobStatus.NOT_RUN, f"the driver stopped: {type(e).__name__}: {first_line(e, 200)}")
            raise


def _signal_name(e: KeyboardInterrupt) -> str:
    from autotimm_deploy.exporter.core.cli import interrupting_signal

    signum = interrupting_signal(e)
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _install(folder: Path, files: dict[str, bytes], manifest: str) -> None:
    """Install the files an export task shipped back (name -> bytes; ``manifest``, its manifest's
    name, among them; none when it made no artifact) into ``folder``, by the local exporter's rules
    (`install_artifact`)."""
    if files:
        artifacts = {n: data for n, data in files.items() if n != manifest}
        install_artifact(folder, manifest[:-len(MANIFEST_SUFFIX)], artifacts, files[manifest])
