# Two commands on a fresh machine (Python >= 3.10, pip, make, a C/C++ compiler):
#   make demo   - local virtual environment, install, run the main job
#   make test   - same set-up, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test check info clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gpu-lstm info
	$(VENV)/bin/gpu-lstm check

test: $(STAMP)
	$(PY) -m pytest -q

check: demo

info: $(STAMP)
	$(VENV)/bin/gpu-lstm info

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
