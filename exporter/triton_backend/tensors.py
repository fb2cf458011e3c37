"""Tensors in and out of Triton's Python backend through DLPack. ``Tensor.as_numpy()`` and
``Tensor(name, array)`` go through the stub's pybind11 numpy bindings, which read numpy 2 arrays
wrongly in the stub PyPI's tritonserver bundles (seen here: zeros in, size mismatches out); DLPack
does not depend on numpy's C layout, so it is right with numpy 1 and 2 alike. The capsules are made
and read by torch (numpy 2's ``__dlpack__`` hands the stub a capsule kind it does not take)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def backend():
    import triton_python_backend_utils as pb_utils

    return pb_utils


def read(request, name: str) -> np.ndarray:
    """The request's input ``name`` as a numpy array (a copy: Triton reuses its buffer)."""
    from torch.utils.dlpack import from_dlpack

    tensor = backend().get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"the request has no input {name!r}")
    return from_dlpack(tensor.to_dlpack()).numpy().copy()


def tensor(name: str, array: np.ndarray):
    import torch
    from torch.utils.dlpack import to_dlpack

    return backend().Tensor.from_dlpack(name, to_dlpack(torch.from_numpy(np.array(array, copy=True, order="C"))))


def respond(outputs: dict[str, np.ndarray]):
    pb = backend()
    return pb.InferenceResponse(output_tensors=[tensor(k, v) for k, v in outputs.items()])


def failed(error: Exception):
    pb = backend()
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(f"{type(error).__name__}: {error}"))


def parameters(args: dict) -> dict[str, str]:
    """The model config's ``parameters`` as {key: string value}."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def model_folder(args: dict) -> Path:
    return Path(args["model_repository"]) / str(args["model_version"])
