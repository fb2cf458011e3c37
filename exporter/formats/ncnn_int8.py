"""ncnn int8 the way ncnn's own tools make it (``ncnn2table``, then ``ncnn2int8``), done here because
the ``ncnn`` and ``pnnx`` wheels ship neither tool and pnnx has no quantization option of its own.

1. The fp32 model pnnx wrote is read layer by layer by ncnn itself: each layer is created by
   ``ncnn.create_layer``, given its parameters, and loads its weights from a ``ModelBin`` of ours
   that records where in the ``.bin`` each array lies (so every layer type ncnn knows is walked
   with ncnn's own loading code, not a table of sizes kept here).
2. The table (ncnn2table's default method): for every Convolution, ConvolutionDepthWise and
   InnerProduct, the weight scales are 127 / max|w| per output channel (per group for depthwise),
   and the input blob's scale is 127 / threshold, the threshold chosen by KL divergence over a
   2,048-bin histogram of |x| on our calibration pictures run through the fp32 model by ncnn.
3. The model (ncnn2int8's format): those layers get ``8=int8_scale_term`` (2; 1 for depthwise),
   their weights int8 behind ncnn's int8 tag (0x000D4B38, padded to 4 bytes), the bias as it was,
   then the weight scales and the input scale in float32. ncnn quantizes the input at run time and
   dequantizes the output.
4. The transformer layers, as ncnn2int8 quantizes them (``quantize_gemm``,
   ``quantize_multiheadattention``, ``quantize_sdpa``), each with ``18=2``: ``Gemm`` (pnnx's form of
   ``nn.Linear`` on 3-D input) keeps a constant B (the weight) in int8 with one scale for the tensor
   and a constant A with a scale per row; ``MultiHeadAttention`` its q, k, v weights per row and its
   output weight per tensor; ``SDPA`` has no weights. ncnn quantizes these layers' inputs per row at
   run time (absmax, no table), so the calibration pictures do not reach them. Every other layer
   (LayerNorm, element-wise, MatMul, Softmax) stays fp32: ncnn has no int8 form of them.
"""

from __future__ import annotations

import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from autotimm_deploy.exporter.core.errors import ExportFailed

# the layer types ncnn2int8 quantizes with an input scale from the table, and the int8_scale_term (param 8)
# it gives each
INT8_LAYERS = {"Convolution": 2, "ConvolutionDepthWise": 1, "InnerProduct": 2}
# the ones it quantizes from their weights alone (param 18=2), ncnn quantizing their inputs at run time
DYNAMIC_LAYERS = ("Gemm", "MultiHeadAttention", "SDPA")
NOT_HERE = ("Embed", "RNN", "LSTM", "GRU")  # ncnn2int8 quantizes these too; no timm model has them
INT8_TAG = 0x000D4B38
FP32_TAG = b"\0\0\0\0"
BINS, LEVELS = 2048, 128  # ncnn2table's histogram and int8 levels


@dataclass
class Layer:
    line: str
    type: str
    name: str
    bottoms: list[str]
    params: dict[int, str]
    start: int = 0  # its bytes in the .bin: [start, end)
    end: int = 0
    loads: list[tuple[int, int, int]] = field(default_factory=list)  # (offset, end, type) of each array


def quantize(param: Path, binary: Path, pictures, input_blob: str) -> dict:
    """Rewrite the fp32 ``param`` / ``binary`` pair as ncnn int8 in place (written beside, renamed
    over); what the manifest records of it."""
    import numpy as np

    data = binary.read_bytes()
    layers = read_layers(param.read_text(), data)
    targets = [x for x in layers if x.type in INT8_LAYERS and x.loads and len(x.bottoms) == 1]
    scales = blob_scales(param, binary, sorted({x.bottoms[0] for x in targets}), pictures, input_blob)
    targets = [x for x in targets if np.isfinite(scales[x.bottoms[0]]) and scales[x.bottoms[0]] > 0]
    dynamic = [x for x in layers if x.type in DYNAMIC_LAYERS and not int(x.params.get(18, 0))]
    if not targets and not dynamic:
        raise ExportFailed("ncnn int8: the model has no Convolution, InnerProduct, Gemm or attention layer to "
                           "quantize")
    chosen, writers = {x.name for x in targets}, {x.name: DYNAMIC_WRITERS[x.type] for x in dynamic}
    lines, chunks = param.read_text().splitlines()[:2], []
    for layer in layers:
        if layer.name in chosen:
            lines.append(with_param(layer.line, 8, INT8_LAYERS[layer.type]))
            chunks.append(_int8_layer(layer, data, scales[layer.bottoms[0]]))
        elif layer.name in writers:
            replaced, tail, line = writers[layer.name](layer, data)
            lines.append(with_param(line, 18, 2))
            chunks.append(_rewrite(layer, data, replaced, tail))
        else:
            lines.append(layer.line)
            chunks.append(data[layer.start:layer.end])
    for path, content in ((binary, b"".join(chunks)), (param, ("\n".join(lines) + "\n").encode())):
        tmp = path.with_name(path.name + ".int8.tmp")
        tmp.write_bytes(content)
        os.replace(tmp, path)
    return _report(layers, targets + dynamic)


