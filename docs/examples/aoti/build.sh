#!/usr/bin/env bash
# Build predict.cpp against the installed torch wheel's headers and libraries (no separate libtorch):
#   PYTHON=.venv/bin/python docs/examples/aoti/build.sh [OUTPUT]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/predict}"
py="${PYTHON:-python3}"
torch_dir="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)" || {
  echo "build.sh: $py cannot import torch; set PYTHON to the interpreter of the environment that has it" >&2; exit 2; }
abi="$("$py" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"
"${CXX:-g++}" -std=c++20 -O2 "$here/predict.cpp" -o "$out" \
  -D_GLIBCXX_USE_CXX11_ABI="$abi" \
  -I"$torch_dir/include" -I"$torch_dir/include/torch/csrc/api/include" \
  -L"$torch_dir/lib" -Wl,--disable-new-dtags,-rpath,"$torch_dir/lib" -Wl,--no-as-needed -ltorch -ltorch_cpu -lc10 \
  $([ -e "$torch_dir/lib/libtorch_cuda.so" ] && echo -ltorch_cuda)
# (an RPATH, not a RUNPATH: the package's compiled .so is dlopen-ed and needs libtorch.so found too;
# --no-as-needed keeps libtorch_cuda linked, which packages compiled for CUDA need)
echo "$out"
