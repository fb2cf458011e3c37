"""A model served by Triton Inference Server, measured from the client: ``triton://HOST:PORT/MODEL``
(HTTP; ``?protocol=grpc`` for gRPC). Its inputs, outputs and batch range come from the server's
model metadata and config; a repository written by ``autotimm-triton`` also records the model's spec
(``parameters.autotimm_spec``), so ``--compare-eager`` can build the eager twin. Timing is the
client's round trip: serialisation, the network, the server's queue and the model."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

import numpy as np
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import Manifest, TensorSig
from autotimm_deploy.profiler.runtimes.base import Session, register_runtime


def parse_url(url: str) -> tuple[str, str, str]:
    """``triton://host:port/model[?protocol=grpc]`` -> (host:port, model, protocol)."""
    parsed = urlparse(url)
    protocol = dict(p.split("=", 1) for p in parsed.query.split("&") if "=" in p).get("protocol", "http")
    model = parsed.path.strip("/")
    try:
        port = parsed.port or (8001 if protocol == "grpc" else 8000)
    except ValueError:
        port = None
    if parsed.scheme != "triton" or not parsed.hostname or not model or "/" in model or \
            protocol not in ("http", "grpc") or port is None:
        raise UserError(f"{url}: a served model is triton://HOST[:PORT]/MODEL[?protocol=grpc]")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{host}:{port}", model, protocol


def client_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as client
    else:
        import tritonclient.http as client
    return client


def connect(url: str):
    """(client module, client, model) for ``url``, the model checked ready (one line if not)."""
    address, model, protocol = parse_url(url)
    client = client_module(protocol)
    c = client.InferenceServerClient(address)
    try:
        ready = c.is_model_ready(model)
    except Exception as e:  # noqa: BLE001 - connection refused, DNS, ...
        raise UserError(f"no Triton server answers at {address} ({protocol}): {str(e).splitlines()[0][:200]}") from None
    if not ready:
        raise UserError(f"{url}: the server at {address} has no ready model {model!r}")
    return client, c, model


def served_manifest(url: str) -> Manifest:
    """What the server says about the model, as a manifest (format ``triton``)."""
    from tritonclient.utils import triton_to_np_dtype

    _, c, model = connect(url)
    config = _as_dict(c.get_model_config(model))
    config = config.get("config", config)
    batched = int(config.get("max_batch_size", 0)) > 0
    meta = _as_dict(c.get_model_metadata(model))

    spec = json.loads(config.get("parameters", {}).get("autotimm_spec", {}).get("string_value", "null") or "null")
    size = (spec or {}).get("img_size") or []

    def dim(i: int, d) -> int | str:
        d = int(d)
        if i == 0 and (batched or d < 0):
            return "batch"
        if d < 0 and i in (2, 3) and size:  # a symbolic height / width: measured at the export size
            return int(size[i - 2])
        return d if d >= 0 else f"dim{i}"

    def sigs(entries):
        return [TensorSig(e["name"], np.dtype(triton_to_np_dtype(e["datatype"])).name,
                          [dim(i, d) for i, d in enumerate(e["shape"])]) for e in entries]

    return Manifest(format="triton", artifact=model, spec=spec or {}, inputs=sigs(meta["inputs"]),
                    outputs=sigs(meta["outputs"]),
                    batch={"dynamic": batched, "min": 1, "max": int(config["max_batch_size"]) if batched else 1})


def _as_dict(message) -> dict:
    if isinstance(message, dict):
        return message
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@register_runtime
class TritonSession(Session):
    extra = "triton"
    requires = ("tritonclient",)
    name = "triton"
    served_manifest = staticmethod(served_manifest)
    formats = ("triton",)
    devices = ("cpu",)  # the client's side; where the server runs is the server's business

    def __init__(self, path, manifest=None, device="cpu", threads=None, url: str | None = None, **options: Any):
        super().__init__(None, manifest, device, threads, **options)
        if url is None:
            raise UserError("the triton runtime needs a triton://HOST:PORT/MODEL target")
        self.url = url
        self.client_module, self.client, self.model = connect(url)
        self.requested = [self.client_module.InferRequestedOutput(n) for n in self.output_names]

    def prepare(self, arrays: dict[str, np.ndarray]) -> Any:
        from tritonclient.utils import np_to_triton_dtype

        inputs = []
        for sig in self.inputs:
            x = np.ascontiguousarray(arrays[sig.name], dtype=sig.dtype)
            entry = self.client_module.InferInput(sig.name, list(x.shape), np_to_triton_dtype(x.dtype))
            entry.set_data_from_numpy(x)
            inputs.append(entry)
        return inputs

    def run(self, prepared: Any) -> Any:
        return self.client.infer(self.model, prepared, outputs=self.requested)

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        return {n: outputs.as_numpy(n) for n in self.output_names}

    def caller(self, batch: int, seed: int = 0) -> "Caller":
        """Sends one request at ``batch`` on its own connection (one per thread); close it after."""
        client = self.client_module.InferenceServerClient(parse_url(self.url)[0])
        return Caller(client, self.model, self.prepare(self.random_arrays(batch, seed)), self.requested,
                      check=lambda result: self.check_outputs(self.fetch(result), batch))

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass


class Caller:
    def __init__(self, client, model: str, inputs, outputs, check=None):
        self.client, self.model, self.inputs, self.outputs = client, model, inputs, outputs
        self._check = check

    def __call__(self):
        return self.client.infer(self.model, self.inputs, outputs=self.outputs)

    def checked_call(self) -> None:
        """One request, untimed, its answer checked against the model's declared outputs (`WrongOutputs`)."""
        result = self()
        if self._check is not None:
            self._check(result)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
