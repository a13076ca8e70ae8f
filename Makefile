# make run   — install what is missing, then run the main job
# make test  — install what is missing, then run the test suite
PYTHON ?= python3
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
