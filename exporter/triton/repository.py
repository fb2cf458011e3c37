"""A Triton model repository from our artifacts and their manifests. For each artifact ``<base>``
(its file name, ``resnet18.onnx`` -> ``resnet18_onnx``):

- ``<base>``: Triton's native backend for the format (onnxruntime, tensorrt, pytorch, openvino),
  where it has one and it runs on the instance kind asked for;
- ``<base>_python``: the Python backend running the artifact through our own runtime;
- ``<base>_preprocess``: raw encoded pictures -> the model's input, as the manifest says;
- ``<base>_boxes`` (detection, instance segmentation): boxes back to the picture's pixels;
- ``<base>_ensemble``: preprocess -> the model (the Python variant, or the native one with
  ``ensemble_over="native"``) -> boxes; clients send an image file's bytes and get the answers.

And ``client.py`` at the top: a tritonclient example that sends a picture to an ensemble. The
repository is written beside its destination and renamed into place: never half-written."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from autotimm_deploy.exporter.core.errors import UserError, first_line
from autotimm_deploy.exporter.core.files import disk_full_is_fault
from autotimm_deploy.exporter.core.manifest import (
    MANIFEST_SUFFIX,
    Manifest,
    artifact_given,
    load_manifest,
    manifest_path,
    verify_files,
)
from autotimm_deploy.exporter.core.results import accepted
from autotimm_deploy.exporter.core.spec import task_outputs_missing
from autotimm_deploy.exporter.inputs.preprocess import describe
from autotimm_deploy.exporter.triton.config import (
    NATIVE,
    ServeOptions,
    data_type,
    dims,
    native_config,
    one_picture,
    python_config,
    schema,
    to_pbtxt,
)

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
BOX_TASKS = ("detection", "instance-segmentation")
SHIM = "from autotimm_deploy.exporter.triton_backend.{module} import TritonPythonModel  # noqa: F401\n"
CLIENT = Path(__file__).with_name("client_example.py")


@dataclass
class RepoModel:
    name: str
    role: str  # native | python | preprocess | boxes | ensemble
    backend: str  # the backend or platform Triton loads it with
    artifact: str  # the artifact it serves, by file name
    note: str = ""  # set on a model that was not written, and why (it has no folder)


def find_artifacts(paths: list[str | Path]) -> list[Path]:
    """Artifacts named directly, or every artifact with a manifest under a folder (a recipe's output)."""
    found: list[Path] = []
    for p in map(artifact_given, paths):
        if p.is_dir():
            beside = [m.with_name(m.name[: -len(MANIFEST_SUFFIX)]) for m in sorted(p.rglob(f"*{MANIFEST_SUFFIX}"))]
            artifacts = [a for a in beside if a.is_file()]  # a manifest lies beside its artifact
            if not artifacts:
                raise UserError(f"{p} holds no artifacts with manifests; export into it first")
            found += artifacts
        elif p.is_file() or manifest_path(p).is_file():
            found.append(p)
        else:
            raise UserError(f"artifact not found: {p}")
    return found


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise UserError(f"{name!r} is not a model name Triton accepts (letters, digits, '_', '.', '-', at most 128, "
                        "not starting with '.' or '-'); pass --name with such a name")
    return name


KNOWN_FORMATS = (*NATIVE, "pt2", "aoti", "torch-trt")  # what our runtimes run (the _python variant)


class NothingServed(UserError):
    """None of the artifacts is of a format Triton serves: no repository is written."""


def unserved(m: Manifest) -> RepoModel:
    """The row for an artifact no Triton model here serves (an edge format): listed, nothing written."""
    return RepoModel("-", "-", "-", m.artifact,
                     note=f"not written: Triton serves no {m.format} artifact (an edge format: run it with its "
                          f"own runtime; Triton serves {', '.join(KNOWN_FORMATS)})")


def check_servable(m: Manifest, path: Path) -> None:
    """What a config is written from, present and well-formed (one line, not a KeyError later)."""
    def fail(what: str):
        raise UserError(f"manifest {path} {what}: re-export the artifact")

    if m.format not in KNOWN_FORMATS:
        raise UserError(f"{path.name[:-len(MANIFEST_SUFFIX)]} is a {m.format!r} artifact, which no Triton model serves "
                        f"(it serves {', '.join(KNOWN_FORMATS)}): export one of those for the server")
    for kind, sigs in (("inputs", m.inputs), ("outputs", m.outputs)):
        if not sigs or not all(isinstance(s.shape, list) and s.shape and isinstance(s.dtype, str) and s.name
                               for s in sigs):
            fail(f"has no well-formed {kind} (name, dtype, shape)")
    task = m.spec.get("task", "classification")
    # a user's own module left at the default task may have any outputs (served as they are)
    missing = task_outputs_missing(task, {s.name: s.shape for s in m.outputs}) \
        if task in BOX_TASKS or m.spec.get("weights") != "module" else None
    if missing and (m.spec.get("head") or {}).get("raw"):
        raise UserError(f"{path.name[:-len(MANIFEST_SUFFIX)]} holds a {task} head's raw outputs (--raw): the ensemble "
                        "answers with decoded boxes; export it without --raw for the server")
    if missing:
        fail(f"says it is a {task} model, but its outputs ({', '.join(f'{s.name} {s.shape}' for s in m.outputs)}) "
             f"have no {missing}, which its answers read")
    size = (m.preprocessing or {}).get("input_size") if isinstance(m.preprocessing, dict) else None
    if not (isinstance(size, list) and len(size) == 3 and all(type(v) is int and v > 0 for v in size)):
        fail("has no preprocessing.input_size [C, H, W]")
    for key in ("min", "max"):
        value = (m.batch or {}).get(key)
        if value is not None and (type(value) is not int or value < 1):
            fail(f"has batch.{key} {value!r}, not a positive integer")


def base_name(artifact: Path) -> str:
    stem, _, ext = artifact.name.rpartition(".")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{stem}_{ext}" if stem else artifact.name)


def check_destination(repository: str | Path, made_by_export: bool = False) -> Path:
    """A new folder in an existing one (checked before an export starts, and again when writing),
    as an absolute path. ``made_by_export``: its parent is the export's output folder, which the
    export makes (and checks) first."""
    repository = Path(repository)
    if repository.exists() or repository.is_symlink():
        raise UserError(f"{repository} already exists: give a new folder for the model repository")
    repository = repository.resolve()
    parent = repository.parent
    if made_by_export and not parent.exists():
        schema()  # the [triton] extra
        return repository
    if not parent.is_dir():
        raise UserError(f"folder {parent} {'is a file' if parent.exists() else 'does not exist'}: give a new folder "
                        "inside an existing one for the model repository")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"folder {parent} is not writable (a read-only file system, or its permissions): give a new "
                        "folder inside one you can write for the model repository")
    schema()  # the [triton] extra
    return repository


