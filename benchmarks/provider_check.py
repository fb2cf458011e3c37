"""Sanity check for the GPU image: the installed TensorRT, and the execution providers an ONNX
Runtime session really runs on (``get_providers()``), which drops a provider it cannot start
without an error, unlike ``get_available_providers()``. Exit 1 only when a GPU is visible and a
GPU provider did not start.

    docker run --gpus all --rm autotimm-deploy python /opt/autotimm-deploy/provider_check.py
"""

import sys

import onnxruntime as ort
import torch
from onnx import TensorProto, helper

WANTED = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "check",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
session = ort.InferenceSession(model.SerializeToString(), providers=WANTED)
got = session.get_providers()
try:
    import tensorrt

    trt = tensorrt.__version__
except ImportError:
    trt = "not installed"
gpu = torch.cuda.is_available()
print(f"TensorRT {trt}; onnxruntime {ort.__version__} runs on {got}; CUDA GPU visible: {gpu}")
missing = [p for p in WANTED[:2] if p not in got]
if gpu and missing:
    print(f"GPU visible but {', '.join(missing)} did not start: check the CUDA/cuDNN/TensorRT libraries", file=sys.stderr)
    sys.exit(1)
