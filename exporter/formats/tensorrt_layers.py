"""Where a TensorRT engine departs from eager PyTorch, layer by layer: the engine's network is built
again from the same ONNX and builder config with every tensor marked as an output (Polygraphy's
``--trt-outputs mark all``), run on the pictures, and its tensors compared with the PyTorch program's
of the same name (the dynamo exporter names ONNX tensors after it; TensorRT keeps the ONNX names).
Marking every tensor as an output stops TensorRT fusing across them, as in Polygraphy; each
precision's layer choice stays TensorRT's own (weak typing) or the ONNX graph's (strong typing)."""

from __future__ import annotations

import numpy as np
from autotimm_deploy.exporter.formats.eager_layers import AGAINST, eager_tensors
from autotimm_deploy.exporter.formats.layers import compare_layers


def layer_divergence(ctx, chain, input_name: str, max_batch: int, pictures: np.ndarray,
                     cosine_gate: float) -> dict:
    """``chain``: the engine's `BuildChain` (its network loader and config, not yet rebuilt)."""
    pictures = np.ascontiguousarray(pictures[:max_batch], dtype=np.float32)
    order, ref = eager_tensors(ctx, pictures)
    return compare_layers(order, ref, marked_tensors(chain, input_name, pictures), cosine_gate, AGAINST,
                          len(pictures))


def marked_tensors(chain, input_name: str, pictures: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of the engine rebuilt with all of them marked as outputs, on ``pictures``. The feed
    is a torch CUDA tensor, which Polygraphy reads by pointer (numpy feeds would need ``libcudart``
    through ctypes search paths that pip-only CUDA installs lack)."""
    from polygraphy import constants
    from polygraphy.backend.trt import EngineFromNetwork, ModifyNetworkOutputs, PostprocessConfig, TrtRunner

    network = ModifyNetworkOutputs(chain.network, outputs=constants.MARK_ALL)
    engine = EngineFromNetwork(network, config=PostprocessConfig(chain.config, chain.tweaks))
    with TrtRunner(engine) as runner:
        outputs = runner.infer({input_name: device_feed(pictures)})
    return {name: _host(value) for name, value in outputs.items()}


def device_feed(pictures: np.ndarray):
    import torch

    return torch.from_numpy(pictures).cuda()


def _host(value) -> np.ndarray:
    if hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)