def build_repository(artifacts: list[str | Path], repository: str | Path, options: ServeOptions | None = None,
                     names: list[str] | None = None, ensemble_over: str = "python",
                     skip_unserved: bool = False, allow_failed: bool = False) -> list[RepoModel]:
    """Write the repository at ``repository`` (which must not exist) for ``artifacts`` (files with
    their manifests, or folders of them); ``names``: the base name of each, default from its file.
    ``skip_unserved``: an artifact of a format no Triton model serves (ncnn, LiteRT, ...) is listed
    as not written, with why, instead of refusing them all; none served is still a `UserError`.
    ``allow_failed``: serve an artifact its manifest says failed its checks (`accepted`): else one named
    directly is refused, and one found in a folder is listed as not written, with why."""
    options = options or ServeOptions()
    options.check()
    if ensemble_over not in ("python", "native"):
        raise UserError(f"--ensemble-over takes python or native, got {ensemble_over!r}")
    repository = check_destination(repository)
    paths = find_artifacts(artifacts)
    if names is not None and len(names) != len(paths):
        raise UserError(f"{len(names)} names for {len(paths)} artifacts: pass one --name per artifact, in order")
    named = {artifact_given(p) for p in artifacts if not Path(p).is_dir()}
    served, skipped = _load_manifests(paths, names, skip_unserved, named, allow_failed)
    if not served:
        why = "; ".join(f"{m.artifact}: {m.note}" for m in skipped)
        raise NothingServed(f"none of these artifacts can be served ({why}): no repository written at {repository}")
    if options.ort_tensorrt and not skip_unserved and not any(m.format == "onnx" for _, m, _ in served):
        raise UserError("--ort-tensorrt applies to ONNX artifacts (ONNX Runtime's TensorRT accelerator) and none of "
                        f"these is one ({', '.join(m.artifact for _, m, _ in served)}): drop it, or add the ONNX export")
    bases = [base for _, _, base in served]
    loaded = [(folder, m) for folder, m, _ in served]
    taken: dict[str, Path] = {}
    for base, (folder, m) in zip(bases, loaded):
        for name in (base, *(f"{base}_{role}" for role in ("python", "preprocess", "boxes", "ensemble"))):
            check_name(name)
            if name in taken:
                raise UserError(f"two artifacts would both be served as {name!r} ({taken[name]} and "
                                f"{folder / m.artifact}); pass --name for each")
            taken[name] = folder / m.artifact
    with disk_full_is_fault(f"the model repository {repository}"):
        return _write_repository(repository, bases, loaded, skipped, options, ensemble_over)


