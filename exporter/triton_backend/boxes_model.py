"""Detection postprocessing in the ensemble: ``boxes`` [1, K, 4] (x1, y1, x2, y2 in the model's input
pixels) mapped back to the original picture's pixels, clipped to it, with ``original_size`` [1, 2]
(height, width) and the manifest's preprocessing (``parameters.preprocessing``): a letterbox's scale
and padding removed, a stretch undone, the same `Geometry` as every other consumer."""

from __future__ import annotations

import json

import numpy as np
from autotimm_deploy.exporter.triton_backend.tensors import failed, parameters, read, respond


def to_original(boxes: np.ndarray, original: np.ndarray, prep: dict) -> np.ndarray:
    """Each picture's boxes in its own pixels."""
    from autotimm_deploy.exporter.inputs.preprocess import geometry

    out = [geometry(tuple(size), prep).boxes_to_picture(b) for b, size in zip(boxes, original)]
    return np.stack(out).astype(boxes.dtype) if out else boxes


class TritonPythonModel:
    def initialize(self, args):
        self.prep = json.loads(parameters(args)["preprocessing"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                boxes = to_original(read(request, "boxes"), read(request, "original_size"), self.prep)
                responses.append(respond({"boxes": boxes}))
            except Exception as e:  # noqa: BLE001
                responses.append(failed(e))
        return responses
