"""The CUDA runtimes' choices that a CPU can check: ONNX Runtime's provider options (device, stream,
int8/fp16, TensorRT profile shapes), its silent provider fallback, the stream the harness's CUDA
events are recorded on, and TensorRT refusing an input shape."""

import types

import numpy as np
import pytest
import torch
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import TensorSig, load_manifest
from autotimm_deploy.profiler.measure.sweep import phase_split, timed_call
from autotimm_deploy.profiler.measure.timing import CudaClock, HarnessConfig
from autotimm_deploy.profiler.runtimes.onnxruntime import (
    PROVIDERS,
    fallback_problem,
    provider_options,
    trt_profile_shapes,
)

INPUT = [TensorSig("input", "float32", ["batch", 3, 64, 64])]


def test_cuda_providers_get_the_device_and_our_stream():
    (cuda, cpu) = provider_options(PROVIDERS["cuda"], device_id=1, stream=12345)
    assert cuda == ("CUDAExecutionProvider", {"device_id": 1, "user_compute_stream": "12345"})
    assert cpu == "CPUExecutionProvider"
    trt, cuda, _ = provider_options(PROVIDERS["tensorrt"], device_id=2, stream=None)
    assert trt[1]["device_id"] == 2 and cuda[1] == {"device_id": 2}  # the CUDA fallback too


@pytest.mark.parametrize("precision,fp16,int8", [("fp32", False, False), ("fp16", True, False), ("int8", True, True)])
def test_tensorrt_provider_precision(precision, fp16, int8):
    ((_, opts), *_rest) = provider_options(PROVIDERS["tensorrt"], 0, None, precision=precision, cache="/c",
                                           profile=trt_profile_shapes(INPUT, {"min": 1, "opt": 4, "max": 16}))
    # a Q/DQ graph on the TensorRT 10 that onnxruntime-gpu links needs trt_int8_enable, else TensorRT
    # refuses it ("int8 precision has been set ... but int8 is not configured")
    assert opts["trt_int8_enable"] is int8 and opts["trt_fp16_enable"] is fp16
    assert opts["trt_engine_cache_path"] == "/c" and opts["trt_timing_cache_enable"]
    assert opts["trt_profile_min_shapes"] == "input:1x3x64x64"
    assert opts["trt_profile_opt_shapes"] == "input:4x3x64x64"
    assert opts["trt_profile_max_shapes"] == "input:16x3x64x64"


def test_trt_profile_shapes_rules():
    # an unbounded dynamic batch gets our engines' default maximum, or the largest batch swept
    assert trt_profile_shapes(INPUT, {"min": 1, "max": None})["max"] == "input:32x3x64x64"
    assert trt_profile_shapes(INPUT, {"min": 1, "max": None}, max_batch=64)["max"] == "input:64x3x64x64"
    static = [TensorSig("input", "float32", [8, 3, 64, 64])]
    assert set(trt_profile_shapes(static, {"min": 8, "max": 8}).values()) == {"input:8x3x64x64"}
    assert trt_profile_shapes([TensorSig("input", "float32", ["batch", 3, "h", "w"])], None) is None
    assert trt_profile_shapes([], None) is None


