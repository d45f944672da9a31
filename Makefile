# Two commands for a fresh machine (see README.md):
#   make quickstart   create .venv, install everything, run the quickstart HPO flow (examples/quickstart.yaml)
#   make test         run the test suite
# torch is installed first and pinned: an unpinned torch (or one pulled in by botorch) would
# download a multi-GB CUDA build; torch==2.13.0 resolves to the CPU wheel available here.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

export OMP_WAIT_POLICY ?= PASSIVE
export DO_NOT_TRACK ?= true
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install quickstart test test-e2e bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(VENV)/bin/prefect-hpo run examples/quickstart.yaml

test: install
	$(PY) -m pytest -q -m "not e2e" --durations=25

# End-to-end suites against `prefect server start` with workers and deployments (minutes each);
# CI runs them after `make test`.
test-e2e: install
	$(PY) -m pytest -q -m e2e --durations=15

bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_engine.py --seeds 10

clean:
	rm -rf $(VENV) .pytest_cache
