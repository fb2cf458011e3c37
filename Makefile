# Two entry points for a fresh machine (see README.md):
#   make demo   set up, export resnet50 to every CPU format (each parity-checked), profile it against eager
#   make test   set up, run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= out
# the LiteRT converter's own venv (exporter/formats/litert_env.py), kept beside ours
export AUTOTIMM_LITERT_ENV ?= $(abspath $(VENV))/litert-env

.PHONY: setup demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, alone and pinned: pip takes this pair from the local wheel cache where it has one;
# the project itself pins the same pair so no resolver can pull another torch later.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev,openvino,autotimm,triton,executorch,ncnn,litert,coreml,ray]'
	# LiteRT's converter cannot share this venv (its pins break pydantic): its own, reusing our torch
	$(BIN)/autotimm-export --setup-litert
	# a real tritonserver (Python backend) for the Triton tests; --no-deps: its numpy<2 pin is for
	# PyTriton's own Python code, which we do not use
	$(BIN)/pip install --quiet --no-deps nvidia-pytriton==0.7.0
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/autotimm-export resnet50 --format onnx,torchscript,pt2 -o $(OUT) --force
	$(BIN)/autotimm-profile $(OUT)/resnet50.onnx --compare-eager --batch-sizes 1,8 --markdown $(OUT)/profile.md --plot $(OUT)/profile.png

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
