"""Names vulture reports as unused that are used, by a name vulture cannot follow (issue #28).

Never imported or run: vulture only parses it, and every name used here counts as used everywhere.
tests/test_dead_code.py runs the check:

    python -m vulture exporter profiler recipes tests/vulture_whitelist.py --min-confidence 60 \
        --ignore-decorators @register_format,@register_runtime,@register_metric,@register_task

Classes registered by those decorators (formats, runtimes, metrics, task builders) are reached
through their registry, by name; the command ignores them instead of listing each one here.

Add a name only when it is read somewhere vulture cannot see, with the reason beside it; remove
code that is really unused instead. Vulture matches by name alone, so ``_.x`` covers every
attribute, field and method called ``x``.
"""

# ruff: noqa
# flake8: noqa

# --- Python and library protocols: called by the interpreter or a library, never by our code ---
__getattr__  # exporter/__init__.py: module __getattr__ (PEP 562), the package's lazy exports
_.forward  # torch.nn.Module.forward: called by Module.__call__, tracing and export
_.training  # torch.nn.Module.training: read by torch (litert_convert sets eval mode on a quantized module)
_.find_class  # pickle.Unpickler.find_class: called by pickle for every global (models/autotimm/checkpoint.py)
exc  # profiler/runtimes/base.py: Session.__exit__(self, *exc), the context-manager protocol's arguments

# --- Triton Python-backend models (exporter/triton_backend/): the backend stub loads model.py and
# calls these by name ---
TritonPythonModel
_.initialize
_.execute
_.finalize

# --- Format / Session class attributes and hooks: read or called through the registries and the
# base classes (exporter/formats/base.py, profiler/runtimes/base.py) by name ---
_.suffix
_.aliases
_.companions
_.default_runtime
_.requires
_.extra
_.formats
_.devices
_.intermediates
_.refines
_.cli_title
_.check_file
_.recognizes
_.diagnose
_.check_task
_.check_options

# --- Dataclass fields written to JSON (asdict / to_dict): manifests, parity and profile reports,
# read by the reports, by other tools and by the tests ---
_.task_outputs  # Manifest (exporter/core/manifest.py): docs/manifest.md
_.created  # Manifest
_.schema_version  # Manifest: checked by load_manifest on the dict it reads
_.tolerance  # ParityReport (exporter/core/results.py): the tolerance the verdict was judged at
_.batches_skipped  # ProfileRun: read as run["batches_skipped"] by profiler/report/table.py
_.phases_ms  # ProfileRun: read as r["phases_ms"] by profiler/report/{table,markdown}.py
_.loadavg_1m  # MachineLoad (profiler/measure/load.py): the report's "machine" block
_.warmup_unsettled  # MachineLoad
_.ci_low  # Stats (profiler/measure/stats.py): read as stats_ms["ci_low"] by profiler/report/
_.ci_high  # Stats

# --- Fields of in-memory records that callers read, not our package ---
_.metrics_port  # exporter/triton/server.py Server: the running server's metrics endpoint (Server(*ports))
_.warmup_iterations  # profiler/measure/timing.py Measurement: warm-up length per function (tests/test_harness.py)

# --- Attributes of third-party objects, set here and read by the library ---
_.dataset  # pycocotools COCO.dataset (exporter/evaluate/coco.py)
_.imgIds  # pycocotools COCOeval.params.imgIds
_.short_description  # coremltools MLModel metadata
_.log_severity_level  # onnxruntime.SessionOptions
_.graph_optimization_level  # onnxruntime.SessionOptions
_.intra_op_num_threads  # onnxruntime.SessionOptions
_.inter_op_num_threads  # onnxruntime.SessionOptions
_.DLA_core  # tensorrt.IBuilderConfig
_.hardware_compatibility_level  # tensorrt.IBuilderConfig
_.engine_host_code_allowed  # tensorrt.Runtime
_.module_severity  # polygraphy G_LOGGER
_.num_threads  # ncnn.Option
_.use_fp16_storage  # ncnn.Option
_.use_fp16_packed  # ncnn.Option
_.use_fp16_arithmetic  # ncnn.Option
_.use_vulkan_compute  # ncnn.Option
