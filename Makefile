# Two commands on a fresh machine (Python 3.11 + make):
#   make run    install into .venv and start the server on the built-in defaults
#   make test   install into .venv (and Chromium for the browser test) and run ruff, mypy, pytest
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit system-deps bench soak clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mcp-backend serve

system-deps:
	bash scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Two pytest workers (xdist), a test file per worker at a time: most tests wait on child
# processes, so one core is mostly idle with one worker. Files go in collection order, so the
# long chaos files (tests/chaos) start first instead of trailing (xdist sorts by test count).
unit: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder --hypothesis-profile=ci

# mypy (single-threaded, ~35 s without a cache, as on a fresh clone) runs beside pytest, whose
# server processes leave the second core mostly idle; either failing fails the target.
test: $(STAMP) system-deps lint
	$(MAKE) --no-print-directory -j2 typecheck unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks.kernel
	$(BIN)/python -m benchmarks.simulator
	$(BIN)/python -m benchmarks.provider
	$(BIN)/python -m benchmarks.runtime
	$(BIN)/python -m benchmarks.server
	$(BIN)/python -m benchmarks.cluster

soak: $(STAMP)
	$(BIN)/python -m tests.chaos.soak

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