def _report(layers: list[Layer], done: list[Layer]) -> dict:
    """What the manifest says of the quantization: how many layers of each type are int8, which
    types with weights stay fp32 and why."""
    names, types = {x.name for x in done}, dict(Counter(x.type for x in done))
    left = sorted({x.type for x in layers if x.loads and x.name not in names})
    why = {t: ("ncnn2int8 quantizes it; not done here" if t in NOT_HERE
               else "no calibrated range for its input (or more than one input)" if t in INT8_LAYERS
               else "ncnn has no int8 form of it; ncnn2int8 leaves it fp32") for t in left}
    return {"int8_layers": len(done), "int8_layer_types": types, "float_layers": left, "float_layer_reasons": why,
            "calibration_method": "ncnn2table's: KL divergence over a 2048-bin histogram per input blob "
                                  "(Convolution, ConvolutionDepthWise, InnerProduct)",
            "quantizer": "ncnn2int8's format, written by autotimm-deploy: Convolution / InnerProduct weights per "
                         "output channel, their input by the table's scale; Gemm / MultiHeadAttention weights per "
                         "row (a constant A, attention's q/k/v) or per tensor (a constant B, attention's output), "
                         "their inputs and SDPA's quantized per row by ncnn at run time"}


def read_layers(param_text: str, data: bytes) -> list[Layer]:
    """The layers of an ncnn model, each with the byte ranges ncnn's own loader reads for it."""
    import ncnn
    import numpy as np

    class Recorder(ncnn.ModelBin):
        def __init__(self, offset: int):
            super().__init__()
            self.offset, self.loads = offset, []

        def load(self, w, type):  # noqa: A002 - ncnn's own argument name
            start = self.offset
            if type == 0:  # a tagged array: pnnx writes fp32 weights behind a zero tag
                if data[start:start + 4] != FP32_TAG:
                    raise ExportFailed("ncnn int8: the fp32 model has weights that are not stored as fp32")
                start += 4
            array = np.frombuffer(data, np.float32, w, start).copy()
            self.offset = start + 4 * w
            self.loads.append((self.offset - 4 * w, self.offset, type))
            return ncnn.Mat(array)

    layers, offset = [], 0
    for line in param_text.splitlines()[2:]:
        if not line.split():
            continue
        kind, name, n_in, n_out, *rest = line.split()
        layer = Layer(line, kind, name, rest[:int(n_in)],
                      dict((int(k), v) for k, v in (kv.split("=", 1) for kv in rest[int(n_in) + int(n_out):])))
        recorder = Recorder(offset)
        made = ncnn.create_layer(kind)
        if made is None or made.load_param(_param_dict(layer.params)) != 0 or made.load_model(recorder) != 0:
            raise ExportFailed(f"ncnn int8: ncnn cannot read back layer {name} ({kind}) of the fp32 model")
        layer.start, layer.end, layer.loads = offset, recorder.offset, recorder.loads
        offset = recorder.offset
        layers.append(layer)
    if offset != len(data):
        raise ExportFailed(f"ncnn int8: the layers read {offset} of the .bin's {len(data)} bytes")
    return layers


def _param_dict(params: dict[int, str]):
    import ncnn
    import numpy as np

    def is_float(text: str) -> bool:
        return any(c in text for c in ".eE")

    pd = ncnn.ParamDict()
    for key, value in params.items():
        if key <= -23300:  # an array: -23300 - id = n,v1,v2...
            items = value.split(",")[1:]
            array = (np.array([float(v) for v in items], np.float32) if any(map(is_float, items))
                     else np.array([int(v) for v in items], np.int32).view(np.float32))
            pd.set(-key - 23300, ncnn.Mat(array))
        else:
            pd.set(key, float(value) if is_float(value) else int(value))
    return pd


