# Two commands take a fresh machine to a running sweep and to a passing test suite:
#   make sweep   # create .venv if missing, install, run sweeps/vrcs_grid.yaml
#   make test    # create .venv if missing, install, run the whole test suite on both cores
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SWEEP ?= sweeps/vrcs_grid.yaml

.PHONY: sweep test bench bench-scale bench-sweep bench-realistic install

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

sweep: $(VENV)/.installed
	$(PY) -m fedsweep.tune $(SWEEP)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist worksteal

bench: $(VENV)/.installed
	$(PY) bench/weights.py

bench-scale: $(VENV)/.installed
	$(PY) bench/scale.py

bench-sweep: $(VENV)/.installed
	$(PY) bench/sweep.py

bench-realistic: $(VENV)/.installed
	$(PY) bench/realistic.py
