# make run   — install what is missing, then run the main job
# make test  — install what is missing, then run the test suite
# Without an active virtualenv everything runs in .venv/ (created by `make setup`).
ifdef VIRTUAL_ENV
PYTHON ?= $(VIRTUAL_ENV)/bin/python
else
PYTHON ?= $(CURDIR)/.venv/bin/python
endif
RECIPE ?= recipes/prefill.yaml
export PYTHON

.PHONY: setup run test bench clean
setup:
	@bash scripts/setup.sh

run: setup
	$(PYTHON) -m harness.cli run $(RECIPE)

test: setup
	$(PYTHON) -m pytest -q -x --durations=15

bench: setup
	$(PYTHON) bench/prefill_throughput.py

clean:
	rm -rf build *.egg-info .pytest_cache
