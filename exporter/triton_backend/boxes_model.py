"""Detection postprocessing in the ensemble: ``boxes`` [1, K, 4] (x1, y1, x2, y2 in the model's input
pixels, the picture stretched to it) mapped back to the original picture's pixels with
``original_size`` [1, 2]; ``parameters.input_size`` is the model's (height, width)."""

from __future__ import annotations

import json

import numpy as np
from autotimm_deploy.exporter.triton_backend.tensors import failed, parameters, read, respond


def to_original(boxes: np.ndarray, original: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Scale x by W0 / w and y by H0 / h, per picture."""
    h, w = input_size
    scale = np.stack([original[:, 1] / w, original[:, 0] / h] * 2, axis=-1).astype(np.float32)  # [B, 4]
    return (boxes * scale[:, None, :]).astype(boxes.dtype)


class TritonPythonModel:
    def initialize(self, args):
        self.input_size = tuple(json.loads(parameters(args)["input_size"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                boxes = to_original(read(request, "boxes"), read(request, "original_size"), self.input_size)
                responses.append(respond({"boxes": boxes}))
            except Exception as e:  # noqa: BLE001
                responses.append(failed(e))
        return responses
