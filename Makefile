# Set-up and everyday commands. Everything lives in .venv/ inside the repo.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch goes in first, so nothing later can pull a multi-GB CUDA build.
# pip finds it on PyPI/--find-links; set TORCH_INDEX to a CPU-only index where the default would be CUDA.
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.edgeconv-setup

.PHONY: setup demo test bench clean samples system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "tf_keras~=2.21.0"   # onnx2tf needs it; its own pins would replace TensorFlow
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/edgeconv convert samples/digits_cnn.pt --target onnx -o out/digits-onnx --force --data samples/digits_test.npz
	$(BIN)/edgeconv validate out/digits-onnx --data samples/digits_test.npz

# The SSH tests start a real OpenSSH server on 127.0.0.1: Debian's openssh-server (installed when root).
system-deps:
	@if [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get install -y -q openssh-server || (apt-get update -q && apt-get install -y -q openssh-server)) >/dev/null; \
	else echo "the SSH tests need sshd: sudo apt-get install openssh-server" >&2; exit 1; fi

test: setup system-deps
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/run_all.py

samples: setup
	$(BIN)/python samples/make_digits.py

clean:
	rm -rf out build dist .pytest_cache