def blob_scales(param: Path, binary: Path, blobs: list[str], pictures, input_blob: str) -> dict:
    """127 / threshold for each blob, the threshold by KL divergence (ncnn2table's default) over the
    pictures run through the fp32 model by ncnn: a first pass for each blob's max |x|, a second for
    its histogram."""
    import ncnn
    import numpy as np

    net = ncnn.Net()
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    net.opt.use_vulkan_compute = False
    if net.load_param(str(param)) or net.load_model(str(binary)):
        raise ExportFailed("ncnn int8: ncnn cannot load the fp32 model it is calibrated on")

    def activations(picture):
        keep = np.ascontiguousarray(picture, np.float32)
        ex = net.create_extractor()
        ex.set_light_mode(False)  # keep every blob: one forward serves them all
        ex.input(input_blob, ncnn.Mat(keep))
        for blob in blobs:
            code, mat = ex.extract(blob)
            if code != 0:
                raise ExportFailed(f"ncnn int8: ncnn could not compute blob {blob} while calibrating")
            yield blob, np.abs(np.array(mat, np.float32)).ravel()

    peak = dict.fromkeys(blobs, 0.0)
    for picture in pictures:
        for blob, values in activations(picture):
            peak[blob] = max(peak[blob], float(values.max(initial=0.0)))
    hists = {b: np.zeros(BINS) for b in blobs}
    for picture in pictures:
        for blob, values in activations(picture):
            if peak[blob] > 0:
                values = values[values > 0]
                index = np.minimum((values / (peak[blob] / BINS)).astype(np.int64), BINS - 1)
                hists[blob] += np.bincount(index, minlength=BINS)
    return {b: 127 / ((kl_threshold_bin(hists[b]) + 0.5) * peak[b] / BINS) if peak[b] > 0 else 0.0 for b in blobs}


def kl_threshold_bin(hist):
    """The histogram bin where clipping and 128-level quantization lose the least information (KL
    divergence of the quantized-and-expanded distribution from the clipped one), as ncnn2table and
    TensorRT's entropy calibrator choose it; computed for all thresholds at once."""
    import numpy as np

    hist = np.asarray(hist, np.float64)
    if hist.sum() == 0:
        return BINS - 1
    nonzero = (hist > 0).astype(np.float64)
    k = np.arange(BINS)
    tail = np.cumsum(hist[::-1])[::-1]  # tail[i] = sum(hist[i:])
    best, best_kl = BINS - 1, np.inf
    for ts in np.array_split(np.arange(LEVELS, BINS), 8):
        t = ts[:, None].astype(np.float64)
        inside = k[None] < t
        p = np.where(k[None] < t - 1, hist[None], 0.0)
        p[np.arange(len(ts)), ts - 1] = tail[ts - 1]  # the outliers fold into the last bin
        edges = t * np.arange(LEVELS + 1)[None] / LEVELS
        q = np.diff(_integral(hist, edges), axis=1)
        n = np.diff(_integral(nonzero, edges), axis=1)
        level = np.minimum((k[None] * LEVELS / t).astype(np.int64), LEVELS - 1)
        qk, nk = np.take_along_axis(q, level, 1), np.take_along_axis(n, level, 1)
        expanded = np.where(inside & (nonzero[None] > 0), qk / np.maximum(nk, 1e-12), 0.0)
        p /= p.sum(1, keepdims=True)
        expanded /= np.maximum(expanded.sum(1, keepdims=True), 1e-12)
        kl = np.where(p > 0, p * np.log(np.maximum(p, 1e-30) / np.maximum(expanded, 1e-10)), 0.0).sum(1)
        i = int(np.argmin(kl))
        if kl[i] < best_kl:
            best, best_kl = int(ts[i]), float(kl[i])
    return best


def _integral(values, x):
    """The running sum of ``values`` up to the fractional bin positions ``x`` (bins split linearly)."""
    import numpy as np

    cum = np.concatenate([[0.0], np.cumsum(values)])
    whole = np.minimum(np.floor(x).astype(np.int64), len(values) - 1)
    return cum[whole] + (x - whole) * values[whole]


def with_param(line: str, key: int, value) -> str:
    """An ncnn .param layer line with parameter ``key`` set to ``value``: its ``key=`` token replaced,
    or one added at the end (the rest of the line as pnnx aligned it)."""
    kind, name, n_in, n_out, *rest = line.split()
    if str(key) not in {kv.split("=", 1)[0] for kv in rest[int(n_in) + int(n_out):]}:
        return f"{line.rstrip()} {key}={value}"
    return re.sub(rf"(?<=\s){key}=\S+", f"{key}={value}", line)


def _int8_layer(layer: Layer, data: bytes, input_scale: float) -> bytes:
    """A Convolution / InnerProduct as ncnn2int8 writes it: int8 weights (per output channel, per group
    for depthwise) behind the int8 tag, padded to 4 bytes, the bias as it was, the weight scales and
    the input scale."""
    rows = int(layer.params.get(7 if layer.type == "ConvolutionDepthWise" else 0, 1))
    weights, scales = _per_row(_array(data, layer.loads[0]).reshape(rows, -1))
    return _rewrite(layer, data, {0: weights}, [scales, [input_scale]])


