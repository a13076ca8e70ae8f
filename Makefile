# make run   — install what is missing, then run the main job
# make test  — install what is missing, then run the test suite
# make gpu-check — on one GPU: the harness at scale in about ten minutes (scripts/gpu-check.sh)
# Without an active virtualenv everything runs in .venv/ (created by `make setup`).
ifdef VIRTUAL_ENV
PYTHON ?= $(VIRTUAL_ENV)/bin/python
else
PYTHON ?= $(CURDIR)/.venv/bin/python
endif
RECIPE ?= recipes/prefill.yaml
export PYTHON

.PHONY: setup run test bench gpu-check clean
setup:
	@bash scripts/setup.sh

run: setup
	$(PYTHON) -m harness.cli run $(RECIPE)

test: setup
	$(PYTHON) -m pytest -q -x --durations=15

bench: setup
	$(PYTHON) bench/prefill_throughput.py

# one GPU, ~10 minutes: CUDA tests, bench ratios, paper-preset tables (results/gpu-check/summary.txt)
gpu-check: setup
	bash scripts/gpu-check.sh

clean:
	rm -rf build *.egg-info .pytest_cache
