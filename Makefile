# workspace-proxy — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: test lint typecheck pytest demo bench bench-quick bench-report schema clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict workspace_proxy

# Exit code 5 ("no tests collected") is a failure like any other non-zero code.
pytest: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/workspace-proxy demo

# The benchmarks also draw charts: matplotlib, the `bench` extra (not needed by `make test`).
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.revocations
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.recovery
	$(BIN)/python -m benchmarks.tracing

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.revocations --samples 200
	$(BIN)/python -m benchmarks.run --quick
	$(BIN)/python -m benchmarks.recovery --quick
	$(BIN)/python -m benchmarks.tracing --quick

# docs/benchmarks.md and docs/charts/ again from the last full run's results, without measuring.
bench-report: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.report --from benchmarks/results/latest.json

# The configuration's JSON Schema, for editors; a test keeps config/schema.json equal to it.
schema: $(STAMP)
	$(BIN)/workspace-proxy schema > config/schema.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
