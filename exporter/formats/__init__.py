"""Format registry: one module per artifact kind, registered by name with `register_format`.

A format turns the built model (or the artifact of the format it ``derives_from``) into files in a
scratch folder; `autotimm_deploy.exporter.pipeline` verifies them and moves them into place. Adding
a format is adding one module here and importing it below.
"""

from autotimm_deploy.exporter.formats import (  # noqa: F401  (register)
    aoti,
    coreml,
    executorch,
    litert,
    ncnn,
    onnx,
    openvino,
    pt2,
    tensorrt,
    torch_trt,
    torchscript,
)
from autotimm_deploy.exporter.formats.base import (
    FORMATS,
    ExportContext,
    Exported,
    ExportOptions,
    Format,
    available_formats,
    export_order,
    get_format,
    register_format,
)

__all__ = ["FORMATS", "ExportContext", "ExportOptions", "Exported", "Format", "available_formats", "export_order",
           "get_format", "register_format"]
