# jaxcons developer commands. `make test` and `make demo` work from a fresh clone with only
# Python (>= 3.11) and pip: they build .venv from the project's own files first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: install test lint docs demo bench notebooks clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(None if sys.version_info >= (3, 11) else "jaxcons needs Python >= 3.11 (jax 0.10 does); got " + sys.version.split()[0] + ": run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,demo,notebooks,docs]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxcons tests benchmarks examples notebooks docs conftest.py

# The docs site, warnings as errors. -E: a fresh environment every time, since an incremental
# build would not repeat the warnings of pages it does not re-read.
docs: $(STAMP)
	$(PY) -m sphinx -E -W --keep-going -q -b html docs docs/_build/html

test: $(STAMP) lint docs
	$(PY) -m pytest -n $(PYTEST_WORKERS) --nbmake jaxcons tests notebooks

demo: $(STAMP)
	$(PY) examples/digits_demo.py --out demo_out

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache .hypothesis
	rm -rf docs/_build docs/_generated docs/api docs/notebooks