def _write_repository(repository: Path, bases: list[str], loaded: list[tuple[Path, Manifest]],
                      skipped: list[RepoModel], options: ServeOptions, ensemble_over: str) -> list[RepoModel]:
    """The repository written in a scratch folder, then renamed into place (none left if it fails)."""
    # a new folder of its own beside the destination (same file system, so the rename is atomic)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repository.name}.tmp-", dir=repository.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the repository from a server run as another user
        models: list[RepoModel] = []
        for base, (folder, m) in zip(bases, loaded):
            try:
                models += _write_artifact(tmp, base, folder, m, options, ensemble_over)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:  # a manifest's odd field
                raise UserError(f"the manifest of {folder / m.artifact} cannot be written as a Triton config "
                                f"({type(e).__name__}: {e}); re-export the artifact") from None
        models += skipped
        first = next((x for x in models if x.role == "ensemble" and not x.note), None)
        client = CLIENT.read_text().replace("__MODEL__", first.name if first else "")
        (tmp / "client.py").write_text(client)
        (tmp / "models.json").write_text(json.dumps([asdict(x) for x in models], indent=2) + "\n")
        try:
            if repository.exists():  # os.rename would replace an empty folder made meanwhile
                raise FileExistsError(repository)
            os.rename(tmp, repository)
        except OSError:
            raise UserError(f"{repository} appeared while the repository was written: give a new folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return models


def _failed_because(m: Manifest) -> str:
    """Why a manifest's artifact is not `accepted`: its accuracy budget, else its first parity failure."""
    a = m.accuracy
    if a is not None and (a.error or a.passed is False):
        return first_line(a.error or f"{a.primary} dropped {a.drop} points, past its budget of {a.max_drop}", 120)
    return first_line(((m.parity.failures if m.parity else None) or ["see its manifest"])[0], 120)


def _load_manifests(paths: list[Path], names: list[str] | None, skip_unserved: bool, named: set[Path],
                    allow_failed: bool = False) -> tuple[list[tuple[Path, Manifest, str]], list[RepoModel]]:
    """(folder, manifest, base name) of each artifact to serve, its files verified; and the rows of
    those of a format no Triton model serves, found in a folder or with ``skip_unserved`` (named
    directly, in ``named``: refused). Unless ``allow_failed``, one whose manifest says it failed its
    checks is refused when named directly, a row saying so when found in a folder."""
    loaded, skipped = [], []
    for i, path in enumerate(paths):
        if not manifest_path(path).is_file():
            raise UserError(f"{path} has no manifest ({manifest_path(path).name}): the configs are written from it; "
                            "export the model with autotimm-export")
        manifest = load_manifest(path)
        folder = manifest_path(path).parent
        if (skip_unserved or path not in named) and manifest.format not in KNOWN_FORMATS:
            skipped.append(unserved(manifest))
            continue
        verify_files(manifest, folder)
        check_servable(manifest, manifest_path(path))
        if not allow_failed and not accepted(manifest.parity, manifest.accuracy):
            why = _failed_because(manifest)
            if path in named:
                raise UserError(f"{folder / manifest.artifact} failed its checks ({why}): served, it would give wrong "
                                "answers; re-export it, or pass --allow-failed to serve it anyway")
            skipped.append(RepoModel("-", "-", "-", manifest.artifact, note=f"not written: it failed its checks ({why}); "
                                                                           "--allow-failed serves it anyway"))
            continue
        loaded.append((folder, manifest, names[i] if names else base_name(folder / manifest.artifact)))
    return loaded, skipped


def _write_artifact(repo: Path, base: str, folder: Path, m: Manifest, options: ServeOptions,
                    ensemble_over: str) -> list[RepoModel]:
    models = []
    native = NATIVE.get(m.format)
    if native and options.kind in native.kinds:
        _write(repo / base, native_config(base, m, options))
        _place(folder, m, repo / base / "1", native.filename)
        models.append(RepoModel(base, "native", native.backend, m.artifact))
    elif native:
        models.append(RepoModel(base, "native", native.backend, m.artifact,
                                note=f"not written: Triton's {native.backend} backend runs on "
                                     f"{', '.join(native.kinds)}, not --kind {options.kind}"))
    else:
        models.append(RepoModel(base, "native", "-", m.artifact,
                                note=f"not written: Triton has no backend for {m.format} artifacts (the _python "
                                     "model serves it)"))
    py = f"{base}_python"
    _write(repo / py, python_config(py, m, options, m.artifact), module="artifact_model")
    _place(folder, m, repo / py / "1", None)
    models.append(RepoModel(py, "python", "python", m.artifact))
    if not one_picture(m):
        models.append(RepoModel(f"{base}_ensemble", "ensemble", "ensemble", m.artifact,
                                note=f"not written: the artifact takes batches of {m.inputs[0].shape[0]} at least, "
                                     "the raw-picture ensemble sends one picture"))
        return models
    pre = f"{base}_preprocess"
    _write(repo / pre, preprocess_config(pre, m, options), module="preprocess_model")
    models.append(RepoModel(pre, "preprocess", "python", m.artifact))
    boxes = None
    if m.spec.get("task") in BOX_TASKS:
        boxes = f"{base}_boxes"
        _write(repo / boxes, boxes_config(boxes, m, options), module="boxes_model")
        models.append(RepoModel(boxes, "boxes", "python", m.artifact))
    over_native = ensemble_over == "native" and not models[0].note
    target = base if over_native else py
    name_of = native.tensor_name if over_native and native else None
    ens = f"{base}_ensemble"
    _write(repo / ens, ensemble_config(ens, m, pre, target, name_of, boxes))
    models.append(RepoModel(ens, "ensemble", "ensemble", m.artifact))
    return models


def _write(folder: Path, config: dict, module: str | None = None) -> None:
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(to_pbtxt(config))
    if module:
        (folder / "1" / "model.py").write_text(SHIM.format(module=module))


def _place(src: Path, m: Manifest, dest: Path, main_name: str | None) -> None:
    """The artifact's files into ``dest``: as the native backend's file name (companions keep theirs,
    except OpenVINO's ``.bin``, which follows the ``.xml``), or as they are with the manifest."""
    for name in m.files:
        target = name
        if main_name and name == m.artifact:
            target = main_name
        elif main_name and m.format == "openvino" and name.endswith(".bin"):
            target = Path(main_name).with_suffix(".bin").name
        _link_or_copy(src / name, dest / target)
    if main_name is None:
        _link_or_copy(manifest_path(src / m.artifact), dest / manifest_path(Path(m.artifact)).name)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _preprocessing(m: Manifest) -> str:
    """The manifest's preprocessing, every key the transform needs filled in, as the Python models read it."""
    return json.dumps(describe(m.preprocessing, m.spec.get("task")))


def preprocess_config(name: str, m: Manifest, options: ServeOptions) -> dict:
    c, h, w = m.preprocessing["input_size"]
    return {"name": name, "backend": "python", "max_batch_size": 0,
            "input": [{"name": "IMAGE", "data_type": "TYPE_UINT8", "dims": [-1]}],
            "output": [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, c, h, w]},
                       {"name": "original_size", "data_type": "TYPE_INT32", "dims": [1, 2]}],
            "instance_group": [{"kind": "KIND_CPU", "count": options.instances}],
            "parameters": {"preprocessing": {"string_value": _preprocessing(m)}}}


