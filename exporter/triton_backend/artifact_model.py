"""Runs one of our artifacts through our own runtime (ONNX Runtime, OpenVINO, TorchScript, ...) in
Triton's Python backend, for a server whose build lacks the artifact's native backend. The artifact
and its manifest lie in the version folder; ``parameters.artifact`` names the artifact. Requests that
Triton's dynamic batcher hands over together are run as one batch where their shapes agree."""

from __future__ import annotations

import numpy as np
from autotimm_deploy.exporter.triton_backend.tensors import failed, model_folder, parameters, read, respond


class TritonPythonModel:
    def initialize(self, args):
        from autotimm_deploy.exporter.core.manifest import load_manifest
        from autotimm_deploy.profiler.artifact import open_artifact

        path = model_folder(args) / parameters(args)["artifact"]
        manifest = load_manifest(path)
        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args.get('model_instance_device_id', 0)}" if gpu else None
        self.session = open_artifact(path, manifest=manifest, device=device).__enter__()
        if len(self.session.inputs) != 1:
            raise ValueError(f"{path.name} has {len(self.session.inputs)} inputs; this model feeds one")
        self.input = self.session.inputs[0].name
        self.outputs = self.session.output_names
        self.batch_max = self.session.batch_range()[1]

    def execute(self, requests):
        responses = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        for i, request in enumerate(requests):
            try:
                x = read(request, self.input)
                groups.setdefault(x.shape[1:], []).append((i, x))
            except Exception as e:  # noqa: BLE001 - one bad request fails alone
                responses[i] = failed(e)
        for members in groups.values():
            try:
                self._run(members, responses)
            except Exception as e:  # noqa: BLE001
                for i, _ in members:
                    responses[i] = failed(e)
        return responses

    def _run(self, members, responses) -> None:
        batch = np.concatenate([x for _, x in members]) if len(members) > 1 else members[0][1]
        step = self.batch_max or len(batch)
        parts = [self.session.infer({self.input: batch[s:s + step]}) for s in range(0, len(batch), step)]
        out = {k: np.concatenate([p[k] for p in parts]) for k in self.outputs}
        start = 0
        for i, x in members:
            responses[i] = respond({k: v[start:start + len(x)] for k, v in out.items()})
            start += len(x)

    def finalize(self):
        self.session.__exit__(None, None, None)