def _int8_gemm(layer: Layer, data: bytes):
    """ncnn2int8's Gemm (tools/quantize/ncnn2int8.cpp, quantize_gemm): a constant A in int8 with a
    scale per row (transposed first if it was stored transposed), a constant B in int8 with one scale;
    ncnn quantizes a non-constant input per row at run time. ncnn2int8 takes B's max |w| over its first
    row only (``B_data.w`` of the 2-D K x N mat, clipping the other rows); here it is over all of B, as
    ncnn's run-time quantization of a non-constant B does (src/layer/gemm.cpp, forward_int8)."""
    get = lambda key: int(layer.params.get(key, 0))  # noqa: E731
    replaced, tail, line, i = {}, [], layer.line, 0
    if get(4):  # constantA: M x K, or K x M when transA
        m, k = get(7), get(9)
        a = _array(data, layer.loads[0]).reshape((k, m) if get(2) else (m, k))
        if get(2):
            a, line = a.T, with_param(line, 2, 0)
        replaced[0], scales = _per_row(a)
        tail.append(scales)
        i = 1
    if get(5):  # constantB: its layout does not matter to one scale
        replaced[i], scale = _per_tensor(_array(data, layer.loads[i]))
        tail.append(scale)
    return replaced, tail, line


def _int8_attention(layer: Layer, data: bytes):
    """ncnn2table + ncnn2int8's MultiHeadAttention: q, k and v weights (embed_dim rows) in int8 with a
    scale per row, the output weight with one scale; the biases stay fp32."""
    if len(layer.loads) != 8:
        raise ExportFailed(f"ncnn int8: MultiHeadAttention {layer.name} does not hold its 8 arrays")
    embed_dim, replaced, tail = int(layer.params.get(0, 0)), {}, []
    for i in (0, 2, 4):
        replaced[i], scales = _per_row(_array(data, layer.loads[i]).reshape(embed_dim, -1))
        tail.append(scales)
    replaced[6], scale = _per_tensor(_array(data, layer.loads[6]))
    return replaced, tail + [scale], layer.line


DYNAMIC_WRITERS = {"Gemm": _int8_gemm, "MultiHeadAttention": _int8_attention,
                   "SDPA": lambda layer, data: ({}, [], layer.line)}  # no weights: ncnn quantizes q, k, v


def _array(data: bytes, load: tuple[int, int, int]):
    import numpy as np

    start, end, _ = load
    return np.frombuffer(data, np.float32, (end - start) // 4, start)


def _per_row(w) -> tuple[bytes, object]:
    """``w`` (rows x columns) in int8 with a scale per row: (its tagged bytes, the scales)."""
    scales = _scales(abs(w).max(1))
    return _tagged(w, scales[:, None]), scales


def _per_tensor(w) -> tuple[bytes, list]:
    """``w`` in int8 with one scale: (its tagged bytes, [the scale])."""
    scale = _scales(abs(w).max(initial=0.0))
    return _tagged(w, scale), [scale]


def _scales(peak):
    """127 / max |w|, 1 where the weights are all 0 (ncnn's tools' convention)."""
    import numpy as np

    peak = np.asarray(peak, np.float32)
    return np.where(peak > 0, np.float32(127) / np.where(peak > 0, peak, 1), 1).astype(np.float32)


def _tagged(w, scales) -> bytes:
    """``w * scales`` in int8 as ncnn's float2int8 rounds it (half away from zero, clamped to
    [-127, 127]), behind the int8 tag and padded to 4 bytes."""
    import numpy as np

    x = w * scales
    q = np.clip(np.trunc(x + np.copysign(np.float32(0.5), x)), -127, 127).astype(np.int8).tobytes()
    return struct.pack("<I", INT8_TAG) + q + b"\0" * (-len(q) % 4)


def _rewrite(layer: Layer, data: bytes, replaced: dict, tail: list) -> bytes:
    """A layer's bytes with the arrays in ``replaced`` (by their load order, tag included) swapped for
    the given bytes, the others as they were, then ``tail`` (the scales) in float32."""
    import numpy as np

    out, cursor = [], layer.start
    for i, (_, end, _) in enumerate(layer.loads):
        out.append(replaced[i] if i in replaced else data[cursor:end])
        cursor = end
    out.append(data[cursor:layer.end])
    out.extend(np.asarray(t, np.float32).ravel().tobytes() for t in tail)
    return b"".join(out)
