#!/usr/bin/env bash
# The prepared GPU check, for a lent GPU machine whose python3 has torch with CUDA, timm and onnx
# but not this project's pinned environment (no network there): run from the checkout root,
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default: $OUT, else gpu-check/)
#
# 1. environment: GPU, torch/CUDA, which optional modules are importable;
# 2. pytest -m gpu (the GPU tests; TensorRT ones skip where TensorRT is absent);
# 3. benchmarks/gpu_profile.py: resnet50 eager / TorchScript / torch.export / AOTInductor (compiled
#    for CUDA) at batch 1, 8, 32, eager fp32 and bf16, without and with CUDA graphs, --compare-eager;
#    JSON + Markdown per configuration and summary.md.
# Each step has its own time limit (60 + 150 + 240 s): the whole check stays under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
# the code imports as autotimm_deploy.* (pyproject's package-dir): a shim folder links the checkout's
# folders under that name, so nothing needs installing
shim="$(mktemp -d)"
trap 'rm -rf "$shim"' EXIT
mkdir "$shim/autotimm_deploy"
: > "$shim/autotimm_deploy/__init__.py"
for d in exporter profiler recipes; do ln -s "$PWD/$d" "$shim/autotimm_deploy/$d"; done
export PYTHONPATH="$shim:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1

timeout 60 "$py" - <<'PY' 2>&1 | tee "$out/environment.txt"
import importlib.util, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
for m in ("timm", "onnx", "onnxruntime", "onnxscript", "onnxslim", "tensorrt", "torch_tensorrt", "polygraphy",
          "pytest", "rich", "yaml", "skimage", "safetensors"):
    print(f"{m}: {'yes' if importlib.util.find_spec(m) else 'MISSING'}")
PY

if "$py" -c "import pytest" 2>/dev/null; then
  # only the modules with GPU tests: collecting the rest would need this project's whole environment
  timeout 150 "$py" -m pytest -m gpu -q -p no:cacheprovider -p no:logging tests/test_gpu_paths.py \
    tests/test_tensorrt.py tests/test_aoti.py 2>&1 | tail -40 | tee "$out/pytest-gpu.txt"
else
  echo "pytest is not installed here: GPU tests not run" | tee "$out/pytest-gpu.txt"
fi

timeout 240 "$py" benchmarks/gpu_profile.py --out "$out" 2>&1 | tail -60 | tee "$out/profile.txt"
echo "results in $out/"
