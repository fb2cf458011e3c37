# GPU image: TensorRT and CUDA from NVIDIA's NGC container, the project with [trt,gpu].
#
#   docker build -t autotimm-deploy .
#   docker run --gpus all --rm -v "$PWD/out:/work/out" autotimm-deploy \
#       autotimm-export resnet50 --format trt --fp16 -o /work/out
#   docker run --gpus all --rm -v "$PWD/out:/work/out" autotimm-deploy \
#       autotimm-profile /work/out/resnet50-fp16.engine --compare-eager
#
# nvcr.io/nvidia/tensorrt:25.10-py3 ships TensorRT 10.13 (Python bindings installed), CUDA 13.0 and
# Python 3.12 on Ubuntu 24.04; torch 2.14.1's CUDA 13.0 wheel matches its CUDA. Engines are tied to
# the TensorRT version and GPU they are built with: build them in the image that will run them.
FROM nvcr.io/nvidia/tensorrt:25.10-py3

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# the venv sees the image's own tensorrt; the project's [trt] extra is then already satisfied
RUN python3 -m venv --system-site-packages /opt/venv && pip install --upgrade pip

WORKDIR /opt/autotimm-deploy
# torch first, alone and pinned (the project pins the same pair)
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY profiler ./profiler
COPY recipes ./recipes
# The image's own TensorRT is pinned (its version read from pip's metadata): a resolver must not
# replace it with one from NVIDIA's index, and onnxruntime-gpu's TensorRT provider links TensorRT 10.
# onnxruntime-gpu replaces the CPU onnxruntime (both provide the `onnxruntime` module).
RUN echo "tensorrt==$(pip show tensorrt | sed -n 's/^Version: //p')" > /tmp/pins.txt && cat /tmp/pins.txt \
 && grep -q '^tensorrt==10\.' /tmp/pins.txt \
 && pip install -c /tmp/pins.txt '.[trt,openvino,autotimm,triton]' \
 && pip uninstall -y onnxruntime \
 && pip install -c /tmp/pins.txt 'onnxruntime-gpu>=1.20'
# What a session really runs on (ORT drops a provider it cannot start without an error), not what is
# merely available. `docker build` has no GPU, so here this lists CPU only; run the same line with
# `docker run --gpus all` to see TensorRT and CUDA.
COPY benchmarks/provider_check.py /opt/autotimm-deploy/provider_check.py
RUN python /opt/autotimm-deploy/provider_check.py

WORKDIR /work
CMD ["autotimm-export", "--list-formats"]
