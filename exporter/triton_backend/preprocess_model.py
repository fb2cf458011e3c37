"""Raw pictures in, the model's input out: a client sends an encoded image file (JPEG, PNG, ...) as
a UINT8 vector ``IMAGE``; this decodes it and applies the manifest's preprocessing (``parameters``:
``preprocessing`` as JSON: the transform the model was evaluated with). Outputs ``input`` [1, C, H, W] and ``original_size`` [1, 2] (height, width), which the
postprocessing uses to map boxes back to the picture's own pixels."""

from __future__ import annotations

import io
import json

import numpy as np
from autotimm_deploy.exporter.triton_backend.tensors import failed, parameters, read, respond


def decode(data: np.ndarray) -> np.ndarray:
    """An encoded image file's bytes -> HWC uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data.astype(np.uint8).tobytes())) as img:
            return np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError("IMAGE is not an image file PIL can read (send the file's bytes as UINT8)") from None


class TritonPythonModel:
    def initialize(self, args):
        from autotimm_deploy.exporter.inputs.preprocess import preprocess

        self.prep = json.loads(parameters(args)["preprocessing"])
        self.transform = preprocess

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                picture = decode(read(request, "IMAGE").reshape(-1))
                x = self.transform(picture, self.prep)[None]
                size = np.array([picture.shape[:2]], dtype=np.int32)
                responses.append(respond({"input": x.astype(np.float32), "original_size": size}))
            except Exception as e:  # noqa: BLE001 - a bad picture fails its own request
                responses.append(failed(e))
        return responses