def test_provider_fallback_is_refused():
    assert fallback_problem(PROVIDERS["tensorrt"], ["TensorrtExecutionProvider", "CPUExecutionProvider"]) is None
    msg = fallback_problem(PROVIDERS["tensorrt"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "could not start TensorrtExecutionProvider and fell back to CUDAExecutionProvider" in msg


def test_session_refuses_a_silent_cpu_fallback(tmp_path, monkeypatch):
    """ORT told to use CUDA on a machine where it cannot starts on the CPU without an error; the
    session checks what it got and says so instead of reporting a CPU run as CUDA."""
    import onnxruntime as ort
    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.exporter.formats import ExportOptions
    from autotimm_deploy.exporter.pipeline import export
    from autotimm_deploy.profiler.runtimes import open_session

    (r,) = export(ModelSpec("test_resnet", num_classes=4, img_size=(64, 64)), ["onnx"], tmp_path,
                  ExportOptions(), verify=False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(UserError, match="could not start CUDAExecutionProvider and fell back to CPUExecutionProvider"):
        open_session(r.artifact, "onnxruntime-cuda", load_manifest(r.artifact), device="cuda")


class _Event:
    log: list = []

    def __init__(self, enable_timing):
        pass

    def record(self, stream=None):
        _Event.log.append(stream)

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return 1.5


def _fake_cuda_clock():
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        Event=_Event, device=lambda d: __import__("contextlib").nullcontext(),
        current_stream=lambda d: "current-stream"))
    clock = CudaClock.__new__(CudaClock)
    clock.torch, clock.device = fake, "cuda:0"
    return clock


class _StreamSession:
    """A CPU session that says it computes on a stream of its own (as TensorRT and ORT-GPU do)."""

    def __init__(self, stream):
        self.stream = stream

    def timing_stream(self):
        return self.stream

    def random_arrays(self, batch, seed=0):
        return {"input": np.zeros((batch, 3), np.float32)}

    def make_inputs(self, batch, seed=0):
        return self.prepare(self.random_arrays(batch, seed))

    def prepare(self, arrays):
        return arrays

    def run(self, prepared):
        return prepared

    def fetch(self, outputs):
        return outputs

    def synchronize(self):
        pass


@pytest.mark.parametrize("device_io", [False, True])
def test_cuda_events_are_recorded_on_the_runtime_stream(device_io):
    clock = _fake_cuda_clock()
    _Event.log = []
    assert clock.time(timed_call(_StreamSession("trt-stream"), 2, device_io)) == 1.5
    assert _Event.log == ["trt-stream", "trt-stream"]  # not the default stream the runtime never uses
    _Event.log = []
    clock.time(timed_call(_StreamSession(None), 2, device_io))  # eager: the current stream
    assert _Event.log == ["current-stream", "current-stream"]
    _Event.log = []
    phase_split(_StreamSession("s"), 1, HarnessConfig(iterations=2, warmup_time=0, warmup_window=1), clock)
    assert set(_Event.log) == {"s"}


def test_tensorrt_refused_shape_is_an_error_not_a_silent_run():
    from autotimm_deploy.profiler.runtimes.tensorrt import TensorRTSession

    class Context:
        def set_input_shape(self, name, shape):
            return shape[0] <= 4  # TensorRT returns False outside the profile

        def set_tensor_address(self, name, ptr):
            pass

        def get_tensor_shape(self, name):
            return (2, 10)

    class Engine:
        def get_tensor_profile_shape(self, name, profile):
            return (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)

        def get_tensor_dtype(self, name):
            return types.SimpleNamespace(name="FLOAT")

    s = TensorRTSession.__new__(TensorRTSession)
    s.torch, s.dev, s.cuda_graph = torch, torch.device("cpu"), False
    s.context, s.engine, s.input_names, s.engine_outputs = Context(), Engine(), ["input"], ["logits"]
    s._out_buffers = {}
    assert set(s._bind({"input": torch.zeros(2, 3, 8, 8)})) == {"logits"}
    with pytest.raises(RuntimeError, match=r"refused input input of shape \(8, 3, 8, 8\).*batch 1 to 4"):
        s._bind({"input": torch.zeros(8, 3, 8, 8)})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
def test_eager_cuda_graph_replays_the_same_outputs():
    from autotimm_deploy.exporter.core.spec import ModelSpec
    from autotimm_deploy.profiler.targets import Target, open_target

    spec = ModelSpec("test_resnet", num_classes=4, img_size=(64, 64))
    eager = Target(label="eager", runtime="eager", format="eager", spec=spec)
    with open_target(eager, "cuda", None) as plain, open_target(eager, "cuda", None, {"cuda_graph": True}) as graphed:
        for batch in (1, 3, 1):  # one graph per shape, replayed
            x = plain.random_arrays(batch, seed=batch)
            np.testing.assert_allclose(graphed.infer(x)["logits"], plain.infer(x)["logits"], rtol=1e-4, atol=1e-5)
        assert len(graphed._graphs) == 2
