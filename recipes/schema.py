"""Recipes: a YAML file naming a matrix of models x tasks x formats x precisions (exported by
``autotimm-export --recipe``) and batch sizes x devices (profiled by ``autotimm-profile --recipe``).

The file is validated on load; every error names the file and line. Schema (docs/recipes.md)::

    recipe: 1                        # schema version
    name: edge                       # output folder name under --out (default: the file's stem)
    description: ...
    models: [mobilenetv3_small_100, {model: resnet18, img_size: 160, reference: {...}}]
    tasks: [classification, {task: detection, fpn_channels: 128, depthwise: true, img_size: 640}]
    formats: [onnx, openvino]
    precisions: [fp32, int8]         # a format without a precision skips it (listed)
    batch_sizes: [1, 8, 32]
    devices: [cpu]
    img_size: 224                    # defaults for every entry (else the model's own)
    num_classes: 1000
    calibration: {data: sample-pictures, samples: 16}    # for int8: a folder, a .npy, sample-pictures
    eval: {data: val/, samples: 500, max_drop: 1.0}      # labelled data (--eval), one task; the budget
    profile: {max_time: 3, warmup_time: 1, threads: null}
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotimm_deploy.exporter.core.environment import cores_available
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.limits import (
    MAX_BATCH,
    MAX_CALIBRATION_SAMPLES,
    MAX_CLASSES,
    MAX_EVAL_SAMPLES,
    MAX_IMG_SIDE,
    MAX_ITERATIONS,
    MAX_RECIPE_BYTES,
    MAX_SECONDS,
    check_max_drop,
)
from autotimm_deploy.exporter.core.spec import (
    ARCHITECTURES,
    AUTOTIMM_HEAD_OPTIONS,
    HEAD_OPTIONS,
    PRECISIONS,
    TASKS,
    ModelSpec,
)
from autotimm_deploy.exporter.formats import FORMATS, get_format
from autotimm_deploy.exporter.inputs.calibration import SAMPLE_PICTURES
from autotimm_deploy.exporter.models.timm_backbone import check_model_name
from autotimm_deploy.recipes.jobs import (
    DEVICE_FORMS,
    ExportJob,
    ProfileJob,
    device_tag,
    export_jobs,
    parse_device,
    profile_jobs,
)

SCHEMA_VERSION = 1
SHIPPED = Path(__file__).resolve().parent  # the recipes that ship with the package: recipes/*.yaml
TOP_KEYS = {"recipe", "name", "description", "models", "tasks", "formats", "precisions", "batch_sizes", "devices",
            "img_size", "num_classes", "calibration", "eval", "profile", "format_options"}
MODEL_KEYS = {"model", "img_size", "num_classes", "reference", "label"}
# a model's `reference:` (AutoTimm's benchmark page's numbers): each a number from 0 to its most
REFERENCE_KEYS = {"params_m": 1e6, "size_mb": 1e7, "v100_ms": 1e6, "top1": 100.0}
TASK_KEYS = {"task", "img_size", "num_classes", "label", "architecture"}  # plus the task's head options
CALIBRATION_KEYS = {"data", "samples", "random"}
EVAL_KEYS = {"data", "samples", "max_drop"}
PROFILE_KEYS = {"max_time", "warmup_time", "threads", "iterations"}


# --- YAML with line numbers ---------------------------------------------------------------------

class _Map(dict):
    line = 0
    lines: dict


class _Seq(list):
    line = 0
    lines: list


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            # aliases (*name) let a few lines expand into gigabytes (the "billion laughs"); a recipe
            # never needs them
            if self.check_event(yaml.events.AliasEvent):
                raise _LineError(self.peek_event().start_mark.line + 1,
                                 "YAML aliases (*name) are not allowed in a recipe; write the values out")
            return super().compose_node(parent, index)

    def mapping(loader, node):
        loader.flatten_mapping(node)
        out = _Map()
        out.line, out.lines = node.start_mark.line + 1, {}
        for k_node, v_node in node.value:
            key = loader.construct_object(k_node, deep=True)
            if key in out:
                raise _LineError(k_node.start_mark.line + 1, f"duplicate key {key!r}")
            out[key] = loader.construct_object(v_node, deep=True)
            out.lines[key] = k_node.start_mark.line + 1
        return out

    def sequence(loader, node):
        out = _Seq(loader.construct_object(c, deep=True) for c in node.value)
        out.line, out.lines = node.start_mark.line + 1, [c.start_mark.line + 1 for c in node.value]
        return out

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, sequence)
    return Loader


class _LineError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


def _line(container, key, default: int) -> int:
    lines = getattr(container, "lines", None)
    if isinstance(lines, dict):
        return lines.get(key, default)
    if isinstance(lines, list) and isinstance(key, int) and key < len(lines):
        return lines[key]
    return default


# --- the recipe -----------------------------------------------------------------------------------

@dataclass
class ModelEntry:
    name: str
    img_size: tuple[int, int] | None = None
    num_classes: int | None = None
    reference: dict[str, Any] = field(default_factory=dict)  # AutoTimm's benchmark page's numbers, for display
    label: str | None = None  # told apart from another entry of the same model (file stems, report rows)


@dataclass
class TaskEntry:
    task: str
    head: dict[str, Any] = field(default_factory=dict)
    img_size: tuple[int, int] | None = None
    num_classes: int | None = None
    label: str | None = None
    architecture: str = ARCHITECTURES[0]  # builtin heads, or AutoTimm's own (the [autotimm] extra)


@dataclass
class Recipe:
    path: Path
    name: str
    description: str
    models: list[ModelEntry]
    tasks: list[TaskEntry]
    formats: list[str]
    precisions: list[str]
    batch_sizes: list[int]
    devices: list[str]
    calibration: dict[str, Any]
    profile: dict[str, Any]
    out_dir: Path = Path("out")
    evaluation: dict[str, Any] = field(default_factory=dict)  # `eval:` data, samples, max_drop
    # `format_options:` one format's own options by name ({aoti: {freezing: true}}), as the CLI's
    format_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.out_dir / self.name

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    def export_jobs(self) -> list[ExportJob]:
        return export_jobs(self)

    def profile_jobs(self) -> list[ProfileJob]:
        return profile_jobs(self)


def load_recipe(path: str | Path, out_dir: str | Path = "out") -> Recipe:
    """Read and validate a recipe (a path, or the name of a shipped one such as ``edge``);
    `UserError` ``"<file>:<line>: <what is wrong>"`` otherwise."""
    import yaml

    path = Path(path)
    if not path.exists() and path.parent == Path(".") and (SHIPPED / f"{path.stem}.yaml").is_file():
        path = SHIPPED / f"{path.stem}.yaml"  # a shipped recipe by name: --recipe edge
    if path.is_dir():
        shipped = sorted(p.name for p in path.glob("*.yaml"))[:4]
        raise UserError(f"recipe {path} is a folder; give one .yaml file"
                        + (f" in it ({', '.join(shipped)}, ...)" if shipped else ""))
    if not path.is_file():
        raise UserError(f"recipe {path} not found" + ("" if path.suffix in (".yaml", ".yml") else
                                                      " (recipes are .yaml files; see recipes/)"))
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise UserError(f"{path} is {path.stat().st_size} bytes; a recipe is at most {MAX_RECIPE_BYTES} bytes "
                            "of YAML")
        data = yaml.load(path.read_text(), Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except _LineError as e:
        raise UserError(f"{path}:{e.line}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a recipe") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None
    try:
        return _build(path, data, Path(out_dir))
    except _LineError as e:
        raise UserError(f"{path}:{e.line}: {e}") from None


def _unknown(d: dict, allowed: set[str], what: str) -> None:
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(allowed))})"
            raise _LineError(_line(d, key, d.line), f"unknown key {key!r} in {what}{hint}")


def _list(d: dict, key: str, required: bool = True) -> list:
    value = d.get(key)
    if value is None:
        if required:
            raise _LineError(d.line, f"missing {key!r}")
        return []
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = _Seq([value])
        value.line, value.lines = _line(d, key, d.line), [_line(d, key, d.line)]
    if not isinstance(value, list) or not value:
        raise _LineError(_line(d, key, d.line), f"{key!r} must be a non-empty list")
    return value


def _size(value, line: int) -> tuple[int, int] | None:
    if value is None:
        return None
    def side(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_IMG_SIDE

    if side(value):
        return value, value
    if isinstance(value, list) and len(value) == 2 and all(side(v) for v in value):
        return value[0], value[1]
    raise _LineError(line, f"img_size must be a positive integer up to {MAX_IMG_SIDE} or [H, W], got {value!r}")


def _positive(value, line: int, what: str, most: int | None = None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _LineError(line, f"{what} must be a positive integer, got {value!r}")
    if most is not None and value > most:
        raise _LineError(line, f"{what} takes at most {most}, got {value}")
    return value


def _seconds(value, line: int, what: str) -> float | None:
    if value is None:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or not 0 < value <= MAX_SECONDS):
        raise _LineError(line, f"{what} must be seconds above 0 and at most {MAX_SECONDS:g}, got {value!r}")
    return float(value)


def _evaluation(data, path: Path, tasks: list) -> dict[str, Any]:
    """``eval: {data, samples, max_drop}``: labelled data for the recipe's one task, the path taken
    relative to the recipe file."""
    ev = data.get("eval") or {}
    line = _line(data, "eval", data.line)
    if not isinstance(ev, dict):
        raise _LineError(line, "eval must be a mapping (data, samples, max_drop)")
    if not ev:
        return {}
    _unknown(ev, EVAL_KEYS, "eval")
    kinds = sorted({t.task for t in tasks})
    if len(kinds) > 1:
        raise _LineError(line, f"eval scores one task's labelled data; this recipe has {' and '.join(kinds)}: "
                               "split it into one recipe per task")
    source = ev.get("data")
    if not isinstance(source, str) or not source:
        raise _LineError(line, "eval needs data: an image folder, a .csv, a COCO .json or an images/+masks/ folder")
    resolved = Path(source) if Path(source).is_absolute() else (path.parent / source).resolve()
    if not resolved.exists():
        raise _LineError(_line(ev, "data", ev.line), f"eval data not found: {resolved}")
    _positive(ev.get("samples"), _line(ev, "samples", ev.line), "samples", MAX_EVAL_SAMPLES)
    drop = ev.get("max_drop")
    if drop is not None:
        try:
            drop = check_max_drop(drop, "max_drop")
        except UserError as e:
            raise _LineError(_line(ev, "max_drop", ev.line), str(e)) from None
    return {"data": str(resolved), "samples": ev.get("samples"), "max_drop": drop}


def _build(path: Path, data, out_dir: Path) -> Recipe:
    """The parsed YAML as a `Recipe`: the top keys, then each section in a fixed order (the first
    problem found is the one reported), then the jobs it makes."""
    if not isinstance(data, dict):
        raise _LineError(getattr(data, "line", 1), "a recipe is a mapping of keys (recipe, models, tasks, formats, ...)")
    _unknown(data, TOP_KEYS, "the recipe")
    version = data.get("recipe", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise _LineError(_line(data, "recipe", data.line), f"recipe schema {version!r}; this version reads {SCHEMA_VERSION}")
    models = _models(data, _img_size(data, data.line), _classes(data, data.line))
    tasks = _tasks(data)
    formats, precisions, batches, devices = _formats(data), _precisions(data), _batch_sizes(data), _devices(data)
    calibration = _calibration(data, path, precisions)
    evaluation = _evaluation(data, path, tasks)
    profile = _profile(data)
    format_options = _format_options(data, formats)
    name = data.get("name") or path.stem
    if not _short_name(name):
        raise _LineError(_line(data, "name", data.line), f"name must be a short name (letters, digits, - _), got {name!r}")
    recipe = Recipe(path=path, name=name, description=str(data.get("description") or ""), models=models, tasks=tasks,
                    formats=list(formats), precisions=list(precisions), batch_sizes=sorted(set(batches)),
                    devices=list(devices), calibration=dict(calibration), profile=dict(profile), out_dir=out_dir,
                    evaluation=evaluation, format_options=format_options)
    recipe.export_jobs()  # name collisions are errors now, not halfway through a run
    return recipe


def _short_name(value) -> bool:
    """Letters, digits, ``-`` and ``_``: a name that is safe in a file name."""
    return isinstance(value, str) and value.replace("-", "").replace("_", "").isalnum()


def _item_line(seq, i: int) -> int:
    """The line of ``seq[i]`` in the file (a default list, not from the file, has none)."""
    return _line(seq, i, getattr(seq, "line", 1))


def _img_size(entry, line: int) -> tuple[int, int] | None:
    """``entry``'s ``img_size``, checked; ``line``: where ``entry`` starts."""
    return _size(entry.get("img_size"), _line(entry, "img_size", line))


