# Set-up and everyday commands. Everything lives in .venv/ inside the repo.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch goes in first, so nothing later can pull a multi-GB CUDA build.
# pip finds it on PyPI/--find-links; set TORCH_INDEX to a CPU-only index where the default would be CUDA.
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.edgeconv-setup

.PHONY: setup demo test bench clean samples system-deps arm-board arm-board-stop toolchains

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
# The imx500 toolchain's converter (imxconv-pt) runs Java: Debian's default-jre-headless.
system-deps:
	@if [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get install -y -q openssh-server || (apt-get update -q && apt-get install -y -q openssh-server)) >/dev/null; \
	else echo "the SSH tests need sshd: sudo apt-get install openssh-server" >&2; exit 1; fi
	@if command -v java >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get install -y -q default-jre-headless || (apt-get update -q && apt-get install -y -q default-jre-headless)) >/dev/null; \
	else echo "the imx500 converter (imxconv-pt) needs Java: sudo apt-get install default-jre-headless" >&2; exit 1; fi

# The tests' aarch64 board (tests/test_arm_board.py) is built and started by `arm-board`, before pytest: the tests
# never build it (no apt-get, no pip), they only start a built one, and skip with the reason where there is none.
# ruff first, with the rules in pyproject.toml (it comes with the dev extra): a line it flags fails the tests.
# Two passes: the tests in two workers (a file stays on one worker, so its module fixtures are built once), then the
# tests marked `alone` (latency verdicts, kills timed against an uninterrupted run) by themselves on a quiet machine.
test: setup system-deps arm-board toolchains
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not alone" --durations=15
	$(BIN)/python -m pytest -q -m alone --durations=5

# An ARM64 board on loopback: Debian bookworm arm64 under qemu-user, its sshd on 127.0.0.1 (root; built once, cached
# in /var/cache/edgeconv/arm-board). The last line printed is the arguments to add to an edgeconv command.
# Exit 77, this machine cannot run it (not x86-64, no binfmt_misc): tolerated, the script records the reason in the
# board's state directory and the tests skip with it. Not root (78): tolerated on a desk (the tests skip saying so);
# under CI (CI or EDGECONV_CI set; .ci/run sets EDGECONV_CI) an error, so that CI never passes without the board.
arm-board: setup
	@rc=0; $(BIN)/python .ci/arm_board.py start || rc=$$?; \
	if [ $$rc = 77 ]; then echo "arm-board: this machine cannot run the board (reason recorded; its tests will skip)" >&2; \
	elif [ $$rc = 78 ] && [ -z "$${CI:-}$${EDGECONV_CI:-}" ]; then echo "arm-board: not root, no board: its tests will skip" >&2; \
	else exit $$rc; fi

arm-board-stop:
	$(PYTHON) .ci/arm_board.py stop

# The NPU toolchains (rknn, qnn, imx500), each in its own venv under $EDGECONV_TOOLCHAINS (default
# ~/.cache/edgeconv/toolchains): one already installed and verified is kept as it is (docs/architecture.md).
TOOLCHAINS ?= rknn qnn imx500
toolchains: setup
	$(BIN)/edgeconv toolchain install $(TOOLCHAINS)

bench: setup
	$(BIN)/python bench/run_all.py

samples: setup
	$(BIN)/python samples/make_digits.py

clean:
	rm -rf out build dist .pytest_cache
