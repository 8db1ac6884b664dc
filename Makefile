# Commands on a fresh machine (Python >= 3.10, pip, make, a C/C++ compiler):
#   make demo   - local virtual environment, install, run the main job
#   make test   - same set-up plus the test dependencies, run the test suite
#   make docs   - same set-up plus the documentation tools, build the site into site/ (warnings fail)
#   make host-overhead - host microseconds per call on the real CuPy with stubbed CUDA libraries (any machine)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP  := $(VENV)/.installed-stamp
TORCH_WHEELS ?= /opt/wheels
TEST_STAMP := $(VENV)/.test-stamp
DOCS_STAMP := $(VENV)/.docs-stamp
# A venv of its own: CuPy installed without a GPU would change what device='auto' says in the others.
HOST_VENV  ?= .venv-host
HOST_STAMP := $(HOST_VENV)/.installed-stamp

.PHONY: demo test docs info bench host-overhead clean torch

# The package and the plot extra only: what the demo needs. The test extra (nvidia-cuda-nvrtc, about
# 140 MB, used to compile the kernels without a GPU) is installed by `make test` alone.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[plot]"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) -e ".[test,plot]"
	touch $(TEST_STAMP)

$(DOCS_STAMP): $(STAMP)
	$(PIP) -e ".[docs]"
	touch $(DOCS_STAMP)

$(HOST_STAMP): pyproject.toml
	$(PYTHON) -m venv $(HOST_VENV)
	$(HOST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[host-bench]"
	touch $(HOST_STAMP)

# The main job: verify the gradients on the best device, then train the adding problem (T = 100)
# long enough to watch it break through the mean-predictor plateau.
demo: $(STAMP)
	$(VENV)/bin/gpu-lstm info
	$(VENV)/bin/gpu-lstm check
	$(VENV)/bin/gpu-lstm train adding --steps 1200 --log-every 100 --out runs/adding

# The torch tests (parity with torch.nn.LSTM, gpu_lstm.torch, torch.compile, DDP) need torch. Only a
# local CPU wheel from TORCH_WHEELS is installed, never the registry's default build (gigabytes of
# CUDA packages); without one they skip. Elsewhere: pip install a CPU torch into .venv, then make test.
torch: $(TEST_STAMP)
	@tag=$$($(PY) -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")'); \
	wheel=$$(ls $(TORCH_WHEELS)/torch-*+cpu-"$$tag"-"$$tag"-*.whl 2>/dev/null | head -n 1); \
	if $(PY) -c 'import torch' 2>/dev/null; then :; \
	elif [ -n "$$wheel" ]; then echo "installing the local CPU torch wheel: $$wheel"; \
	  $(PIP) "$$wheel" || echo "torch install failed; torch tests will skip"; \
	else echo "no local CPU torch wheel: the torch tests will skip"; fi

# tests/test_real_cupy.py runs the engine through the real CuPy (CUDA libraries stubbed) in its own
# venv; if that venv cannot be set up (no registry), the test skips and says so.
test: $(TEST_STAMP) torch
	-@$(MAKE) --no-print-directory $(HOST_STAMP) || echo "could not set up $(HOST_VENV): tests/test_real_cupy.py will skip"
	$(PY) -m pytest -q

docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet

info: $(STAMP)
	$(VENV)/bin/gpu-lstm info

bench: $(STAMP)
	$(VENV)/bin/gpu-lstm bench

host-overhead: $(HOST_STAMP)
	$(HOST_VENV)/bin/python benchmarks/host_overhead.py --cupy real

clean:
	rm -rf $(VENV) $(HOST_VENV) .pytest_cache build dist *.egg-info runs site
