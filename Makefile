# Two commands on a fresh machine (Python >= 3.10, pip, make, a C/C++ compiler):
#   make demo   - local virtual environment, install, run the main job
#   make test   - same set-up, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test info bench clean torch

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,plot]"
	touch $(STAMP)

# The main job: verify the gradients on the best device, then train the adding problem (T = 100)
# long enough to watch it break through the mean-predictor plateau (about a minute on a CPU).
demo: $(STAMP)
	$(VENV)/bin/gpu-lstm info
	$(VENV)/bin/gpu-lstm check
	$(VENV)/bin/gpu-lstm train adding --steps 1200 --log-every 100 --out runs/adding

# The torch tests (parity with torch.nn.LSTM, gpu_lstm.torch, torch.compile, DDP) need torch. Only a
# local CPU wheel in /opt/wheels is installed here, never the registry's default build (gigabytes of
# CUDA packages); without one they skip. Elsewhere: pip install a CPU torch into .venv, then make test.
torch: $(STAMP)
	@tag=$$($(PY) -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")'); \
	wheel=$$(ls /opt/wheels/torch-*+cpu-"$$tag"-"$$tag"-*.whl 2>/dev/null | head -n 1); \
	if $(PY) -c 'import torch' 2>/dev/null; then :; \
	elif [ -n "$$wheel" ]; then echo "installing the local CPU torch wheel: $$wheel"; \
	  $(PY) -m pip install --quiet --disable-pip-version-check "$$wheel" || echo "torch install failed; torch tests will skip"; \
	else echo "no local CPU torch wheel: the torch tests will skip"; fi

test: $(STAMP) torch
	$(PY) -m pytest -q

info: $(STAMP)
	$(VENV)/bin/gpu-lstm info

bench: $(STAMP)
	$(VENV)/bin/gpu-lstm bench

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info runs