def _classes(entry, line: int) -> int | None:
    """``entry``'s ``num_classes``, checked; ``line``: where ``entry`` starts."""
    return _positive(entry.get("num_classes"), _line(entry, "num_classes", line), "num_classes", MAX_CLASSES)


def _entry(entry, key: str, line: int):
    """A list entry given as a bare string, as the mapping ``{key: entry}`` it stands for."""
    if isinstance(entry, str):
        entry = _Map({key: entry})
        entry.line, entry.lines = line, {}
    return entry


def _models(data, default_size, default_classes) -> list[ModelEntry]:
    """``models:``: timm names or ``{model, img_size, num_classes, reference, label}``; the recipe's
    ``img_size`` and ``num_classes`` fill in what a model leaves out."""
    models = []
    entries = _list(data, "models")
    for i, entry in enumerate(entries):
        line = _item_line(entries, i)
        entry = _entry(entry, "model", line)
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise _LineError(line, "a model is a timm name or a mapping with `model: <timm name>`")
        _unknown(entry, MODEL_KEYS, "a model")
        try:
            check_model_name(entry["model"])
        except UserError as e:
            raise _LineError(_line(entry, "model", line), str(e)) from None
        models.append(ModelEntry(entry["model"], _img_size(entry, line) or default_size,
                                 _classes(entry, line) or default_classes, _reference(entry, line),
                                 _label(entry, line)))
    return models


