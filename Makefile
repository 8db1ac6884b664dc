# Two commands on a fresh machine (Python >= 3.10, pip, make, a C/C++ compiler):
#   make demo   - local virtual environment, install, run the main job
#   make test   - same set-up, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test info bench clean

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

test: $(STAMP)
	$(PY) -m pytest -q

info: $(STAMP)
	$(VENV)/bin/gpu-lstm info

bench: $(STAMP)
	$(VENV)/bin/gpu-lstm bench

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info runs
