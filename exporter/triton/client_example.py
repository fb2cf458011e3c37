"""Send a picture to a model served from an autotimm-deploy Triton repository and print the answer.

    pip install 'tritonclient[http,grpc]' numpy
    python client.py picture.jpg                      # HTTP on 127.0.0.1:8000
    python client.py picture.jpg --grpc --url 127.0.0.1:8001 --model other_ensemble

The ensemble takes the image file's bytes as a UINT8 vector named IMAGE and does the preprocessing
(and, for detectors, maps boxes back to the picture's pixels) on the server."""

import argparse
import sys

import numpy as np

MODEL = "__MODEL__"  # the repository's first ensemble (models.json lists them all)


def ask(picture: str, model: str, url: str, use_grpc: bool) -> dict:
    if use_grpc:
        import tritonclient.grpc as client
    else:
        import tritonclient.http as client
    with open(picture, "rb") as f:
        data = np.frombuffer(f.read(), dtype=np.uint8)
    server = client.InferenceServerClient(url)
    image = client.InferInput("IMAGE", list(data.shape), "UINT8")
    image.set_data_from_numpy(data)
    metadata = server.get_model_metadata(model)
    names = [o["name"] if isinstance(o, dict) else o.name for o in
             (metadata["outputs"] if isinstance(metadata, dict) else metadata.outputs)]
    result = server.infer(model, [image])
    return {name: result.as_numpy(name) for name in names}


def show(out: dict, top: int = 5) -> None:
    if "num_detections" in out:  # detection / instance segmentation: boxes in the picture's pixels
        n = int(out["num_detections"].reshape(-1)[0])
        print(f"{n} detections")
        for box, score, label in zip(out["boxes"][0][:n], out["scores"][0][:n], out["labels"][0][:n]):
            print(f"  class {int(label):4d}  score {float(score):.3f}  box {[round(float(v), 1) for v in box]}")
    elif "mask" in out or ("logits" in out and out["logits"].ndim == 4):  # semantic segmentation
        mask = out["mask"][0] if "mask" in out else out["logits"][0].argmax(0)
        classes, counts = np.unique(mask, return_counts=True)
        print("pixels per class:", {int(c): int(n) for c, n in zip(classes, counts)})
    else:  # classification
        logits = out["logits"][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        for k in np.argsort(-p)[:top]:
            print(f"  class {int(k):4d}  {100 * p[k]:6.2f} %")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("picture")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--url", default=None, help="host:port (default 127.0.0.1:8000, or :8001 with --grpc)")
    parser.add_argument("--grpc", action="store_true")
    a = parser.parse_args(argv)
    url = a.url or ("127.0.0.1:8001" if a.grpc else "127.0.0.1:8000")
    try:
        show(ask(a.picture, a.model, url, a.grpc))
    except Exception as e:  # noqa: BLE001 - a client example: one line
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