def _label(entry, line: int) -> str | None:
    """A model's or task's ``label:``, added to its file stems."""
    label = entry.get("label")
    if label is not None and not _short_name(label):
        raise _LineError(_line(entry, "label", line), f"label must be a short name (letters, digits, - _), got {label!r}")
    return label


def _reference(entry, line: int) -> dict[str, float]:
    """A model's ``reference:``: the numbers AutoTimm's benchmark page publishes for it, each known
    key a finite number in its range (the page formats them as numbers)."""
    reference = entry.get("reference") or {}
    line = _line(entry, "reference", line)
    if not isinstance(reference, dict):
        raise _LineError(line, "reference must be a mapping (the numbers AutoTimm's benchmark page publishes for "
                               f"the model: {', '.join(REFERENCE_KEYS)})")
    _unknown(reference, set(REFERENCE_KEYS), "reference")
    for key, value in reference.items():
        most = REFERENCE_KEYS[key]
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                or not 0 <= value <= most):
            raise _LineError(_line(reference, key, line), f"reference {key} must be a number from 0 to {most:g}, "
                                                           f"got {value!r}")
    return dict(reference)


def _tasks(data) -> list[TaskEntry]:
    """``tasks:`` (default: classification): task names or ``{task, architecture, head options,
    img_size, num_classes, label}``, the head options checked by building the spec they make."""
    tasks = []
    entries = _list(data, "tasks", required=False) or _Seq(["classification"])
    for i, entry in enumerate(entries):
        line = _item_line(entries, i)
        entry = _entry(entry, "task", line)
        if not isinstance(entry, dict) or entry.get("task") not in TASKS:
            got = entry.get("task") if isinstance(entry, dict) else entry
            raise _LineError(line, f"unknown task {got!r}; choose one of: {', '.join(TASKS)}")
        architecture = entry.get("architecture", ARCHITECTURES[0])
        if architecture not in ARCHITECTURES:
            raise _LineError(_line(entry, "architecture", line),
                             f"unknown architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
        options = (AUTOTIMM_HEAD_OPTIONS if architecture == "autotimm" else HEAD_OPTIONS)[entry["task"]]
        _unknown(entry, TASK_KEYS | set(options), f"a {entry['task']} task ({architecture} architecture)")
        head = {k: v for k, v in entry.items() if k not in TASK_KEYS}
        try:
            ModelSpec("resnet18", task=entry["task"], head=head, architecture=architecture)
        except UserError as e:
            raise _LineError(line, str(e)) from None
        tasks.append(TaskEntry(entry["task"], head, _img_size(entry, line), _classes(entry, line), _label(entry, line),
                               architecture))
    return tasks


def _formats(data) -> list:
    """``formats:``, each a known export format (a close name suggested)."""
    formats = _list(data, "formats")
    for i, fmt in enumerate(formats):
        if fmt not in FORMATS:
            close = difflib.get_close_matches(str(fmt), FORMATS, n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (known: {', '.join(FORMATS)})"
            raise _LineError(_item_line(formats, i), f"unknown format {fmt!r}{hint}")
    return formats


def _precisions(data) -> list:
    """``precisions:`` (default fp32)."""
    precisions = _list(data, "precisions", required=False) or ["fp32"]
    for i, p in enumerate(precisions):
        if p not in PRECISIONS:
            raise _LineError(_item_line(precisions, i), f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
    return precisions


def _batch_sizes(data) -> list:
    """``batch_sizes:`` (default 1), each from 1 to `MAX_BATCH`."""
    batches = _list(data, "batch_sizes", required=False) or [1]
    for i, b in enumerate(batches):
        if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= MAX_BATCH:
            raise _LineError(_item_line(batches, i),
                             f"batch_sizes must be positive integers up to {MAX_BATCH} like [1, 8, 32], got {b!r}")
    return batches


def _devices(data) -> list:
    """``devices:`` (default cpu), each once (``cuda`` and ``cuda:0`` are one device)."""
    devices = _list(data, "devices", required=False) or ["cpu"]
    for i, d in enumerate(devices):
        if parse_device(d) is None:
            raise _LineError(_item_line(devices, i), f"unknown device {d!r}; use {DEVICE_FORMS}")
        if device_tag(d) in map(device_tag, devices[:i]):
            raise _LineError(_item_line(devices, i), f"device {d!r} is listed twice (cuda is cuda:0); list each device once")
    return devices


def _calibration(data, path: Path, precisions: list) -> dict:
    """``calibration: {data, samples, random}``, a data path taken relative to the recipe file;
    required by int8."""
    calibration = data.get("calibration") or {}
    if not isinstance(calibration, dict):
        raise _LineError(_line(data, "calibration", data.line), "calibration must be a mapping (data, samples, random)")
    if calibration:
        _unknown(calibration, CALIBRATION_KEYS, "calibration")
        _positive(calibration.get("samples"), _line(calibration, "samples", calibration.line), "samples",
                  MAX_CALIBRATION_SAMPLES)
        source, where = calibration.get("data"), _line(calibration, "data", calibration.line)
        if isinstance(source, str) and source != SAMPLE_PICTURES and not Path(source).is_absolute():
            calibration = {**calibration, "data": str((path.parent / source).resolve())}
        if "int8" in precisions and isinstance(source, str) and source != SAMPLE_PICTURES \
                and not Path(calibration["data"]).exists():  # refused with the recipe, not job by job
            raise _LineError(where, f"calibration data not found: {calibration['data']}")
    if "int8" in precisions and not calibration.get("data") and not calibration.get("random"):
        raise _LineError(_line(data, "precisions", data.line),
                         "int8 needs calibration: add `calibration: {data: DIR|FILE.npy|sample-pictures}`")
    return calibration


def _format_options(data, formats: list) -> dict[str, dict[str, Any]]:
    """``format_options: {FORMAT: {option: value}}``: a listed format's own options (the fields of its
    `Format.Options`, as `--help` groups them), each checked by building the options object."""
    raw = data.get("format_options") or {}
    line = _line(data, "format_options", data.line)
    if not isinstance(raw, dict):
        raise _LineError(line, "format_options must be a mapping of format names to their options")
    out = {}
    for fmt, values in raw.items():
        at = _line(raw, fmt, line)
        options_class = get_format(fmt).Options if fmt in formats else None
        if options_class is None:
            raise _LineError(at, f"format_options: {fmt!r} is not a listed format with options of its own")
        if not isinstance(values, dict):
            raise _LineError(at, f"format_options: {fmt} takes a mapping of its options")
        fields = {f.name: f.metadata.get("cli", {}) for f in dataclasses.fields(options_class)}
        _unknown(values, set(fields), f"{fmt}'s format_options")
        for key, value in values.items():
            cli = fields[key]
            if cli.get("choices") and value not in cli["choices"]:
                raise _LineError(_line(values, key, at), f"format_options: {fmt}.{key} takes one of "
                                 f"{', '.join(map(str, cli['choices']))}, got {value!r}")
            if cli.get("action") in ("store_true", "store_const") and not isinstance(value, bool):
                raise _LineError(_line(values, key, at), f"format_options: {fmt}.{key} takes true or false, got {value!r}")
        out[fmt] = dict(values)
    return out


def _profile(data) -> dict:
    """``profile: {max_time, warmup_time, iterations, threads}``, threads at most the cores here."""
    profile = data.get("profile") or {}
    if not isinstance(profile, dict):
        raise _LineError(_line(data, "profile", data.line), "profile must be a mapping")
    if profile:
        _unknown(profile, PROFILE_KEYS, "profile")
        for key in ("max_time", "warmup_time"):
            _seconds(profile.get(key), _line(profile, key, profile.line), key)
        _positive(profile.get("iterations"), _line(profile, "iterations", profile.line), "iterations", MAX_ITERATIONS)
        _positive(profile.get("threads"), _line(profile, "threads", profile.line), "threads", cores_available())
    return profile
