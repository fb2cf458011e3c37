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
# onnxruntime-gpu replaces the CPU onnxruntime (both provide the `onnxruntime` module)
RUN pip install '.[trt,openvino,autotimm]' \
 && pip uninstall -y onnxruntime \
 && pip install 'onnxruntime-gpu>=1.20' \
 && python -c "import tensorrt, onnxruntime; print('TensorRT', tensorrt.__version__, onnxruntime.get_available_providers())"

WORKDIR /work
CMD ["autotimm-export", "--list-formats"]
