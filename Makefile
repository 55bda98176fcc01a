# jaxcons developer commands. `make test` and `make demo` work from a fresh clone with only
# Python (>= 3.11) and pip: they build .venv from the project's own files first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV_MIN := .venv-min
STAMP_MIN := $(VENV_MIN)/.installed
PYTEST_WORKERS ?= 2
CHECK_PYTHON := $(PYTHON) -c 'import sys; sys.exit(None if sys.version_info >= (3, 11) else "jaxcons needs Python >= 3.11 (jax 0.8.1 does); got " + sys.version.split()[0] + ": run make PYTHON=python3.11 ...")'

.PHONY: install test test-min test-explore lint docs demo bench notebooks clean

$(STAMP): pyproject.toml constraints.txt
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,demo,notebooks,docs]'
	touch $(STAMP)

install: $(STAMP)

# ruff, then pyright (basedpyright, which brings its own Node; basic mode, configured in
# pyproject.toml) over jaxcons/ and tests/typing/, the script that touches every public name.
lint: $(STAMP)
	$(VENV)/bin/ruff check jaxcons tests benchmarks examples notebooks docs conftest.py
	$(VENV)/bin/basedpyright

# The docs site, warnings as errors. -E: a fresh environment every time, since an incremental
# build would not repeat the warnings of pages it does not re-read.
docs: $(STAMP)
	$(PY) -m sphinx -E -W --keep-going -q -b html docs docs/_build/html

# Hypothesis runs derandomized here (the `ci` profile, tests/conftest.py): the same examples on
# every run, so the result does not depend on luck. `make test-explore` draws fresh ones.
test: $(STAMP) lint docs
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --hypothesis-profile=ci --nbmake jaxcons tests notebooks

# The property tests only (pytest's `hypothesis` marker), with random examples and more of them.
test-explore: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m hypothesis --hypothesis-profile=explore tests

# The declared version floors (pyproject.toml) exactly, from constraints-min.txt: unit tests and
# doctests (BUILD.md, "Version floors").
$(STAMP_MIN): pyproject.toml constraints-min.txt
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_MIN)/bin/python -m pip install --quiet -c constraints-min.txt -e '.[test,demo]'
	touch $(STAMP_MIN)

test-min: $(STAMP_MIN)
	$(VENV_MIN)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --hypothesis-profile=ci jaxcons tests

demo: $(STAMP)
	$(PY) examples/digits_demo.py --out demo_out

# The training-step benchmark with the C library's malloc, then again with tcmalloc preloaded
# where libtcmalloc_minimal.so.4 is installed (Debian/Ubuntu: libtcmalloc-minimal4): XLA:CPU
# allocates its temporaries on every step, so the allocator moves CPU figures (BUILD.md, "CPU
# allocator"). A candidate is used only if it preloads into this Python (right architecture).
# BENCH_ARGS passes options, e.g. make bench BENCH_ARGS='--rounds 15'.
BENCH_ARGS ?=
TCMALLOC_CANDIDATES = $(shell { ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | \
	awk '$$1 == "libtcmalloc_minimal.so.4" { print $$NF }') \
	$(wildcard /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4 \
	/usr/lib64/libtcmalloc_minimal.so.4 /usr/local/lib/libtcmalloc_minimal.so.4)
PRELOADS := import sys; sys.exit("libtcmalloc" not in open("/proc/self/maps").read())

bench: $(STAMP)
	$(PY) benchmarks/train_step.py $(BENCH_ARGS)
	@for lib in $(TCMALLOC_CANDIDATES); do \
	  if LD_PRELOAD=$$lib $(PY) -c '$(PRELOADS)' 2>/dev/null; then \
	    echo "LD_PRELOAD=$$lib $(PY) benchmarks/train_step.py $(BENCH_ARGS)"; \
	    LD_PRELOAD=$$lib $(PY) benchmarks/train_step.py $(BENCH_ARGS); exit $$?; \
	  fi; \
	done; \
	echo "bench: no libtcmalloc_minimal.so.4 found, so no run with tcmalloc (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)"

clean:
	rm -rf $(VENV) $(VENV_MIN) demo_out .pytest_cache .ruff_cache .hypothesis
	rm -rf docs/_build docs/_generated docs/api docs/notebooks