def boxes_config(name: str, m: Manifest, options: ServeOptions) -> dict:
    sig = next(o for o in m.outputs if o.name == "boxes")
    return {"name": name, "backend": "python", "max_batch_size": 0,
            "input": [{"name": "boxes", "data_type": data_type(sig.dtype), "dims": [-1, -1, 4]},
                      {"name": "original_size", "data_type": "TYPE_INT32", "dims": [1, 2]}],
            "output": [{"name": "boxes", "data_type": data_type(sig.dtype), "dims": [-1, -1, 4]}],
            "instance_group": [{"kind": "KIND_CPU", "count": options.instances}],
            "parameters": {"preprocessing": {"string_value": _preprocessing(m)}}}


def ensemble_config(name: str, m: Manifest, pre: str, target: str, name_of, boxes: str | None) -> dict:
    """IMAGE (an encoded picture's bytes) -> preprocess -> ``target`` [-> boxes]; the outputs keep
    the manifest's names (boxes in the picture's own pixels when ``boxes``)."""
    def their(kind: str, i: int, ours: str) -> str:
        return name_of(kind, i, ours) if name_of else ours

    outputs = {o.name: (f"raw_{o.name}" if boxes and o.name == "boxes" else o.name) for o in m.outputs}
    kept = {"input": "preprocessed", **({"original_size": "original_size"} if boxes else {})}
    steps = [{"model_name": pre, "model_version": -1, "input_map": {"IMAGE": "IMAGE"}, "output_map": kept},
             {"model_name": target, "model_version": -1,
              "input_map": {their("input", 0, m.inputs[0].name): "preprocessed"},
              "output_map": {their("output", i, o.name): outputs[o.name] for i, o in enumerate(m.outputs)}}]
    if boxes:
        steps.append({"model_name": boxes, "model_version": -1,
                      "input_map": {"boxes": "raw_boxes", "original_size": "original_size"},
                      "output_map": {"boxes": "boxes"}})
    return {"name": name, "platform": "ensemble", "max_batch_size": 0,
            "input": [{"name": "IMAGE", "data_type": "TYPE_UINT8", "dims": [-1]}],
            "output": [{"name": o.name, "data_type": data_type(o.dtype), "dims": dims(list(o.shape), False)}
                       for o in m.outputs],
            "ensemble_scheduling": {"step": steps}}
