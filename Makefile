# jaxcons developer commands. `make test` and `make demo` work from a fresh clone with only
# Python (>= 3.11) and pip: they build .venv from the project's own files first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: install test lint demo bench notebooks clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(None if sys.version_info >= (3, 11) else "jaxcons needs Python >= 3.11 (jax 0.10 does); got " + sys.version.split()[0] + ": run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,demo,notebooks]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxcons tests benchmarks examples notebooks conftest.py

test: $(STAMP) lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --nbmake jaxcons tests notebooks

demo: $(STAMP)
	$(PY) examples/digits_demo.py --out demo_out

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache .hypothesis
